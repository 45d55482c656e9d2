"""Inference-only convolution paths against the training path and the definition:
the CNHW forward one band of output rows at a time (conv.forward_cnhw_bands)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark.kernels.conv as conv
from minidark.cfg import parse_network, read_cfg_text


def build(body, h, w, c, batch):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n{body}"
    return parse_network(read_cfg_text(text), verbose=False, seed=0)


def naive_conv(x, weights, biases, stride, pad, groups):
    """out[b, n, oy, ox] = biases[n] + sum w[n, c, ky, kx] xpad[b, g cg + c, oy s + ky, ox s + kx],
    in float64."""
    b, _, h, w = x.shape
    n, cg, k, _ = weights.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((b, n, oh, ow)) + biases[:, None, None]
    ng = n // groups
    for f in range(n):
        g = f // ng
        for ky in range(k):
            for kx in range(k):
                window = xp[:, g * cg : (g + 1) * cg, ky : ky + (oh - 1) * stride + 1 : stride]
                window = window[..., kx : kx + (ow - 1) * stride + 1 : stride]
                out[:, f] += np.einsum("bcyx,c->byx", window, weights[f, :, ky, kx])
    return out


@st.composite
def layers(draw):
    size = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, size))
    groups = draw(st.sampled_from([1, 2]))
    c, filters = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    least = max(1, size - 2 * padding)
    h, w = draw(st.integers(least, 13)), draw(st.integers(least, 13))
    return size, stride, padding, groups, c, filters, h, w


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(layers(), st.integers(1, 3), st.integers(1, 5), st.booleans())
def test_cnhw_bands_match_the_definition_and_the_chunks(
    geometry, batch, band_rows, batch_normalize
):
    """Inference on the CNHW path in bands of ``band_rows`` output rows (odd sizes,
    strides, padding, groups; a short last band; folded batch norm) equals the
    convolution's definition in float64 and the per-chunk forward, within
    float32 rounding."""
    size, stride, padding, groups, c, filters, h, w = geometry
    body = (
        f"[convolutional]\nfilters={filters}\nsize={size}\nstride={stride}\n"
        f"padding={padding}\ngroups={groups}\nactivation=leaky\n"
        f"batch_normalize={int(batch_normalize)}\n"
    )
    saved = conv.LAYOUT, conv.BAND_BYTES, conv.INFERENCE_BANDS
    conv.LAYOUT = "cnhw"
    try:
        net = build(body, h, w, c, batch)
        l = net.layers[0]
        conv.BAND_BYTES = 4 * (size * size * (c // groups) + 1) * l.out_w * band_rows
        assert conv.cnhw_band_rows(l) == min(band_rows, l.out_h)
        rng = np.random.default_rng(band_rows)
        x = rng.normal(size=(batch, c, h, w)).astype(np.float32)
        l.biases[:] = rng.normal(size=filters)
        if batch_normalize:
            l.scales[:] = rng.uniform(0.5, 2, filters)
            l.rolling_mean[:] = rng.normal(size=filters)
            l.rolling_variance[:] = rng.uniform(0.5, 2, filters)
        inferred = net.forward(x, train=False).copy()
        conv.INFERENCE_BANDS = False
        chunked = net.forward(x, train=False)
    finally:
        conv.LAYOUT, conv.BAND_BYTES, conv.INFERENCE_BANDS = saved
    weights, biases = l.weights.astype(np.float64), l.biases.astype(np.float64)
    if batch_normalize:  # inference BN: scale (y - mean) / (sqrt(var) + eps) + biases
        scale = l.scales / (np.sqrt(l.rolling_variance.astype(np.float64)) + 1e-6)
        weights = weights * scale[:, None, None, None]
        biases = biases - l.rolling_mean * scale
    expected = naive_conv(x, weights, biases, stride, padding, groups)
    expected = np.where(expected > 0, expected, 0.1 * expected).reshape(batch, -1)
    np.testing.assert_allclose(inferred, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inferred, chunked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bands", [False, True])
def test_inference_bands_and_chunks_agree_on_a_first_layer(monkeypatch, bands):
    """A 3-channel first layer (the case the bands are for) gives the same output
    banded or per chunk, and several bands are taken."""
    net = build(
        "[convolutional]\nfilters=5\nsize=3\nstride=1\npad=1\nactivation=leaky\n", 21, 19, 3, 2
    )
    l = net.layers[0]
    assert l.cnhw
    l.winograd = 0  # the columns, not a measured Winograd tile
    monkeypatch.setattr(conv, "BAND_BYTES", 4 * 28 * l.out_w * 4)  # 4 rows a band: 6 bands
    monkeypatch.setattr(conv, "INFERENCE_BANDS", bands)
    x = np.random.default_rng(0).normal(size=(2, 3 * 21 * 19)).astype(np.float32)
    out = net.forward(x, train=False)
    expected = naive_conv(x.reshape(2, 3, 21, 19), l.weights, l.biases, 1, 1, 1)
    expected = np.where(expected > 0, expected, 0.1 * expected).reshape(2, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tiles", [(2, 4), (4, 2)])
def test_measured_plan_holds_one_transform_at_a_time(monkeypatch, tiles):
    """The inference plan times the columns and each Winograd tile; a tile's
    weights are transformed before each of its runs (outside the timing) and
    dropped after it, the winner's made again unless it ran last, then kept;
    the layer's output after the plan is the convolution's."""
    import minidark.kernels.winograd as wino

    calls = []
    transform = wino.weight_transform
    monkeypatch.setattr(wino, "weight_transform", lambda *a: calls.append(a[1]) or transform(*a))
    monkeypatch.setattr(conv, "WINOGRAD_TILES", tiles)
    net = build(
        "[convolutional]\nfilters=6\nsize=3\nstride=1\npad=1\nactivation=leaky\n", 9, 10, 5, 2
    )
    l = net.layers[0]
    x = np.random.default_rng(1).normal(size=(2, 5 * 9 * 10)).astype(np.float32)
    first = net.forward(x, train=False).copy()
    timed = list(tiles) * conv.PLAN_RUNS
    assert calls[: len(timed)] == timed and l.winograd in (0, *tiles)
    assert calls[len(timed) :] == ([l.winograd] if l.winograd not in (0, tiles[-1]) else [])
    if l.winograd:
        assert l.winograd_weights.shape == ((l.winograd + 2) ** 2, 6, 5)
        assert "ordered" not in l.prepared  # the columns' reordered weights let go
    else:
        assert l.winograd_weights is None
    made = len(calls)
    second = net.forward(x, train=False)
    assert len(calls) == made  # the kept transform is reused
    expected = naive_conv(x.reshape(2, 5, 9, 10), l.weights, l.biases, 1, 1, 1)
    expected = np.where(expected > 0, expected, 0.1 * expected).reshape(2, -1)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-5)


def test_plan_clock_is_cpu_time_with_one_blas_thread():
    """With BLAS on one thread the plan times on this thread's CPU time (other
    processes' load does not count); with more, on the wall clock."""
    import time

    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(1):
        assert conv.plan_clock() is time.thread_time
    with threadpool_limits(2):
        threads = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
        expected = time.thread_time if threads == {1} else time.perf_counter  # a 1-CPU machine
        assert conv.plan_clock() is expected


