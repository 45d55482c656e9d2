"""Adam (adam=1): darknet's GPU update against torch.optim.Adam's documented
algorithm, reimplemented in float64 numpy, and against the real torch.optim.Adam
when PyTorch is installed; moments kept through resize and resume."""

import io
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark
from minidark.cfg import parse_network, read_cfg_text
from minidark.train.trainer import Trainer, sidecar_path

from conftest import mnist_datasets


def torch_adam(params, grads, state, lr, betas, eps, weight_decay):
    """torch.optim.Adam (amsgrad=False, maximize=False) as its docs state it:
    g += wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)."""
    b1, b2 = betas
    state["t"] = t = state.get("t", 0) + 1
    for name, p in params.items():
        g = grads[name] + weight_decay * p
        m = state.setdefault(("m", name), np.zeros_like(p))
        v = state.setdefault(("v", name), np.zeros_like(p))
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def linear_net(batch, subdivisions, rate, decay, b1, b2, eps, inputs=5, outputs=3):
    text = (
        f"[net]\nbatch={batch}\nsubdivisions={subdivisions}\ninputs={inputs}\n"
        f"learning_rate={rate}\ndecay={decay}\nmomentum=0.9\nadam=1\n"
        f"B1={b1}\nB2={b2}\neps={eps}\n"
        f"[connected]\noutput={outputs}\nactivation=linear\n[cost]\ntype=sse\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adam=1 is implemented: no warning
        return parse_network(read_cfg_text(text), verbose=False, seed=3)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.sampled_from([1, 3, 4]),
    subdivisions=st.sampled_from([1, 2]),
    rate=st.floats(1e-4, 0.1),
    decay=st.sampled_from([0.0, 0.0005, 0.05]),
    b1=st.sampled_from([0.0, 0.5, 0.9]),
    b2=st.sampled_from([0.9, 0.999]),
    eps=st.sampled_from([1e-7, 1e-3, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_adam_matches_torch_formula_on_a_linear_model(
    batch, subdivisions, rate, decay, b1, b2, eps, seed
):
    """The sse loss 0.5|y - Wx - b|^2 has an exact float64 gradient, so the
    reference runs its own trajectory: darknet's update on summed gradients is
    torch's Adam on the mean loss with eps / B and weight_decay = decay,
    biases decayed too."""
    net = linear_net(batch * subdivisions, subdivisions, rate, decay, b1, b2, eps)
    layer = net.layers[0]
    rng = np.random.default_rng(seed)
    params = {
        "weights": layer.weights.astype(np.float64),
        "biases": layer.biases.astype(np.float64),
    }
    state = {}
    images = net.images_per_update
    for _ in range(4):
        x = rng.normal(size=(images, 5)).astype(np.float32)
        y = rng.normal(size=(images, 3)).astype(np.float32)
        residual = y - x.astype(np.float64) @ params["weights"].T - params["biases"]
        grads = {"weights": -residual.T @ x / images, "biases": -residual.sum(0) / images}
        torch_adam(params, grads, state, rate, (b1, b2), eps / images, decay)
        net.train_step(x, y)
        for name, p in params.items():
            np.testing.assert_allclose(getattr(layer, name), p, rtol=2e-4, atol=2e-5, err_msg=name)
    assert net.t == 4


CONV_BN = """[net]
batch=4
height=6
width=6
channels=2
learning_rate=0.01
decay=0.001
adam=1
[convolutional]
batch_normalize=1
filters=3
size=3
stride=1
pad=1
activation=leaky
[connected]
output=4
activation=linear
[softmax]
"""


def test_adam_steps_weights_biases_and_scales_from_the_layers_own_gradient():
    """One update per step: given the summed negative gradient the backward
    pass left in *_updates, each parameter moves as torch's Adam would; the
    *_updates are zeroed afterwards (darknet's fill_gpu(0))."""
    net = parse_network(read_cfg_text(CONV_BN), verbose=False, seed=1)
    conv = net.layers[0]
    assert conv.m.shape == conv.weights.shape and conv.scale_v.shape == conv.scales.shape
    rng = np.random.default_rng(0)
    names = [
        (conv, "weights", "weight_updates"),
        (conv, "biases", "bias_updates"),
        (conv, "scales", "scale_updates"),
        (net.layers[1], "weights", "weight_updates"),
    ]
    params = {i: getattr(l, p).astype(np.float64) for i, (l, p, _) in enumerate(names)}
    state = {}
    for _ in range(3):
        x = rng.normal(size=(4, 72)).astype(np.float32)
        y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 4)]
        for i, (l, p, _) in enumerate(names):
            getattr(l, p)[...] = params[i]  # both start from the same point
        net.forward(x, y, train=True)
        net.backward()
        grads = {i: -getattr(l, u).astype(np.float64) / 4 for i, (l, _, u) in enumerate(names)}
        net.update()
        torch_adam(params, grads, state, 0.01, (0.9, 0.999), 1e-7 / 4, 0.001)
        for i, (l, p, u) in enumerate(names):
            np.testing.assert_allclose(getattr(l, p), params[i], rtol=1e-4, atol=1e-6, err_msg=p)
            assert not getattr(l, u).any()


def test_adam_differs_from_sgd():
    """adam=1 used to train with SGD silently."""
    sgd = parse_network(read_cfg_text(CONV_BN.replace("adam=1", "adam=0")), verbose=False, seed=1)
    adam = parse_network(read_cfg_text(CONV_BN), verbose=False, seed=1)
    x = np.random.default_rng(0).normal(size=(4, 72)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)
    for net in (sgd, adam):
        net.train_step(x, y)
    assert sgd.layers[0].m is None
    assert not np.allclose(sgd.layers[0].weights, adam.layers[0].weights)


def test_resize_keeps_the_moments():
    net = parse_network(
        read_cfg_text(CONV_BN.replace("[connected]\noutput=4", "[avgpool]\n[connected]\noutput=4")),
        verbose=False,
        seed=1,
    )
    x = np.random.default_rng(0).normal(size=(4, 72)).astype(np.float32)
    net.train_step(x, np.eye(4, dtype=np.float32))
    m = net.layers[0].m
    net.resize(8, 8)
    assert net.layers[0].m is m and m.any()


RESUME_CFG = """[net]
batch=16
subdivisions=2
height=28
width=28
channels=1
learning_rate=0.002
decay=0.0005
adam=1
B1=0.8
B2=0.99
eps=1e-6
max_batches=12
backup_every=6
[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky
[connected]
output=10
activation=linear
[softmax]
"""


def adam_trainer(tmp_path, data, folder, weights=None, seed=5):
    cfg = tmp_path / "adam.cfg"
    cfg.write_text(RESUME_CFG)
    net = minidark.load_network(str(cfg), weights, seed=seed)
    return Trainer(
        net,
        data[0],
        data[1],
        backup_dir=tmp_path / folder,
        base="adam",
        seed=seed,
        progress=False,
        out=io.StringIO(),
    )


def test_adam_resume_is_exact(tmp_path):
    data = mnist_datasets(100, 50)
    straight = adam_trainer(tmp_path, data, "a")
    assert straight.run()["iterations"] == 12
    first = adam_trainer(tmp_path, data, "b")
    first.on_iteration = lambda t: t.request_stop() if t.net.current_batch == 6 else None
    assert first.run()["iterations"] == 6
    backup = str(tmp_path / "b" / "adam.backup")
    with np.load(sidecar_path(backup)) as sidecar:
        assert any(key.endswith("/scale_v") for key in sidecar.files)
    second = adam_trainer(tmp_path, data, "b", weights=backup, seed=999)
    assert "restored" in second.restore(backup)
    second.run()
    assert second.net.t == straight.net.t == 12
    for a, b in zip(straight.net.layers, second.net.layers, strict=True):
        for name in ("weights", "biases", "scales", "m", "v", "bias_m", "scale_v"):
            if getattr(a, name) is not None:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (tmp_path / "a" / "adam.weights").read_bytes() == (
        tmp_path / "b" / "adam.weights"
    ).read_bytes()


@pytest.mark.parametrize("key, value", [("B1", "1"), ("B2", "-0.1"), ("eps", "0")])
def test_adam_hyperparameters_out_of_range_are_errors(key, value):
    from minidark.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        parse_network(
            read_cfg_text(CONV_BN.replace("adam=1", f"adam=1\n{key}={value}")), verbose=False
        )


def test_bench_torch_twin_maps_adam_to_torch_adam(monkeypatch):
    """minidark bench --accuracy's twin: torch.optim.Adam(lr, (B1, B2), eps / B),
    decay on every parameter (a stand-in torch records the call)."""
    import sys
    import types

    from minidark.tools.bench.torch_twin import TorchNet

    calls = {}
    optim = types.SimpleNamespace(
        Adam=lambda params, **kw: calls.setdefault("adam", (params, kw)),
        SGD=lambda params, **kw: calls.setdefault("sgd", (params, kw)),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(optim=optim))
    net = parse_network(read_cfg_text(RESUME_CFG), verbose=False)
    module = types.SimpleNamespace(weight="w", bias="b")
    bn = types.SimpleNamespace(weight="gamma", bias="beta")
    twin = TorchNet(None, [(net.layers[0], module, bn), (net.layers[1], module, None)], net, 10)
    twin.optimizer()
    params, kw = calls["adam"]
    assert kw == {"lr": net.current_rate(), "betas": (0.8, 0.99), "eps": 1e-6 / 16}
    assert all(group["weight_decay"] == 0.0005 for group in params)
    assert sorted(p for group in params for p in group["params"]) == [
        "b",
        "beta",
        "gamma",
        "w",
        "w",
    ]


# --------------------------------------------------- the real torch.optim.Adam
def torch_module():
    return pytest.importorskip("torch", reason="PyTorch is needed to compare with torch.optim.Adam")


MLP_TWO_SUBDIVISIONS = """[net]
batch=6
subdivisions=2
inputs=12
learning_rate=0.01
decay=0.01
adam=1
B1=0.8
B2=0.99
eps=1e-4
[connected]
output=8
activation=leaky
[connected]
output=5
activation=linear
[softmax]
"""

CONV_NO_BN = """[net]
batch=4
height=6
width=6
channels=2
learning_rate=0.003
decay=0.0005
adam=1
[convolutional]
filters=3
size=3
stride=1
pad=1
activation=relu
[maxpool]
size=2
stride=2
[connected]
output=4
activation=linear
[softmax]
"""


def one_hot_batches(net, steps, seed):
    rng = np.random.default_rng(seed)
    rows, classes = net.images_per_update, net.output_layer.outputs
    for _ in range(steps):
        x = rng.normal(size=(rows, net.inputs)).astype(np.float32)
        yield x, rng.integers(0, classes, rows)


def torch_parameters(twin):
    """(minidark layer, attribute, torch parameter) for every trained parameter."""
    for layer, module, bn in twin.pairs:
        yield layer, "weights", module.weight
        if bn is None:
            yield layer, "biases", module.bias
        else:
            yield layer, "scales", bn.weight
            yield layer, "biases", bn.bias


def darknet_adam_in_torch(torch, parameters, net):
    """adam.py's mapping: lr, (B1, B2), eps / B, weight_decay = decay on every
    parameter, for the *mean* loss over the B = batch * subdivisions images."""
    c = net.config
    return torch.optim.Adam(
        parameters,
        lr=net.current_rate(),
        betas=(c.B1, c.B2),
        eps=c.eps / net.images_per_update,
        weight_decay=c.decay,
    )


def largest_difference(pairs):
    return max(
        float(
            np.abs(
                getattr(layer, name) - p.detach().numpy().reshape(getattr(layer, name).shape)
            ).max()
        )
        for layer, name, p in pairs
    )


@pytest.mark.parametrize("cfg", [MLP_TWO_SUBDIVISIONS, CONV_NO_BN], ids=["mlp", "conv"])
def test_adam_trains_as_torch_optim_adam(cfg):
    """Both engines train from the same weights on the same batches: minidark
    with adam=1, PyTorch with torch.optim.Adam (autograd, mean cross-entropy).
    Every parameter agrees to float32 tolerance after each of 8 updates."""
    torch = torch_module()
    from minidark.tools.bench.torch_twin import build_torch_model

    net = parse_network(read_cfg_text(cfg), verbose=False, seed=11)
    twin = build_torch_model(net)  # nn modules with minidark's initial weights
    pairs = list(torch_parameters(twin))
    optimizer = darknet_adam_in_torch(torch, [p for _, _, p in pairs], net)
    classes = net.output_layer.outputs
    for x, labels in one_hot_batches(net, 8, seed=2):
        net.train_step(x, np.eye(classes, dtype=np.float32)[labels])
        optimizer.zero_grad()
        logits = twin.model(torch.from_numpy(x))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
        optimizer.step()
        for layer, name, p in pairs:
            np.testing.assert_allclose(
                getattr(layer, name),
                p.detach().numpy().reshape(getattr(layer, name).shape),
                rtol=1e-4,
                atol=2e-6,
                err_msg=f"layer {layer.index} {name}",
            )
    assert net.t == 8
    assert largest_difference(pairs) < 1e-5


def test_adam_with_batch_norm_follows_torch_optim_adam():
    """Batch norm: darknet's backward is not autograd's of its forward (unbiased
    forward variance, ``/ N`` and a different eps in the backward), so here
    torch.optim.Adam steps its own copy of the parameters on darknet's gradient
    *at those parameters* (a second network evaluated there), and minidark's
    adam=1 trajectory must stay on torch's for weights, biases and scales."""
    torch = torch_module()
    from minidark.tools.bench.torch_twin import build_torch_model

    cfg = CONV_BN.replace("batch=4", "batch=8\nsubdivisions=2").replace(
        "adam=1", "adam=1\nB1=0.85\neps=1e-5"
    )
    net = parse_network(read_cfg_text(cfg), verbose=False, seed=4)
    probe = parse_network(read_cfg_text(cfg), verbose=False, seed=4)  # darknet's gradient
    twin = build_torch_model(net)
    pairs = list(torch_parameters(twin))
    optimizer = darknet_adam_in_torch(torch, [p for _, _, p in pairs], net)
    probe_pairs = [(probe.layers[layer.index], name, p) for layer, name, p in pairs]
    updates = {"weights": "weight_updates", "biases": "bias_updates", "scales": "scale_updates"}
    rows = net.images_per_update
    for x, labels in one_hot_batches(net, 6, seed=9):
        truth = np.eye(4, dtype=np.float32)[labels]
        net.train_step(x, truth)
        for layer, name, p in probe_pairs:
            getattr(layer, name)[...] = p.detach().numpy().reshape(getattr(layer, name).shape)
        for start in range(0, rows, probe.batch):  # both subdivisions, summed
            probe.forward(x[start : start + probe.batch], truth[start : start + probe.batch], True)
            probe.backward()
        for layer, name, p in probe_pairs:
            summed = getattr(layer, updates[name])  # minus the summed gradient
            p.grad = torch.from_numpy(-summed.reshape(p.shape) / rows)
            summed.fill(0)
        optimizer.step()
        for layer, name, p in pairs:
            np.testing.assert_allclose(
                getattr(layer, name),
                p.detach().numpy().reshape(getattr(layer, name).shape),
                rtol=1e-4,
                atol=2e-6,
                err_msg=f"layer {layer.index} {name}",
            )
    assert net.t == 6 and net.layers[0].scale_v.any()
    assert largest_difference(pairs) < 1e-5


def test_bench_twin_optimizer_is_torch_optim_adam_for_adam_cfgs():
    """The twin minidark bench --accuracy trains, with the real torch: its
    optimiser is Adam and takes the same steps as minidark's adam=1."""
    torch = torch_module()
    from minidark.tools.bench.torch_twin import build_torch_model

    net = parse_network(read_cfg_text(MLP_TWO_SUBDIVISIONS), verbose=False, seed=11)
    twin = build_torch_model(net)
    optimizer = twin.optimizer()
    assert isinstance(optimizer, torch.optim.Adam)
    pairs = list(torch_parameters(twin))
    for x, labels in one_hot_batches(net, 5, seed=3):
        net.train_step(x, np.eye(5, dtype=np.float32)[labels])
        optimizer.zero_grad()
        for half in np.split(np.arange(len(x)), net.subdivisions):  # as bench's twin trains
            logits = twin.model(torch.from_numpy(x[half]))
            twin.loss(logits, torch.from_numpy(labels[half])).backward()
        optimizer.step()
    assert largest_difference(pairs) < 1e-5
