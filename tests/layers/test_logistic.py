"""[logistic]: sigmoid + binary cross-entropy loss head (logistic_layer.c)."""

import textwrap

import numpy as np
import pytest

import minidark
from minidark.testing import format_results, gradcheck


def build(tmp_path, text, **kwargs):
    path = tmp_path / "net.cfg"
    path.write_text(textwrap.dedent(text))
    return minidark.load_network(str(path), **kwargs)


IMAGE = "[net]\nbatch=2\nheight=3\nwidth=2\nchannels=4\n\n[logistic]\n"


def test_shape(tmp_path):
    l = build(tmp_path, IMAGE).layers[0]
    assert (l.out_w, l.out_h, l.out_c, l.outputs) == (2, 3, 4, 24)
    flat = build(tmp_path, "[net]\ninputs=5\n[logistic]\n").layers[0]
    assert (flat.out_w, flat.out_h, flat.out_c, flat.outputs) == (1, 1, 5, 5)


def test_forward_delta_and_cost_are_darknets(tmp_path):
    net = build(tmp_path, IMAGE)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 24)).astype(np.float32) * 3
    t = rng.uniform(0, 1, (2, 24)).astype(np.float32)
    out = net.forward(x, truth=t)
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(out, p, rtol=1e-6)
    l = net.layers[0]
    np.testing.assert_allclose(l.delta, t - p, rtol=1e-5, atol=1e-7)
    loss = -t * np.log(p) - (1 - t) * np.log(1 - p)  # logistic_x_ent_cpu
    np.testing.assert_allclose(l.loss, loss, rtol=1e-5, atol=1e-6)
    assert l.cost == pytest.approx(loss.sum(), rel=1e-5)
    assert net.cost == pytest.approx(loss.sum(), rel=1e-5)


def test_inference_has_no_cost(tmp_path):
    net = build(tmp_path, IMAGE)
    net.forward(np.zeros((2, 24), np.float32))
    assert net.layers[0].cost == 0.0
    np.testing.assert_array_equal(net.output, 0.5)


def test_saturated_sigmoid_gives_finite_loss(tmp_path):
    net = build(tmp_path, "[net]\ninputs=2\n[logistic]\n")
    net.forward(np.array([[40.0, -40.0]], np.float32), truth=np.array([[0.0, 1.0]]))
    l = net.layers[0]
    np.testing.assert_allclose(l.loss, [[40.0, 40.0]], rtol=1e-6)  # darknet: inf
    np.testing.assert_array_equal(l.delta, [[-1.0, 1.0]])


@pytest.mark.parametrize("text", [IMAGE, "[net]\nbatch=3\ninputs=5\n[logistic]\n"])
def test_gradcheck_with_cost(tmp_path, text):
    results = gradcheck(build(tmp_path, text))
    assert all(r.passed for r in results), format_results(results)


def test_backward_adds_delta(tmp_path):
    net = build(tmp_path, "[net]\ninputs=3\n[connected]\noutput=3\n[logistic]\n")
    net.forward(np.ones((1, 3), np.float32), truth=np.zeros((1, 3), np.float32))
    head, previous = net.layers[1], net.layers[0]
    previous.delta[...] = 1.0
    net.input, net.delta = previous.output, previous.delta
    head.backward(head, net)
    np.testing.assert_allclose(previous.delta, 1.0 + head.delta, rtol=1e-6)
