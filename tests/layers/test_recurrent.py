"""[rnn], [gru], [lstm], [crnn]: float64 gradient checks through time (input and
every sublayer parameter, from a nonzero initial state), darknet's .weights
layouts and round trip, the hidden state carried across batches and calls,
``time_steps`` semantics, and cfg errors. darknet's own numbers are replayed
in tests/test_darknet_reference.py (vectors-next j_rnn, k_gru, k2_gru_gpupath,
l_lstm)."""

import warnings

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.weights import load_weights, save_weights, weights_bytes

from conftest import net_from

RECURRENT = {
    "rnn": "[rnn]\noutput=5\nactivation=leaky",
    "rnn_shortcut": "[rnn]\noutput=5\nactivation=tanh\nshortcut=1",
    "rnn_logistic": "[rnn]\noutput=5",
    "gru": "[gru]\noutput=5",
    "gru_tanh": "[gru]\noutput=5\ntanh=1",
    "lstm": "[lstm]\noutput=5",
}


def recurrent_net(tmp_path, body, batch=2, steps=3, inputs="inputs=4", seed=0):
    return net_from(
        tmp_path, f"[net]\nbatch={batch}\ntime_steps={steps}\n{inputs}\n{body}\n", seed=seed
    )


def to_float64_tree(net):
    """Every float32 array of the network, its layers and their sublayers as float64,
    keeping shared arrays (parent aliases, views of T-step storage) shared."""
    memo = {}

    def convert(array):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            return array
        owner = array.base if isinstance(array.base, np.ndarray) else array
        if owner.size != array.size:
            owner = array
        if id(owner) not in memo:
            memo[id(owner)] = (owner, owner.astype(np.float64))
        return memo[id(owner)][1].reshape(array.shape)

    holders = [net] + list(net.layers)
    holders += [sub for l in net.layers for sub in (l.sublayers or {}).values()]
    for holder in holders:
        for name, value in list(vars(holder).items()):
            if isinstance(value, np.ndarray):
                setattr(holder, name, convert(value))
    return net


def gradcheck_recurrent(net, index=0, eps=1e-6, picks=12, seed=0):
    """Max relative error of input and parameter gradients, by central differences."""
    to_float64_tree(net)
    l = net.layers[index]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (net.batch, l.inputs))
    start = {name: rng.uniform(-0.5, 0.5, getattr(l, name).shape) for name in l.carried}
    weights_r = rng.normal(size=l.output.shape)

    def loss():
        for name, value in start.items():  # the same initial state every time
            getattr(l, name)[...] = value
        net.input, net.train, net.delta = x, True, None
        l.forward(l, net)
        return -float(np.sum(weights_r * l.output))

    loss()
    l.delta[...] = weights_r
    dx = rng.uniform(-1, 1, x.shape)
    dx0 = dx.copy()
    updates = {p: getattr(l, u) for p, u in l.learned.items()}
    before = {p: u.copy() for p, u in updates.items()}
    net.input, net.delta = x, dx
    l.backward(l, net)
    analytic = {"input": dx - dx0}
    analytic.update({p: updates[p] - before[p] for p in updates})
    arrays = {"input": x}
    arrays.update({p: getattr(l, p) for p in l.learned})
    errors = {}
    for name, array in arrays.items():
        flat, grad = array.reshape(-1), analytic[name].reshape(-1)
        chosen = rng.choice(flat.size, min(picks, flat.size), replace=False)
        numeric = []
        for i in chosen:
            keep = flat[i]
            flat[i] = keep + eps
            plus = loss()
            flat[i] = keep - eps
            minus = loss()
            flat[i] = keep
            numeric.append(-(plus - minus) / (2 * eps))
        numeric = np.array(numeric)
        scale = max(np.abs(numeric).max(), np.abs(grad[chosen]).max(), 1e-12)
        errors[name] = float(np.abs(numeric - grad[chosen]).max() / scale)
    return errors


