"""minidark bench: the PyTorch twin is the same network with the same SGD, and
the tool's plumbing (workers, threads, per-process peaks, JSON) works.
No test asserts a timing."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minidark
from minidark import cli
from minidark.tools import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "cfg", "mnist_mlp.cfg")

NET = """[net]
batch={batch}
subdivisions={subdivisions}
height={h}
width={w}
channels={c}
learning_rate=0.1
momentum=0.9
decay=0.01
"""

MLP_CFG = (
    NET
    + """
[connected]
output=32
activation=relu

[connected]
output=16
activation={act}

[connected]
output=10
activation=linear

[softmax]
"""
)

# LeNet's shape: conv 5x5 pad=1 (-> padding 2), maxpool 2/2, twice
LENET_CFG = (
    NET
    + """
[convolutional]
filters=4
size=5
stride=1
pad=1
activation=relu

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=5
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=12
activation=relu

[dropout]
probability=.5

[connected]
output=10
activation=linear

[softmax]
"""
)

# odd sizes: darknet's maxpool padding (size - 1, window offset -padding/2)
POOL_CFG = (
    NET
    + """
[convolutional]
filters=3
size=3
stride={conv_stride}
padding={conv_padding}
activation=logistic

[maxpool]
size={size}
stride={stride}
{padding}

[connected]
output=5
activation=tanh

