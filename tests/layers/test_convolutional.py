"""[convolutional]: output sizes, forward vs a naive loop, gradient checks
(plain, strided, padded, grouped, 1x1, with batch norm), darknet's 1x1 bug fixed."""

import numpy as np
import pytest

from minidark import ConfigError
from minidark.cfg import parse_network, read_cfg_text
from minidark.testing import format_results, gradcheck


@pytest.fixture(params=["auto", "nhwc", "cnhw"])
def layout(request, monkeypatch):
    """Run a test with the per-layer choice of column layout and with each one forced."""
    import minidark.kernels.conv as module

    monkeypatch.setattr(module, "LAYOUT", request.param)
    return request.param


def build(body, h=7, w=7, c=3, batch=2, seed=0):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n{body}"
    return parse_network(read_cfg_text(text), verbose=False, seed=seed)


def conv(filters=4, size=3, stride=1, pad=None, padding=None, groups=1, act="linear", bn=0):
    lines = [
        "[convolutional]",
        f"filters={filters}",
        f"size={size}",
        f"stride={stride}",
        f"groups={groups}",
        f"activation={act}",
        f"batch_normalize={bn}",
    ]
    if pad is not None:
        lines.append(f"pad={pad}")
    if padding is not None:
        lines.append(f"padding={padding}")
    return "\n".join(lines) + "\n"


def naive_conv(x, weights, biases, stride, pad, groups):
    """Direct definition, float64: out[b,n,oy,ox] = sum w[n,c,ky,kx] x[b,g*cg+c,oy*s+ky-p,...]."""
    b, c, h, w = x.shape
    n, cg, k, _ = weights.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xp = np.zeros((b, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + w] = x
    out = np.zeros((b, n, oh, ow))
    ng = n // groups
    for f in range(n):
        g = f // ng
        for oy in range(oh):
            for ox in range(ow):
                win = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    oy * stride : oy * stride + k,
                    ox * stride : ox * stride + k,
                ]
                out[:, f, oy, ox] = np.einsum("bcij,cij->b", win, weights[f]) + biases[f]
    return out


@pytest.mark.parametrize(
    "h,w,size,stride,pad,padding,out",
    [
        (7, 7, 3, 2, 0, None, (3, 3)),
        (7, 7, 3, 2, 1, None, (4, 4)),
        (7, 7, 3, 1, 1, None, (7, 7)),
        (7, 5, 3, 2, None, 2, (5, 4)),
        (7, 7, 1, 2, 0, None, (4, 4)),
        (8, 8, 5, 1, 1, None, (8, 8)),
        (6, 9, 4, 3, None, 1, (2, 3)),
        (7, 7, 7, 1, 0, None, (1, 1)),
        (5, 5, 2, 2, 1, None, (3, 3)),
    ],
)
def test_output_size(h, w, size, stride, pad, padding, out):
    net = build(conv(filters=5, size=size, stride=stride, pad=pad, padding=padding), h=h, w=w)
    l = net.layers[0]
    assert (l.out_h, l.out_w, l.out_c) == out + (5,)
    assert l.outputs == out[0] * out[1] * 5 and l.output.shape == (2, l.outputs)
    assert l.weights.shape == (5, 3, size, size)


def test_defaults_are_darknets():
    l = build("[conv]\n", c=2).layers[0]
    assert (l.n, l.size, l.stride, l.pad, l.groups) == (1, 1, 1, 0, 1)
    assert l.activation == "logistic" and not l.batch_normalize
    assert l.saved == ("biases", "weights")
    l = build("[conv]\nfilters=6\nsize=3\npad=1\npadding=3\nbatch_normalize=1\n").layers[0]
    assert l.pad == 1  # pad=1 means size/2 and overrides padding
    assert l.saved == ("biases", "scales", "rolling_mean", "rolling_variance", "weights")


def test_init_scale():
    l = build(conv(filters=64, size=3), c=8).layers[0]
    assert abs(l.weights.std() - np.sqrt(2 / (9 * 8))) < 0.1 * np.sqrt(2 / (9 * 8))
    assert not l.biases.any()


@pytest.mark.parametrize(
    "bad", [conv(filters=0), conv(groups=2), conv(size=9), conv(stride=0), conv(padding=-1)]
)
def test_bad_options_raise(bad):
    with pytest.raises(ConfigError):
        build(bad)


