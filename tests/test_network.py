"""The Network loops (darknet's forward_network / backward_network /
update_network / train_network): data flow through net.input and net.delta,
delta zeroing and accumulation, subdivisions, seen, mean loss, predict,
and load_network's batch override."""

import numpy as np
import pytest

import minidark
import minidark.testing
from minidark.layer import Layer
from minidark.registry import register_layer, unregister_layer

from conftest import net_from, one_hot, write_cfg

MLP = (
    "[net]\nbatch={batch}\nsubdivisions={sub}\ninputs=6\nlearning_rate=0.5\nmomentum=0.9\n"
    "decay=0.01\n[connected]\noutput=5\nactivation=tanh\n[connected]\noutput=3\n"
    "activation=linear\n[softmax]\n"
)


@pytest.fixture
def spy():
    """A pass-through [spy] layer that records what the loops hand it."""
    events = []

    def forward(l, net):
        events.append(("forward", l.index, net.input, l.delta.copy(), net.train, net.truth))
        np.copyto(l.output, net.input.reshape(l.output.shape))

    def backward(l, net):
        events.append(("backward", l.index, net.input, net.delta))
        if net.delta is not None:
            net.delta += l.delta + 1

    def make_spy(options, params):
        l = Layer(
            type="spy",
            **params.same_shape(),
        )
        l.output = np.zeros((params.batch, params.inputs), np.float32)
        l.delta = np.zeros((params.batch, params.inputs), np.float32)
        l.forward, l.backward = forward, backward
        return l

    register_layer("spy", make_spy)
    yield events
    unregister_layer("spy")


SPIES = "[net]\nbatch=2\ninputs=3\n[spy]\n[spy]\n[spy]\n"


def test_forward_feeds_each_layer_the_previous_output(tmp_path, spy):
    net = net_from(tmp_path, SPIES)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(x)
    inputs = [e[2] for e in spy if e[0] == "forward"]
    assert inputs[0] is net.input_buffer
    assert inputs[1] is net.layers[0].output and inputs[2] is net.layers[1].output
    assert out is net.layers[2].output and net.output is out
    np.testing.assert_array_equal(out, x)
    assert net.input is net.layers[2].output  # net.input advanced like darknet


def test_training_forward_zeroes_every_delta_first(tmp_path, spy):
    net = net_from(tmp_path, SPIES)
    for l in net.layers:
        l.delta[...] = 7
    net.forward(np.ones((2, 3)), train=True)
    assert all(not e[3].any() for e in spy if e[0] == "forward")
    assert all(e[4] is True for e in spy if e[0] == "forward")
    for l in net.layers:
        l.delta[...] = 7
    spy.clear()
    net.forward(np.ones((2, 3)), train=False)  # inference leaves deltas alone
    assert all((e[3] == 7).all() and e[4] is False for e in spy)


def test_truth_is_passed_only_when_given(tmp_path, spy):
    net = net_from(tmp_path, SPIES)
    net.forward(np.ones((2, 3)), np.zeros((2, 3)), train=True)
    assert all(e[5] is net.truth_buffer for e in spy)
    spy.clear()
    net.forward(np.ones((2, 3)), train=True)
    assert all(e[5] is None for e in spy)


def test_backward_order_inputs_and_none_delta_for_layer_zero(tmp_path, spy):
    net = net_from(tmp_path, SPIES)
    net.forward(np.ones((2, 3)), train=True)
    spy.clear()
    net.backward()
    assert [e[1] for e in spy] == [2, 1, 0]  # last to first
    by_index = {e[1]: e for e in spy}
    assert by_index[2][2] is net.layers[1].output and by_index[2][3] is net.layers[1].delta
    assert by_index[1][2] is net.layers[0].output and by_index[1][3] is net.layers[0].delta
    assert by_index[0][2] is net.input_buffer and by_index[0][3] is None
    assert net.delta is None


def test_backward_accumulates_never_assigns(tmp_path, spy):
    net = net_from(tmp_path, SPIES)
    net.forward(np.ones((2, 3)), train=True)
    net.layers[1].delta[...] = 5  # e.g. already written by another consumer
    net.backward()
    # layer 2 adds 0 + 1 into layer 1's delta; layer 1 adds (5 + 1) + 1 into layer 0's
    np.testing.assert_array_equal(net.layers[1].delta, 6)
    np.testing.assert_array_equal(net.layers[0].delta, 7)


