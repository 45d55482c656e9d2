"""minidark bench: the PyTorch twin is the same network with the same SGD, and
the tool's plumbing (workers, threads, per-process peaks, JSON) works.
No test asserts a timing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minidark
from minidark import bench

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

MLP_CFG = NET + """
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

# LeNet's shape: conv 5x5 pad=1 (-> padding 2), maxpool 2/2, twice
LENET_CFG = NET + """
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

# odd sizes: darknet's maxpool padding (size - 1, window offset -padding/2)
POOL_CFG = NET + """
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
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(l.inputs, l.outputs) for l in layers] == [(784, 512), (512, 10)]
    assert sum(p.numel() for p in twin.model.parameters()) == net.params == 407050
    for layer, module in zip(layers, linears):
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
    if name == "mnist_lenet.cfg":      # 28 -> conv 5x5 pad 2 -> 28 -> 14 -> 14 -> 7
        assert sizes == [28, 14, 14, 7]
    xs, _, _ = batch_of(net)
    assert close(net.predict(xs), torch_probabilities(twin, xs))


@pytest.mark.parametrize("size,stride,padding,h", [
    (2, 2, "", 28), (2, 2, "", 7), (3, 2, "", 7), (3, 1, "padding=0", 7),
    (2, 1, "", 7), (3, 2, "padding=1", 9), (3, 3, "padding=4", 8)])
def test_maxpool_outputs_match_darknet_sizes_and_values(tmp_path, size, stride, padding, h):
    torch = pytest.importorskip("torch")
    cfg = write(tmp_path, POOL_CFG, h=h, w=h, c=2, conv_stride=1, conv_padding=1,
                size=size, stride=stride, padding=padding)
    net = minidark.load_network(cfg, seed=1)
    pool = net.layers[1]
    twin = bench.build_torch_model(net)
    x = torch.rand(3, net.inputs)
    out = twin.model[:4](x) if isinstance(twin.model[3], torch.nn.MaxPool2d) \
        else twin.model[:5](x)
    assert tuple(out.shape[1:]) == (pool.out_c, pool.out_h, pool.out_w)
    xs, _, _ = batch_of(net, seed=2)
    assert close(net.predict(xs), torch_probabilities(twin, xs))


# ------------------------------------------------------------- same numbers
@pytest.mark.parametrize("cfg_text,act", [(MLP_CFG, "relu"), (MLP_CFG, "logistic"),
                                          (MLP_CFG, "tanh"), (MLP_CFG, "leaky"),
                                          (LENET_CFG, "relu")])
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
    for layer in net.layers:      # nonzero biases, so decay on them would show
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
        assert close(layer.weights, module.weight.detach().numpy().reshape(layer.weights.shape)), \
            f"layer {layer.index} weights differ after {steps} SGD steps"
        assert close(layer.biases, module.bias.detach().numpy()), \
            f"layer {layer.index} biases differ after {steps} SGD steps"


def test_sgd_momentum_and_decay_match_torch_mlp(tmp_path):
    sgd_steps_match(tmp_path, MLP_CFG, batch=8)


def test_sgd_batch_semantics_with_subdivisions(tmp_path):
    # batch=8, subdivisions=2: net.batch 4, update divides by B = 8
    sgd_steps_match(tmp_path, MLP_CFG, batch=8, subdivisions=2)


def test_sgd_matches_torch_through_conv_and_maxpool(tmp_path):
    no_dropout = LENET_CFG.replace("[dropout]\nprobability=.5\n", "")
    sgd_steps_match(tmp_path, no_dropout, steps=2, h=12, w=12)


def test_sgd_matches_through_odd_maxpool(tmp_path):
    sgd_steps_match(tmp_path, POOL_CFG, steps=2, h=7, w=7, c=2, conv_stride=2,
                    conv_padding=1, size=2, stride=1, padding="")


def test_decay_applies_to_weights_only(tmp_path):
    pytest.importorskip("torch")
    net = minidark.load_network(write(tmp_path, MLP_CFG), seed=0)
    twin = bench.build_torch_model(net)
    decayed = {id(p) for g in twin.optimizer().param_groups if g["weight_decay"] == 0.01
               for p in g["params"]}
    assert {id(m.weight) for _, m, _ in twin.pairs} == decayed
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.1 for g in twin.optimizer().param_groups)


def test_batch_norm_maps_to_torch_batchnorm(tmp_path):
    torch = pytest.importorskip("torch")
    text = LENET_CFG.replace("activation=relu\n\n[maxpool]",
                             "activation=relu\nbatch_normalize=1\n\n[maxpool]", 1)
    net = minidark.load_network(write(tmp_path, text), seed=0)
    twin = bench.build_torch_model(net)
    conv, norm = twin.pairs[0][1:]
    assert conv.bias is None and isinstance(norm, torch.nn.BatchNorm2d)
    count = sum(p.numel() for p in twin.model.parameters()) + norm.running_mean.numel() \
        + norm.running_var.numel()
    assert count == net.params
    x, _, _ = batch_of(net)        # inference: rolling statistics, epsilons differ by ~1e-6
    assert close(net.predict(x), torch_probabilities(twin, x))


