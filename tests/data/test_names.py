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


TREE = "animal -1\nvehicle -1\ncat 0\ndog 0\ncar 1\nbus 1\n"


def test_tree_key_gives_darknet_fill_hierarchy_truth(tmp_path):
    import io

    import numpy as np

    import minidark
    from minidark.data.dataset import Dataset
    from minidark.kernels.tree import SECRET_NUM, read_tree
    from minidark.train.trainer import Trainer

    (tmp_path / "t.tree").write_text(TREE)
    for key in ("tree", "hierarchy"):
        (tmp_path / "h.data").write_text(f"classes=6\ntrain=t.list\n{key}=t.tree\n")
        assert read_data_file(str(tmp_path / "h.data")).tree == str(tmp_path / "t.tree")
    cfg = tmp_path / "t.cfg"
    cfg.write_text(
        "[net]\nbatch=3\nheight=4\nwidth=4\nchannels=1\nlearning_rate=0.1\n"
        f"[connected]\noutput=6\nactivation=linear\n[softmax]\ntree={tmp_path / 't.tree'}\n"
    )
    net = minidark.load_network(str(cfg), seed=0)
    images = np.random.default_rng(0).integers(0, 255, (3, 1, 4, 4), dtype=np.uint8)
    trainer = Trainer(
        net,
        Dataset(images, [2, 5, 0], "mem"),
        backup_dir=tmp_path / "b",
        progress=False,
        out=io.StringIO(),
    )
    trainer.hierarchy = read_tree(str(tmp_path / "t.tree"))
    _, truth = trainer.load_batch(np.arange(3))
    S = SECRET_NUM
    np.testing.assert_array_equal(
        truth,
        [
            [1, 0, 1, 0, S, S],  # cat: its parent animal too; the vehicle group is masked
            [0, 1, S, S, 0, 1],  # bus
            [1, 0, S, S, S, S],
        ],  # animal: no child known
    )
    loss = net.train_step(*trainer.load_batch(np.arange(3)))
    assert np.isfinite(loss)