# --------------------------------------------------------------------------
# Gradient checks (float64, central differences, 3 and 4 time steps)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(RECURRENT))
@pytest.mark.parametrize("steps", [3, 4])
def test_gradcheck_through_time(tmp_path, kind, steps):
    net = recurrent_net(tmp_path, RECURRENT[kind], steps=steps)
    errors = gradcheck_recurrent(net)
    assert len(errors) == 1 + len(net.layers[0].learned)
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_crnn(tmp_path):
    net = recurrent_net(
        tmp_path,
        "[crnn]\nhidden_filters=3\noutput_filters=2\nactivation=leaky",
        steps=3,
        inputs="height=4\nwidth=3\nchannels=2",
    )
    errors = gradcheck_recurrent(net, picks=8)
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_crnn_shortcut_logistic(tmp_path):
    net = recurrent_net(
        tmp_path,
        "[crnn]\nhidden_filters=2\noutput_filters=2\nshortcut=1",
        steps=3,
        inputs="height=3\nwidth=3\nchannels=1",
    )
    errors = gradcheck_recurrent(net, picks=8)
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_fails_on_a_wrong_backward(tmp_path):
    """The check can fail: darknet's CPU rnn input gradient (an extra a'(q_t))."""
    net = recurrent_net(tmp_path, RECURRENT["rnn"])
    l = net.layers[0]
    l.fused = False  # one step at a time, through step_backward
    sub_backward = l.step_backward

    def self_then_input(sub, step_net):  # after the self_layer, copy its delta
        sub_backward(sub, step_net)
        if sub is l.sublayers["self_layer"]:
            t = next(i for i in range(l.steps) if np.shares_memory(sub.delta_steps[i], sub.delta))
            l.sublayers["input_layer"].delta_steps[t][...] = sub.delta

    l.step_backward = self_then_input
    errors = gradcheck_recurrent(net)
    assert errors["input"] > 1e-3 and errors["input_layer_weights"] > 1e-3
    assert errors["output_layer_weights"] < 1e-6


# --------------------------------------------------------------------------
# Layouts, weights
# --------------------------------------------------------------------------
def test_darknet_weights_order_and_shapes(tmp_path):
    rnn = recurrent_net(tmp_path, RECURRENT["rnn"]).layers[0]
    assert rnn.saved[:2] == ("input_layer_biases", "input_layer_weights")
    assert [s.split("_")[0] for s in rnn.saved[::2]] == ["input", "self", "output"]
    assert rnn.input_layer_weights.shape == (5, 4) and rnn.self_layer_weights.shape == (5, 5)
    assert (rnn.batch, rnn.steps, rnn.outputs, rnn.output.shape) == (2, 3, 5, (6, 5))
    gru = recurrent_net(tmp_path, RECURRENT["gru"]).layers[0]
    assert [n[:2] for n in gru.saved[::2]] == ["wz", "wr", "wh", "uz", "ur", "uh"]
    lstm = recurrent_net(tmp_path, RECURRENT["lstm"]).layers[0]
    assert [n[:2] for n in lstm.saved[::2]] == ["wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"]
    assert lstm.uf_weights.shape == (5, 4) and lstm.wf_weights.shape == (5, 5)
    assert lstm.params == 4 * (5 * 5 + 5) + 4 * (4 * 5 + 5)
    bn = recurrent_net(tmp_path, "[rnn]\noutput=3\nbatch_normalize=1").layers[0]
    assert bn.saved[:5] == (
        "input_layer_biases",
        "input_layer_weights",
        "input_layer_scales",
        "input_layer_rolling_mean",
        "input_layer_rolling_variance",
    )
    crnn = recurrent_net(
        tmp_path,
        "[crnn]\nhidden_filters=3\noutput_filters=2",
        inputs="height=4\nwidth=4\nchannels=2",
    ).layers[0]
    assert crnn.input_layer_weights.shape == (3, 2, 3, 3)
    assert crnn.output_layer_weights.shape == (2, 3, 3, 3)
    assert (crnn.out_c, crnn.out_h, crnn.out_w, crnn.outputs) == (2, 4, 4, 32)