def test_stopbackward_stops_at_that_layer(tmp_path, spy):
    net = net_from(
        tmp_path, SPIES.replace("[spy]\n[spy]\n[spy]\n", "[spy]\n[spy]\nstopbackward=1\n[spy]\n")
    )
    net.forward(np.ones((2, 3)), train=True)
    spy.clear()
    net.backward()
    assert [e[1] for e in spy] == [2]


def test_real_layers_backward_chain_matches_numeric_gradient(tmp_path):
    # end to end: the input gradient the loops produce is -dL/dx of the summed loss
    net = minidark.testing.to_float64(net_from(tmp_path, MLP.format(batch=2, sub=1), seed=0))
    rng = np.random.default_rng(0)
    x, truth = rng.normal(size=(2, 6)), one_hot([1, 2], 3)
    net.forward(x, truth, train=True)
    first = net.layers[0]
    net.backward()
    # net.delta is None for layer 0, so compute -dL/dx from layer 0's delta by hand
    analytic = first.delta @ first.weights
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-6
        plus = (net.forward(x + step, truth, train=True), net.cost)[1]
        minus = (net.forward(x - step, truth, train=True), net.cost)[1]
        numeric[index] = -(plus - minus) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------
# Training: subdivisions, seen, mean loss, update batch
# --------------------------------------------------------------------------
def data(rows, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, 6)).astype(np.float32), one_hot(rng.integers(0, 3, rows), 3))


def params(net):
    return [getattr(l, n).copy() for l in net.layers for n in l.saved]


def test_subdivisions_update_only_every_n_minibatches(tmp_path):
    net = net_from(tmp_path, MLP.format(batch=8, sub=4), seed=0)
    assert (net.batch, net.subdivisions) == (2, 4)
    x, truth = data(8)
    start = params(net)
    for k in range(4):
        net.train_datum(x[2 * k : 2 * k + 2], truth[2 * k : 2 * k + 2])
        assert net.seen == 2 * (k + 1)
        changed = any(not np.array_equal(a, b) for a, b in zip(start, params(net), strict=True))
        assert changed == (k == 3), k  # only the 4th mini-batch updates
        assert net.t == (1 if k == 3 else 0)


def test_subdivisions_equal_one_big_batch(tmp_path):
    # gradients are sums and the update divides by batch * subdivisions, so
    # 4 x 2 rows with subdivisions=4 is the same step as 8 rows at once
    a = net_from(tmp_path, MLP.format(batch=8, sub=4), seed=0)
    b = net_from(tmp_path, MLP.format(batch=8, sub=1), seed=0)
    x, truth = data(16)
    for _ in range(2):
        loss_a = a.train_step(x, truth)
        loss_b = b.train_step(x, truth)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert a.seen == b.seen == 32 and a.t == b.t == 4
    for pa, pb in zip(params(a), params(b), strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-6)


def test_update_batch_is_batch_times_subdivisions(tmp_path):
    net = net_from(tmp_path, MLP.format(batch=8, sub=4))
    seen = []
    layer = net.layers[0]
    original = layer.update
    layer.update = lambda l, args: (
        seen.append((args.batch, args.learning_rate, args.t)),
        original(l, args),
    )
    x, truth = data(8)
    net.train_step(x, truth)
    assert seen == [(8, 0.5, 1)]


def test_train_step_returns_mean_loss_per_image(tmp_path):
    net = net_from(tmp_path, MLP.format(batch=4, sub=1), seed=0)
    x, truth = data(8)
    twin = net_from(tmp_path, MLP.format(batch=4, sub=1), seed=0)
    # the loss of each mini-batch is computed before that mini-batch's update
    costs = []
    for k in range(2):
        p = twin.forward(x[4 * k : 4 * k + 4], truth[4 * k : 4 * k + 4], train=True).copy()
        costs.append(-(truth[4 * k : 4 * k + 4] * np.log(p)).sum())
        twin.backward()
        twin.update()
    loss = net.train_step(x, truth)
    assert loss == pytest.approx(sum(costs) / 8, rel=1e-5)
    assert net.seen == 8 and net.t == 2
    with pytest.raises(ValueError, match="multiple of batch=4"):
        net.train_step(x[:6], truth[:6])


