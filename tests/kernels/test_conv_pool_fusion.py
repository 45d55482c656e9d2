"""A [maxpool] whose windows tile the output of the [convolutional] right before
it is filled by that convolution in inference, part by part while the part is in
cache (conv.pool_part, pool.tiled_band): the same output as the pool's own pass,
bit for bit, on every convolution path; training and backward are untouched."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark.kernels.conv as conv
import minidark.layers.maxpool as maxpool_layer
from minidark.cfg import parse_network, read_cfg_text
from minidark.kernels.pool import LOWEST, forward_max

# (conv keys, input channels, conv kernel globals): each convolution path in turn
PATHS = {
    "cnhw bands": ("size=3\npad=1", 2, {}),
    "cnhw one-row bands": ("size=3\npad=1", 2, {"BAND_BYTES": 1}),
    "pointwise": ("size=1", 3, {}),
    "winograd F(2,3)": ("size=3\npad=1", 2, {"WINOGRAD": "on", "WINOGRAD_TILE": 2}),
    "winograd F(4,3)": ("size=3\npad=1", 2, {"WINOGRAD": "on", "WINOGRAD_TILE": 4}),
    "nhwc columns": ("size=3\npad=1", 8, {"LAYOUT": "nhwc", "WINOGRAD": "off"}),
    "cnhw chunks": ("size=3\npad=1", 2, {"INFERENCE_BANDS": False, "WINOGRAD": "off"}),
}


def build(conv_keys, c, h, w, pool_keys, batch, activation="leaky", bn=False):
    text = (
        f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n"
        f"[convolutional]\nfilters=3\n{conv_keys}\nactivation={activation}\n"
        f"batch_normalize={int(bn)}\n[maxpool]\n{pool_keys}\n"
    )
    return parse_network(read_cfg_text(text), verbose=False, seed=0)


@pytest.fixture
def pool_passes(monkeypatch):
    """Counts the pool's own inference passes (forward_max calls)."""
    calls = []

    def counted(l, x, workspace):
        calls.append(l.index)
        forward_max(l, x, workspace)

    monkeypatch.setattr(maxpool_layer, "forward_max", counted)
    return calls


def own_pass(pool, x):
    """The pool's output computed by its own inference kernel from ``x``."""
    out = np.empty_like(pool.output)
    saved, pool.output = pool.output, out
    try:
        forward_max(pool, x, np.empty(pool.workspace_size, np.float32))
    finally:
        pool.output = saved
    return out


def darknet_tiled(pool, x):
    """darknet's answer for windows that tile x: the largest value above -FLT_MAX
    (NaN and -inf never win), else -FLT_MAX."""
    k = pool.size
    windows = x.reshape(pool.batch, pool.c, pool.out_h, k, pool.out_w, k)
    return np.fmax(np.fmax.reduce(windows, axis=(3, 5)), LOWEST).reshape(pool.output.shape)


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(
    st.sampled_from(sorted(PATHS)),
    st.integers(2, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 1, 7, 40]),
)
def test_fused_pool_equals_the_pools_own_pass(path, k, rows, batch, seed, scratch_floats):
    """On every convolution path, with NaN and -inf in the input (and so in the
    convolution's output), folded batch norm, and a scratch small enough to split
    a part into pieces of planes and rows: the pool's output is its own pass's
    over the convolution's output, bit for bit, and that pass never ran."""
    conv_keys, c, settings_ = PATHS[path]
    saved = {name: getattr(conv, name) for name in settings_}
    for name, value in settings_.items():
        setattr(conv, name, value)
    calls = []
    original = maxpool_layer.forward_max
    maxpool_layer.forward_max = lambda l, x, ws: (calls.append(l.index), original(l, x, ws))
    try:
        h, w = k * rows * 2, k * (rows + 3)
        net = build(conv_keys, c, h, w, f"size={k}\nstride={k}\npadding=0", batch, bn=seed % 2 == 1)
        first, pool = net.layers
        assert first.pool_after is pool
        if scratch_floats is not None:
            pool.pool_scratch = np.zeros(max(scratch_floats, pool.w), np.float32)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batch, net.inputs)).astype(np.float32)
        x[rng.random(x.shape) < 0.02] = np.nan
        x[rng.random(x.shape) < 0.02] = -np.inf
        for _ in range(2):  # the first pass also plans the convolution's path
            with np.errstate(invalid="ignore"):  # inf - inf in the sums: NaN, on purpose
                out = net.forward(x, train=False)
            np.testing.assert_array_equal(out, own_pass(pool, first.output))
            np.testing.assert_array_equal(out, darknet_tiled(pool, first.output))
            assert not pool.prepooled
    finally:
        maxpool_layer.forward_max = original
        for name, value in saved.items():
            setattr(conv, name, value)
    assert calls == []


@pytest.mark.parametrize(
    "pool_keys,h,w",
    [("size=2\nstride=1", 8, 8), ("size=2\nstride=2", 7, 8), ("size=3\nstride=2", 9, 9)],
)
def test_pools_whose_windows_do_not_tile_are_not_fused(pool_keys, h, w, pool_passes):
    net = build("size=3\npad=1", 2, h, w, pool_keys, 2)
    first, pool = net.layers
    assert first.pool_after is None
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x, train=False), own_pass(pool, first.output))
    assert pool_passes == [1]


def test_training_and_backward_are_untouched(pool_passes):
    """A training forward after an inference one pools in the pool's own scan (with
    the winners backward needs); a backward right after an inference forward
    finds the winners of the same input, so its input gradient is the one after
    a training forward."""
    net = build("size=3\npad=1", 2, 8, 12, "size=2\nstride=2", 2)
    first, pool = net.layers
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, net.inputs)).astype(np.float32)
    inferred = net.forward(x, train=False).copy()
    assert pool_passes == []
    trained = net.forward(x, train=True)
    assert not pool.prepooled
    np.testing.assert_array_equal(trained, inferred)
    delta = rng.normal(size=pool.delta.shape).astype(np.float32)

    def input_gradient(train):
        net.forward(x, train=train)
        pool.delta[...] = delta
        net.input, net.delta = first.output, np.zeros_like(first.output)
        pool.backward(pool, net)
        return net.delta

    np.testing.assert_array_equal(input_gradient(False), input_gradient(True))


def test_an_image_too_big_for_the_columns_pools_in_the_pools_own_pass(pool_passes):
    """The banded NHWC path (one image's columns above COLUMN_BYTES) leaves the
    pool to its own pass, which then runs."""
    saved = conv.COLUMN_BYTES, conv.WINOGRAD
    conv.COLUMN_BYTES, conv.WINOGRAD = 4 * 8 * 8 * 9 * 8 - 4, "off"
    try:
        net = build("size=3\npad=1", 8, 8, 8, "size=2\nstride=2", 1)
    finally:
        conv.COLUMN_BYTES, conv.WINOGRAD = saved
    first, pool = net.layers
    assert first.band
    x = np.random.default_rng(2).normal(size=(1, net.inputs)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x, train=False), own_pass(pool, first.output))
    assert pool_passes == [1]
