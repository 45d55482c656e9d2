"""[deconvolutional]: darknet's output size and pad flag, forward against a
naive scatter loop, float64 gradient checks (with batch norm: darknet's
documented gap), the (c_in, n_out, k, k) weights layout and round trip, cfg
errors. darknet's own numbers: vectors-next/m_deconv in
tests/test_darknet_reference.py."""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import format_results, gradcheck
from minidark.weights import load_weights, save_weights, weights_bytes

from conftest import net_from


def deconv(tmp_path, options, batch=2, image="height=4\nwidth=3\nchannels=2", seed=0):
    return net_from(
        tmp_path, f"[net]\nbatch={batch}\n{image}\n[deconvolutional]\n{options}\n", seed=seed
    )


def naive(x, weights, biases, stride, pad, out_h, out_w):
    batch, c, h, w = x.shape
    n, k = weights.shape[1], weights.shape[2]
    out = np.zeros((batch, n, out_h, out_w))
    for b in range(batch):
        for ci in range(c):
            for iy in range(h):
                for ix in range(w):
                    for ky in range(k):
                        for kx in range(k):
                            oy, ox = iy * stride - pad + ky, ix * stride - pad + kx
                            if 0 <= oy < out_h and 0 <= ox < out_w:
                                out[b, :, oy, ox] += weights[ci, :, ky, kx] * x[b, ci, iy, ix]
    return out + biases[None, :, None, None]


@pytest.mark.parametrize(
    "options,size",
    [
        ("filters=3\nsize=4\nstride=2\npad=1", (6, 4)),  # pad flag: padding = 4/2 = 2
        ("filters=3\nsize=4\nstride=2\npadding=1", (8, 6)),  # explicit padding
        ("filters=3\nsize=4\nstride=2\npad=1\npadding=1", (6, 4)),  # the flag wins
        ("filters=2\nsize=3\nstride=1", (6, 5)),
        ("filters=2\nsize=2\nstride=3", (11, 8)),
    ],
)
def test_output_size_is_darknets(tmp_path, options, size):
    l = deconv(tmp_path, options).layers[0]
    assert (l.out_h, l.out_w) == size  # (in - 1) * stride + size - 2 * padding
    assert l.outputs == l.out_c * size[0] * size[1] and l.output.shape == (2, l.outputs)
    assert l.weights.shape == (2, l.n, l.size, l.size)  # (c_in, n_out, k, k)


@pytest.mark.parametrize(
    "options",
    [
        "filters=3\nsize=4\nstride=2\npad=1\nactivation=linear",
        "filters=2\nsize=3\nstride=2\npadding=1\nactivation=linear",
        "filters=2\nsize=2\nstride=3\nactivation=linear",
    ],
)
def test_forward_matches_naive_scatter(tmp_path, options):
    net = deconv(tmp_path, options)
    l = net.layers[0]
    rng = np.random.default_rng(0)
    l.biases[...] = rng.normal(size=l.n)
    x = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    out = net.forward(x).reshape(2, l.n, l.out_h, l.out_w)
    want = naive(
        x.astype(np.float64),
        l.weights.astype(np.float64),
        l.biases,
        l.stride,
        l.pad,
        l.out_h,
        l.out_w,
    )
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        "filters=3\nsize=4\nstride=2\npad=1\nactivation=leaky",
        "filters=2\nsize=3\nstride=2\npadding=1\nactivation=logistic",
        "filters=2\nsize=2\nstride=3\nactivation=tanh",
        "filters=2\nsize=3\nstride=1\npad=1\nactivation=linear",
    ],
)
def test_gradcheck(tmp_path, options):
    path = tmp_path / "d.cfg"
    path.write_text(
        f"[net]\nbatch=2\nheight=4\nwidth=3\nchannels=2\n[deconvolutional]\n{options}\n"
    )
    results = gradcheck(str(path), batch=2)
    assert {r.array for r in results} >= {"input", "weights", "biases"}
    assert all(r.status == "ok" for r in results), format_results(results)


