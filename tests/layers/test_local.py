"""[local]: locally connected layer, unshared weights per output location (local_layer.c)."""

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


def cfg(filters=2, size=3, stride=1, pad=1, activation="linear", h=5, w=7, c=3, batch=2):
    return (
        f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n"
        f"[local]\nfilters={filters}\nsize={size}\nstride={stride}\npad={pad}\n"
        f"activation={activation}\n"
    )


def naive_local(l, x):
    """darknet's forward: per image and location, W[loc] (n x c*k*k) @ im2col column."""
    k, s, p = l.size, l.stride, l.padding
    x = x.reshape(l.batch, l.c, l.h, l.w)
    out = np.zeros((l.batch, l.n, l.out_h, l.out_w))
    for b in range(l.batch):
        for oy in range(l.out_h):
            for ox in range(l.out_w):
                column = np.zeros(l.c * k * k)
                for c in range(l.c):
                    for ky in range(k):
                        for kx in range(k):
                            y, xx = oy * s + ky - p, ox * s + kx - p
                            if 0 <= y < l.h and 0 <= xx < l.w:
                                column[(c * k + ky) * k + kx] = x[b, c, y, xx]
                loc = oy * l.out_w + ox
                out[b, :, oy, ox] = l.weights[loc] @ column
    return out.reshape(l.batch, -1) + l.biases


@pytest.mark.parametrize(
    "size, stride, pad, h, w, out",
    [
        (3, 1, 1, 5, 7, (7, 5)),  # darknet: pad -> (h-1)/s+1
        (3, 2, 1, 5, 7, (4, 3)),
        (3, 2, 0, 7, 7, (3, 3)),  # no pad -> (h-size)/s+1
        (3, 1, 0, 5, 7, (5, 3)),
        (2, 2, 1, 5, 7, (4, 3)),  # even size keeps darknet's size
        (1, 1, 1, 5, 7, (7, 5)),
        (5, 3, 1, 7, 7, (3, 3)),
    ],
)
def test_output_size_is_darknets(tmp_path, size, stride, pad, h, w, out):
    l = build(tmp_path, cfg(filters=4, size=size, stride=stride, pad=pad, h=h, w=w)).layers[0]
    assert (l.out_w, l.out_h, l.out_c) == out + (4,)
    locations = out[0] * out[1]
    assert l.outputs == 4 * locations
    assert l.weights.shape == (locations, 4, 3 * size * size)
    assert l.biases.shape == (l.outputs,)
    assert l.saved == ("biases", "weights")


def test_defaults(tmp_path):
    l = build(tmp_path, "[net]\nheight=4\nwidth=4\nchannels=2\n[local]\n").layers[0]
    assert (l.n, l.size, l.stride, l.pad, l.activation) == (1, 1, 1, 0, "logistic")


def test_every_location_is_initialised(tmp_path):
    # darknet filled only the first location's weights
    l = build(tmp_path, cfg(filters=3, h=6, w=6), seed=0).layers[0]
    scale = np.sqrt(2.0 / (3 * 3 * 3))
    assert np.all(np.abs(l.weights) <= scale)
    assert np.all(np.abs(l.weights).reshape(l.locations, -1).max(axis=1) > scale / 2)
    assert not np.allclose(l.weights[0], l.weights[1])


@pytest.mark.parametrize(
    "size, stride, pad", [(3, 1, 1), (3, 2, 1), (3, 2, 0), (2, 2, 1), (5, 2, 1), (1, 1, 0)]
)
def test_forward_matches_naive_loop(tmp_path, size, stride, pad):
    net = build(tmp_path, cfg(filters=3, size=size, stride=stride, pad=pad), seed=1)
    l = net.layers[0]
    l.biases[...] = np.random.default_rng(2).normal(size=l.biases.shape)
    x = np.random.default_rng(3).normal(size=(2, net.inputs)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), naive_local(l, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "size, stride, pad, activation",
    [
        (3, 1, 1, "tanh"),
        (3, 2, 1, "leaky"),
        (2, 2, 1, "linear"),
        (3, 2, 0, "logistic"),
    ],
)
def test_gradcheck_input_weights_biases(tmp_path, size, stride, pad, activation):
    net = build(tmp_path, cfg(size=size, stride=stride, pad=pad, activation=activation))
    results = gradcheck(net)
    assert [r.array for r in results] == ["input", "biases", "weights"]
    assert all(r.passed for r in results), format_results(results)


def test_update_is_darknets_sgd(tmp_path):
    net = build(
        tmp_path,
        cfg(batch=2).replace("[net]", "[net]\nlearning_rate=0.1\nmomentum=0.9\ndecay=0.01"),
        seed=0,
    )
    l = net.layers[0]
    w0, b0 = l.weights.copy(), l.biases.copy()
    l.weight_updates[...] = 1.0
    l.bias_updates[...] = 2.0
    net.update()
    np.testing.assert_allclose(l.biases, b0 + 0.1 / 2 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(l.bias_updates, 0.9 * 2.0, rtol=1e-6)
    decayed = 1.0 - 0.01 * 2 * w0
    np.testing.assert_allclose(l.weights, w0 + 0.1 / 2 * decayed, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(l.weight_updates, 0.9 * decayed, rtol=1e-5, atol=1e-7)


def test_weights_round_trip(tmp_path):
    net = build(tmp_path, cfg(), seed=0)
    path = str(tmp_path / "local.weights")
    minidark.save_weights(net, path)
    other = build(tmp_path, cfg(), seed=1)
    minidark.load_weights(other, path)
    np.testing.assert_array_equal(other.layers[0].weights, net.layers[0].weights)
    import os

    assert os.path.getsize(path) == 20 + 4 * net.layers[0].params


def test_window_larger_than_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not fit") as error:
        build(tmp_path, cfg(size=9, pad=0))
    assert error.value.key == "size"
