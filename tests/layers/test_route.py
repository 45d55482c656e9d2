"""[route]: channel concatenation of earlier layers (route_layer.c)."""

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


NET = """
[net]
batch=2
height=7
width=5
channels=3

[activation]
activation=tanh

[upsample]
stride=1
scale=2

[activation]
activation=leaky

[route]
layers=-3,1,-1
"""


def test_shape_concatenates_channels_and_resolves_relative_indices(tmp_path):
    net = build(tmp_path, NET)
    route = net.layers[3]
    assert route.input_layers == (0, 1, 2)
    assert (route.out_w, route.out_h, route.out_c) == (5, 7, 9)
    assert route.outputs == route.inputs == 5 * 7 * 9
    assert route.output.shape == route.delta.shape == (2, 315)


def test_forward_matches_naive_concatenation_per_batch_row(tmp_path):
    net = build(tmp_path, NET)
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 5)).astype(np.float32)
    net.forward(x)
    expected = np.empty((2, 315), np.float32)
    for b in range(2):  # darknet's copy loop
        offset = 0
        for index in (0, 1, 2):
            size = net.layers[index].outputs
            expected[b, offset : offset + size] = net.layers[index].output[b]
            offset += size
    np.testing.assert_array_equal(net.layers[3].output, expected)
    image = net.layers[3].output.reshape(2, 9, 7, 5)
    np.testing.assert_allclose(image[:, :3], np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(image[:, 3:6], 2 * np.tanh(x), rtol=1e-6)


def test_backward_adds_each_slice_into_its_source_delta(tmp_path):
    net = build(tmp_path, NET)
    route = net.layers[3]
    for index in (0, 1, 2):
        net.layers[index].delta[...] = 1.0  # earlier contributions stay
    route.delta[...] = np.arange(route.delta.size, dtype=np.float32).reshape(route.delta.shape)
    net.input, net.delta = net.layers[2].output, net.layers[2].delta
    route.backward(route, net)
    offset = 0
    for index in (0, 1, 2):
        size = net.layers[index].outputs
        np.testing.assert_array_equal(
            net.layers[index].delta, 1.0 + route.delta[:, offset : offset + size]
        )
        offset += size


def test_gradcheck_sources_in_float64(tmp_path):
    net = build(tmp_path, NET)
    results = gradcheck(net, layer=3)
    assert [r.array for r in results] == [
        "input",
        "layer 0 output",
        "layer 1 output",
        "layer 2 output",
    ]
    assert all(r.passed for r in results), format_results(results)


def test_flat_sources_concatenate(tmp_path):
    net = build(
        tmp_path,
        """
        [net]
        inputs=6
        [connected]
        output=4
        [connected]
        output=3
        [route]
        layers=-2,-1
        """,
    )
    route = net.layers[2]
    assert (route.out_w, route.out_h, route.out_c, route.outputs) == (1, 1, 7, 7)


@pytest.mark.parametrize(
    "layers, message",
    [
        ("-1,-2", "spatial sizes differ"),
        ("-5", "earlier layers"),
        ("2", "earlier layers"),
        ("0,x", "integers"),
    ],
)
def test_bad_sources_are_config_errors_naming_the_key(tmp_path, layers, message):
    with pytest.raises(ConfigError, match=message) as error:
        build(
            tmp_path,
            f"""
            [net]
            height=6
            width=6
            channels=1
            [activation]
            [upsample]
            stride=-2
            [route]
            layers={layers}
            """,
        )
    assert error.value.key == "layers"


def test_missing_layers_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="required key 'layers'"):
        build(
            tmp_path,
            """
            [net]
            height=2
            width=2
            channels=1
            [activation]
            [route]
            """,
        )