@pytest.mark.parametrize(
    "size,stride,pad,groups,c,filters",
    [
        (3, 1, 1, 1, 3, 4),
        (3, 2, 0, 1, 3, 4),
        (3, 2, 1, 1, 2, 3),
        (5, 1, 2, 1, 1, 6),
        (1, 1, 0, 1, 3, 5),
        (1, 2, 0, 1, 3, 2),
        (1, 1, 1, 1, 2, 2),
        (3, 1, 1, 2, 4, 6),
        (3, 2, 1, 4, 4, 4),
        (4, 3, 2, 1, 2, 3),
    ],
)
def test_forward_matches_naive(size, stride, pad, groups, c, filters, layout):
    net = build(conv(filters, size, stride, padding=pad, groups=groups), c=c, batch=3)
    l = net.layers[0]
    assert l.cnhw == (layout == "cnhw") or layout == "auto"
    rng = np.random.default_rng(1)
    l.biases[:] = rng.normal(size=l.biases.shape)
    x = rng.normal(size=(3, c, 7, 7)).astype(np.float32)
    out = net.forward(x).reshape(3, filters, l.out_h, l.out_w)
    ref = naive_conv(
        x.astype(np.float64), l.weights.astype(np.float64), l.biases, stride, pad, groups
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "body",
    [
        conv(4, 3, 2, padding=1, act="leaky"),
        conv(4, 3, 1, padding=1, act="leaky"),
        conv(4, 3, 1, padding=1, act="leaky", bn=1),
    ],
)
def test_chunks_do_not_change_results(monkeypatch, layout, body):
    """A batch split into chunks of 1, 2 or 4 images (a shorter last chunk; padded
    borders zeroed by the first chunk only) gives the same output and gradients
    as one chunk, as a second layer (input gradient: col2im or, for stride 1,
    the transposed path) and as layer 0."""
    import minidark.kernels.conv as module

    results = []
    columns = 4 * 9 * (49 if "stride=1" in body else 16)  # floats per image (rows x K)
    for images in (5, 1, 2):  # backward chunk; forward's is 1, 2 or 4, and 5
        monkeypatch.setattr(module, "CHUNK_BYTES", 1 if images == 1 else 4 * columns * images)
        net = build(
            conv(4, 3, 1, pad=1, act="leaky") + body + "[connected]\noutput=3\n"
            "activation=linear\n[softmax]\n",
            c=4,
            batch=5,
            seed=3,
        )
        l = net.layers[1]
        assert l.chunk == images and l.forward_chunk == (min(5, 2 * images) if images > 1 else 1)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 4 * 49))
        truth = np.eye(3)[rng.integers(0, 3, 5)]
        net.forward(x, truth, train=True)
        net.backward()
        results.append(
            [
                a.copy()
                for l in net.layers[:2]
                for a in (l.output, l.delta, l.weight_updates, l.bias_updates)
            ]
        )
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "body",
    [
        conv(4, 3, 1, pad=1, act="leaky"),
        conv(3, 3, 2, padding=0, act="logistic"),
        conv(3, 3, 2, padding=1, act="tanh"),
        conv(2, 5, 1, padding=2, act="linear"),
        conv(6, 3, 1, pad=1, groups=3, act="leaky"),
        conv(4, 2, 3, padding=1, groups=2, act="linear"),
        conv(3, 1, 1, act="leaky"),
        conv(3, 1, 2, act="linear"),
        conv(2, 1, 1, padding=1, act="linear"),
        conv(3, 3, 1, padding=0, act="leaky"),
        conv(2, 4, 1, padding=1, act="linear"),
        conv(2, 3, 1, padding=3, act="linear"),
    ],
)
def test_gradcheck(body, layout):
    net = build(body, h=7, w=7, c=6 if "groups=3" in body else 2 if "groups=2" in body else 3)
    results = gradcheck(net, tolerance=1e-6)
    assert {r.array for r in results} == {"input", "weights", "biases"}
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_second_layer_accumulates(layout):
    """A conv after another conv: checked via net.delta of the first (accumulated)."""
    net = build(conv(3, 3, 1, pad=1, act="leaky") + conv(2, 3, 2, pad=1, act="leaky"), batch=2)
    results = gradcheck(net, layer=1, tolerance=1e-6)
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("train", [True, False])
def test_gradcheck_batch_norm(train, layout):
    """With batch_normalize the parameters after BN (biases = shift, scales) are exact;
    gradients that pass through BN's statistics (input, weights in training) carry
    darknet's backward approximation (N instead of N - 1, two epsilons), a relative
    gap of order 1/N, here N = batch * out_h * out_w = 2 * 49 = 98 (see test_batchnorm)."""
    net = build(conv(3, 3, 1, pad=1, act="leaky", bn=1))
    net.layers[0].rolling_mean[:] = [0.1, -0.2, 0.05]
    net.layers[0].rolling_variance[:] = [0.8, 1.3, 2.0]
    results = {r.array: r for r in gradcheck(net, train=train)}
    assert set(results) == {"input", "weights", "biases", "scales"}
    assert results["biases"].error < 1e-6 and results["scales"].error < 1e-6
    bound = 2 / 98 if train else 1e-6
    assert results["input"].error < bound and results["weights"].error < bound, results


def test_backward_accumulates_into_net_delta(layout):
    """darknet's 1x1 shortcut overwrote net.delta and ignored stride; minidark adds."""
    for body in (conv(3, 1, 1), conv(3, 1, 2), conv(3, 3, 1, pad=1)):
        net = build(body)
        l = net.layers[0]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, l.inputs)).astype(np.float32)
        net.forward(x, train=True)
        l.delta[:] = rng.normal(size=l.delta.shape)
        saved = l.delta.copy()
        first = np.zeros((2, l.inputs), np.float32)
        net.input, net.delta = x, first
        l.backward(l, net)
        l.delta[:] = saved
        second = np.full((2, l.inputs), 5, np.float32)
        net.input, net.delta = x, second
        net.layers[0].output[:] = net.layers[0].output  # same activation gradient
        l.backward(l, net)
        np.testing.assert_allclose(second - 5, first, rtol=1e-5, atol=1e-6)
        if l.stride == 2:  # stride-2 1x1: odd rows/columns receive nothing
            grid = first.reshape(2, 3, 7, 7)
            assert not grid[:, :, 1::2].any() and grid[:, :, ::2, ::2].any()


def test_layout_choice():
    """darknet's CNHW order for few input channels (long runs of out_w), NHWC otherwise."""
    net = build(
        conv(8, 5, 1, pad=1) + conv(16, 5, 1, pad=1) + conv(4, 3, 2, pad=1) + conv(4, 1, 1),
        h=28,
        w=28,
        c=1,
    )
    assert [l.cnhw for l in net.layers] == [True, False, False, False]
    assert [l.direct for l in net.layers] == [False, False, False, True]
    # NHWC, stride 1, one group, padding <= size - 1: input gradient by a transposed conv
    assert [l.transposed for l in net.layers] == [False, True, False, False]
    net = build(conv(4, 3, 1, padding=3) + conv(4, 3, 1, padding=1, groups=2), c=4)
    assert [l.transposed for l in net.layers] == [False, False]
