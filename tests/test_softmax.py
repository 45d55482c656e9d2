"""[softmax]: the derivation of darknet's loss head, by finite differences.

* Jacobian ``dp_i/dx_j = p_i (delta_ij - p_j) / T``;
* with ``L = -sum_i y_i log p_i`` (one-hot y per group): ``dL/dx_i = (p_i - y_i) / T``;
* the delta the layer writes is ``y - p``: exactly ``-dL/dx`` at T = 1, and
  T times it otherwise -- darknet's delta has no 1/T factor, which minidark
  keeps (pinned by the refdata vector d_softmax_groups_temp); the test below
  asserts that expected factor-T gap instead of hiding it.

Also groups, noloss, tree= hierarchies (per-group softmax, fill_hierarchy,
SECRET_NUM masking), spatial, backward accumulation, and gradcheck.
"""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.kernels.tree import SECRET_NUM, fill_hierarchy, hierarchy_predictions, read_tree
from minidark.testing import format_results, gradcheck, to_float64

from conftest import net_from, write_cfg

EPS = 1e-6


def softmax_net(tmp_path, options="", inputs=6, batch=2):
    net = net_from(tmp_path, f"[net]\nbatch={batch}\ninputs={inputs}\n[softmax]\n{options}\n")
    return to_float64(net)


def naive_softmax(x, temperature=1.0):
    z = (x - x.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def one_hot(rng, batch, groups, n):
    truth = np.zeros((batch, groups, n))
    np.put_along_axis(truth, rng.integers(0, n, (batch, groups))[..., None], 1.0, axis=2)
    return truth.reshape(batch, groups * n)


def probs(net, x):
    return net.forward(x, train=False).copy()


def cost(net, x, truth):
    net.forward(x, truth, train=True)
    return net.layers[0].cost


# --------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_jacobian_by_finite_differences(tmp_path, temperature):
    net = softmax_net(tmp_path, f"temperature={temperature}", inputs=5, batch=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5))
    p = probs(net, x)[0]
    numeric = np.empty((5, 5))
    for j in range(5):
        step = np.zeros((1, 5))
        step[0, j] = EPS
        numeric[:, j] = (probs(net, x + step)[0] - probs(net, x - step)[0]) / (2 * EPS)
    analytic = (np.diag(p) - np.outer(p, p)) / temperature  # p_i (delta_ij - p_j) / T
    np.testing.assert_allclose(numeric, analytic, atol=1e-9)


def loss_gradient(net, x, truth):
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = EPS
        numeric[index] = (cost(net, x + step, truth) - cost(net, x - step, truth)) / (2 * EPS)
    return numeric


def test_loss_gradient_is_p_minus_y_and_delta_is_its_negative(tmp_path):
    net = softmax_net(tmp_path, inputs=6, batch=3)
    rng = np.random.default_rng(1)
    x, truth = rng.normal(size=(3, 6)) * 2, one_hot(rng, 3, 1, 6)
    p = probs(net, x)
    numeric = loss_gradient(net, x, truth)  # dL/dx by differences
    np.testing.assert_allclose(numeric, p - truth, atol=1e-8)  # = p - y
    net.forward(x, truth, train=True)
    layer = net.layers[0]
    np.testing.assert_allclose(layer.delta, truth - p, atol=1e-12)  # delta = y - p
    np.testing.assert_allclose(layer.delta, -numeric, atol=1e-8)  # = -dL/dx
    # the cost is the summed cross-entropy, the loss per element -y log p
    np.testing.assert_allclose(layer.loss, -truth * np.log(p), atol=1e-12)
    assert layer.cost == pytest.approx(-(truth * np.log(p)).sum())
    assert net.cost == pytest.approx(layer.cost)


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_temperature_delta_lacks_the_1_over_T_factor(tmp_path, temperature):
    # darknet: delta = truth - output even at T != 1, so delta = T * (-dL/dx).
    net = softmax_net(tmp_path, f"groups=2\ntemperature={temperature}", inputs=6, batch=2)
    rng = np.random.default_rng(2)
    x, truth = rng.normal(size=(2, 6)), one_hot(rng, 2, 2, 3)
    numeric = loss_gradient(net, x, truth)
    net.forward(x, truth, train=True)
    delta = net.layers[0].delta
    p = net.layers[0].output
    np.testing.assert_allclose(delta, truth - p, atol=1e-12)
    np.testing.assert_allclose(numeric, (p - truth) / temperature, atol=1e-8)
    np.testing.assert_allclose(delta, -temperature * numeric, atol=1e-7)  # the factor-T gap
    assert not np.allclose(delta, -numeric, atol=1e-3)


