"""Names files with repeated labels (darknet's imagenet.shortnames.list, 9k.names):
accepted with one warning, and an image matching a repeated label gets its first entry."""

import pytest

from minidark.data.datafile import DataWarning, read_data_file
from minidark.data.dataset import label_from_path


def test_repeated_names_load_with_a_warning_and_the_first_entry_wins(tmp_path):
    (tmp_path / "short.names").write_text("crane\ntench\nmaillot\ncrane\nmaillot\n")
    (tmp_path / "imagenet1k.data").write_text(
        "classes=5\ntrain = t.list\nvalid = v.list\nbackup = b/\n"
        f"labels = {tmp_path / 'short.names'}\nnames = {tmp_path / 'short.names'}\ntop=5\n"
    )
    with pytest.warns(DataWarning, match=r"2 repeated label\(s\): 'crane' \(entries 1 and 4\)"):
        data = read_data_file(str(tmp_path / "imagenet1k.data"))
    assert data.names == ["crane", "tench", "maillot", "crane", "maillot"]
    assert label_from_path("img/crane_01.jpg", data.labels) == 0
    assert label_from_path("img/maillot.jpg", data.labels) == 2
    with pytest.raises(ValueError):  # two different labels still do not choose
        label_from_path("img/crane_tench.jpg", data.labels)


def test_combine9k_style_data_file_parses(tmp_path):
    (tmp_path / "9k.names").write_text("\n".join(["dog", "cat", "dog", "n0001"]) + "\n")
    (tmp_path / "combine9k.data").write_text(
        "classes= 4\n#train  = /home/pjreddie/data/coco/trainvalno5k.txt\n"
        "train  = data/combine9k.train.list\nvalid  = det.test.files\n"
        f"names = {tmp_path / '9k.names'}\nbackup = backup/\n"
    )
    with pytest.warns(DataWarning, match="repeated"):
        data = read_data_file(str(tmp_path / "combine9k.data"))
    assert data.classes == 4 and len(data.names) == 4