@pytest.mark.parametrize(
    "body",
    sorted(set(RECURRENT.values()))
    + ["[rnn]\noutput=3\nbatch_normalize=1", "[lstm]\noutput=3\nbatch_normalize=1"],
)
def test_weights_round_trip_byte_identical(tmp_path, body):
    net = recurrent_net(tmp_path, body, seed=1)
    rng = np.random.default_rng(0)
    for name in net.layers[0].saved:
        shape = getattr(net.layers[0], name).shape
        getattr(net.layers[0], name)[...] = (
            rng.uniform(0.5, 1.5, shape) if "variance" in name else rng.normal(size=shape)
        )
    save_weights(net, tmp_path / "a.weights")
    other = recurrent_net(tmp_path, body, seed=2)
    load_weights(other, tmp_path / "a.weights")
    assert weights_bytes(other) == (tmp_path / "a.weights").read_bytes()
    x = rng.uniform(0, 1, (net.batch, 4)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x), other.forward(x))


# --------------------------------------------------------------------------
# Hidden state and time steps
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rnn", "rnn_shortcut", "gru", "lstm"])
def test_state_carries_across_batches_like_one_long_sequence(tmp_path, kind):
    """Two batches of 2 steps give the outputs of one batch of 4 steps (same streams)."""
    long = recurrent_net(tmp_path, RECURRENT[kind], batch=2, steps=4, seed=3)
    short = recurrent_net(tmp_path, RECURRENT[kind], batch=2, steps=2, seed=4)
    save_weights(long, tmp_path / "w.weights")
    load_weights(short, tmp_path / "w.weights")
    x = np.random.default_rng(1).uniform(0, 1, (4, 2, 4)).astype(np.float32)  # (T, B, n)
    whole = long.forward(x.reshape(8, 4), train=True).copy()
    first = short.forward(x[:2].reshape(4, 4), train=True).copy()
    second = short.forward(x[2:].reshape(4, 4), train=False).copy()
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-5, atol=1e-6)
    short.reset_state()
    again = short.forward(x[:2].reshape(4, 4)).copy()
    np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-7)
    assert not np.allclose(short.forward(x[:2].reshape(4, 4)), first)  # carried, not reset


def test_reset_state_zeroes_every_carried_array(tmp_path):
    for body in RECURRENT.values():
        net = recurrent_net(tmp_path, body)
        net.forward(np.ones((6, 4), np.float32))
        l = net.layers[0]
        assert l.carried and all(getattr(l, n).any() for n in l.carried)
        net.reset_state()
        assert not any(getattr(l, n).any() for n in l.carried)


def test_time_steps_batch_seen_and_update_scale(tmp_path):
    net = net_from(
        tmp_path,
        "[net]\nbatch=2\ntime_steps=3\ninputs=4\nlearning_rate=0.5\n"
        "momentum=0\ndecay=0\n[lstm]\noutput=3\n[connected]\noutput=2\n"
        "activation=linear\n[softmax]\n",
    )
    assert net.batch == 6 and net.time_steps == 3
    lstm, fc = net.layers[0], net.layers[1]
    assert lstm.batch == 2 and fc.batch == 6 and fc.output.shape == (6, 2)
    rng = np.random.default_rng(0)
    x, truth = rng.uniform(0, 1, (6, 4)), np.eye(2)[rng.integers(0, 2, 6)]
    w = fc.weights.copy()
    net.forward(x, truth, train=True)
    net.backward()
    grad = fc.weight_updates.copy()
    net.update()
    np.testing.assert_allclose(fc.weights, w + 0.5 / 6 * grad, rtol=1e-6)  # lr / (B T)
    net.train_datum(x, truth)
    assert net.seen == 6


