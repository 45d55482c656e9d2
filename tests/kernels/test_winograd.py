"""Convolution paths past im2col: Winograd F(2,3) and F(4,3), 1x1 as plain GEMM,
inference batch norm folded into the filters; each against the im2col path or
a float64 definition, forward and both gradients."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark.kernels.conv as conv_module
from minidark.cfg import parse_network, read_cfg_text
from minidark.kernels import winograd
from minidark.testing import format_results, gradcheck


def build(body, h=7, w=7, c=3, batch=2, seed=0):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n{body}"
    return parse_network(read_cfg_text(text), verbose=False, seed=seed)


def conv(filters=4, size=3, stride=1, padding=1, act="linear", bn=0):
    return (
        f"[convolutional]\nfilters={filters}\nsize={size}\nstride={stride}\n"
        f"padding={padding}\nactivation={act}\nbatch_normalize={bn}\n"
    )


def correlate(x, w, pad):
    """float64 definition: y[b,n,oy,ox] = sum_c,ky,kx w[n,c,ky,kx] xpad[b,c,oy+ky,ox+kx]."""
    b, c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.zeros((b, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    oh, ow = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    y = np.zeros((b, w.shape[0], oh, ow))
    for ky in range(k):
        for kx in range(k):
            y += np.einsum("bcyx,nc->bnyx", xp[:, :, ky : ky + oh, kx : kx + ow], w[:, :, ky, kx])
    return y


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_are_exact(m):
    """At[(G g Gt) . (Bt d B)]A equals the 3x3 correlation of one tile, in float64."""
    at, g, bt = winograd.matrices(m)
    rng = np.random.default_rng(m)
    d, f = rng.normal(size=(m + 2, m + 2)), rng.normal(size=(3, 3))
    y = at @ ((g @ f @ g.T) * (bt @ d @ bt.T)) @ at.T
    ref = correlate(d[None, None], f[None, None], 0)[0, 0]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def winograd_net(monkeypatch, body, tile=2, **kw):
    monkeypatch.setattr(conv_module, "WINOGRAD", "on")
    monkeypatch.setattr(conv_module, "WINOGRAD_TILE", tile)
    return build(body, **kw)


@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(3, 11),
    w=st.integers(3, 11),
    padding=st.integers(0, 2),
    tile=st.sampled_from([2, 4]),
)
def test_forward_matches_definition(h, w, padding, tile):
    """Any size (odd outputs leave partial tiles), padding 0-2, both tiles."""
    conv_module.WINOGRAD, conv_module.WINOGRAD_TILE = "on", tile
    try:
        net = build(conv(5, 3, 1, padding), h=h, w=w, c=3)
    finally:
        conv_module.WINOGRAD, conv_module.WINOGRAD_TILE = "auto", 2
    l = net.layers[0]
    assert l.winograd == tile
    x = np.random.default_rng(h * w).normal(size=(2, 3, h, w)).astype(np.float32)
    out = net.forward(x.reshape(2, -1)).reshape(2, 5, l.out_h, l.out_w)
    ref = correlate(x.astype(np.float64), l.weights.astype(np.float64), padding)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize(
    "body",
    [
        conv(4, 3, 1, 1, act="leaky"),
        conv(3, 3, 1, 0, act="logistic"),
        conv(2, 3, 1, 2, act="linear"),
    ],
)
def test_gradcheck(monkeypatch, body, tile):
    """Both gradients (the adjoint of the Winograd forward) against central differences."""
    net = winograd_net(monkeypatch, body, tile, h=7, w=6)
    assert net.layers[0].winograd == tile
    results = gradcheck(net, tolerance=1e-6)
    assert {r.array for r in results} == {"input", "weights", "biases"}
    assert all(r.passed for r in results), format_results(results)


def test_second_layer_and_banding_match_im2col(monkeypatch):
    """Winograd (in chunks of one image, and in bands of tile rows; measured
    against the columns, forward and backward, whose trial runs leave no trace;
    Winograd forward with the columns' backward) gives im2col's output, weight,
    bias and input gradients as a second layer."""
    body = conv(4, 3, 1, 1, act="leaky") + conv(5, 3, 1, 1, act="leaky")
    body += "[connected]\noutput=3\nactivation=linear\n[softmax]\n"
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4 * 81)).astype(np.float32)
    truth = np.eye(3, dtype=np.float32)[[0, 2, 1]]
    results = []
    cases = [("off", 64 << 20), ("on", 64 << 20), ("on", 4096), ("auto", 64 << 20)]
    cases += [("F(4,3)", 64 << 20), ("F(4,3)", 4096)]
    cases += [("forward only", 64 << 20), ("measured backward", 64 << 20)]
    for mode, column_bytes in cases:
        monkeypatch.setattr(conv_module, "WINOGRAD", "on" if mode not in ("off", "auto") else mode)
        monkeypatch.setattr(conv_module, "WINOGRAD_TILE", 4 if mode == "F(4,3)" else 2)
        monkeypatch.setattr(conv_module, "COLUMN_BYTES", column_bytes)
        net = build(body, h=9, w=9, c=4, batch=3, seed=2)
        if mode == "forward only":  # Winograd forward, the columns' backward
            net.layers[1].winograd_backward = False
        if mode == "measured backward":  # both backwards timed, then one kept
            net.layers[1].winograd_backward = None
        if mode == "on" and column_bytes == 4096:
            images, rows, _ = net.layers[1].winograd_plans[2]
            assert rows < 5 and images == 1
        net.forward(x, truth, train=True)
        net.backward()
        if mode == "measured backward":
            assert net.layers[1].winograd_backward in (True, False)
        results.append(
            [
                a.copy()
                for l in net.layers[:2]
                for a in (l.output, l.delta, l.weight_updates, l.bias_updates)
            ]
        )
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_float32_error_against_float64():
    """float32 error of each variant against a float64 correlation, 256 channels of
    N(0,1) data with He-scaled filters (measured: im2col 3.3e-7, F(2,3) 6.8e-7,
    F(4,3) 1.2e-5 of the largest output): F(2,3) within 3x of im2col's, F(4,3) within 100x."""
    rng = np.random.default_rng(0)
    c, n, h = 256, 32, 12
    x = rng.normal(size=(1, c, h, h))
    w = rng.normal(size=(n, c, 3, 3)) * np.sqrt(2 / (9 * c))
    ref = correlate(x, w, 1)
    errors = {}
    for mode, tile in (("off", 2), ("on", 2), ("on", 4)):
        conv_module.WINOGRAD, conv_module.WINOGRAD_TILE = mode, tile
        try:
            net = build(conv(n, 3, 1, 1), h=h, w=h, c=c, batch=1)
            net.layers[0].weights[:] = w
            out = net.forward(x.reshape(1, -1).astype(np.float32)).reshape(ref.shape)
        finally:
            conv_module.WINOGRAD, conv_module.WINOGRAD_TILE = "auto", 2
        errors[(mode, tile)] = np.abs(out - ref).max() / np.abs(ref).max()
    im2col = errors[("off", 2)]
    assert im2col < 1e-5
    assert errors[("on", 2)] < 3 * im2col, errors
    assert errors[("on", 4)] < 100 * im2col, errors


def test_weight_transform_follows_in_place_edits(monkeypatch):
    """U is cached, but an in-place change of the weights is seen at the next forward."""
    net = winograd_net(monkeypatch, conv(3, 3, 1, 1), h=6, w=6)
    l = net.layers[0]
    x = np.random.default_rng(0).normal(size=(2, l.inputs)).astype(np.float32)
    before = net.forward(x).copy()
    l.weights[0, 0, 1, 1] += 1.0
    after = net.forward(x)
    ref = correlate(x.reshape(2, 3, 6, 6).astype(np.float64), l.weights.astype(np.float64), 1)
    np.testing.assert_allclose(after.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(before, after)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_pointwise_is_plain_gemm(stride):
    """1x1: out_b = W @ x_b on the NCHW input (every stride-th pixel); gradients checked."""
    net = build(conv(4, 1, stride, 0, act="leaky"), h=7, w=8, c=5)
    l = net.layers[0]
    assert l.pointwise
    x = np.random.default_rng(stride).normal(size=(2, 5, 7, 8)).astype(np.float32)
    out = net.forward(x.reshape(2, -1)).reshape(2, 4, l.out_h, l.out_w)
    ref = correlate(x[:, :, ::stride, ::stride].astype(np.float64), l.weights.astype(np.float64), 0)
    ref = np.where(ref > 0, ref, 0.1 * ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    results = gradcheck(net, tolerance=1e-6)
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("mode", ["off", "on"])
@pytest.mark.parametrize("size", [1, 3])
def test_inference_batch_norm_folded(monkeypatch, mode, size):
    """Inference with BN folded into the filters equals conv, then BN, then the
    activation; a backward after it (BN's caches rebuilt) equals one after the
    unfolded forward."""
    monkeypatch.setattr(conv_module, "WINOGRAD", mode)
    net = build(conv(3, size, 1, size // 2, act="leaky", bn=1), h=6, w=6, c=4)
    l = net.layers[0]
    rng = np.random.default_rng(0)
    l.rolling_mean[:] = [0.1, -0.2, 0.05]
    l.rolling_variance[:] = [0.8, 1.3, 2.0]
    l.scales[:] = [1.5, -0.5, 0.7]
    l.biases[:] = [0.3, 0.0, -0.1]
    x = rng.normal(size=(2, l.inputs)).astype(np.float32)
    out = net.forward(x).copy()
    assert l.bn_folded
    y = correlate(x.reshape(2, 4, 6, 6).astype(np.float64), l.weights.astype(np.float64), size // 2)
    norm = (y - l.rolling_mean[:, None, None]) / (np.sqrt(l.rolling_variance) + 1e-6)[:, None, None]
    ref = norm * l.scales[:, None, None] + l.biases[:, None, None]
    ref = np.where(ref > 0, ref, 0.1 * ref)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    delta = rng.normal(size=l.delta.shape).astype(np.float32)
    grads = []
    for unfold in (False, True):
        l.weight_updates[:] = 0
        l.scale_updates[:] = 0
        net.forward(x)
        if unfold:  # the reference: the unfolded forward, as training mode runs it
            import minidark.layers.convolutional as layer_module

            net.input = x
            conv_module.forward(l, net, finish=False)
            layer_module.forward_bn(l, l.output, False)
            layer_module.activate(l.output, l.activation)
            l.bn_folded = False
        l.delta[:] = delta
        net.input, net.delta = x, np.zeros_like(x)
        l.backward(l, net)
        grads.append((net.delta.copy(), l.weight_updates.copy(), l.scale_updates.copy()))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_workspace_is_bounded(monkeypatch):
    """A 256x256 image under a 4 MB cap (V alone would be 8 MB): Winograd's scratch
    stays within the cap beyond the padded image and its gradient, in bands of
    tile rows, and the output across a band boundary is right."""
    monkeypatch.setattr(conv_module, "COLUMN_BYTES", 4 << 20)
    net = winograd_net(monkeypatch, conv(4, 3, 1, 1), h=256, w=256, c=8, batch=1)
    l = net.layers[0]
    padded = 8 * 258 * 258
    images, rows, scratch = l.winograd_plans[2]
    assert images == 1 and rows < 128
    assert 4 * (sum(scratch.values()) - scratch["wpad"] - scratch["wdxpad"]) <= 4 << 20
    # the whole layer (im2col's bands too: columns within the cap, plus their y)
    assert 4 * (l.workspace_size - 2 * padded) <= 1.5 * (4 << 20)
    x = np.random.default_rng(0).normal(size=(1, 8, 256, 256)).astype(np.float32)
    out = net.forward(x.reshape(1, -1)).reshape(1, 4, 256, 256)
    edge = 2 * rows  # first output row of the second band
    ref = correlate(
        x[:, :, edge - 5 : edge + 5].astype(np.float64), l.weights.astype(np.float64), 1
    )
    np.testing.assert_allclose(out[:, :, edge - 4 : edge + 4], ref[:, :, 1:9], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [2, 4])
def test_both_transform_forms_agree(monkeypatch, tile):
    """The input transform and its adjoint, elementwise or as a GEMM on gathered
    tiles, give the same forward and gradients."""
    body = conv(4, 3, 1, 1, act="leaky") + conv(5, 3, 1, 1, act="linear")
    rng = np.random.default_rng(tile)
    x = rng.normal(size=(2, 3 * 49)).astype(np.float32)
    delta = rng.normal(size=(2, 5 * 49)).astype(np.float32)
    results = []
    for gemm in (False, True):
        monkeypatch.setitem(winograd.TRANSFORM_GEMM, tile, gemm)
        net = winograd_net(monkeypatch, body, tile, h=7, w=7, c=3, seed=1)
        out = net.forward(x, train=True).copy()
        net.layers[1].delta[:] = delta
        net.backward()
        results.append([out, net.layers[0].delta.copy(), net.layers[1].weight_updates.copy()])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels, expected", [(8, 0), (128, 4)])
def test_training_path_follows_the_shape_not_a_timing(monkeypatch, channels, expected):
    """Two runs with the same seed must sum in the same order: a layer whose first
    pass trains takes its path from its shape even when every timing says otherwise."""

    def timed(*args):
        raise AssertionError("a training pass timed its path")

    monkeypatch.setattr(conv_module, "measure", timed)
    monkeypatch.setattr(conv_module, "measure_backward", timed)
    net = build(conv(channels, 3, 1, 1) + conv(channels, 3, 1, 1), h=8, w=8, c=channels)
    x = np.random.default_rng(1).normal(size=(2, channels * 64)).astype(np.float32)
    net.forward(x, np.zeros((2, channels * 64), np.float32), train=True)
    net.backward()
    for l in net.layers:
        assert l.winograd == expected and l.winograd_backward == bool(expected)


@pytest.mark.parametrize(
    "c, n, side, expected",
    [
        (3, 128, 28, 0),  # cifar.cfg's first layer: too few input channels
        (128, 128, 28, 4),  # cifar.cfg's 28x28 layers
        (128, 256, 14, 4),  # 14x14: 1.31 outputs computed per output kept
        (512, 512, 7, 4),  # 7x7: likewise
        (96, 96, 14, 0),  # 14x14 below H = 54
        (256, 256, 13, 4),  # 13x13: 1.51
        (128, 128, 10, 0),  # 10x10: 1.44, below H = 73
        (256, 256, 6, 0),  # 6x6: 1.78, below H = 130
        (512, 512, 5, 0),
        (64, 128, 8, 0),  # 4 tiles per image: H = 43 is too few
        (128, 256, 4, 4),
        (64, 64, 20, 4),  # 25 tiles, exact: from H = 17.8
        (32, 64, 32, 4),
        (32, 32, 56, 0),
        (16, 32, 32, 0),
    ],
)
def test_training_tile_is_a_function_of_the_shape(monkeypatch, c, n, side, expected):
    """The training rule reads the layer's shape and nothing else: a record holding
    only shape fields gives the pinned tile, the same each call, with every clock
    and every timed plan unavailable (a timing swapped in fails here)."""

    def clock(*args):
        raise AssertionError("the training rule read a clock")

    clocks = ("perf_counter", "perf_counter_ns", "time", "monotonic", "process_time")
    monkeypatch.setattr(conv_module, "time", SimpleNamespace(**dict.fromkeys(clocks, clock)))
    monkeypatch.setattr(conv_module, "measure", clock)
    monkeypatch.setattr(conv_module, "measure_backward", clock)
    shape = dict(c=c, n=n, h=side, w=side, out_h=side, out_w=side, size=3, stride=1, pad=1)
    layer = SimpleNamespace(batch=32, groups=1, **shape)
    assert [conv_module.training_tile(layer) for _ in range(3)] == [expected] * 3
    layer.batch = 1  # the batch does not move the choice either
    assert conv_module.training_tile(layer) == expected


def test_two_runs_training_by_f43_are_byte_identical():
    """Same seed, same batches: the F(4,3) training path (partial tiles, pieces,
    scratch reused across layers) gives the same bytes run after run."""
    body = conv(128, 3, 1, 1, act="leaky", bn=1) + conv(128, 3, 1, 1, act="leaky", bn=1)
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(2, 2, 128 * 49)).astype(np.float32) for _ in range(3)]
    runs = []
    for _ in range(2):
        net = build(body, h=7, w=7, c=128, seed=4)
        first = net.layers[0].weights.copy()
        for x, delta in batches:
            net.forward(x, train=True)
            net.layers[-1].delta[:] = delta
            net.backward()
            net.update()
        assert [l.winograd for l in net.layers] == [4, 4]
        assert np.abs(net.layers[0].weights - first).max() > 1e-4  # it did train
        runs.append([a.tobytes() for l in net.layers for a in (l.weights, l.output, l.delta)])
    assert runs[0] == runs[1]


def test_backward_gradient_scratch_is_the_networks_not_the_layers(monkeypatch):
    """dU (a^2 N C floats, 4x the weights for F(4,3)) lives in net.workspace, which
    all layers share: after training steps no layer holds an array that size
    beyond U itself, and the workspace holds the largest layer's."""
    body = conv(16, 3, 1, 1, act="leaky") + conv(32, 3, 1, 1, act="leaky")
    net = winograd_net(monkeypatch, body, 4, h=8, w=8, c=8, batch=2)
    x = np.random.default_rng(0).normal(size=(2, 8 * 64)).astype(np.float32)
    for _ in range(2):
        net.forward(x, train=True)
        net.layers[-1].delta[:] = 1
        net.backward()
    for l in net.layers:
        u_size = 36 * l.n * l.c
        held = [v for v in vars(l).values() if isinstance(v, np.ndarray) and v.size >= u_size]
        assert [id(v) for v in held] == [id(l.winograd_weights)], [v.shape for v in held]
    assert net.workspace.size >= max(winograd.gradient_floats(l, 4) for l in net.layers)


@pytest.mark.parametrize(
    "c, side, column_bytes, layout",
    [(1, 8, 64 << 20, "cnhw"), (16, 6, 64 << 20, "transposed"), (8, 12, 4096, "band")],
)
@pytest.mark.parametrize("tile", [2, 4])
def test_measured_backward_after_a_winograd_inference(
    monkeypatch, c, side, column_bytes, layout, tile
):
    """A layer whose first pass was inference on a Winograd tile times both
    backwards at its first training step, on each columns layout: the columns'
    backward makes the form of W it reads (CNHW reads l.weights as it is: it
    had crashed on the reordered filters whenever the timing picked Winograd),
    and the step's gradients equal those of a net that took the columns throughout."""
    monkeypatch.setattr(conv_module, "COLUMN_BYTES", column_bytes)
    body = conv(4, 3, 1, 1, act="leaky") + "[connected]\noutput=3\nactivation=linear\n[softmax]\n"
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, c * side * side)).astype(np.float32)
    truth = np.eye(3, dtype=np.float32)[[0, 2, 1, 0]]
    grads = []
    for chosen in (tile, 0):
        monkeypatch.setattr(conv_module, "measure", lambda *args, chosen=chosen: chosen)
        net = build(body, h=side, w=side, c=c, batch=4, seed=4)
        l = net.layers[0]
        assert {"cnhw": l.cnhw, "transposed": l.transposed, "band": bool(l.band)}[layout]
        net.forward(x, train=False)
        assert l.winograd == chosen and l.winograd_backward is None
        net.forward(x, truth, train=True)
        net.backward()
        assert l.winograd_backward in ((True, False) if chosen else (None,))
        grads.append([a.copy() for a in (l.weight_updates, l.bias_updates, l.delta)])
    for by_tile, by_columns in zip(*grads, strict=True):
        np.testing.assert_allclose(by_tile, by_columns, rtol=1e-4, atol=1e-5)
