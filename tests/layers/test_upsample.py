"""[upsample]: nearest-neighbour upsampling and reverse sum-pooling (upsample_layer.c)."""

import textwrap

import numpy as np
import pytest

import minidark
from minidark.errors import ConfigError
from minidark.testing import format_results, gradcheck


def build(tmp_path, text, **kwargs):
    path = tmp_path / "net.cfg"
    path.write_text(textwrap.dedent(text))
    return minidark.load_network(str(path), **kwargs)


def cfg(stride, scale=1.0, h=5, w=7, c=3, batch=2):
    return (
        f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n"
        f"[upsample]\nstride={stride}\nscale={scale}\n"
    )


def naive_upsample(x, w, h, c, batch, stride, forward, scale, out):
    """darknet's upsample_cpu on flat arrays (forward: out = scale*in; else in += scale*out)."""
    for b in range(batch):
        for k in range(c):
            for j in range(h * stride):
                for i in range(w * stride):
                    in_index = b * w * h * c + k * w * h + (j // stride) * w + i // stride
                    out_index = (
                        b * w * h * c * stride * stride
                        + k * w * h * stride * stride
                        + j * w * stride
                        + i
                    )
                    if forward:
                        out[out_index] = scale * x[in_index]
                    else:
                        x[in_index] += scale * out[out_index]


@pytest.mark.parametrize(
    "stride, h, w, out",
    [
        (2, 5, 7, (14, 10)),
        (3, 5, 7, (21, 15)),
        (1, 5, 7, (7, 5)),
        (-2, 5, 7, (3, 2)),
        (-3, 5, 7, (2, 1)),
        (-2, 8, 6, (3, 4)),
    ],
)
def test_output_size(tmp_path, stride, h, w, out):
    l = build(tmp_path, cfg(stride, h=h, w=w)).layers[0]
    assert (l.out_w, l.out_h, l.out_c) == out + (3,)
    assert (l.stride, l.reverse) == (abs(stride), stride < 0)
    assert l.outputs == out[0] * out[1] * 3 and l.output.shape == (2, l.outputs)


def test_default_stride_is_2_and_scale_1(tmp_path):
    l = build(tmp_path, "[net]\nheight=3\nwidth=3\nchannels=1\n[upsample]\n").layers[0]
    assert (l.stride, l.scale, l.out_w, l.out_h) == (2, 1.0, 6, 6)


def test_forward_matches_darknets_loop(tmp_path):
    net = build(tmp_path, cfg(3, scale=0.5))
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    expected = np.zeros(net.layers[0].outputs * 2, np.float32)
    naive_upsample(x.reshape(-1), 7, 5, 3, 2, 3, True, 0.5, expected)
    np.testing.assert_array_equal(net.forward(x).reshape(-1), expected)


def test_reverse_forward_is_darknets_sum_pool(tmp_path):
    # divisible sizes, where darknet's reverse indexing is well defined
    net = build(tmp_path, cfg(-2, scale=3.0, h=6, w=4))
    x = np.random.default_rng(1).normal(size=(2, net.inputs)).astype(np.float32)
    expected = np.zeros(net.layers[0].outputs * 2, np.float32)
    naive_upsample(expected, 2, 3, 3, 2, 2, False, 3.0, x.reshape(-1))
    np.testing.assert_allclose(net.forward(x).reshape(-1), expected, rtol=1e-5, atol=1e-5)


def test_reverse_with_odd_sizes_drops_the_remainder(tmp_path):
    net = build(tmp_path, cfg(-2, h=5, w=7, c=1, batch=1))
    x = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
    out = net.forward(x).reshape(2, 3)
    expected = x[0, 0, :4, :6].reshape(2, 2, 3, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("stride, scale", [(2, 1.0), (3, 0.5), (-2, 1.0), (-2, 2.5), (-3, 1.0)])
def test_gradcheck(tmp_path, stride, scale):
    results = gradcheck(build(tmp_path, cfg(stride, scale)))
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("stride", [2, -2])
def test_backward_accumulates_into_net_delta(tmp_path, stride):
    # darknet's reverse mode overwrote net.delta; both modes must add
    net = build(tmp_path, cfg(stride, scale=2.0, h=4, w=6, c=1, batch=1))
    l = net.layers[0]
    rng = np.random.default_rng(3)
    l.delta[...] = rng.normal(size=l.delta.shape)
    fresh = np.zeros((1, l.inputs), np.float32)
    net.input, net.delta = net.input_buffer, fresh
    l.backward(l, net)
    twice = np.full((1, l.inputs), 5.0, np.float32)
    net.delta = twice
    l.backward(l, net)
    np.testing.assert_allclose(twice, 5.0 + fresh, rtol=1e-6)
    if stride > 0:
        expected = 2.0 * l.delta.reshape(4, 2, 6, 2).sum(axis=(1, 3))
    else:
        expected = 2.0 * np.repeat(np.repeat(l.delta.reshape(2, 3), 2, 0), 2, 1)
    np.testing.assert_allclose(fresh.reshape(4, 6), expected, rtol=1e-6)


def test_bad_strides_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nonzero") as error:
        build(tmp_path, cfg(0))
    assert error.value.key == "stride"
    with pytest.raises(ConfigError, match="smaller than") as error:
        build(tmp_path, cfg(-8))
    assert error.value.key == "stride"