[softmax]
"""
)


def write(tmp_path, text, name="net.cfg", **values):
    fields = dict(batch=4, subdivisions=1, h=28, w=28, c=1, act="relu")
    fields.update(values)
    path = tmp_path / name
    path.write_text(text.format(**fields))
    return str(path)


def batch_of(net, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((net.batch, net.inputs), np.float32)
    labels = rng.integers(0, net.output_layer.outputs, net.batch)
    truth = np.zeros((net.batch, net.output_layer.outputs), np.float32)
    truth[np.arange(net.batch), labels] = 1
    return x, labels, truth


def torch_probabilities(twin, x):
    import torch

    twin.model.eval()
    with torch.no_grad():
        return torch.softmax(twin.model(torch.from_numpy(x)), 1).numpy()


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


# --------------------------------------------------------------- structure
def test_mlp_twin_has_the_same_layers_and_parameters():
    torch = pytest.importorskip("torch")
    net = minidark.load_network(MLP, batch=1, seed=0)
    twin = bench.build_torch_model(net)
    linears = [m for m in twin.model if isinstance(m, torch.nn.Linear)]
    layers = [l for l in net.layers if l.type == "connected"]
    assert (
        [(m.in_features, m.out_features) for m in linears]
        == [(l.inputs, l.outputs) for l in layers]
        == [(784, 512), (512, 10)]
    )
    assert sum(p.numel() for p in twin.model.parameters()) == net.params == 407050
    for layer, module in zip(layers, linears, strict=True):
        assert np.array_equal(module.weight.detach().numpy(), layer.weights)
        assert np.array_equal(module.bias.detach().numpy(), layer.biases)


def test_lenet_sizes_match_layer_by_layer(tmp_path):
    torch = pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, LENET_CFG), seed=0)
    assert [(l.out_h, l.out_c) for l in net.layers[:4]] == [(28, 4), (14, 4), (14, 6), (7, 6)]
    twin = bench.build_torch_model(net)
    convs = [m for m in twin.model if isinstance(m, torch.nn.Conv2d)]
    assert [m.padding for m in convs] == [(2, 2), (2, 2)]
    # run the modules one by one and collect NCHW shapes after each conv / pool
    x = torch.zeros(2, net.inputs)
    shapes = []
    for module in twin.model:
        x = module(x)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(l.out_c, l.out_h, l.out_w) for l in net.layers[:4]]
    assert sum(p.numel() for p in twin.model.parameters()) == net.params


@pytest.mark.parametrize("name", ["mnist_mlp.cfg", "mnist_lenet.cfg"])
def test_shipped_cfgs_have_an_exact_torch_twin(name):
    torch = pytest.importorskip("torch")
    net = minidark.load_network(os.path.join(ROOT, "cfg", name), batch=3, seed=0)
    twin = bench.build_torch_model(net)
    assert sum(p.numel() for p in twin.model.parameters()) == net.params
    x = torch.zeros(3, net.inputs)
    sizes = []
    for module in twin.model:
        x = module(x)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            sizes.append(x.shape[-1])
    if name == "mnist_lenet.cfg":  # 28 -> conv 5x5 pad 2 -> 28 -> 14 -> 14 -> 7
        assert sizes == [28, 14, 14, 7]
    xs, _, _ = batch_of(net)
    assert close(net.predict(xs), torch_probabilities(twin, xs))


@pytest.mark.parametrize(
    "size,stride,padding,h",
    [
        (2, 2, "", 28),
        (2, 2, "", 7),
        (3, 2, "", 7),
        (3, 1, "padding=0", 7),
        (2, 1, "", 7),
        (3, 2, "padding=1", 9),
        (3, 3, "padding=4", 8),
    ],
)
def test_maxpool_outputs_match_darknet_sizes_and_values(tmp_path, size, stride, padding, h):
    torch = pytest.importorskip("torch")
    cfg = write(
        tmp_path,
        POOL_CFG,
        h=h,
        w=h,
        c=2,
        conv_stride=1,
        conv_padding=1,
        size=size,
        stride=stride,
        padding=padding,
    )
    net = minidark.load_network(cfg, seed=1)
    pool = net.layers[1]
    twin = bench.build_torch_model(net)
    x = torch.rand(3, net.inputs)
    out = twin.model[:4](x) if isinstance(twin.model[3], torch.nn.MaxPool2d) else twin.model[:5](x)
    assert tuple(out.shape[1:]) == (pool.out_c, pool.out_h, pool.out_w)
    xs, _, _ = batch_of(net, seed=2)
    assert close(net.predict(xs), torch_probabilities(twin, xs))


# ------------------------------------------------------------- same numbers
@pytest.mark.parametrize(
    "cfg_text,act",
    [
        (MLP_CFG, "relu"),
        (MLP_CFG, "logistic"),
        (MLP_CFG, "tanh"),
        (MLP_CFG, "leaky"),
        (LENET_CFG, "relu"),
    ],
)
def test_forward_outputs_match(tmp_path, cfg_text, act):
    pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, cfg_text, act=act), seed=3)
    twin = bench.build_torch_model(net)
    x, _, _ = batch_of(net)
    assert close(net.predict(x), torch_probabilities(twin, x))


def sgd_steps_match(tmp_path, cfg_text, steps=3, **values):
    torch = pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, cfg_text, **values), seed=4)
    rng = np.random.default_rng(5)
    for layer in net.layers:  # nonzero biases, so decay on them would show
        if getattr(layer, "biases", None) is not None:
            layer.biases[:] = rng.uniform(-1, 1, layer.biases.shape)
    twin = bench.build_torch_model(net)
    opt = twin.optimizer()
    twin.model.train()
    for step in range(steps):
        x, labels, truth = batch_of(net, seed=10 + step)
        net.forward(x, truth, train=True)
        net.backward()
        net.update()
        opt.zero_grad()
        loss = twin.loss(twin.model(torch.from_numpy(x)), torch.from_numpy(labels))
        loss.backward()
        opt.step()
        # darknet's cost is the summed cross-entropy of the batch
        assert abs(net.cost / net.batch - float(loss.detach()) * net.subdivisions) < 1e-4
    for layer, module, _ in twin.pairs:
        assert close(layer.weights, module.weight.detach().numpy().reshape(layer.weights.shape)), (
            f"layer {layer.index} weights differ after {steps} SGD steps"
        )
        assert close(layer.biases, module.bias.detach().numpy()), (
            f"layer {layer.index} biases differ after {steps} SGD steps"
        )


def test_sgd_momentum_and_decay_match_torch_mlp(tmp_path):
    sgd_steps_match(tmp_path, MLP_CFG, batch=8)


def test_sgd_batch_semantics_with_subdivisions(tmp_path):
    # batch=8, subdivisions=2: net.batch 4, update divides by B = 8
    sgd_steps_match(tmp_path, MLP_CFG, batch=8, subdivisions=2)


def test_sgd_matches_torch_through_conv_and_maxpool(tmp_path):
    no_dropout = LENET_CFG.replace("[dropout]\nprobability=.5\n", "")
    sgd_steps_match(tmp_path, no_dropout, steps=2, h=12, w=12)


def test_sgd_matches_through_odd_maxpool(tmp_path):
    sgd_steps_match(
        tmp_path,
        POOL_CFG,
        steps=2,
        h=7,
        w=7,
        c=2,
        conv_stride=2,
        conv_padding=1,
        size=2,
        stride=1,
        padding="",
    )


def test_decay_applies_to_weights_only(tmp_path):
    pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, MLP_CFG), seed=0)
    twin = bench.build_torch_model(net)
    decayed = {
        id(p)
        for g in twin.optimizer().param_groups
        if g["weight_decay"] == 0.01
        for p in g["params"]
    }
    assert {id(m.weight) for _, m, _ in twin.pairs} == decayed
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.1 for g in twin.optimizer().param_groups)


def test_batch_norm_maps_to_torch_batchnorm(tmp_path):
    torch = pytest.importorskip("torch")
    text = LENET_CFG.replace(
        "activation=relu\n\n[maxpool]", "activation=relu\nbatch_normalize=1\n\n[maxpool]", 1
    )
    net = minidark.load_network(write(tmp_path, text), seed=0)
    twin = bench.build_torch_model(net)
    conv, norm = twin.pairs[0][1:]
    assert conv.bias is None and isinstance(norm, torch.nn.BatchNorm2d)
    count = (
        sum(p.numel() for p in twin.model.parameters())
        + norm.running_mean.numel()
        + norm.running_var.numel()
    )
    assert count == net.params
    x, _, _ = batch_of(net)  # inference: rolling statistics, epsilons differ by ~1e-6
    assert close(net.predict(x), torch_probabilities(twin, x))


@pytest.mark.parametrize(
    "change,needle",
    [
        (("activation=linear\n\n[softmax]", "activation=elu\n\n[softmax]"), "activation 'elu'"),
        (("[softmax]", "[softmax]\ntemperature=2"), "temperature"),
        (("[softmax]", "[cost]\ntype=sse"), "layer type 'cost'"),
    ],
)
def test_unmappable_layers_raise_a_clear_error(tmp_path, change, needle):
    pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, MLP_CFG.replace(*change)), seed=0)
    with pytest.raises(bench.UnsupportedForTorch, match="unsupported for torch comparison") as err:
        bench.build_torch_model(net)
    assert needle in str(err.value)


# ---------------------------------------------------------------- FLOPs
def test_gemm_shapes_account_for_the_forward_flops(tmp_path):
    for text in (MLP_CFG, LENET_CFG):
        net = minidark.load_network(write(tmp_path, text), seed=0)
        shapes = bench.gemm_shapes(net)
        gemm_layers = [l for l in net.layers if l.type in ("connected", "convolutional")]
        flops = sum(2 * m * k * n * g for m, k, n, g in shapes["eval"])
        assert flops == net.batch * sum(l.flops for l in gemm_layers)
        train = sum(2 * m * k * n * g for m, k, n, g in shapes["train"])
        assert train == net.batch * (3 * sum(l.flops for l in gemm_layers) - net.layers[0].flops)


def test_training_flops_skip_the_first_input_gradient():
    net = minidark.load_network(MLP, batch=1)
    assert bench.forward_flops(net) == sum(l.flops for l in net.layers)
    assert bench.training_flops(net) == 3 * bench.forward_flops(net) - 2 * 784 * 512


# ------------------------------------------------------------ the tool
def run_bench(*args):
    done = subprocess.run(
        [sys.executable, "-m", "minidark.tools.bench", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_json_minidark_only_records_threads_and_blas(tmp_path):
    cfg = write(tmp_path, MLP_CFG, batch=16, h=8, w=8)
    out = json.loads(
        run_bench(
            cfg,
            "--json",
            "--no-torch",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--eval-rows",
            "40",
            "--eval-passes",
            "1",
            "--gemm-size",
            "64",
            "--threads",
            "1",
        )
    )
    assert out["meta"]["threads"] == 1
    assert any("(1 threads)" in pool for pool in out["meta"]["gemm"]["blas"])
    (entry,) = out["results"]
    assert entry["torch"] is None and "no-torch" in entry["torch_error"]
    md = entry["minidark"]
    assert md["train_img_s"] > 0 and md["eval_img_s"] > 0
    assert md["train_peak_rss_mb"] >= md["rss_after_import_mb"] > 0
    assert all("(1 threads)" in pool for pool in md["pools"] if "openblas" in pool)
    assert entry["gemm_limit_img_s"]["train"] > 0
    assert entry["data"].startswith("random")  # 8x8 inputs: not MNIST
    assert entry["ratios"] == {}


def test_bench_table_with_torch_prints_ratios():
    pytest.importorskip("torch")
    out = run_bench(
        MLP,
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--eval-rows",
        "256",
        "--eval-passes",
        "1",
        "--gemm-size",
        "64",
        "--train-batches",
        "1",
    )
    assert "minidark/PyTorch" in out and "training img/s" in out
    assert "MNIST" in out  # the real data is used when present
    row = next(line for line in out.splitlines() if "training img/s" in line)
    assert len(row.split()) >= 5  # minidark, PyTorch and the ratio


def test_worker_sets_threads_and_measures_its_own_peak(tmp_path):
    # the parent holds ~200 MB; on Linux ru_maxrss would carry that into the child
    ballast = np.ones(50_000_000, np.float32)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "minidark.tools.bench",
            "--worker",
            "gemm",
            "--threads",
            "2",
            "--gemm-size",
            "32",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=bench.worker_environment(2),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == 2
    assert any("openblas" in p and "(2 threads)" in p for p in result["pools"])
    assert 0 < result["peak_rss_mb"] < ballast.nbytes / 2**20
    assert result["gflops"] > 0


def test_bad_arguments_exit_nonzero_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "minidark.tools.bench", "no/such.cfg"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such cfg" in done.stderr


def test_format_table_labels_noise_and_missing_torch():
    meta = {
        "date": "d",
        "cpu": "cpu",
        "cpu_count": 2,
        "threads": 2,
        "numpy": "2",
        "torch": None,
        "repeats": 3,
        "steps": 5,
        "warmup": 1,
        "eval_passes": 1,
        "gemm": {"size": 64, "gflops": 10.0, "gflops_runs": [10.0], "blas": ["openblas"]},
    }
    md = {
        key: 1.0
        for key in (
            "train_img_s",
            "eval_img_s",
            "train_peak_rss_mb",
            "eval_peak_rss_mb",
            "rss_after_import_mb",
            "train_gemm_fraction",
            "eval_gemm_fraction",
        )
    }
    entry = {
        "cfg": "x.cfg",
        "batch": 2,
        "params": 3,
        "forward_flops": 10,
        "training_flops": 20,
        "data": "random",
        "torch_error": "PyTorch not installed",
        "minidark": md,
        "torch": None,
        "ratios": {},
        "gemm_limit_img_s": {"train": 1.0, "eval": 2.0},
    }
    text = bench.format_table({"meta": meta, "results": [entry]})
    assert "noisy" in text and "PyTorch not installed" in text and "x.cfg" in text


def test_cli_wires_the_bench_subcommand(capsys):
    from minidark import cli

    assert cli.main(["bench", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--no-torch" in help_text and "--accuracy" in help_text and "--seeds" in help_text
    assert cli.main(["bench", "no/such.cfg"]) == 2
    assert "no such cfg" in capsys.readouterr().err


# ------------------------------------------------------------ accuracy mode
# steps policy with burn-in, 2 subdivisions, and a layer with its own rate scale
SCHEDULE_CFG = (
    NET
    + """burn_in=2
