"""[maxpool]: darknet's output sizes and window offset, forward and indexes vs a
naive scan (first maximum wins, padded cells are -FLT_MAX), overlapping windows
in backward, gradient checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidark import ConfigError
from minidark.cfg import parse_network, read_cfg_text
from minidark.testing import format_results, gradcheck

LOWEST = np.finfo(np.float32).min


def build(body, h=7, w=7, c=2, batch=2):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n{body}"
    return parse_network(read_cfg_text(text), verbose=False, seed=0)


def pool(size=None, stride=None, padding=None):
    keys = [
        f"{k}={v}"
        for k, v in (("size", size), ("stride", stride), ("padding", padding))
        if v is not None
    ]
    return "[maxpool]\n" + "\n".join(keys) + "\n"


def naive_maxpool(x, size, stride, padding):
    """darknet's loop: strict > scan over rows then columns, out-of-range = -FLT_MAX."""
    b, c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.empty((b, c, oh, ow), np.float32)
    idx = np.empty((b, c, oh, ow), np.int64)
    for i in range(b):
        for j in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    best, arg = LOWEST, -1
                    for dy in range(size):
                        for dx in range(size):
                            y, xx = oy * stride + off + dy, ox * stride + off + dx
                            inside = 0 <= y < h and 0 <= xx < w
                            val = x[i, j, y, xx] if inside else LOWEST
                            if val > best:
                                best, arg = val, ((i * c + j) * h + y) * w + xx
                    out[i, j, oy, ox], idx[i, j, oy, ox] = best, arg
    return out, idx


@pytest.mark.parametrize(
    "h,w,size,stride,padding,out",
    [
        (28, 28, 2, 2, None, (14, 14)),
        (14, 14, 2, 2, None, (7, 7)),
        (7, 7, 2, 2, None, (4, 4)),
        (7, 7, 3, 2, None, (4, 4)),
        (7, 7, 3, 2, 0, (3, 3)),
        (7, 7, 3, 1, None, (7, 7)),
        (7, 5, 3, 3, 1, (2, 2)),
        (6, 6, 5, 1, 0, (2, 2)),
        (7, 7, None, 2, None, (4, 4)),
        (7, 7, None, None, None, (7, 7)),
        (5, 8, 4, 3, 3, (2, 3)),
    ],
)
def test_output_size(h, w, size, stride, padding, out):
    l = build(pool(size, stride, padding), h=h, w=w).layers[0]
    assert (l.out_h, l.out_w, l.out_c) == out + (2,)
    assert l.outputs == out[0] * out[1] * 2 and l.indexes.shape == (2, l.outputs)


def test_defaults():
    l = build("[max]\n").layers[0]
    assert (l.size, l.stride, l.pad) == (1, 1, 0)
    l = build("[max]\nstride=3\n").layers[0]
    assert (l.size, l.stride, l.pad) == (3, 3, 2)


@pytest.mark.parametrize(
    "bad",
    [
        pool(0, 1),
        pool(2, 0),
        pool(9, 1, 0),
        pool(2, 2, -1),
        pool(2, 1, 5),
        pool(2, 2, 6),
        pool(1, 1, 1),
        pool(129, 1),
    ],
)
def test_bad_options_raise(bad):
    with pytest.raises(ConfigError):
        build(bad)


@pytest.mark.parametrize(
    "h,w,size,stride,padding",
    [
        (7, 7, 2, 2, 1),
        (7, 7, 3, 2, 2),
        (7, 7, 3, 2, 0),
        (7, 7, 3, 1, 2),
        (8, 6, 2, 1, 1),
        (7, 5, 3, 3, 1),
        (6, 6, 5, 1, 0),
        (5, 8, 4, 3, 3),
        (7, 7, 5, 2, 4),
        (4, 4, 2, 1, 2),
        (5, 5, 17, 1, 16),
    ],
)
def test_forward_matches_naive(h, w, size, stride, padding):
    net = build(pool(size, stride, padding), h=h, w=w, batch=3)
    l = net.layers[0]
    # small integers: many ties, exercising the first-maximum rule
    x = np.random.default_rng(0).integers(-3, 3, (3, 2, h, w)).astype(np.float32)
    out = net.forward(x, train=True)
    ref, idx = naive_maxpool(x, size, stride, padding)
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    np.testing.assert_array_equal(l.indexes.reshape(idx.shape), idx)
    assert l.indexes.dtype == np.int32