def test_gradcheck_softmax_layer(tmp_path):
    results = gradcheck(write_cfg(tmp_path, "[net]\nbatch=3\ninputs=8\n[softmax]\ngroups=2\n"))
    assert [r.array for r in results] == ["input"]
    assert all(r.passed for r in results), format_results(results)


def test_gradcheck_through_connected_into_softmax(tmp_path):
    cfg = write_cfg(
        tmp_path, "[net]\nbatch=2\ninputs=5\n[connected]\noutput=4\nactivation=linear\n[softmax]\n"
    )
    results = gradcheck(cfg)
    assert all(r.passed for r in results), format_results(results)


# --------------------------------------------------------------------------
# Forward variants
# --------------------------------------------------------------------------
@pytest.mark.parametrize("groups, temperature", [(1, 1.0), (3, 1.0), (2, 0.7), (6, 3.0)])
def test_groups_and_temperature_forward(tmp_path, groups, temperature):
    net = softmax_net(tmp_path, f"groups={groups}\ntemperature={temperature}", inputs=12, batch=2)
    x = np.random.default_rng(3).normal(size=(2, 12)) * 3
    out = probs(net, x)
    t32 = float(np.float32(temperature))  # darknet's temperature is a C float
    expected = naive_softmax(x.reshape(2, groups, -1), t32).reshape(2, 12)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out.reshape(2, groups, -1).sum(-1), 1.0)


