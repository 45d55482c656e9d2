"""Network.resize: layers re-planned for a new input size, parameters and optimiser state kept."""

import numpy as np
import pytest

import minidark
from minidark.weights import weights_bytes

TINY = """
[net]
batch=2
width=64
height=64
channels=3
learning_rate=.01
momentum=.9
decay=.0005

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 24,24
classes=2
num=3

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 24,24
classes=2
num=3
"""


def build(tmp_path, width=64):
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY.replace("width=64\nheight=64", f"width={width}\nheight={width}"))
    return minidark.load_network(path, seed=3)


def truth(net):
    t = np.zeros((net.batch, net.truths), np.float32)
    t[:, :10] = [0.3, 0.4, 0.2, 0.25, 1, 0.7, 0.6, 0.3, 0.2, 0]
    return t


def test_resize_keeps_parameters_and_matches_a_fresh_net(tmp_path):
    net = build(tmp_path)
    rng = np.random.default_rng(0)
    net.train_step(rng.random((2, net.inputs), np.float32), truth(net))  # momentum, stats
    weights = {(l.index, name): getattr(l, name) for l in net.layers for name in l.saved}
    momentum = {
        (l.index, "weight_updates"): l.weight_updates
        for l in net.layers
        if l.weight_updates is not None
    }
    before = weights_bytes(net)
    net.resize(96, 96)
    assert (net.w, net.h, net.inputs) == (96, 96, 96 * 96 * 3)
    assert net.layers[0].out_w == 96 and net.layers[4].w == 24 and net.layers[-1].w == 48
    for (index, name), array in {**weights, **momentum}.items():
        assert getattr(net.layers[index], name) is array  # moved, not copied
    assert weights_bytes(net) == before
    fresh = build(tmp_path, 96)
    for a, b in zip(fresh.layers, net.layers, strict=True):
        for name in a.saved:
            getattr(a, name)[...] = getattr(b, name)
    x = rng.random((2, net.inputs), np.float32)
    np.testing.assert_array_equal(net.forward(x), fresh.forward(x))
    # training at the new size goes on from the same momentum
    loss = net.train_step(x, truth(net))
    assert np.isfinite(loss)
    net.resize(64, 64)
    assert net.layers[4].w == 16 and weights_bytes(net) != before


def test_resize_leaves_the_random_stream(tmp_path):
    net, other = build(tmp_path), build(tmp_path)
    net.resize(128, 128)
    assert net.rng.random() == other.rng.random()


def test_resize_refuses_size_dependent_parameters(tmp_path):
    path = tmp_path / "fc.cfg"
    path.write_text(
        "[net]\nbatch=1\nwidth=8\nheight=8\nchannels=1\n\n"
        "[connected]\noutput=4\nactivation=linear\n"
    )
    net = minidark.load_network(path)
    with pytest.raises(ValueError, match=r"layer 0 \[connected\] cannot be resized"):
        net.resize(16, 16)
    assert net.w == 8 and net.layers[0].inputs == 64  # unchanged after the refusal
