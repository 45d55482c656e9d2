"""[cost]: sse, masked, smooth, L1 and scale -- forward against naive
formulas, (cost, delta) as a true (loss, negative gradient) pair checked by
central differences, masking, accumulation, and shapes."""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.kernels.tree import SECRET_NUM
from minidark.testing import format_results, gradcheck, to_float64

from conftest import net_from


def cost_net(tmp_path, options="", batch=2, inputs=5, head="", seed=0):
    return net_from(
        tmp_path, f"[net]\nbatch={batch}\ninputs={inputs}\n{head}\n[cost]\n{options}\n", seed=seed
    )


def naive(kind, x, t):
    """(error per element, delta) from the module's table."""
    d = t - x
    if kind == "L1":
        return np.abs(d), np.sign(d)
    if kind == "smooth":
        inside = np.abs(d) < 1
        return np.where(inside, 0.5 * d * d, np.abs(d) - 0.5), np.where(inside, d, np.sign(d))
    return 0.5 * d * d, d


def test_shapes_and_defaults(tmp_path):
    net = cost_net(tmp_path, batch=3, inputs=4)
    l = net.layers[0]
    assert (l.type, l.cost_type, l.scale, l.inputs, l.outputs) == ("cost", "sse", 1.0, 4, 4)
    assert (l.out_h, l.out_w, l.out_c) == (1, 1, 4)
    assert l.output.shape == l.delta.shape == (3, 4)
    assert l.saved == () and l.update is None


def test_shape_keeps_image_geometry(tmp_path):
    net = net_from(tmp_path, "[net]\nheight=2\nwidth=3\nchannels=2\n[cost]\n")
    l = net.layers[0]
    assert (l.out_c, l.out_h, l.out_w, l.outputs) == (2, 2, 3, 12)


def test_unknown_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown cost type 'seg'") as info:
        cost_net(tmp_path, "type=seg")
    assert info.value.key == "type"


@pytest.mark.parametrize("kind", ["sse", "masked", "smooth", "L1"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_forward_matches_naive(tmp_path, kind, scale):
    net = to_float64(cost_net(tmp_path, f"type={kind}\nscale={scale}", batch=3, inputs=6))
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(3, 6)) * 2, rng.normal(size=(3, 6))
    net.forward(x, t, train=True)
    l = net.layers[0]
    error, delta = naive(kind, x, t)
    np.testing.assert_allclose(l.output, error, rtol=1e-12)
    np.testing.assert_allclose(l.delta, delta, rtol=1e-12)
    assert l.cost == pytest.approx(scale * error.sum())
    assert net.cost == pytest.approx(l.cost)


def test_smooth_delta_sign_is_fixed(tmp_path):
    # darknet's CPU smooth_l1 gives the wrong sign for |d| >= 1; minidark: sign(t - x)
    net = to_float64(cost_net(tmp_path, "type=smooth", batch=1, inputs=4))
    net.forward(np.array([[0, 0, 0, 0.0]]), np.array([[3, -3, 0.5, -0.5]]), train=True)
    np.testing.assert_allclose(net.layers[0].delta, [[1, -1, 0.5, -0.5]])
    np.testing.assert_allclose(net.layers[0].output, [[2.5, 2.5, 0.125, 0.125]])


@pytest.mark.parametrize("kind", ["sse", "masked", "smooth", "L1"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_gradcheck(tmp_path, kind, scale):
    results = gradcheck(cost_net(tmp_path, f"type={kind}\nscale={scale}", batch=3, inputs=4))
    assert [r.array for r in results] == ["input"]
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_after_connected(tmp_path):
    net = net_from(
        tmp_path,
        "[net]\nbatch=2\ninputs=3\n[connected]\noutput=4\n"
        "activation=tanh\n[cost]\ntype=smooth\nscale=.5\n",
    )
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)


def test_masked_entries_give_no_error_or_delta(tmp_path):
    net = to_float64(cost_net(tmp_path, "type=masked", batch=2, inputs=3))
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    t = np.array([[SECRET_NUM, 0.0, 1.0], [2.0, SECRET_NUM, SECRET_NUM]])
    net.forward(x, t, train=True)
    l = net.layers[0]
    masked = t == SECRET_NUM
    assert not l.delta[masked].any() and not l.output[masked].any()
    np.testing.assert_allclose(l.delta[~masked], (t - x)[~masked])
    assert l.cost == pytest.approx((0.5 * (t - x)[~masked] ** 2).sum())
    # like darknet, the masked inputs are overwritten in place
    assert (net.input_buffer[masked] == SECRET_NUM).all()


def test_sse_is_not_masked(tmp_path):
    net = to_float64(cost_net(tmp_path, "type=sse", batch=1, inputs=2))
    net.forward(np.array([[1.0, 2.0]]), np.array([[SECRET_NUM, 0.0]]), train=True)
    assert net.layers[0].delta[0, 0] == SECRET_NUM - 1


def test_backward_adds_scaled_delta(tmp_path):
    net = to_float64(
        net_from(
            tmp_path,
            "[net]\nbatch=2\ninputs=3\n[connected]\noutput=3\nactivation=linear\n[cost]\nscale=2\n",
        )
    )
    rng = np.random.default_rng(1)
    net.forward(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), train=True)
    conn, cost = net.layers
    conn.delta[...] = 1.0
    net.input, net.delta = conn.output, conn.delta
    cost.backward(cost, net)
    np.testing.assert_allclose(conn.delta, 1.0 + 2 * cost.delta)


def test_no_truth_no_cost(tmp_path):
    net = cost_net(tmp_path)
    net.forward(np.ones((2, 5)), train=False)
    assert net.layers[0].cost == 0 and net.cost == 0


def test_output_layer_skips_cost(tmp_path):
    net = net_from(
        tmp_path, "[net]\nbatch=2\ninputs=3\n[connected]\noutput=4\nactivation=linear\n[cost]\n"
    )
    assert net.output_layer is net.layers[0] and net.outputs == 4 and net.truths == 4
    out = net.predict(np.ones((3, 3)))
    assert out.shape == (3, 4)


def test_softmax_then_cost_adds_both_gradients(tmp_path):
    # darknet-spec 4.1: [softmax] then [cost]: delta = (t - p)_xent + scale * (t - p)_sse
    net = to_float64(net_from(tmp_path, "[net]\nbatch=1\ninputs=3\n[softmax]\n[cost]\nscale=.5\n"))
    x, t = np.array([[0.1, 0.5, -0.3]]), np.array([[0, 1.0, 0]])
    net.forward(x, t, train=True)
    soft, cost = net.layers
    p = soft.output.copy()
    assert net.cost == pytest.approx((soft.cost + cost.cost) / 2)  # mean over cost layers
    net.backward()
    np.testing.assert_allclose(soft.delta, (t - p) + 0.5 * (t - p))