@pytest.mark.parametrize("change,needle", [
    (("activation=linear\n\n[softmax]", "activation=elu\n\n[softmax]"), "activation 'elu'"),
    (("[softmax]", "[softmax]\ntemperature=2"), "temperature"),
    (("[softmax]", "[cost]\ntype=sse"), "layer type 'cost'"),
])
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
        assert train == net.batch * (3 * sum(l.flops for l in gemm_layers)
                                     - net.layers[0].flops)


def test_training_flops_skip_the_first_input_gradient():
    net = minidark.load_network(MLP, batch=1)
    assert bench.forward_flops(net) == sum(l.flops for l in net.layers)
    assert bench.training_flops(net) == 3 * bench.forward_flops(net) - 2 * 784 * 512


# ------------------------------------------------------------ the tool
def run_bench(*args):
    done = subprocess.run([sys.executable, "-m", "minidark.bench", *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_json_minidark_only_records_threads_and_blas(tmp_path):
    cfg = write(tmp_path, MLP_CFG, batch=16, h=8, w=8)
    out = json.loads(run_bench(cfg, "--json", "--no-torch", "--steps", "2", "--warmup", "1",
                               "--repeats", "1", "--eval-rows", "40", "--eval-passes", "1",
                               "--gemm-size", "64", "--threads", "1"))
    assert out["meta"]["threads"] == 1
    assert any("(1 threads)" in pool for pool in out["meta"]["gemm"]["blas"])
    entry, = out["results"]
    assert entry["torch"] is None and "no-torch" in entry["torch_error"]
    md = entry["minidark"]
    assert md["train_img_s"] > 0 and md["eval_img_s"] > 0
    assert md["train_peak_rss_mb"] >= md["rss_after_import_mb"] > 0
    assert all("(1 threads)" in pool for pool in md["pools"] if "openblas" in pool)
    assert entry["gemm_limit_img_s"]["train"] > 0
    assert entry["data"].startswith("random")      # 8x8 inputs: not MNIST
    assert entry["ratios"] == {}


def test_bench_table_with_torch_prints_ratios():
    pytest.importorskip("torch")
    out = run_bench(MLP, "--steps", "2", "--warmup", "1", "--repeats", "1", "--eval-rows",
                    "256", "--eval-passes", "1", "--gemm-size", "64", "--train-batches", "1")
    assert "minidark/PyTorch" in out and "training img/s" in out
    assert "MNIST" in out                           # the real data is used when present
    row = next(line for line in out.splitlines() if "training img/s" in line)
    assert len(row.split()) >= 5                    # minidark, PyTorch and the ratio


def test_worker_sets_threads_and_measures_its_own_peak(tmp_path):
    # the parent holds ~200 MB; on Linux ru_maxrss would carry that into the child
    ballast = np.ones(50_000_000, np.float32)
    out = subprocess.run([sys.executable, "-m", "minidark.bench", "--worker", "gemm",
                          "--threads", "2", "--gemm-size", "32"], capture_output=True,
                         text=True, cwd=ROOT, env=bench.worker_environment(2))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == 2
    assert any("openblas" in p and "(2 threads)" in p for p in result["pools"])
    assert 0 < result["peak_rss_mb"] < ballast.nbytes / 2**20
    assert result["gflops"] > 0


def test_bad_arguments_exit_nonzero_with_one_line():
    done = subprocess.run([sys.executable, "-m", "minidark.bench", "no/such.cfg"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no such cfg" in done.stderr


def test_format_table_labels_noise_and_missing_torch():
    meta = {"date": "d", "cpu": "cpu", "cpu_count": 2, "threads": 2, "numpy": "2", "torch": None,
            "repeats": 3, "steps": 5, "warmup": 1, "eval_passes": 1,
            "gemm": {"size": 64, "gflops": 10.0, "gflops_runs": [10.0], "blas": ["openblas"]}}
    md = {key: 1.0 for key in ("train_img_s", "eval_img_s", "train_peak_rss_mb",
                               "eval_peak_rss_mb", "rss_after_import_mb",
                               "train_gemm_fraction", "eval_gemm_fraction")}
    entry = {"cfg": "x.cfg", "batch": 2, "params": 3, "forward_flops": 10, "training_flops": 20,
             "data": "random", "torch_error": "PyTorch not installed", "minidark": md,
             "torch": None, "ratios": {}, "gemm_limit_img_s": {"train": 1.0, "eval": 2.0}}
    text = bench.format_table({"meta": meta, "results": [entry]})
    assert "noisy" in text and "PyTorch not installed" in text and "x.cfg" in text


def test_cli_wires_the_bench_subcommand(capsys):
    from minidark import cli
    assert cli.main(["bench", "--help"]) == 0
    assert "--no-torch" in capsys.readouterr().out
    assert cli.main(["bench", "no/such.cfg"]) == 1
    assert "no such cfg" in capsys.readouterr().err
