"""[dropout]: inverted dropout in place on the previous layer. Training with a
fixed mask (``l.next_rand``), the 1/(1-p) scaling, identity at inference,
buffer sharing, the backward mask, and gradient checks."""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import format_results, gradcheck, to_float64

from conftest import net_from

AFTER_CONNECTED = (
    "[net]\nbatch=2\ninputs=4\n[connected]\noutput=6\nactivation=linear\n"
    "[dropout]\nprobability={p}\n"
)


def first_layer(tmp_path, p=0.5, batch=2, inputs=6, seed=0):
    return net_from(
        tmp_path, f"[net]\nbatch={batch}\ninputs={inputs}\n[dropout]\nprobability={p}\n", seed=seed
    )


def test_shapes_and_sharing(tmp_path):
    net = net_from(tmp_path, AFTER_CONNECTED.format(p=0.25))
    conn, drop = net.layers
    assert (drop.type, drop.inputs, drop.outputs, drop.probability) == ("dropout", 6, 6, 0.25)
    assert drop.scale == pytest.approx(1 / 0.75)
    assert drop.output is conn.output and drop.delta is conn.delta  # in place, as darknet
    assert drop.saved == () and drop.update is None
    alone = first_layer(tmp_path).layers[0]
    assert alone.output.shape == (2, 6) and alone.delta.shape == (2, 6)


def test_shape_keeps_image_geometry(tmp_path):
    net = net_from(tmp_path, "[net]\nheight=2\nwidth=2\nchannels=3\n[dropout]\n")
    l = net.layers[0]
    assert (l.out_c, l.out_h, l.out_w, l.probability) == (3, 2, 2, 0.5)


@pytest.mark.parametrize("p", ["1", "-0.1", "1.5"])
def test_probability_range(tmp_path, p):
    with pytest.raises(ConfigError, match="probability") as info:
        first_layer(tmp_path, p=p)
    assert info.value.key == "probability"


def test_training_with_a_fixed_mask_scales_by_one_over_one_minus_p(tmp_path):
    net = first_layer(tmp_path, p=0.25, batch=2, inputs=4)
    l = net.layers[0]
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    rand = np.array([[0.1, 0.25, 0.9, 0.24], [0.5, 0.0, 0.2501, 0.3]], np.float32)
    l.next_rand = rand
    out = net.forward(x, train=True)
    keep = rand >= 0.25  # dropped where r < p
    np.testing.assert_allclose(out, np.where(keep, x / 0.75, 0), rtol=1e-6)
    np.testing.assert_allclose(l.mask, keep / 0.75, rtol=1e-6)
    assert l.next_rand is None  # used once
    # backward: the same mask and scale on the delta
    l.delta[...] = 1.0
    net.delta = np.full((2, 4), 2.0, np.float32)
    net.input = net.input_buffer
    l.backward(l, net)
    np.testing.assert_allclose(net.delta, 2.0 + np.where(keep, 1 / 0.75, 0), rtol=1e-6)


def test_in_place_after_connected(tmp_path):
    net = net_from(tmp_path, AFTER_CONNECTED.format(p=0.5), seed=0)
    conn, drop = net.layers
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4)).astype(np.float32)
    clean = conn.weights @ x.T
    rand = rng.uniform(size=(2, 6)).astype(np.float32)
    drop.next_rand = rand
    out = net.forward(x, train=True)
    expected = np.where(rand >= 0.5, clean.T * 2, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.shares_memory(out, conn.output)  # the connected output itself changed
    # backward through the shared delta: masked and scaled in place
    drop.delta[...] = 3.0
    net.backward()
    np.testing.assert_allclose(conn.bias_updates, np.where(rand >= 0.5, 6.0, 0).sum(0))


def test_identity_at_inference(tmp_path):
    for net in (first_layer(tmp_path, p=0.9), net_from(tmp_path, AFTER_CONNECTED.format(p=0.9))):
        x = np.random.default_rng(1).normal(size=(2, net.inputs)).astype(np.float32)
        reference = net.forward(x, train=False).copy()
        if len(net.layers) == 1:
            np.testing.assert_array_equal(reference, x)
        net.layers[-1].next_rand = np.zeros((2, 6), np.float32)  # ignored at inference
        np.testing.assert_array_equal(net.forward(x, train=False), reference)
        np.testing.assert_array_equal(net.predict(x), reference)


def test_random_masks_drop_about_p_and_keep_the_mean(tmp_path):
    net = first_layer(tmp_path, p=0.3, batch=50, inputs=400, seed=3)
    x = np.ones((50, 400), np.float32)
    out = net.forward(x, train=True).copy()
    dropped = (out == 0).mean()
    assert dropped == pytest.approx(0.3, abs=0.01)
    assert out.mean() == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps E[x]
    again = net.forward(x, train=True).copy()
    assert not np.array_equal(out, again)  # a new mask per forward
    same = first_layer(tmp_path, p=0.3, batch=50, inputs=400, seed=3).forward(x, train=True)
    np.testing.assert_array_equal(same, out)  # reproducible from the seed


def test_probability_zero_is_identity_in_training(tmp_path):
    net = first_layer(tmp_path, p=0)
    x = np.random.default_rng(2).normal(size=(2, 6)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x, train=True), x)


def test_gradcheck_training_first_layer(tmp_path):
    results = gradcheck(first_layer(tmp_path, p=0.4, batch=3, inputs=5))
    assert [r.array for r in results] == ["input"]
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_training_after_connected(tmp_path):
    results = gradcheck(net_from(tmp_path, AFTER_CONNECTED.format(p=0.5)))
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_with_fixed_mask_matches_mask(tmp_path):
    # numerical gradient of L = -sum(R * out) with a fixed mask is R * mask
    net = to_float64(first_layer(tmp_path, p=0.5, batch=2, inputs=5))
    l = net.layers[0]
    rng = np.random.default_rng(4)
    rand, R, x = rng.uniform(size=(2, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 5))

    def loss(inp):
        l.next_rand = rand
        return -(R * net.forward(inp, train=True)).sum()

    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-6
        numeric[index] = -(loss(x + step) - loss(x - step)) / 2e-6
    np.testing.assert_allclose(numeric, R * (rand >= 0.5) * 2, atol=1e-8)
    loss(x)
    l.delta[...] = R
    net.delta, net.input = np.zeros_like(x), net.input_buffer
    l.backward(l, net)
    np.testing.assert_allclose(net.delta, numeric, atol=1e-8)