def test_ties_first_maximum_wins():
    net = build(pool(2, 2), h=2, w=2, c=1, batch=1)
    for x, winner in (([5, 5, 5, 5], 0), ([1, 5, 5, 1], 1), ([1, 2, 5, 5], 2), ([0, 0, 0, 7], 3)):
        net.forward(np.array([x], np.float32), train=True)
        assert net.layers[0].indexes[0, 0] == winner


@pytest.mark.parametrize("size,stride,padding", [(2, 1, 2), (2, 2, 2)])
def test_window_without_winner(size, stride, padding):
    """The corner window's one input cell is -inf: darknet outputs -FLT_MAX,
    index -1 (and its backward then writes out of bounds); minidark skips such
    windows in backward. (Padding that leaves a window no input cell at all is
    refused at parse time: test_bad_options_raise.)"""
    net = build(pool(size, stride, padding), h=4, w=4, c=1, batch=1)
    l = net.layers[0]
    x = np.arange(16, dtype=np.float32)[None]
    x[0, 0] = -np.inf
    net.forward(x, train=True)
    out = l.output.reshape(l.out_h, l.out_w)
    assert out[0, 0] == LOWEST and l.indexes[0, 0] == -1
    l.delta[:] = 1
    dx = np.zeros((1, 16), np.float32)
    net.input, net.delta = x, dx
    l.backward(l, net)
    assert dx.sum() == (l.indexes >= 0).sum()


