"""[batchnorm] standalone: works on the CPU (darknet's segfaults), trains scales and
biases, saves biases after darknet's three arrays; forward by hand in train and
inference mode; gradient checks, with darknet's O(1/N) backward gap bounded."""

import numpy as np
import pytest

import minidark
from minidark.cfg import parse_network, read_cfg_text
from minidark.testing import format_results, gradcheck


def build(body="[batchnorm]\n", h=3, w=3, c=2, batch=4):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n{body}"
    return parse_network(read_cfg_text(text), verbose=False, seed=0)


def set_params(l, rng):
    l.scales[:] = rng.uniform(0.5, 1.5, l.c)
    l.biases[:] = rng.uniform(-0.1, 0.1, l.c)
    l.rolling_mean[:] = rng.uniform(-0.2, 0.2, l.c)
    l.rolling_variance[:] = rng.uniform(0.5, 1.5, l.c)


def test_shape_saved_and_flat_input():
    l = build().layers[0]
    assert (l.out_h, l.out_w, l.out_c, l.outputs) == (3, 3, 2, 18)
    assert l.saved == ("scales", "rolling_mean", "rolling_variance", "biases")
    net = build("[connected]\noutput=5\n[batchnorm]\n")
    assert (net.layers[1].c, net.layers[1].outputs) == (5, 5)


@pytest.mark.parametrize("train", [True, False])
def test_forward_by_hand(train):
    net = build()
    l = net.layers[0]
    rng = np.random.default_rng(0)
    set_params(l, rng)
    rolling = l.rolling_mean.copy(), l.rolling_variance.copy()
    x = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    out = net.forward(x, train=train).reshape(x.shape)
    if train:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3), ddof=1)  # darknet: unbiased
    else:
        mean, var = rolling
    ref = (x - mean[:, None, None]) / (np.sqrt(var) + 1e-6)[:, None, None]
    ref = ref * l.scales[:, None, None] + l.biases[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if train:
        np.testing.assert_allclose(l.rolling_mean, 0.99 * rolling[0] + 0.01 * mean, rtol=1e-5)
        np.testing.assert_allclose(l.rolling_variance, 0.99 * rolling[1] + 0.01 * var, rtol=1e-5)


def gap(batch, h, w):
    net = build(h=h, w=w, batch=batch)
    set_params(net.layers[0], np.random.default_rng(1))
    return {r.array: r.error for r in gradcheck(net, max_checks=60)}


def test_gradcheck_train_mode_with_darknets_gap():
    """darknet's BN backward differentiates var as sum/N while the forward divides by
    N - 1, and uses sqrt(var + 1e-5) where the forward has sqrt(var) + 1e-6. So the
    analytic input gradient is off by a relative O(1/N) (N = batch*h*w values per
    channel): assert the gap stays below 2/N and shrinks as N grows; it is not
    hidden by a loose tolerance. Scales and biases gradients are exact."""
    errors = {n: gap(*shape) for n, shape in ((8, (2, 2, 2)), (36, (4, 3, 3)), (200, (8, 5, 5)))}
    for n, err in errors.items():
        assert err["scales"] < 1e-7 and err["biases"] < 1e-7, (n, err)
        assert err["input"] < 2 / n, (n, err)
    assert errors[8]["input"] > errors[36]["input"] > errors[200]["input"]
    assert errors[8]["input"] > 1e-3  # the gap is real at small N


def test_gradcheck_inference_mode_is_exact():
    net = build()
    set_params(net.layers[0], np.random.default_rng(2))
    results = gradcheck(net, train=False, tolerance=1e-7)
    assert {r.array for r in results} == {"input", "scales", "biases"}
    assert all(r.passed for r in results), format_results(results)


def test_backward_accumulates_and_update_trains(tmp_path):
    net = build("[batchnorm]\n[connected]\noutput=3\nactivation=linear\n[softmax]\n")
    bn = net.layers[0]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 18)).astype(np.float32)
    truth = np.eye(3)[[0, 1, 2, 0]]
    net.forward(x, truth, train=True)
    net.backward()
    assert bn.bias_updates.any() and bn.scale_updates.any()
    before = bn.scales.copy(), bn.biases.copy()
    net.update()
    assert not np.array_equal(bn.scales, before[0]) and not np.array_equal(bn.biases, before[1])
    # net.delta accumulates (darknet overwrote it)
    bn.delta[:] = rng.normal(size=bn.delta.shape)
    dx = np.full((4, 18), 2.0, np.float32)
    net.input, net.delta = x, dx
    bn.backward(bn, net)
    assert np.allclose(dx - 2, bn.delta)
    # weights round trip keeps the learned shift
    path = tmp_path / "bn.weights"
    minidark.save_weights(net, path)
    assert path.stat().st_size == 20 + 4 * (4 * 2 + 3 + 3 * 18)
    other = build("[batchnorm]\n[connected]\noutput=3\nactivation=linear\n[softmax]\n")
    minidark.load_weights(other, path)
    for name in bn.saved:
        np.testing.assert_array_equal(getattr(other.layers[0], name), getattr(bn, name))