@pytest.mark.parametrize("winograd", ["off", "on"])
def test_folded_weights_follow_every_change(monkeypatch, winograd):
    """With batch norm folded (inference) the derived weights follow an in-place
    edit of W, a new scale or rolling variance, and training passes in between;
    the layer keeps only what its path reads (U, or the reordered filters), its
    folded filters let go (not resident)."""
    monkeypatch.setattr(conv, "WINOGRAD", winograd)
    net = build(
        "[convolutional]\nfilters=4\nsize=3\nstride=1\npad=1\nbatch_normalize=1\n"
        "activation=leaky\n",
        8,
        9,
        3,
        2,
    )
    l = net.layers[0]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3 * 8 * 9)).astype(np.float32)
    l.rolling_variance[:] = rng.uniform(0.5, 2, 4)

    def expected():
        scale = l.scales / (np.sqrt(l.rolling_variance.astype(np.float64)) + 1e-6)
        weights = l.weights.astype(np.float64) * scale[:, None, None, None]
        out = naive_conv(x.reshape(2, 3, 8, 9), weights, l.biases - l.rolling_mean * scale, 1, 1, 1)
        return np.where(out > 0, out, 0.1 * out).reshape(2, -1)

    for change in ("none", "weights", "scales", "variance", "train", "none"):
        if change == "weights":
            l.weights[1, 2, 0, 1] += 0.5
        elif change == "scales":
            l.scales[2] = -0.75
        elif change == "variance":
            l.rolling_variance[0] = 3.0
        elif change == "train":  # an unfolded pass, then an update of W
            net.forward(x, train=True)
            l.weights *= 0.9
        out = net.forward(x, train=False)
        np.testing.assert_allclose(out, expected(), rtol=1e-5, atol=1e-5, err_msg=change)
        assert "folded" not in l.prepared
        assert not l.folded.any()  # a fresh, untouched buffer
    kept = l.folded
    net.forward(x, train=False)
    assert l.folded is kept  # nothing changed: nothing folded or let go again