# --------------------------------------------------------------------------
# cfg errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,key",
    [
        ("[rnn]\noutput=0", "output"),
        ("[gru]\noutput=-1", "output"),
        ("[lstm]\noutput=0", "output"),
        ("[rnn]\noutput=3\nactivation=bogus", "activation"),
        ("[gru]\noutput=2\ntanh=x", "tanh"),
    ],
)
def test_bad_values_name_the_key(tmp_path, body, key):
    with pytest.raises(ConfigError) as info:
        recurrent_net(tmp_path, body)
    assert key in str(info.value)


def test_crnn_needs_an_image_and_positive_filters(tmp_path):
    with pytest.raises(ConfigError):
        recurrent_net(tmp_path, "[crnn]\nhidden_filters=2\noutput_filters=2")
    with pytest.raises(ConfigError) as info:
        recurrent_net(tmp_path, "[crnn]\nhidden_filters=0", inputs="height=2\nwidth=2\nchannels=1")
    assert "hidden_filters" in str(info.value)


def test_every_key_darknet_reads_is_read(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        recurrent_net(tmp_path, "[rnn]\noutput=3\nactivation=leaky\nbatch_normalize=0\nshortcut=1")
        recurrent_net(tmp_path, "[gru]\noutput=3\nbatch_normalize=0\ntanh=1")
        recurrent_net(tmp_path, "[lstm]\noutput=3\nbatch_normalize=0")
        recurrent_net(
            tmp_path,
            "[crnn]\noutput_filters=2\nhidden_filters=2\nactivation=leaky\n"
            "batch_normalize=0\nshortcut=0",
            inputs="height=2\nwidth=2\nchannels=1",
        )
    assert not [r for r in record if "unused" in str(r.message)]


def test_minidark_gradcheck_handles_recurrent_layers(tmp_path):
    """The public gradcheck (and `minidark gradcheck`) converts sublayers to float64
    and restores the carried state before every evaluation."""
    from minidark.testing import format_results, gradcheck

    path = tmp_path / "stack.cfg"
    path.write_text(
        "[net]\nbatch=2\ntime_steps=3\ninputs=5\n[lstm]\noutput=4\n[gru]\noutput=3\n"
        "tanh=1\n[rnn]\noutput=4\nactivation=tanh\nshortcut=1\n[connected]\noutput=3\n"
        "activation=linear\n[softmax]\n"
    )
    results = gradcheck(str(path), batch=2)
    assert len([r for r in results if r.index < 3]) == 17 + 13 + 7
    assert all(r.status == "ok" for r in results), format_results(results)


def test_batch_override_counts_every_time_step(tmp_path):
    import minidark

    path = tmp_path / "r.cfg"
    path.write_text("[net]\nbatch=8\ntime_steps=3\ninputs=4\n[rnn]\noutput=2\n")
    net = minidark.load_network(path, batch=2)
    assert net.batch == 6 and net.layers[0].batch == 2 and net.layers[0].steps == 3


def _conv3x3(x, weights, biases):
    """Naive 3x3 stride-1 pad-1 convolution: x (B, C, H, W), weights (N, C, 3, 3)."""
    batch, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((batch, weights.shape[0], h, w))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum(
                "bchw,nc->bnhw", padded[:, :, ky : ky + h, kx : kx + w], weights[:, :, ky, kx]
            )
    return out + biases[None, :, None, None]


def test_crnn_forward_matches_a_naive_recurrence(tmp_path):
    net = recurrent_net(
        tmp_path,
        "[crnn]\nhidden_filters=3\noutput_filters=2\nactivation=leaky",
        batch=2,
        steps=3,
        inputs="height=4\nwidth=3\nchannels=2",
    )
    l = net.layers[0]
    rng = np.random.default_rng(0)
    for name in l.saved:
        getattr(l, name)[...] = rng.normal(size=getattr(l, name).shape) * 0.5
    leaky = lambda v: np.where(v > 0, v, 0.1 * v)  # noqa: E731
    x = rng.uniform(-1, 1, (3, 2, 2, 4, 3)).astype(np.float32)  # (T, B, C, H, W)
    state = np.zeros((2, 3, 4, 3))
    for _ in range(2):  # the state carries
        out = net.forward(x.reshape(6, -1)).reshape(3, 2, 2, 4, 3)
        for t in range(3):
            u = leaky(_conv3x3(x[t], l.input_layer_weights, l.input_layer_biases))
            q = leaky(_conv3x3(state, l.self_layer_weights, l.self_layer_biases))
            state = u + q
            y = leaky(_conv3x3(state, l.output_layer_weights, l.output_layer_biases))
            np.testing.assert_allclose(out[t], y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "rnn_shortcut", "gru", "gru_tanh", "lstm"])
