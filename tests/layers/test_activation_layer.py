"""[activation]: shape, forward = f(input), backward accumulates (a deliberate
fix: darknet overwrites net.delta), and gradient checks. Every activation's
formula and gradient is tested in tests/test_activations.py."""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import format_results, gradcheck, to_float64

from conftest import net_from


def test_shape_and_default(tmp_path):
    net = net_from(tmp_path, "[net]\nbatch=3\nheight=2\nwidth=4\nchannels=3\n[activation]\n")
    l = net.layers[0]
    assert (l.type, l.activation, l.inputs, l.outputs) == ("activation", "linear", 24, 24)
    assert (l.out_c, l.out_h, l.out_w) == (3, 2, 4)
    assert l.output.shape == l.delta.shape == (3, 24)
    assert l.saved == () and l.update is None


def test_forward_is_the_activation_and_keeps_the_input(tmp_path):
    net = net_from(tmp_path, "[net]\nbatch=2\ninputs=5\n[activation]\nactivation=leaky\n")
    x = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    out = net.forward(x)
    np.testing.assert_allclose(out, np.where(x > 0, x, 0.1 * x), rtol=1e-6)
    np.testing.assert_array_equal(net.input_buffer, x)  # copies, does not modify


def test_backward_accumulates_into_net_delta(tmp_path):
    net = to_float64(
        net_from(
            tmp_path,
            "[net]\nbatch=2\ninputs=4\n[connected]\noutput=3\n"
            "activation=linear\n[activation]\nactivation=tanh\n",
        )
    )
    rng = np.random.default_rng(0)
    net.forward(rng.normal(size=(2, 4)), train=True)
    conn, act = net.layers
    y = act.output.copy()
    act.delta[...] = 1.0
    conn.delta[...] = 5.0
    net.input, net.delta = conn.output, conn.delta
    act.backward(act, net)
    np.testing.assert_allclose(conn.delta, 5.0 + (1 - y * y))  # += delta * f'(y)


def test_unknown_activation(tmp_path):
    with pytest.raises(ConfigError, match="unknown activation 'swish'") as info:
        net_from(tmp_path, "[net]\ninputs=4\n[activation]\nactivation=swish\n")
    assert (info.value.line, info.value.section, info.value.key) == (4, "activation", "activation")


@pytest.mark.parametrize("name", ["logistic", "relu", "leaky", "selu", "lhtan"])
def test_gradcheck_after_connected(tmp_path, name):
    net = net_from(
        tmp_path,
        "[net]\nbatch=2\ninputs=3\n[connected]\noutput=4\n"
        f"activation=linear\n[activation]\nactivation={name}\n",
    )
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_image_input(tmp_path):
    net = net_from(
        tmp_path, "[net]\nbatch=2\nheight=3\nwidth=3\nchannels=2\n[activation]\nactivation=elu\n"
    )
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)
