"""darknet's rescale and rgbgr verbs: the first convolution changed so that the
new network on x computes what the old one did on 2x - 1 (rescale) or on x with
red and blue swapped (rgbgr); everything else in the file is unchanged.
rescale is exact only without zero padding in that convolution (padded pixels
stay 0 rather than becoming -1), hence pad=0 here; the net ends in linear
outputs so that differences are not hidden by a saturated softmax."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark
from minidark import cli
from minidark.commands.weights import rescale_inputs, swap_red_blue

from conftest import net_from, write_cfg

RGB_NET = """[net]
batch=2
height=6
width=6
channels=3
[convolutional]
batch_normalize={bn}
filters=4
size=3
stride=1
pad=0
activation=leaky
[convolutional]
filters=5
size=3
stride=2
pad=1
activation=leaky
[connected]
output=3
activation=linear
"""


def randomize(net, seed):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for name in layer.saved:
            array = getattr(layer, name)
            low = 0.5 if name in ("rolling_variance", "scales") else -1
            array[...] = rng.uniform(low, 1.5, array.shape)
    return net


def pixels(net, seed):
    """Batch of planar (c, h, w) rows in [0, 1]."""
    return np.random.default_rng(seed).uniform(0, 1, (net.batch, net.inputs)).astype(np.float32)


def red_blue_swapped(x):
    planes = x.reshape(len(x), 3, -1).copy()
    planes[:, [0, 2]] = planes[:, [2, 0]]
    return planes.reshape(len(x), -1)


def run_verb(tmp_path, verb, cfg_text, seed=0):
    """(original net, net loaded from the verb's output, stdout) for cfg_text."""
    cfg = write_cfg(tmp_path, cfg_text)
    net = randomize(net_from(tmp_path, cfg_text), seed)
    net.seen = 1234
    minidark.save_weights(net, tmp_path / "in.weights")
    status = cli.main([verb, cfg, str(tmp_path / "in.weights"), str(tmp_path / "out.weights")])
    assert status == 0
    return net, minidark.load_network(cfg, tmp_path / "out.weights")


@pytest.mark.parametrize("bn", [0, 1])
def test_rescale_takes_unit_pixels_where_the_net_took_minus_one_to_one(tmp_path, capsys, bn):
    """Under batch norm the shift goes into the rolling mean, so the function is
    kept exactly (darknet adds it to the biases there, which changes it)."""
    net, rescaled = run_verb(tmp_path, "rescale", RGB_NET.format(bn=bn))
    assert "layer 0 [convolutional] takes pixels in [0, 1]" in capsys.readouterr().out
    x = pixels(net, 1)
    np.testing.assert_allclose(rescaled.predict(x), net.predict(2 * x - 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rescaled.layers[0].weights, 2 * net.layers[0].weights)
    assert rescaled.seen == 1234  # darknet's rescale_net loads without clearing
    for name in net.layers[1].saved:  # only the first convolution changes
        np.testing.assert_array_equal(
            getattr(rescaled.layers[1], name), getattr(net.layers[1], name)
        )


@pytest.mark.parametrize("bn", [0, 1])
def test_rgbgr_takes_rgb_where_the_net_took_bgr(tmp_path, capsys, bn):
    net, swapped = run_verb(tmp_path, "rgbgr", RGB_NET.format(bn=bn), seed=2)
    assert "red and blue input channels swapped" in capsys.readouterr().out
    x = pixels(net, 3)
    np.testing.assert_allclose(swapped.predict(x), net.predict(red_blue_swapped(x)), rtol=1e-5)
    assert not np.allclose(swapped.predict(x), net.predict(x))
    np.testing.assert_array_equal(swapped.layers[0].biases, net.layers[0].biases)


def test_rgbgr_twice_gives_the_file_back(tmp_path):
    cfg = write_cfg(tmp_path, RGB_NET.format(bn=1))
    minidark.save_weights(randomize(net_from(tmp_path, RGB_NET.format(bn=1)), 4), tmp_path / "a")
    assert cli.main(["rgbgr", cfg, str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert cli.main(["rgbgr", cfg, str(tmp_path / "b"), str(tmp_path / "c")]) == 0
    assert (tmp_path / "b").read_bytes() != (tmp_path / "a").read_bytes()
    assert (tmp_path / "c").read_bytes() == (tmp_path / "a").read_bytes()


@settings(max_examples=20, deadline=None)
@given(
    scale=st.floats(0.25, 4),
    trans=st.floats(-2, 2),
    bn=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rescale_inputs_keeps_the_function_for_any_scale_and_shift(
    tmp_path_factory, scale, trans, bn, seed
):
    """darknet's rescale_weights(l, scale, trans): on x, what it did on scale (x + trans)."""
    tmp_path = tmp_path_factory.mktemp("rescale")
    net = randomize(net_from(tmp_path, RGB_NET.format(bn=int(bn))), seed)
    x = pixels(net, seed)
    expected = net.predict(np.float32(scale) * (x + np.float32(trans)))
    rescale_inputs(net.layers[0], scale, trans)
    np.testing.assert_allclose(net.predict(x), expected, rtol=1e-3, atol=1e-3)


def test_swap_red_blue_moves_channel_planes():
    class Conv:
        weights = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)

    original = Conv.weights.copy()
    swap_red_blue(Conv)
    np.testing.assert_array_equal(Conv.weights[:, 0], original[:, 2])
    np.testing.assert_array_equal(Conv.weights[:, 1], original[:, 1])
    np.testing.assert_array_equal(Conv.weights[:, 2], original[:, 0])


GRAY_NET = RGB_NET.format(bn=0).replace("channels=3", "channels=1")
NO_CONV = "[net]\nbatch=1\ninputs=4\n[connected]\noutput=2\nactivation=linear\n"


@pytest.mark.parametrize("verb", ["rescale", "rgbgr"])
@pytest.mark.parametrize(
    "cfg_text, message",
    [
        (GRAY_NET, "layer 0 [convolutional], the first one, has 1 input channels per filter"),
        (NO_CONV, "has no [convolutional] layer"),
    ],
    ids=["grayscale", "no-conv"],
)
def test_nothing_to_change_is_an_error_and_writes_nothing(
    tmp_path, capsys, verb, cfg_text, message
):
    """darknet writes the weights unchanged here; minidark says why and writes nothing."""
    cfg = write_cfg(tmp_path, cfg_text)
    minidark.save_weights(net_from(tmp_path, cfg_text), tmp_path / "in.weights")
    out = tmp_path / "out.weights"
    assert cli.main([verb, cfg, str(tmp_path / "in.weights"), str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and f"minidark {verb}" in err
    assert not Path(out).exists()
