"""net.freeze(): inference only, outputs sharing buffers by liveness, parameters
read-only (minidark/freeze.py); and Winograd's streamed U (kernels/winograd.py)."""

import itertools
import os

import numpy as np
import pytest

import minidark
from minidark import MinidarkError
from minidark.freeze import output_plan
from minidark.kernels import conv as conv_kernels
from minidark.registry import register_layer
from minidark.tools.infer_bench import rewritten_cfg

from conftest import net_from

STOCK = os.path.join(os.path.dirname(__file__), "cfg", "stock")

# one more cfg for the shareable types no stock cfg holds
EXTRA = """
[net]
batch=2
width=12
height=10
channels=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky

[batchnorm]

[activation]
activation=relu

[deconvolutional]
filters=3
size=2
stride=2
activation=linear

[l2norm]

[dropout]
probability=0.3

[maxpool]
size=2
stride=2

[connected]
output=7
activation=linear

[softmax]
"""


def stock(tmp_path, name, size=None, batch=2):
    """A stock cfg at another size and batch."""
    values = {"batch": batch, "subdivisions": 1}
    if size:
        values.update(width=size, height=size, crop_width=size - 8, crop_height=size - 8)
    return rewritten_cfg(os.path.join(STOCK, name), tmp_path, **values)


def shared_buffers(net):
    """The distinct buffers the frozen net's shared outputs are views of."""
    _, shared = net.shared_outputs
    found = {}
    for owner in shared:
        array = net.layers[owner].output
        while isinstance(array.base, np.ndarray):
            array = array.base
        found[id(array)] = array
    return list(found.values())


def read_after_pass(net):
    """What a caller reads after a pass: the output and every detection head."""
    heads = [l for l in net.layers if l.type in ("yolo", "region", "detection")]
    return [net.output.copy()] + [l.output.copy() for l in heads]


CASES = [
    ("yolov3-tiny.cfg", 96),
    ("yolov2.cfg", 64),
    ("yolov1-tiny.cfg", 64),
    ("resnet18.cfg", 64),
    ("densenet201.cfg", 32),
    ("mixed.cfg", None),
    ("alexnet.cfg", 72),
    ("darknet19.cfg", 64),
]