def test_network_cost_is_mean_of_loss_layers(tmp_path):
    net = net_from(tmp_path, "[net]\nbatch=2\ninputs=3\n[softmax]\n[cost]\n")
    x, truth = data(2)[0][:, :3], one_hot([0, 1], 3)
    net.forward(x, truth, train=True)
    soft, cost = net.layers
    assert net.cost == pytest.approx((soft.cost + cost.cost) / 2)


def test_training_reduces_loss(tmp_path):
    net = net_from(
        tmp_path,
        MLP.format(batch=8, sub=1).replace("learning_rate=0.5", "learning_rate=0.1"),
        seed=0,
    )
    x, truth = data(8, seed=1)
    losses = [net.train_step(x, truth) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------
# Inference and the API
# --------------------------------------------------------------------------
def test_predict_any_number_of_rows_equals_row_by_row(tmp_path):
    cfg = write_cfg(
        tmp_path,
        MLP.format(batch=4, sub=1).replace("activation=tanh", "activation=tanh\nbatch_normalize=1"),
    )
    net = minidark.load_network(cfg, seed=0)
    x, _ = data(10)
    out = net.predict(x)
    assert out.shape == (10, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(1), 1, rtol=1e-5)
    single = minidark.load_network(cfg, seed=0, batch=1)
    rows = np.concatenate([single.predict(x[i : i + 1]) for i in range(10)])
    np.testing.assert_allclose(out, rows, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.predict(x[:3]), out[:3], rtol=1e-6)
    assert net.predict(x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="rows of 6 values"):
        net.predict(np.zeros((2, 5)))


def test_predict_accepts_images_and_uses_inference_mode(tmp_path):
    net = net_from(
        tmp_path,
        "[net]\nbatch=2\nheight=2\nwidth=2\nchannels=2\n[dropout]\nprobability=.9\n[softmax]\n",
        seed=0,
    )
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 2)).astype(np.float32)
    out = net.predict(x)
    e = np.exp(x.reshape(3, 8) - x.reshape(3, 8).max(1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(1, keepdims=True), rtol=1e-5)
    assert net.train is False


def test_forward_accepts_nchw_and_checks_shapes(tmp_path):
    net = net_from(tmp_path, "[net]\nbatch=2\nheight=2\nwidth=3\nchannels=1\n[softmax]\n")
    x = np.random.default_rng(0).normal(size=(2, 1, 2, 3))
    np.testing.assert_allclose(net.forward(x), net.forward(x.reshape(2, 6)))
    with pytest.raises(ValueError, match="batch=2"):
        net.forward(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="truth"):
        net.forward(np.zeros((2, 6)), np.zeros((2, 5)))


def test_load_network_batch_override(tmp_path):
    cfg = write_cfg(tmp_path, MLP.format(batch=64, sub=4))
    net = minidark.load_network(cfg)
    assert (net.batch, net.subdivisions) == (16, 4)
    small = minidark.load_network(cfg, batch=3)
    assert (small.batch, small.subdivisions) == (3, 1)
    assert all(l.batch == 3 and l.output.shape[0] == 3 for l in small.layers)
    assert small.input_buffer.shape == (3, 6)


def test_load_network_seed_and_verbose(tmp_path, capsys):
    cfg = write_cfg(tmp_path, MLP.format(batch=2, sub=1))
    a = minidark.load_network(cfg, seed=5)
    b = minidark.load_network(cfg, seed=5, verbose=True)
    for pa, pb in zip(params(a), params(b), strict=True):
        np.testing.assert_array_equal(pa, pb)
    table = capsys.readouterr().err
    assert "connected" in table and "softmax" in table and "6 ->" in table


def test_public_layer_fields(tmp_path):
    net = net_from(tmp_path, MLP.format(batch=2, sub=1))
    for l in net.layers:
        for name in ("type", "inputs", "outputs", "out_w", "out_h", "out_c", "output", "delta"):
            assert getattr(l, name) is not None, name
    conn = net.layers[0]
    for name in ("weights", "biases", "weight_updates", "bias_updates"):
        assert isinstance(getattr(conn, name), np.ndarray)
    assert "connected" in repr(conn) and "3 layers" in repr(net)
    assert net.params == 6 * 5 + 5 + 5 * 3 + 3
