"""``minidark data export-mnist OUT``: MNIST as PNG files plus darknet image lists.

Writes ``OUT/train/img_00000_digit5.png`` ... (60000) and ``OUT/valid/...``
(the 10000 test images), ``OUT/train.list`` and ``OUT/valid.list`` (paths
relative to OUT, found from the list's folder), ``OUT/mnist.names`` and a
ready ``OUT/mnist.data``. The class token in each file name is the label of
``data/mnist.names`` (``digit0`` ... ``digit9``): darknet takes an image's
class from the label that occurs in its path, and bare digits would also
match the running index, so the tokens are words no index can contain.
"""

import os

import numpy as np

from ..errors import DataError
from .mnist import ensure_mnist, read_idx

NAMES = tuple(f"digit{i}" for i in range(10))
SPLITS = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("valid", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def export_mnist(out, folder=None, limit=None, progress=True, names=NAMES):
    """Write the PNGs, lists, names and .data file; returns the .data path."""
    from PIL import Image
    from tqdm import tqdm

    folder = folder or os.path.join("data", "mnist")
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
        for split, image_stem, label_stem in SPLITS:
            found = ensure_mnist([image_stem, label_stem], folder, progress)
            images, labels = read_idx(found[image_stem]), read_idx(found[label_stem])
            count = len(labels) if limit is None else min(limit, len(labels))
            os.makedirs(os.path.join(out, split), exist_ok=True)
            entries = []
            for i in tqdm(
                range(count), desc=f"writing {split}", unit="img", disable=not progress, leave=False
            ):
                entry = f"{split}/img_{i:05d}_{names[labels[i]]}.png"
                Image.fromarray(np.ascontiguousarray(images[i]), "L").save(
                    os.path.join(out, entry), compress_level=1
                )
                entries.append(entry)
            with open(os.path.join(out, f"{split}.list"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(entries) + "\n")
        with open(os.path.join(out, "mnist.names"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(names) + "\n")
        root = os.path.abspath(out)
        data = os.path.join(out, "mnist.data")
        with open(data, "w", encoding="utf-8") as handle:
            handle.write(
                f"# MNIST as PNG image lists, written by minidark data export-mnist\n"
                f"classes={len(names)}\n"
                f"train={os.path.join(root, 'train.list')}\n"
                f"valid={os.path.join(root, 'valid.list')}\n"
                f"names={os.path.join(root, 'mnist.names')}\n"
                f"backup=backup/\n"
                f"top=2\n"
            )
    except OSError as exc:
        raise DataError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return data
