"""[shortcut]: residual addition with darknet's differing-shape rule (shortcut_layer.c)."""

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


def naive_shortcut(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    """darknet's shortcut_cpu, loop for loop: out = s1*out + s2*add on the overlap."""
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    add, out = add.reshape(-1), out.reshape(-1)
    for b in range(batch):
        for k in range(min(c1, c2)):
            for j in range(min(h1, h2)):
                for i in range(min(w1, w2)):
                    o = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
                    a = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
                    out[o] = s1 * out[o] + s2 * add[a]


# (cfg between the input and the shortcut, from=, expected source and output shapes)
SHAPES = {
    "same": ("[activation]\nactivation=leaky\n", -2, (5, 7, 3), (5, 7, 3)),
    "source larger": ("[upsample]\nstride=-2\n", -2, (5, 7, 3), (2, 3, 3)),
    "source smaller": ("[upsample]\nstride=2\n", -2, (5, 7, 3), (10, 14, 3)),
    "odd ratio 5x7 -> 3x4": (
        "[crop]\ncrop_height=4\ncrop_width=3\nnoadjust=1\n",
        -2,
        (5, 7, 3),
        (3, 4, 3),
    ),
    "more channels": ("[route]\nlayers=-1,-1\n", -2, (5, 7, 3), (5, 7, 6)),
    "fewer channels": ("[route]\nlayers=-1,-1\n[route]\nlayers=-2\n", -2, (5, 7, 6), (5, 7, 3)),
}


def cfg(middle, source, alpha=0.5, beta=2.0, activation="linear", h=7, w=5):
    return (
        f"[net]\nbatch=2\nheight={h}\nwidth={w}\nchannels=3\n\n"
        f"[activation]\nactivation=tanh\n\n{middle}\n"
        f"[shortcut]\nfrom={source}\nalpha={alpha}\nbeta={beta}\nactivation={activation}\n"
    )


@pytest.mark.parametrize("case", SHAPES)
def test_output_shape_is_the_previous_layers(tmp_path, case):
    middle, source, from_shape, out_shape = SHAPES[case]
    net = build(tmp_path, cfg(middle, source))
    l = net.layers[-1]
    assert (l.w, l.h, l.c) == from_shape  # darknet prints the source's size
    assert (l.out_w, l.out_h, l.out_c) == out_shape
    assert l.outputs == l.inputs == np.prod(out_shape)
    assert l.input_layers == (len(net.layers) + source - 1,)


@pytest.mark.parametrize("case", SHAPES)
def test_forward_matches_darknets_loop(tmp_path, case):
    middle, source, _, _ = SHAPES[case]
    net = build(tmp_path, cfg(middle, source, alpha=0.5, beta=2.0))
    x = np.random.default_rng(2).uniform(-1, 1, (2, net.inputs)).astype(np.float32)
    net.forward(x)
    l, previous = net.layers[-1], net.layers[-2]
    expected = previous.output.copy()
    naive_shortcut(
        2,
        l.w,
        l.h,
        l.c,
        net.layers[l.input_layers[0]].output,
        l.out_w,
        l.out_h,
        l.out_c,
        0.5,
        2.0,
        expected,
    )
    np.testing.assert_allclose(l.output, expected, rtol=1e-6, atol=1e-7)


def test_activation_and_default_alpha_beta(tmp_path):
    net = build(
        tmp_path,
        """
        [net]
        height=3
        width=3
        channels=2
        [activation]
        activation=linear
        [activation]
        activation=linear
        [shortcut]
        from=0
        activation=relu
        """,
    )
    l = net.layers[2]
    assert (l.alpha, l.beta, l.index_from) == (1.0, 1.0, 0)
    x = np.linspace(-1, 1, 18, dtype=np.float32)[None]
    np.testing.assert_allclose(net.forward(x), np.maximum(2 * x, 0), rtol=1e-6)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("activation", ["linear", "leaky", "tanh"])
def test_gradcheck_input_and_source(tmp_path, case, activation):
    middle, source, _, _ = SHAPES[case]
    net = build(tmp_path, cfg(middle, source, activation=activation))
    results = gradcheck(net, layer=len(net.layers) - 1)
    assert len(results) == 2
    assert all(r.passed for r in results), format_results(results)


def test_backward_accumulates_into_both_deltas(tmp_path):
    net = build(tmp_path, cfg("[activation]\n", -2, alpha=3.0, beta=0.5))
    l = net.layers[-1]
    source, previous = net.layers[0], net.layers[1]
    source.delta[...] = 1.0
    previous.delta[...] = 2.0
    l.delta[...] = 4.0
    net.input, net.delta = previous.output, previous.delta
    l.backward(l, net)
    np.testing.assert_array_equal(previous.delta, 2.0 + 3.0 * 4.0)
    np.testing.assert_array_equal(source.delta, 1.0 + 0.5 * 4.0)


@pytest.mark.parametrize("source, message", [("-9", "earlier layers"), ("3", "earlier layers")])
def test_bad_from_is_a_config_error(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message) as error:
        build(tmp_path, cfg("[activation]\n", source))
    assert error.value.key == "from"


def test_mismatched_ratios_are_a_config_error(tmp_path):
    # source 6x6, this layer 3x6: width ratio 2, height ratio 1 (darknet asserts)
    text = """
        [net]
        height=6
        width=6
        channels=1
        [activation]
        [crop]
        crop_height=6
        crop_width=3
        [shortcut]
        from=-2
        """
    with pytest.raises(ConfigError, match="ratios differ") as error:
        build(tmp_path, text)
    assert error.value.key == "from"