def test_gradcheck_batch_norm_has_darknets_gap_only(tmp_path):
    path = tmp_path / "d.cfg"
    path.write_text(
        "[net]\nbatch=4\nheight=4\nwidth=4\nchannels=2\n[deconvolutional]\n"
        "filters=3\nsize=4\nstride=2\npadding=1\nbatch_normalize=1\nactivation=leaky\n"
    )
    results = gradcheck(str(path), batch=4)
    assert {r.array for r in results} >= {"input", "weights", "biases", "scales"}
    assert all(r.passed for r in results), format_results(results)
    assert {r.array for r in results if r.status == "ok"} >= {"biases", "scales"}


def test_gradcheck_fails_on_a_wrong_backward(tmp_path, monkeypatch):
    from minidark.layers import deconvolutional

    original = deconvolutional.backward_deconv

    def wrong(l, net):  # a transposed weight gradient
        original(l, net)
        l.weight_updates[...] = l.weight_updates[:, :, ::-1, :]

    path = tmp_path / "d.cfg"
    path.write_text(
        "[net]\nbatch=2\nheight=4\nwidth=3\nchannels=2\n[deconvolutional]\n"
        "filters=2\nsize=3\nstride=2\nactivation=linear\n"
    )
    from minidark.cfg import parse_network_cfg

    net = parse_network_cfg(str(path), verbose=False)
    net.layers[0].backward = wrong
    results = gradcheck(net)
    assert any(r.array == "weights" and not r.passed for r in results)


def test_weights_layout_and_round_trip(tmp_path):
    options = "filters=3\nsize=4\nstride=2\npadding=1\nbatch_normalize=1"
    net = deconv(tmp_path, options, seed=1)
    l = net.layers[0]
    assert l.saved == ("biases", "scales", "rolling_mean", "rolling_variance", "weights")
    rng = np.random.default_rng(0)
    for name in l.saved:
        getattr(l, name)[...] = rng.uniform(0.5, 1.5, getattr(l, name).shape)
    save_weights(net, tmp_path / "d.weights")
    data = (tmp_path / "d.weights").read_bytes()
    floats = np.frombuffer(data[20:], "<f4")
    np.testing.assert_array_equal(floats[-l.weights.size :], l.weights.reshape(-1))  # (c, n, k, k)
    other = deconv(tmp_path, options, seed=2)
    load_weights(other, tmp_path / "d.weights")  # darknet's loader crashes here
    assert weights_bytes(other) == data


def test_darknet_initialisation_scale(tmp_path):
    l = deconv(
        tmp_path, "filters=8\nsize=4\nstride=2\npad=1", image="height=8\nwidth=8\nchannels=16"
    ).layers[0]
    ratio = l.out_h * l.out_w / (l.h * l.w)  # 0.02 N(0,1) scaled by out/in pixels
    assert l.weights.std() == pytest.approx(0.02 * ratio, rel=0.1)
    assert not l.biases.any()


@pytest.mark.parametrize(
    "options,key",
    [
        ("filters=0", "filters"),
        ("size=0", "size"),
        ("stride=0", "stride"),
        ("padding=-1", "padding"),
        ("size=1\npadding=3", "padding"),
        ("activation=nope", "activation"),
    ],
)
def test_bad_values_name_the_key(tmp_path, options, key):
    with pytest.raises(ConfigError) as info:
        deconv(tmp_path, options)
    assert key in str(info.value)


def test_needs_an_image_input_and_alias(tmp_path):
    with pytest.raises(ConfigError):
        net_from(tmp_path, "[net]\nbatch=1\ninputs=8\n[deconvolutional]\nfilters=1\n")
    net = net_from(
        tmp_path,
        "[net]\nbatch=1\nheight=2\nwidth=2\nchannels=1\n[deconv]\nfilters=1\nsize=2\nstride=2\n",
    )
    assert net.layers[0].type == "deconvolutional" and net.layers[0].out_h == 4
