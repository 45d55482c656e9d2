"""Every cfg shipped in cfg/ builds with --strict (no unknown or misspelt key)."""

import pathlib

import pytest

import minidark

CFG_DIR = pathlib.Path(__file__).resolve().parent.parent / "cfg"


@pytest.mark.parametrize("path", sorted(CFG_DIR.glob("*.cfg")), ids=lambda p: p.name)
def test_shipped_cfg_builds_strictly(path):
    net = minidark.load_network(path, strict=True, seed=0)
    assert net.layers and net.outputs > 0


def test_mnist_yolo_heads_fit_the_digits():
    """The export's digits are 14-56 px tall on 128 px canvases: the heads sit at
    strides 16 and 8, and each anchor belongs to exactly one head."""
    net = minidark.load_network(CFG_DIR / "mnist_yolo.cfg", strict=True, seed=0)
    heads = [l for l in net.layers if l.type == "yolo"]
    assert sorted(net.w // l.w for l in heads) == [8, 16]
    masks = sorted(int(m) for l in heads for m in l.mask)
    assert masks == list(range(heads[0].total))
    anchors = heads[0].biases.reshape(-1, 2)
    assert anchors[:, 1].min() > 128 / 9 * 0.5 and anchors[:, 1].max() < 128 / 2.3 * 1.5