policy=steps
steps=3,5
scales=.5,.1

[connected]
output=16
activation=relu
learning_rate=0.5

[connected]
output=10
activation=linear

[softmax]
"""
)
# n = seen / (batch * subdivisions) after each iteration's rows: 1, 2, ..., 7
SCHEDULE = [0.1 * (1 / 2) ** 4, 0.1, 0.05, 0.05, 0.005, 0.005, 0.005]


def random_rows(rows, inputs, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, inputs), np.float32), rng.integers(0, 10, rows)


def test_epoch_order_is_a_fresh_permutation_per_epoch():
    order = bench.epoch_order(12, 3, 4, seed=5)
    assert order.shape == (9, 4) and order.dtype == np.int64
    epochs = order.reshape(3, 12)
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(order, bench.epoch_order(12, 3, 4, seed=5))
    assert not np.array_equal(order, bench.epoch_order(12, 3, 4, seed=6))
    # 2 epochs of 10 rows in iterations of 6: 20 // 6 = 3 iterations, crossing an epoch
    crossing = bench.epoch_order(10, 2, 6, seed=0)
    assert crossing.shape == (3, 6) and sorted(crossing.ravel()[:10]) == list(range(10))


def test_accuracy_rates_are_minidarks_policy_at_every_iteration(tmp_path):
    pytest.importorskip("torch")
    cfg = write(tmp_path, SCHEDULE_CFG, batch=6, subdivisions=2, h=4, w=4)  # 2 x 3 rows
    net = minidark.load_network(cfg, seed=1)
    twin = bench.build_torch_model(minidark.load_network(cfg, seed=1))
    twin_start = {l.index: l.weights.copy() for l, _, _ in twin.pairs}
    images, labels = random_rows(30, net.inputs)
    order = bench.epoch_order(30, 2, 6, seed=0)[: len(SCHEDULE)]
    # minidark: what every layer's update received
    seen_by_layer = {i: [] for i, l in enumerate(net.layers) if l.update is not None}
    for i in seen_by_layer:

        def spy(l, args, update=net.layers[i].update, i=i):
            seen_by_layer[i].append(args.learning_rate * l.learning_rate_scale)
            update(l, args)

        net.layers[i].update = spy
    md_rates = []
    bench.train_minidark(net, images, labels, order, md_rates)
    # PyTorch: every parameter's lr when each step runs
    opt = twin.optimizer()
    owner = {
        id(p): layer.learning_rate_scale
        for layer, module, _ in twin.pairs
        for p in (module.weight, module.bias)
    }
    stepped = []
    opt.register_step_pre_hook(
        lambda o, a, k: stepped.append(
            [(owner[id(p)], g["lr"]) for g in o.param_groups for p in g["params"]]
        )
    )
    pt_rates = []
    bench.train_torch(
        twin, minidark.load_network(cfg, seed=1), images, labels, order, pt_rates, optimizer=opt
    )
    assert md_rates == pt_rates == pytest.approx(SCHEDULE, rel=1e-12)
    assert len(stepped) == len(SCHEDULE)
    for rate, params in zip(SCHEDULE, stepped, strict=True):
        assert {scale for scale, _ in params} == {0.5, 1.0}
        assert all(lr == pytest.approx(rate * scale, rel=1e-12) for scale, lr in params)
    for i, rates in seen_by_layer.items():
        scale = net.layers[i].learning_rate_scale
        assert rates == pytest.approx([r * scale for r in SCHEDULE], rel=1e-12)
    # and the changing rates act the same: no dropout here, so the weights agree
    trained = [l for l in net.layers if getattr(l, "weights", None) is not None]
    assert len(trained) == len(twin.pairs) == 2
    for layer, (_, module, _) in zip(trained, twin.pairs, strict=True):
        assert not close(layer.weights, twin_start[layer.index], 1e-3)  # they moved
        assert close(
            module.weight.detach().numpy().reshape(layer.weights.shape), layer.weights, 1e-4
        )
        assert close(module.bias.detach().numpy(), layer.biases, 1e-4)


def test_accuracy_engines_see_the_same_batch_order(tmp_path):
    pytest.importorskip("torch")
    cfg = write(tmp_path, MLP_CFG, batch=8, subdivisions=2, h=4, w=4)  # 2 x 4 rows
    net = minidark.load_network(cfg, seed=0)
    twin = bench.build_torch_model(minidark.load_network(cfg, seed=0))
    images, labels = random_rows(24, net.inputs, seed=3)
    order = bench.epoch_order(24, 2, 8, seed=7)  # 6 iterations of 2 x 4 rows
    md_x, md_y = [], []
    train_step = net.train_step

    def spy_step(x, truth):
        md_x.append(np.array(x))
        md_y.append(truth.argmax(1))
        return train_step(x, truth)

    net.train_step = spy_step
    bench.train_minidark(net, images, labels, order)
    pt_x, pt_y = [], []
    twin.model.register_forward_pre_hook(lambda m, inputs: pt_x.append(inputs[0].numpy().copy()))
    loss = twin.loss
    twin.loss = lambda logits, y: (pt_y.append(y.numpy().copy()), loss(logits, y))[1]
    bench.train_torch(twin, minidark.load_network(cfg, seed=0), images, labels, order)
    assert len(md_x) == 6 and len(pt_x) == 12  # micro-batches of 4
    assert np.array_equal(np.concatenate(md_x), images[order.ravel()])
    assert np.array_equal(np.concatenate(pt_x), images[order.ravel()])
    assert np.array_equal(np.concatenate(md_y), labels[order.ravel()])
    assert np.array_equal(np.concatenate(pt_y), labels[order.ravel()])


@pytest.mark.slow
def test_accuracy_run_reports_both_engines_per_seed():
    pytest.importorskip("torch")
    # 20 iterations of the MLP on the first 2,560 MNIST rows, two seeds
    out = json.loads(
        run_bench(
            MLP,
            "--accuracy",
            "1",
            "--train-rows",
            "2560",
            "--seeds",
            "0,1",
            "--threads",
            "1",
            "--json",
        )
    )
    meta = out["meta"]
    assert (meta["mode"], meta["epochs"], meta["seeds"], meta["train_rows"], meta["threads"]) == (
        "accuracy",
        1,
        [0, 1],
        2560,
        1,
    )
    (entry,) = out["results"]
    assert entry["iterations"] == 20 and entry["rows_per_iteration"] == 128
    assert entry["torch_error"] is None
    assert entry["same_rates"] and entry["same_initial_weights"] and entry["same_order"]
    assert entry["rate_schedule"] == [[1, 0.2]]  # steps at 400 and 938: not reached
    for engine in ("minidark", "torch"):
        runs = entry["runs"][engine]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(r["iterations"] == 20 and r["test_rows"] == 10000 for r in runs)
        assert all(60 < 100 * r["top1"] < 99 and r["train_s"] > 0 and r["eval_s"] > 0 for r in runs)
        assert all(r["last_epoch_loss"] < r["first_loss"] for r in runs)
        assert any("(1 threads)" in p for p in runs[0]["pools"])
        summary = entry[engine]["top1_pct"]
        assert summary["values"] == pytest.approx([100 * r["top1"] for r in runs])
        assert summary["std"] is not None and summary["min"] <= summary["mean"] <= summary["max"]
    # different seeds start from different weights
    assert (
        entry["runs"]["minidark"][0]["initial_weights"]
        != entry["runs"]["minidark"][1]["initial_weights"]
    )
    diff = entry["difference_points"]
    assert len(diff["values"]) == 2 and abs(diff["mean"]) < 5
    assert entry["within_target"] == (abs(diff["mean"]) <= 0.3)
    text = bench.format_accuracy_table(out)
    assert "minidark top-1" in text and "PyTorch top-1" in text and "± " in text
    assert "same initial weights: yes" in text and "target" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--accuracy", "1", "--seeds", "0,x"], "--seeds"),
        (["--accuracy", "0"], "--accuracy must be >= 1"),
        (["--seeds", "0,1"], "need --accuracy"),
        pytest.param(
            ["--accuracy", "1", "--train-rows", "99999999"],
            "training rows",
            marks=pytest.mark.mnist,
        ),
    ],
)
def test_accuracy_bad_arguments_are_one_line(capsys, args, needle):
    assert cli.main(["bench", MLP, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0


@pytest.mark.mnist
def test_accuracy_needs_an_mnist_shaped_cfg(tmp_path, capsys):
    cfg = write(tmp_path, MLP_CFG, h=8, w=8)
    assert cli.main(["bench", cfg, "--accuracy", "1"]) == 2
    assert "784 inputs" in capsys.readouterr().err


def test_workers_drop_a_pinned_blas_kernel_unless_kept(monkeypatch):
    from minidark.tools import bench

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    kept = bench.worker_environment(1)
    assert kept["OPENBLAS_CORETYPE"] == "Haswell" and kept["OPENBLAS_NUM_THREADS"] == "1"
    native = bench.worker_environment(1, native_blas=True)
    assert "OPENBLAS_CORETYPE" not in native and "OPENBLAS_L2_SIZE" not in native
    assert native["OPENBLAS_NUM_THREADS"] == "1"
    assert "dropped" in bench.kernel_note({"pinned_kernel": "Haswell", "native_blas": True})[0]
    assert "--keep-blas-kernel" in bench.kernel_note({"pinned_kernel": "Haswell"})[0]
    assert bench.kernel_note({"pinned_kernel": None, "native_blas": True}) == []
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args([]).native_blas is True
    assert parser.parse_args(["--keep-blas-kernel"]).native_blas is False


def test_suite_runs_every_row_with_its_target(tmp_path, monkeypatch, capsys):
    """--suite: inference rows against OpenCV (with each engine's peak RSS) and
    training rows against PyTorch, each with its target, as a table and JSON
    (here one small row of each kind, minidark alone on the training side)."""
    from minidark.tools.bench import suite

    cfg = write(tmp_path, MLP_CFG, batch=4, h=8, w=8)
    monkeypatch.setattr(suite, "INFERENCE_ROWS", (("yolov3-tiny.cfg", 64, 1, 1, 0.8),))
    monkeypatch.setattr(
        suite, "TRAINING_ROWS", ((cfg, 16, 2, 40, None, 1.2), (cfg, 8, 2, 40, 2, 1.0))
    )
    flags = "--suite --no-torch --repeats 1 --warmup 1 --eval-passes 1 --gemm-size 64 --json"
    assert cli.main(["bench", *flags.split()]) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["inference"]
    assert row["target"] == 0.8 and row["ratio"] > 0 and row["batch"] == 1
    assert row["peak_rss_mb"]["minidark"] > 0 and row["peak_rss_mb"]["opencv"] > 0
    entry, more_pairs = result["training"]["results"]
    assert entry["batch"] == 16 and entry["target"] == 1.2  # the batch override
    assert entry["minidark"]["train_img_s"] > 0
    assert entry["pairs"] == 1 and more_pairs["pairs"] == 2  # --repeats, or the row's own
    assert more_pairs["batch"] == 8 and more_pairs["target"] == 1.0
    table = suite.format_suite(result)
    assert re.search(r"yolov3-tiny\.cfg 64x64 b1 +inference .* >=0\.8 +(yes|NO)", table)
    assert re.search(r"yolov3-tiny\.cfg 64x64 b1 +inference +\d+ MB +OpenCV +\d+ MB", table)
    assert re.search(r"b16 +training +\d+ img/s +PyTorch - ", table)
