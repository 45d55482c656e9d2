"""[crop]: random crop and flip in training, centre crop at inference (crop_layer.c)."""

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


def cfg(crop_h=3, crop_w=4, flip=0, noadjust=0, h=5, w=7, c=2, batch=2):
    return (
        f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n"
        f"[crop]\ncrop_height={crop_h}\ncrop_width={crop_w}\nflip={flip}\n"
        f"noadjust={noadjust}\nangle=7\nsaturation=1.5\nexposure=1.5\nshift=.2\n"
    )


def naive_crop(l, x, flip, dh, dw, train):
    """darknet's forward_crop_layer loop, given its random draws."""
    scale, trans = (1, 0) if l.noadjust else (2, -1)
    if not train:
        flip, dh, dw = 0, (l.h - l.out_h) // 2, (l.w - l.out_w) // 2
    x = x.reshape(-1)
    out = []
    for b in range(l.batch):
        for c in range(l.c):
            for i in range(l.out_h):
                for j in range(l.out_w):
                    col = l.w - dw - j - 1 if flip else j + dw
                    row = i + dh
                    out.append(x[col + l.w * (row + l.h * (c + l.c * b))] * scale + trans)
    return np.array(out, np.float32).reshape(l.batch, -1)


@pytest.mark.parametrize(
    "crop_h, crop_w, h, w", [(3, 4, 5, 7), (5, 7, 5, 7), (1, 1, 5, 7), (224, 224, 256, 256)]
)
def test_output_size_and_defaults(tmp_path, crop_h, crop_w, h, w):
    l = build(tmp_path, cfg(crop_h, crop_w, h=h, w=w, batch=1)).layers[0]
    assert (l.out_w, l.out_h, l.out_c) == (crop_w, crop_h, 2)
    assert l.outputs == crop_w * crop_h * 2 and l.inputs == h * w * 2
    assert l.scale == crop_h / h


def test_darknet_defaults(tmp_path):
    l = build(tmp_path, "[net]\nheight=4\nwidth=4\nchannels=1\n[crop]\n").layers[0]
    assert (l.out_h, l.out_w, l.flip, l.noadjust) == (1, 1, False, False)
    assert (l.angle, l.saturation, l.exposure, l.shift) == (0, 1, 1, 0)


def test_inference_takes_the_centre_and_adjusts_to_minus1_1(tmp_path):
    net = build(tmp_path, cfg(flip=1))
    x = np.random.default_rng(0).uniform(0, 1, (2, net.inputs)).astype(np.float32)
    l = net.layers[0]
    out = net.forward(x, train=False)
    np.testing.assert_allclose(out, naive_crop(l, x, 0, 0, 0, train=False), rtol=1e-6)
    centre = x.reshape(2, 2, 5, 7)[:, :, 1:4, 1:5]
    np.testing.assert_allclose(out.reshape(centre.shape), centre * 2 - 1, rtol=1e-6)


def test_noadjust_keeps_values(tmp_path):
    net = build(tmp_path, cfg(noadjust=1))
    x = np.random.default_rng(1).uniform(0, 1, (2, net.inputs)).astype(np.float32)
    l = net.layers[0]
    np.testing.assert_array_equal(net.forward(x), naive_crop(l, x, 0, 0, 0, train=False))


def test_training_draws_one_window_and_flip_per_batch_from_net_rng(tmp_path):
    net = build(tmp_path, cfg(crop_h=2, crop_w=3, flip=1))
    l = net.layers[0]
    x = np.random.default_rng(2).uniform(0, 1, (2, net.inputs)).astype(np.float32)
    seen = set()
    for step in range(60):
        net.seed(step)
        draws = np.random.default_rng(step)  # the same stream: flip, dh, dw
        flip = int(draws.integers(0, 2))
        dh, dw = int(draws.integers(0, 5 - 2 + 1)), int(draws.integers(0, 7 - 3 + 1))
        out = net.forward(x, train=True)
        assert (l.flipped, l.dh, l.dw) == (bool(flip), dh, dw)
        np.testing.assert_allclose(out, naive_crop(l, x, flip, dh, dw, train=True), rtol=1e-6)
        seen.add((flip, dh, dw))
    assert {f for f, _, _ in seen} == {0, 1} and len(seen) > 10


def test_without_flip_no_flip_is_drawn(tmp_path):
    net = build(tmp_path, cfg(crop_h=2, crop_w=3, flip=0))
    net.seed(5)
    draws = np.random.default_rng(5)
    net.forward(np.zeros((2, net.inputs), np.float32), train=True)
    l = net.layers[0]
    assert (l.flipped, l.dh, l.dw) == (False, draws.integers(0, 4), draws.integers(0, 5))


@pytest.mark.parametrize(
    "flip, noadjust, train", [(0, 0, True), (1, 0, True), (1, 1, True), (0, 0, False)]
)
def test_gradcheck(tmp_path, flip, noadjust, train):
    # darknet's crop has no backward; minidark scatters the delta back (exact gradient)
    for seed in range(3):  # different windows and flips
        net = build(tmp_path, cfg(flip=flip, noadjust=noadjust), seed=seed)
        results = gradcheck(net, train=train, seed=seed)
        assert all(r.passed for r in results), format_results(results)


def test_backward_scatters_twice_the_delta_into_the_window(tmp_path):
    net = build(tmp_path, cfg(crop_h=2, crop_w=3, flip=1, batch=1, c=1))
    l = net.layers[0]
    net.seed(11)
    net.forward(np.zeros((1, net.inputs), np.float32), train=True)
    l.delta[...] = np.arange(1, 7, dtype=np.float32)
    target = np.ones((1, net.inputs), np.float32)
    net.input, net.delta = net.input_buffer, target
    l.backward(l, net)
    expected = np.ones((5, 7), np.float32)
    for i in range(2):
        for j in range(3):
            col = 7 - l.dw - j - 1 if l.flipped else j + l.dw
            expected[i + l.dh, col] += 2 * l.delta[0, i * 3 + j]
    np.testing.assert_array_equal(target.reshape(5, 7), expected)


@pytest.mark.parametrize("key, value", [("crop_height", 6), ("crop_width", 8), ("crop_height", 0)])
def test_window_larger_than_input_is_a_config_error(tmp_path, key, value):
    text = cfg().replace(f"{key}=", f"{key}={value}\n#", 1)
    with pytest.raises(ConfigError, match=key) as error:
        build(tmp_path, text)
    assert error.value.key == key


def test_needs_an_image_input(tmp_path):
    with pytest.raises(ConfigError, match="image"):
        build(tmp_path, "[net]\ninputs=10\n[crop]\n")