def test_large_logits_do_not_overflow(tmp_path):
    net = softmax_net(tmp_path, inputs=3, batch=1)
    out = probs(net, np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(out, [[1, 0, 0]], atol=1e-300)


def test_zero_probability_gives_finite_loss(tmp_path):
    net = net_from(tmp_path, "[net]\ninputs=3\n[softmax]\n")  # float32
    net.forward(np.array([[200.0, 0.0, -200.0]]), np.array([[0, 0, 1.0]]), train=True)
    assert np.isfinite(net.layers[0].cost) and net.layers[0].cost > 80


def test_noloss_writes_no_delta_or_cost(tmp_path):
    net = softmax_net(tmp_path, "noloss=1", inputs=4, batch=2)
    rng = np.random.default_rng(4)
    x, truth = rng.normal(size=(2, 4)), one_hot(rng, 2, 1, 4)
    out = net.forward(x, truth, train=True)
    layer = net.layers[0]
    np.testing.assert_allclose(out, naive_softmax(x))
    assert layer.cost == 0 and not layer.delta.any()
    assert net.cost == 0  # still counted as a cost layer, like darknet


def test_inference_without_truth_has_zero_cost(tmp_path):
    net = softmax_net(tmp_path, inputs=4, batch=2)
    net.forward(np.ones((2, 4)), train=False)
    assert net.layers[0].cost == 0


def test_spatial_softmax_per_pixel_across_channels(tmp_path):
    net = to_float64(
        net_from(tmp_path, "[net]\nbatch=2\nheight=2\nwidth=3\nchannels=4\n[softmax]\nspatial=1\n")
    )
    layer = net.layers[0]
    assert (layer.out_c, layer.out_h, layer.out_w) == (4, 2, 3)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 2, 3))
    out = probs(net, x).reshape(2, 4, 2, 3)
    expected = np.moveaxis(naive_softmax(np.moveaxis(x, 1, -1)), -1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    # loss and delta as usual, elementwise
    truth = np.moveaxis(np.eye(4)[rng.integers(0, 4, (2, 2, 3))], -1, 1)
    net.forward(x, truth, train=True)
    np.testing.assert_allclose(layer.delta.reshape(x.shape), truth - expected, atol=1e-12)


def test_backward_accumulates_delta_into_previous_layer(tmp_path):
    net = net_from(
        tmp_path,
        "[net]\nbatch=2\ninputs=4\n[connected]\noutput=4\nactivation=linear\n[softmax]\n",
        seed=0,
    )
    rng = np.random.default_rng(6)
    net.forward(rng.normal(size=(2, 4)), one_hot(rng, 2, 1, 4), train=True)
    conn, soft = net.layers
    conn.delta[...] = 1.0  # something already accumulated there
    net.input, net.delta = conn.output, conn.delta
    soft.backward(soft, net)
    np.testing.assert_allclose(conn.delta, 1.0 + soft.delta, rtol=1e-6)


def test_first_layer_softmax_backward_with_no_previous_delta(tmp_path):
    net = softmax_net(tmp_path, inputs=4, batch=1)
    net.forward(np.zeros((1, 4)), np.eye(4)[:1], train=True)
    net.backward()  # net.delta is None for layer 0: nothing to do, no error


def test_groups_must_divide_inputs(tmp_path):
    with pytest.raises(ConfigError, match="divisible"):
        softmax_net(tmp_path, "groups=4", inputs=6)
    with pytest.raises(ConfigError, match="temperature"):
        softmax_net(tmp_path, "temperature=0", inputs=6)


# --------------------------------------------------------------------------
# tree= hierarchies
# --------------------------------------------------------------------------
TREE = """\
animal -1
plant -1
dog 0
cat 0
bird 0
oak 1
rose 1
"""


def tree_file(tmp_path, text=TREE):
    path = tmp_path / "test.tree"
    path.write_text(text)
    return str(path)


def test_tree_structure(tmp_path):
    tree = read_tree(tree_file(tmp_path))
    assert tree.n == 7 and tree.groups == 3
    assert tree.group_offset == [0, 2, 5] and tree.group_size == [2, 3, 2]
    assert tree.group == [0, 0, 1, 1, 1, 2, 2]
    assert tree.child[:2] == [1, 2] and tree.leaf == [0, 0, 1, 1, 1, 1, 1]


def test_tree_errors_name_file_and_line(tmp_path):
    for text, line in [("a -1\nb\n", 2), ("a -1\nb 5\n", 2), ("a x\n", 1)]:
        path = tree_file(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            read_tree(path)
        assert info.value.line == line and info.value.file == path
    with pytest.raises(ConfigError, match="tree file") as info:
        net_from(tmp_path, f"[net]\ninputs=7\n[softmax]\ntree={tmp_path / 'missing.tree'}\n")
    assert info.value.key == "tree" and info.value.section == "softmax"
    with pytest.raises(ConfigError, match="7 nodes but the layer has 6 inputs"):
        net_from(tmp_path, f"[net]\ninputs=6\n[softmax]\ntree={tree_file(tmp_path)}\n")


def test_fill_hierarchy_sets_ancestors_and_masks_empty_groups(tmp_path):
    tree = read_tree(tree_file(tmp_path))
    truth = np.zeros((2, 7))
    truth[0, 3] = 1  # cat -> animal; plant's group has no label
    truth[1, 6] = 1  # rose -> plant; animal's children have no label
    filled = fill_hierarchy(truth, tree)
    S = SECRET_NUM
    np.testing.assert_array_equal(filled, [[1, 0, 0, 1, 0, S, S], [0, 1, S, S, S, 0, 1]])
    assert truth[0].sum() == 1  # the input is not modified


def test_tree_softmax_forward_is_per_group(tmp_path):
    net = to_float64(
        net_from(
            tmp_path,
            f"[net]\nbatch=2\ninputs=7\n[softmax]\ntree={tree_file(tmp_path)}\ntemperature=1.5\n",
        )
    )
    x = np.random.default_rng(7).normal(size=(2, 7)) * 2
    out = probs(net, x)
    for start, size in [(0, 2), (2, 3), (5, 2)]:
        np.testing.assert_allclose(
            out[:, start : start + size], naive_softmax(x[:, start : start + size], 1.5), rtol=1e-10
        )
    absolute = hierarchy_predictions(out, net.layers[0].tree)
    np.testing.assert_allclose(absolute[:, 2:5].sum(1), out[:, 0], rtol=1e-6)


def test_tree_secret_num_groups_are_masked_out_of_delta_and_loss(tmp_path):
    net = to_float64(
        net_from(tmp_path, f"[net]\nbatch=2\ninputs=7\n[softmax]\ntree={tree_file(tmp_path)}\n")
    )
    tree = net.layers[0].tree
    truth = np.zeros((2, 7))
    truth[0, 3] = truth[1, 6] = 1
    truth = fill_hierarchy(truth, tree)
    x = np.random.default_rng(8).normal(size=(2, 7))
    out = net.forward(x, truth, train=True).copy()
    layer = net.layers[0]
    masked = truth == SECRET_NUM
    assert masked.sum() == 5
    assert not layer.delta[masked].any() and not layer.loss[masked].any()
    np.testing.assert_allclose(layer.delta[~masked], (truth - out)[~masked], atol=1e-12)
    expected_cost = -(truth[~masked] * np.log(out[~masked])).sum()
    assert layer.cost == pytest.approx(expected_cost)
    # and the masked cost's gradient is still y - p on the unmasked groups
    numeric = loss_gradient(net, x, truth)
    np.testing.assert_allclose(np.where(masked, 0, truth - out), -numeric, atol=1e-7)