def test_fused_gemms_equal_the_step_by_step_path(tmp_path, kind):
    """Without batch norm the sublayers outside the recurrence run over all steps at
    once and the recurrent ones sum their parameter gradients in one GEMM: the same
    outputs, deltas and gradients as calling each sublayer step by step."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 4))
    results = []
    for fused in (True, False):
        net = to_float64_tree(recurrent_net(tmp_path, RECURRENT[kind], seed=5))
        l = net.layers[0]
        assert l.fused
        l.fused = fused
        for name in l.carried:
            getattr(l, name)[...] = 0.3
        net.input, net.train, net.delta = x, True, None
        l.forward(l, net)
        l.delta[...] = np.linspace(-1, 1, l.delta.size).reshape(l.delta.shape)
        net.delta = np.zeros_like(x)
        l.backward(l, net)
        results.append(
            [l.output.copy(), net.delta.copy(), l.delta.copy()]
            + [getattr(l, u).copy() for u in l.learned.values()]
        )
    for fused, stepwise in zip(*results, strict=True):
        np.testing.assert_allclose(fused, stepwise, rtol=1e-12, atol=1e-12)


def test_lstm_is_the_standard_lstm_in_torch_layout(tmp_path):
    """darknet's LSTM is torch.nn.LSTM without peepholes: with the weights mapped by
    lstm.torch_weights, torch's documented equations (gates i, f, g, o stacked) give
    the same outputs, from the same initial state, step after step."""
    from minidark.layers.lstm import torch_weights

    net = recurrent_net(tmp_path, RECURRENT["lstm"], batch=2, steps=4, seed=2)
    l = net.layers[0]
    rng = np.random.default_rng(1)
    for name in l.saved:
        getattr(l, name)[...] = rng.normal(size=getattr(l, name).shape) * 0.4
    state = torch_weights(l)
    assert state["weight_ih_l0"].shape == (20, 4) and state["weight_hh_l0"].shape == (20, 5)
    x = rng.uniform(-1, 1, (4, 2, 4)).astype(np.float32)
    out = net.forward(x.reshape(8, 4)).reshape(4, 2, 5)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, c = np.zeros((2, 5)), np.zeros((2, 5))
    for t in range(4):
        gates = (
            x[t] @ state["weight_ih_l0"].T
            + state["bias_ih_l0"]
            + h @ state["weight_hh_l0"].T
            + state["bias_hh_l0"]
        )
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(out[t], h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "body",
    [
        "[rnn]\noutput=4\nactivation=leaky\nbatch_normalize=1",
        "[gru]\noutput=4\nbatch_normalize=1",
        "[lstm]\noutput=4\nbatch_normalize=1",
    ],
)
def test_gradcheck_per_step_batch_norm_within_darknets_gap(tmp_path, body):
    """With batch_normalize the sublayers normalise each step's B rows (darknet), so
    darknet's BN backward gap of order 1/N applies with N = B: bounded by 4/N + 1e-3
    (a miswired step -- statistics or caches of another step -- is off by O(1))."""
    batch = 24
    net = recurrent_net(tmp_path, body, batch=batch, steps=3, seed=1)
    assert not net.layers[0].fused
    errors = gradcheck_recurrent(net, picks=6)
    assert max(errors.values()) < 4 / batch + 1e-3, errors
