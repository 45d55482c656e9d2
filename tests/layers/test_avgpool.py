"""[avgpool]: global average, shape, forward by hand, gradient check."""

import numpy as np
import pytest

from minidark.cfg import parse_network, read_cfg_text
from minidark.testing import format_results, gradcheck


def build(h=7, w=5, c=3, batch=2):
    text = f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n[avg]\n"
    return parse_network(read_cfg_text(text), verbose=False, seed=0)


@pytest.mark.parametrize("h,w,c", [(7, 7, 3), (7, 5, 1), (1, 1, 4), (13, 3, 2)])
def test_shape_and_forward(h, w, c):
    net = build(h, w, c)
    l = net.layers[0]
    assert (l.out_h, l.out_w, l.out_c, l.outputs) == (1, 1, c, c)
    x = np.random.default_rng(0).normal(size=(2, c, h, w)).astype(np.float32)
    out = net.forward(x)
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_backward_spreads_and_accumulates():
    net = build(2, 2, 1, batch=1)
    l = net.layers[0]
    x = np.array([[1, 2, 3, 4]], np.float32)
    net.forward(x, train=True)
    assert l.output[0, 0] == 2.5
    l.delta[:] = 8
    dx = np.ones((1, 4), np.float32)
    net.input, net.delta = x, dx
    l.backward(l, net)
    np.testing.assert_array_equal(dx, [[3, 3, 3, 3]])


def test_gradcheck():
    results = gradcheck(build(), tolerance=1e-7)
    assert all(r.passed for r in results), format_results(results)
