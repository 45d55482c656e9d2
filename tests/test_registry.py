"""The layer registry: register_layer as one call and as a decorator (with
aliases), clash errors naming both registrants, did-you-mean for unknown
sections, and a user layer running in a real network."""

import numpy as np
import pytest

import minidark
from minidark.errors import ConfigError
from minidark.layer import Layer
from minidark.plugins import load_layers
from minidark.registry import get_make, layer_names, suggest, unregister_layer
from minidark.testing import format_results, gradcheck

from conftest import net_from


def make_double(options, params):
    """A user layer: output = factor * input (factor from the cfg, default 2)."""
    factor = options.float("factor", 2.0)
    l = Layer(
        type="double",
        **params.same_shape(),
        factor=factor,
    )
    l.output = np.zeros((params.batch, params.inputs), np.float32)
    l.delta = np.zeros((params.batch, params.inputs), np.float32)

    def forward(l, net):
        np.multiply(net.input.reshape(l.output.shape), l.factor, out=l.output)

    def backward(l, net):
        if net.delta is not None:
            net.delta += l.factor * l.delta

    l.forward, l.backward = forward, backward
    return l


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        unregister_layer(name)


def test_builtins_are_registered():
    load_layers()
    names = layer_names()
    for name in ("connected", "conn", "softmax", "soft", "cost", "dropout", "activation"):
        assert name in names
    assert get_make("conn") is get_make("connected")
    assert get_make("nope") is None


def test_register_with_one_call(tmp_path, cleanup):
    cleanup.append("double")
    assert minidark.register_layer("double", make_double) is make_double
    assert get_make("double") is make_double
    net = net_from(tmp_path, "[net]\nbatch=2\ninputs=3\n[double]\nfactor=3\n[softmax]\n")
    assert net.layers[0].type == "double"
    x = np.ones((2, 3), np.float32)
    net.forward(x)
    np.testing.assert_array_equal(net.layers[0].output, 3 * x)
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)


def test_register_as_decorator_with_aliases(tmp_path, cleanup):
    cleanup.extend(["twice", "twice_alias"])

    @minidark.register_layer("twice", "twice_alias")
    def make_twice(options, params):
        return make_double(options, params)

    assert get_make("twice") is make_twice and get_make("twice_alias") is make_twice
    net = net_from(tmp_path, "[net]\ninputs=2\n[twice_alias]\n[twice]\n")
    np.testing.assert_array_equal(net.forward(np.ones((1, 2))), [[4, 4]])


def test_unused_keys_of_user_layers_are_reported(tmp_path, cleanup):
    cleanup.append("double")
    minidark.register_layer("double", make_double)
    with pytest.warns(UserWarning, match="'mosaic = 3' \\(line 4\\)"):
        net_from(tmp_path, "[net]\ninputs=3\n[double]\nmosaic=3\n")


def test_registering_the_same_function_twice_is_harmless(cleanup):
    cleanup.append("double")
    minidark.register_layer("double", make_double)
    minidark.register_layer("double", make_double)
    assert get_make("double") is make_double


def test_clash_with_a_builtin_names_both():
    def make_connected(options, params):
        pass

    with pytest.raises(ValueError) as info:
        minidark.register_layer("connected", make_connected)
    message = str(info.value)
    assert "'connected'" in message
    assert "minidark.layers.connected.make_connected" in message  # the registered one
    assert "test_registry" in message  # the newcomer
    assert get_make("connected").__module__ == "minidark.layers.connected"


def test_clash_between_plugins_names_both(cleanup):
    cleanup.append("double")
    minidark.register_layer("double", make_double)

    def other_double(options, params):
        pass

    with pytest.raises(ValueError, match=r"other_double.*clashes.*make_double"):
        minidark.register_layer("double", other_double)


def test_clash_in_an_alias_registers_nothing(cleanup):
    cleanup.extend(["fresh_name"])

    def make_new(options, params):
        pass

    with pytest.raises(ValueError, match="soft"):
        minidark.register_layer("fresh_name", "soft", make_new)
    assert get_make("fresh_name") is None


@pytest.mark.parametrize(
    "name, message",
    [("net", "reserved"), ("network", "reserved"), ("my-layer", "identifier"), ("", "identifier")],
)
def test_invalid_names(name, message):
    with pytest.raises(ValueError, match=message):
        minidark.register_layer(name, make_double)


def test_register_needs_a_name():
    with pytest.raises(ValueError, match="at least one"):
        minidark.register_layer(make_double)


def test_did_you_mean():
    assert suggest("conected") == " (did you mean [connected]?)"
    assert "[softmax]" in suggest("sofmax")
    assert "[dropout]" in suggest("droput")
    assert "did you mean" not in suggest("qqqqqqq")


def test_unknown_section_error_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean \[activation\]\?") as info:
        net_from(tmp_path, "[net]\ninputs=3\n[activaton]\n")
    assert (info.value.line, info.value.section) == (3, "activaton")


def test_did_you_mean_includes_user_layers(tmp_path, cleanup):
    cleanup.append("double")
    minidark.register_layer("double", make_double)
    with pytest.raises(ConfigError, match=r"did you mean \[double\]\?"):
        net_from(tmp_path, "[net]\ninputs=3\n[doubel]\n")
