"""minidark data export-mnist-detection: darknet's layout, labels that match the ink,
train digits from MNIST's training set only, the same bytes for the same seed."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from minidark.data.datafile import read_data_file
from minidark.data.detection import DetectionDataset, label_path
from minidark.data.mnist_detection import export_mnist_detection

from conftest import MNIST


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).parts[0] in ("images", "labels"):
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.mnist
def test_export_layout_labels_and_determinism(tmp_path):
    data = export_mnist_detection(tmp_path / "a", images=12, valid=4, size=96, seed=5,
                                  folder=MNIST, progress=False)
    config = read_data_file(data)
    assert config.classes == 10 and config.names == [str(d) for d in range(10)]
    assert config.values["eval"] == "coco"
    train = DetectionDataset.from_list(config.train, 10)
    valid = DetectionDataset.from_list(config.valid, 10)
    assert len(train) == 12 and len(valid) == 4 and train.missing == 0
    for path, boxes in zip(train.paths, train.boxes, strict=True):
        assert "/images/train/" in path and "/labels/train/" in label_path(path)
        assert 1 <= len(boxes) <= 6
        image = np.asarray(Image.open(path))
        assert image.shape == (96, 96)
        for _, x, y, w, h in boxes:
            assert 96 / 9 - 1 <= h * 96 <= 96 / 2.3 + 1
            x0, y0 = round((x - w / 2) * 96), round((y - h / 2) * 96)
            x1, y1 = round((x + w / 2) * 96), round((y + h / 2) * 96)
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            # the box is the ink's: strong ink inside spans most of it
            rows, cols = np.nonzero(image[y0:y1, x0:x1] > 120)
            assert rows.size and np.ptp(rows) + 1 >= .6 * (y1 - y0)
            assert np.ptp(cols) + 1 >= .4 * (x1 - x0)
    again = export_mnist_detection(tmp_path / "b", images=12, valid=4, size=96, seed=5,
                                   folder=MNIST, progress=False)
    assert again.endswith("mnist_detection.data")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    export_mnist_detection(tmp_path / "c", images=12, valid=4, size=96, seed=6, folder=MNIST,
                           progress=False)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