@pytest.mark.parametrize("name,size", CASES)
def test_frozen_net_computes_what_the_unfrozen_one_does(tmp_path, name, size):
    """Same net, same paths: the frozen pass (shared buffers poisoned with NaN
    before it, so a layer reading a buffer another layer reused, or relying on
    a part of its output it does not write, shows) equals the unfrozen one
    exactly, on every output a caller reads; and the outputs do share."""
    net = minidark.load_network(stock(tmp_path, name, size), seed=3)
    x = np.random.default_rng(1).uniform(size=(net.batch, net.inputs)).astype(np.float32)
    net.forward(x)
    expected = read_after_pass(net)
    net.freeze()
    buffers = shared_buffers(net)
    assert buffers, "no output is shared"
    assert sum(b.nbytes for b in buffers) < 0.75 * sum(
        net.layers[o].output.nbytes for o in net.shared_outputs[1]
    )
    for _ in range(2):
        for buffer in buffers:
            buffer.fill(np.nan)
        net.forward(x)
        for got, want in zip(read_after_pass(net), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_extra_types_share_and_compute_the_same(tmp_path):
    net = net_from(tmp_path, EXTRA, seed=2)
    x = np.random.default_rng(0).standard_normal((2, net.inputs)).astype(np.float32)
    want = net.forward(x).copy()
    net.freeze()
    assert len(shared_buffers(net)) >= 2
    for buffer in shared_buffers(net):
        buffer.fill(np.nan)
    np.testing.assert_array_equal(net.forward(x), want)


def test_lives_that_overlap_never_share(tmp_path):
    """The plan itself: two outputs in one buffer have disjoint lives (writer
    to last reader, route sources included)."""
    net = minidark.load_network(stock(tmp_path, "yolov3-tiny.cfg", 96), seed=0)
    owners, buffers = output_plan(net)
    layers = net.layers
    lives = {}
    for layer in layers:
        owner, i = owners[layer.index], layer.index
        begin = i - 1 if i and layers[i - 1].pool_after is layer else i
        lo, hi = lives.get(owner, (begin, i + 1))
        lives[owner] = (min(lo, begin), max(hi, i + 1))
        for source in layer.input_layers:
            s_lo, s_hi = lives[owners[source]]
            lives[owners[source]] = (s_lo, max(s_hi, i))
    by_buffer = {}
    for owner, buffer in buffers.items():
        by_buffer.setdefault(id(buffer), []).append(owner)
    assert any(len(members) > 1 for members in by_buffer.values())
    for members in by_buffer.values():
        spans = sorted(lives[o] for o in members)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start
    route_sources = {s for l in layers if l.type == "route" for s in l.input_layers}
    heads = {l.index for l in layers if l.type == "yolo"}
    assert not (heads & set(buffers))
    assert route_sources  # their lives reach the route: checked above


def test_keep_leaves_a_layer_whole(tmp_path):
    net = minidark.load_network(stock(tmp_path, "darknet19.cfg", 64), seed=0)
    x = np.random.default_rng(1).uniform(size=(net.batch, net.inputs)).astype(np.float32)
    net.forward(x)
    feature = net.layers[12].output.copy()
    net.freeze(keep=[12])
    assert 12 not in net.shared_outputs[1]
    net.forward(x)
    np.testing.assert_array_equal(net.layers[12].output, feature)
    with pytest.raises(ValueError, match="keep: no layer 99"):
        net.freeze(keep=[99])


def test_frozen_parameters_are_read_only_and_training_is_refused(tmp_path):
    net = minidark.load_network(stock(tmp_path, "darknet19.cfg", 64), seed=0)
    x = np.random.default_rng(1).uniform(size=(net.batch, net.inputs)).astype(np.float32)
    truth = np.eye(net.outputs, dtype=np.float32)[: net.batch]
    net.freeze()
    with pytest.raises(ValueError, match="read-only"):
        net.layers[0].weights[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        net.layers[0].rolling_mean[0] = 1.0
    for attempt in (
        lambda: net.train_datum(x, truth),
        lambda: net.forward(x, truth, train=True),
        net.backward,
        net.update,
    ):
        with pytest.raises(MinidarkError, match=r"frozen for inference.*net.unfreeze\(\)"):
            attempt()
    net.unfreeze()
    assert not net.frozen and net.shared_outputs is None
    outputs = [l.output for l in net.layers if l.type != "dropout"]
    assert len({id(o) for o in outputs}) == len(outputs)  # each its own again
    net.layers[0].weights[0, 0, 0, 0] += 1.0
    net.train_datum(x, truth)  # trains again


def test_an_edit_after_unfreeze_is_seen(tmp_path):
    """unfreeze forgets the derived weights: an edit shows at the next pass."""
    net = minidark.load_network(stock(tmp_path, "darknet19.cfg", 64), seed=0)
    x = np.random.default_rng(1).uniform(size=(net.batch, net.inputs)).astype(np.float32)
    net.freeze()
    before = net.forward(x).copy()
    net.unfreeze()
    net.layers[2].weights *= 2
    after = net.forward(x).copy()
    fresh = minidark.load_network(stock(tmp_path, "darknet19.cfg", 64), seed=0)
    fresh.layers[2].weights *= 2
    np.testing.assert_allclose(after, fresh.forward(x), rtol=1e-5, atol=1e-7)
    assert not np.allclose(after, before)


def test_load_weights_and_resize_keep_a_net_frozen(tmp_path, monkeypatch):
    """(Both nets on the columns: the same sums, whatever a timing would pick.)"""
    monkeypatch.setattr(conv_kernels, "WINOGRAD", "off")
    cfg = stock(tmp_path, "yolov3-tiny.cfg", 96, batch=1)
    source = minidark.load_network(cfg, seed=5)
    weights = tmp_path / "other.weights"
    minidark.save_weights(source, weights)
    x = np.random.default_rng(2).uniform(size=(1, source.inputs)).astype(np.float32)
    net = minidark.load_network(cfg, seed=0)
    net.freeze()
    minidark.load_weights(net, weights)
    assert net.frozen
    source.forward(x)
    net.forward(x)
    want, got = read_after_pass(source), read_after_pass(net)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    net.resize(64, 64)
    source.resize(64, 64)
    assert net.frozen and net.shared_outputs[1]
    small = np.random.default_rng(3).uniform(size=(1, net.inputs)).astype(np.float32)
    source.forward(small)
    net.forward(small)
    for a, b in zip(read_after_pass(net), read_after_pass(source), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_layer_type_turns_sharing_off(tmp_path, isolated_registry):
    """A plugin may read any layer's output: nothing shares in its network."""
    from minidark.layer import Layer

    @register_layer("passthrough")
    def make_passthrough(options, params):
        l = Layer(type="passthrough", **params.same_shape())
        l.output = np.zeros((params.batch, params.inputs), np.float32)

        def forward(layer, net):
            np.copyto(layer.output, net.input.reshape(layer.output.shape))

        l.forward = forward
        return l

    text = EXTRA.replace("[l2norm]", "[passthrough]")
    net = net_from(tmp_path, text, seed=0)
    net.freeze()
    assert net.shared_outputs[1] == set()


def test_streamed_u_matches_the_columns(tmp_path, monkeypatch):
    """A Winograd layer whose U is too large to keep (KEPT_U_BYTES, here 0) takes
    the whole batch in one piece and streams U, a few filters at a time, with
    batch norm's scale on its products (darknet19: BN) or not (no BN): the same
    convolution as the columns', to Winograd's float32 accuracy; it keeps no U,
    and a training pass afterwards makes the whole U as before."""
    monkeypatch.setattr(conv_kernels, "KEPT_U_BYTES", 0)
    monkeypatch.setattr(conv_kernels.wino, "STREAM_BLOCK_BYTES", 4 * 36 * 64 * 5)
    for bn in ("1", "0"):
        folder = tmp_path / f"bn{bn}"
        folder.mkdir()
        cfg = rewritten_cfg(
            os.path.join(STOCK, "darknet19.cfg"),
            folder,
            batch_normalize=bn,
            width=32,
            height=32,
            batch=2,
        )
        x = np.random.default_rng(4).uniform(size=(2, 3 * 32 * 32)).astype(np.float32)
        monkeypatch.setattr(conv_kernels, "WINOGRAD", "off")
        want = minidark.load_network(cfg, seed=1).forward(x).copy()
        monkeypatch.setattr(conv_kernels, "WINOGRAD", "auto")
        net = minidark.load_network(cfg, seed=1)
        net.freeze()
        winograd = [l for l in net.layers if l.type == "convolutional" and l.size == 3][1:]
        for l in winograd:  # the plan's choice, made here so the test does not time
            l.winograd, l.winograd_streamed = 4, True
            assert conv_kernels.streams_u(l, 4)
        for _ in range(2):
            np.testing.assert_allclose(net.forward(x), want, rtol=1e-4, atol=1e-6)
            assert all(l.winograd_weights is None for l in winograd)
        net.unfreeze()
        truth = np.eye(net.outputs, dtype=np.float32)[:2]
        net.forward(x, truth, train=True)
        assert all(l.winograd_weights is not None for l in winograd)


def test_the_plan_streams_only_what_it_cannot_keep(tmp_path, monkeypatch):
    """measure: a tile whose U is above KEPT_U_BYTES and that takes the batch in one
    piece runs streamed; with the cap above every U, nothing streams."""
    cfg = stock(tmp_path, "darknet19.cfg", 32)
    x = np.random.default_rng(4).uniform(size=(2, 3 * 32 * 32)).astype(np.float32)
    for cap, streams in ((0, True), (1 << 40, False)):
        monkeypatch.setattr(conv_kernels, "KEPT_U_BYTES", cap)
        monkeypatch.setattr(conv_kernels, "PLAN_RUNS", 1)
        net = minidark.load_network(cfg, seed=1)
        net.freeze()
        net.forward(x)
        for l in net.layers:
            if l.type == "convolutional" and l.winograd:
                one_piece = conv_kernels.wino.one_piece(l, l.winograd)
                assert l.winograd_streamed == (streams and one_piece)
                assert (l.winograd_weights is None) == l.winograd_streamed
