"""[l2norm]: unit-length channel vectors at each position (l2norm_layer.c)."""

import textwrap

import numpy as np
import pytest

import minidark
from minidark.testing import format_results, gradcheck


def build(tmp_path, text, **kwargs):
    path = tmp_path / "net.cfg"
    path.write_text(textwrap.dedent(text))
    return minidark.load_network(str(path), **kwargs)


IMAGE = "[net]\nbatch=2\nheight=3\nwidth=5\nchannels=4\n\n[l2norm]\n"


def test_shape_is_the_inputs(tmp_path):
    l = build(tmp_path, IMAGE).layers[0]
    assert (l.out_w, l.out_h, l.out_c, l.outputs, l.inputs) == (5, 3, 4, 60, 60)
    flat = build(tmp_path, "[net]\ninputs=7\n[l2norm]\n").layers[0]
    assert (flat.out_w, flat.out_h, flat.out_c, flat.outputs) == (1, 1, 7, 7)


def test_forward_matches_darknets_loop(tmp_path):
    net = build(tmp_path, IMAGE)
    x = np.random.default_rng(0).normal(size=(2, 60)).astype(np.float32)
    out = net.forward(x)
    expected = x.astype(np.float64).reshape(2, 4, 15)
    for b in range(2):  # l2normalize_cpu
        for i in range(15):
            expected[b, :, i] /= np.sqrt(np.sum(expected[b, :, i] ** 2))
    np.testing.assert_allclose(out, expected.reshape(2, 60), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.reshape(2, 4, 15), axis=1), 1, rtol=1e-6)


def test_zero_vector_gives_zero_not_nan(tmp_path):
    net = build(tmp_path, IMAGE)
    x = np.zeros((2, 60), np.float32)
    x[0, 0] = 3.0
    out = net.forward(x)
    assert np.isfinite(out).all()
    assert out[0, 0] == 1.0 and out[1].sum() == 0


@pytest.mark.parametrize("text", [IMAGE, "[net]\nbatch=2\ninputs=7\n[l2norm]\n"])
def test_exact_gradient(tmp_path, text):
    # darknet passes delta straight through; minidark's backward is the exact Jacobian
    results = gradcheck(build(tmp_path, text))
    assert all(r.passed for r in results), format_results(results)


def test_backward_is_the_projection_and_accumulates(tmp_path):
    net = build(tmp_path, "[net]\ninputs=3\n[l2norm]\n")
    l = net.layers[0]
    x = np.array([[3.0, 0.0, 4.0]], np.float32)
    net.forward(x)
    l.delta[...] = [[1.0, 2.0, 0.0]]
    target = np.ones((1, 3), np.float32)
    net.input, net.delta = x, target
    l.backward(l, net)
    y = x / 5
    expected = 1 + (l.delta - y * (y * l.delta).sum()) / 5
    np.testing.assert_allclose(target, expected, rtol=1e-6)