@pytest.mark.parametrize("size,stride,padding", [(3, 1, 2), (3, 2, 2), (2, 2, 1), (4, 3, 3)])
def test_backward_matches_scatter_of_indexes(size, stride, padding):
    """net.delta[indexes] += delta, duplicates summed (overlapping windows)."""
    net = build(pool(size, stride, padding), batch=2)
    l = net.layers[0]
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 2, (2, l.inputs)).astype(np.float32)
    net.forward(x, train=True)
    l.delta[:] = rng.normal(size=l.delta.shape)
    dx = np.ones((2, l.inputs), np.float32)
    net.input, net.delta = x, dx
    l.backward(l, net)
    ref = np.ones(2 * l.inputs)
    for i, d in zip(l.indexes.ravel(), l.delta.ravel(), strict=True):
        ref[i] += d
    np.testing.assert_allclose(dx.ravel(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "body", [pool(2, 2), pool(3, 2), pool(3, 1), pool(3, 2, 0), pool(4, 3, 3), pool(7, 1, 0)]
)
def test_gradcheck(body):
    results = gradcheck(build(body), tolerance=1e-6)
    assert [r.array for r in results] == ["input"]
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize(
    "h,w,size,padding,tiled",
    [
        (28, 28, 2, 1, True),
        (14, 14, 2, None, True),
        (6, 9, 3, 0, True),
        (6, 6, 3, 1, True),
        (4, 4, 1, 0, True),
        (7, 7, 2, 1, False),
        (6, 6, 2, 2, False),
        (6, 6, 3, 2, False),
    ],
)
def test_tiled_path_matches_naive(h, w, size, padding, tiled, monkeypatch):
    """Windows that tile the input (size == stride, no offset) take the planes
    scan, chunked (a few images per chunk); same output and indexes as the
    naive scan, ties included (small integers), and the same backward."""
    import minidark.kernels.pool as kernels

    monkeypatch.setattr(kernels, "CHUNK_BYTES", 4 * 2 * h * w * 2)  # 2 images per chunk
    net = build(pool(size, size, padding), h=h, w=w, batch=5)
    l = net.layers[0]
    assert l.tiled == tiled and (l.chunk == 2 or not tiled)
    x = np.random.default_rng(2).integers(-3, 3, (5, 2, h, w)).astype(np.float32)
    out = net.forward(x, train=True)
    ref, idx = naive_maxpool(x, size, size, 1 if padding is None else padding)
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    np.testing.assert_array_equal(l.indexes.reshape(idx.shape), idx)
    l.delta[:] = np.random.default_rng(3).normal(size=l.delta.shape)
    dx = np.full((5, l.inputs), 0.5, np.float32)
    net.input, net.delta = x.reshape(5, -1), dx
    l.backward(l, net)
    expected = np.full(dx.size, 0.5, np.float32)
    expected[idx.ravel()] += l.delta.ravel()
    np.testing.assert_array_equal(dx.ravel(), expected)


@pytest.mark.parametrize("special", [np.nan, -np.inf, LOWEST])
def test_tiled_path_falls_back_on_nan_and_empty_windows(special):
    """NaN, -inf and -FLT_MAX never win (darknet's strict >): a NaN anywhere, or a
    window holding nothing above -FLT_MAX, sends the tiled scan back to the exact
    one; the next forward without them takes the tiled scan again."""
    net = build(pool(2, 2), h=4, w=4, c=1, batch=2)
    l = net.layers[0]
    assert l.tiled
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    x[0, 0, 0, 0] = special  # a window with a special cell and others
    x[1, 0, 2:, 2:] = special  # a window made only of it
    x[1, 0, 0, 1] = special
    out = net.forward(x, train=True)
    ref, idx = naive_maxpool(x, 2, 2, 1)
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    np.testing.assert_array_equal(l.indexes.reshape(idx.shape), idx)
    assert idx[1, 0, 1, 1] == -1 and not l.complete
    net.forward(np.arange(32, dtype=np.float32)[::-1].reshape(2, 16).copy(), train=True)
    assert l.complete
    ref, idx = naive_maxpool(np.arange(32, dtype=np.float32)[::-1].reshape(2, 1, 4, 4), 2, 2, 1)
    np.testing.assert_array_equal(l.indexes.reshape(idx.shape), idx)


@st.composite
def geometries(draw):
    """Any valid window geometry (padding up to 2 (size - 1)), odd sizes included."""
    size = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 5))
    padding = draw(st.integers(0, 2 * (size - 1)))
    least = max(1, size - padding)  # the padded input must hold one window
    h, w = draw(st.integers(least, 11)), draw(st.integers(least, 11))
    return size, stride, padding, h, w


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(geometries(), st.integers(1, 3), st.integers(0, 2**32 - 1), st.sampled_from([0, 4, 12]))
def test_inference_output_equals_training_output(geometry, batch, seed, chunk_bytes):
    """The inference path (maxima of shifted views, no indexes) gives the training
    scan's output bit for bit, and darknet's (the naive loop), for every geometry,
    with ties, NaN, -inf and -FLT_MAX in the input; chunk_bytes splits the planes
    into chunks of one or a few (0: the default)."""
    import minidark.kernels.pool as kernels

    size, stride, padding, h, w = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, (batch, 2, h, w)).astype(np.float32)
    for special in (np.nan, -np.inf, LOWEST):
        x[rng.random(x.shape) < 0.08] = special
    saved = kernels.MAX_CHUNK_BYTES
    kernels.MAX_CHUNK_BYTES = chunk_bytes * h * w or saved
    try:
        net = build(pool(size, stride, padding), h=h, w=w, batch=batch)
        trained = net.forward(x, train=True).copy()
        inferred = net.forward(x, train=False)
    finally:
        kernels.MAX_CHUNK_BYTES = saved
    ref, _ = naive_maxpool(x, size, stride, padding)
    np.testing.assert_array_equal(inferred.reshape(ref.shape), ref)
    np.testing.assert_array_equal(inferred, trained)


@pytest.mark.parametrize("size,stride,padding", [(2, 2, None), (3, 1, 2), (2, 1, 1), (4, 3, 3)])
def test_backward_after_inference_forward(size, stride, padding):
    """Inference keeps no indexes; a backward after it finds the winners of the
    same input first, and scatters exactly as after a training forward."""
    net = build(pool(size, stride, padding), batch=2)
    l = net.layers[0]
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 2, (2, l.inputs)).astype(np.float32)
    delta = rng.normal(size=l.delta.shape).astype(np.float32)
    results = []
    for train in (True, False):
        net.forward(np.zeros_like(x), train=True)  # stale indexes from another input
        net.forward(x, train=train)
        assert l.indexed == train
        l.delta[:] = delta
        dx = np.ones((2, l.inputs), np.float32)
        net.input, net.delta = x, dx
        l.backward(l, net)
        results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])
