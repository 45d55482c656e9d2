"""minidark bench: training and inference speed and peak memory, against PyTorch.

Usage (the same options through the CLI's ``minidark bench``)::

    python -m minidark.tools.bench [CFG ...] [--threads N] [--steps S] [--repeats R]
                             [--json] [--no-torch]
    python -m minidark.tools.bench [CFG ...] --accuracy EPOCHS [--seeds S,S,...]
                             [--threads N] [--train-rows N] [--json]

Per cfg (default ``cfg/mnist_mlp.cfg`` and ``cfg/mnist_lenet.cfg``):

* **training images/s** = ``batch / t`` where ``t`` is the median time of one
  step after ``--warmup`` steps. A minidark step is
  ``net.forward(x, truth, train=True); net.backward(); net.update()``; a
  PyTorch step is ``zero_grad(); cross_entropy(model(x), y).backward();
  opt.step()``. Steps cycle over ``--train-batches`` distinct batches of real
  MNIST training rows (random uniform rows when the cfg is not 784 -> 10 or
  data/mnist is missing), preloaded before timing.
* **inference images/s**: ``net.predict`` over ``--eval-rows`` rows (MNIST
  test rows), which runs in chunks of ``batch``; PyTorch runs the same chunks
  under ``inference_mode`` plus a softmax. Median of ``--eval-passes``.
* **peak RSS**: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of each
  measurement. Every measurement (engine x training/evaluation x repeat) runs
  in its own fresh process, ``python -m minidark.tools.bench --worker ...``, so
  peaks never mix; the RSS right after the imports is reported beside it.
* **threads**: the worker's environment sets OPENBLAS/OMP/MKL/... _NUM_THREADS
  before numpy or torch load, then ``threadpoolctl.threadpool_limits(N)`` and
  ``torch.set_num_threads(N)``; the BLAS library, kernel and thread count the
  worker actually ran with are recorded.
* **GEMM**: float32 ``np.matmul`` GFLOP/s at ``--gemm-size`` (1024^3; the
  best time, a limit that noise should not lower), and
  each engine's fraction of it: ``img/s * FLOPs/image / GEMM rate``, with
  FLOPs per image the sum of ``l.flops`` (training counts 3x the forward:
  forward, input gradient, weight gradient; less layer 0's input gradient,
  which is never computed). Also the *GEMM-only limit*: the
  net's own GEMM shapes (connected, convolutional) timed alone, as img/s.

Engines alternate A/B in every repeat -- minidark, PyTorch, minidark,
PyTorch -- and each ratio is the median of the per-pair ratios (>= 3 pairs
by default), so slow drifts of a shared machine cancel.

The PyTorch twin (``build_torch_model``) is built from the *parsed* minidark
Network, not from a separate description: connected -> Linear, convolutional
-> Conv2d with the padding minidark resolved, maxpool -> MaxPool2d with
darknet's output size and window offset, avgpool -> global average,
dropout -> Dropout, activations relu/leaky(0.1)/linear/logistic/tanh, the
softmax head -> ``F.cross_entropy`` on the logits (mean). Batch norm maps to
BatchNorm (eps 1e-5, momentum .01), which is close to but not exactly
darknet's normalisation. Initial weights are copied from minidark, and the
optimiser is ``torch.optim.SGD(lr, momentum, weight_decay)`` with decay on
weights only (biases and BN parameters in a no-decay group), which is
darknet's update exactly (see minidark/sgd.py). Anything else raises
``UnsupportedForTorch``; minidark is then measured alone.

**Accuracy mode** (``--accuracy EPOCHS``; issue 7's "accuracy after the same
number of epochs"): per cfg and seed, one worker per engine trains from the
same initial weights (``load_network(cfg, seed=S)``, copied into the twin) on
the same batch order (``epoch_order``: a fresh permutation of the MNIST
training rows per epoch, back to back, ``EPOCHS * rows // (batch *
subdivisions)`` iterations), minidark through ``net.train_step`` (its policy
sets the rate), PyTorch in ``subdivisions`` accumulated micro-batches then one
step whose groups' lr is minidark's policy rate at the same ``seen``
(``rate_at``) times the layer's scale; dropout active in training, eval mode
for the test top-1 on the 10,000 MNIST test rows. Both report their rates,
a digest of their initial weights and of the order, which the parent checks
are identical. ``--seeds`` repeats this per seed: mean ± std per engine and
of the per-seed differences (points).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from ..errors import MinidarkError

DEFAULT_CFGS = ("cfg/mnist_mlp.cfg", "cfg/mnist_lenet.cfg")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TORCH_ACTIVATIONS = ("linear", "relu", "leaky", "logistic", "tanh")
ENGINES = ("minidark", "torch")
ENGINE_NAMES = {"minidark": "minidark", "torch": "PyTorch"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UnsupportedForTorch(MinidarkError):
    """A layer or option the PyTorch twin cannot reproduce."""


# ==========================================================================
# The PyTorch twin of a minidark Network
# ==========================================================================
class TorchNet:
    """``model`` (nn.Sequential, input rows -> logits), ``pairs`` of
    (minidark layer, Linear/Conv2d, BatchNorm or None) for weight copies and
    the optimiser, and the training settings taken from the Network."""

    def __init__(self, model, pairs, net, outputs):
        self.model, self.pairs, self.outputs = model, pairs, outputs
        self.learning_rate = net.current_rate()
        self.momentum, self.decay = net.momentum, net.decay
        self.subdivisions = net.subdivisions

    def copy_weights_from(self, net=None):
        """Copy weights, biases and BN statistics from the minidark layers."""
        import torch
        with torch.no_grad():
            for layer, module, bn in self.pairs:
                module.weight.copy_(torch.from_numpy(layer.weights).reshape(module.weight.shape))
                if bn is None:
                    module.bias.copy_(torch.from_numpy(layer.biases))
                else:
                    bn.weight.copy_(torch.from_numpy(layer.scales))
                    bn.bias.copy_(torch.from_numpy(layer.biases))
                    bn.running_mean.copy_(torch.from_numpy(layer.rolling_mean))
                    bn.running_var.copy_(torch.from_numpy(layer.rolling_variance))

    def optimizer(self):
        """darknet's SGD: momentum on everything, decay on weights only, per-layer
        learning_rate scales (kept as each group's ``lr_scale``); groups with
        equal settings are merged."""
        import torch
        groups = {}
        for layer, module, bn in self.pairs:
            scale = layer.learning_rate_scale
            no_decay = [module.bias] if bn is None else [bn.weight, bn.bias]
            groups.setdefault((scale, self.decay), []).append(module.weight)
            groups.setdefault((scale, 0.0), []).extend(no_decay)
        params = [{"params": p, "lr": self.learning_rate * scale, "lr_scale": scale,
                   "weight_decay": wd} for (scale, wd), p in groups.items() if p]
        return torch.optim.SGD(params, lr=self.learning_rate, momentum=self.momentum,
                               weight_decay=0.0)

    @staticmethod
    def set_learning_rate(optimizer, rate):
        """The net's rate for the next step, times each group's layer scale."""
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]

    def loss(self, logits, labels):
        """Mean cross-entropy, divided by subdivisions as darknet's B = batch * subdivisions."""
        import torch.nn.functional as F
        loss = F.cross_entropy(logits, labels)
        return loss / self.subdivisions if self.subdivisions != 1 else loss


def _torch_activation(name, where, inplace=True):
    from torch import nn
    if name == "linear":
        return None
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=inplace)
    if name == "logistic":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise UnsupportedForTorch(f"{where}: activation '{name}' is unsupported for torch "
                              f"comparison (supported: {', '.join(TORCH_ACTIVATIONS)})")


def _ints(layer, *names):
    """Distinct integer values of the first attributes present (candidates)."""
    values = []
    for name in names:
        value = getattr(layer, name, None)
        if isinstance(value, (int, float)) and int(value) == value and int(value) not in values:
            values.append(int(value))
    return values


def _one(layer, where, *names):
    values = _ints(layer, *names)
    if not values:
        raise UnsupportedForTorch(f"{where}: no {'/'.join(names)} attribute; "
                                  f"unsupported for torch comparison")
    return values[0]


def _conv_modules(l, where):
    from torch import nn
    filters = _one(l, where, "n", "filters", "out_c")
    size = _one(l, where, "size")
    stride = _one(l, where, "stride")
    groups = _one(l, where, "groups") if _ints(l, "groups") else 1
    if _ints(l, "dilation") and _ints(l, "dilation")[0] != 1:
        raise UnsupportedForTorch(f"{where}: dilation is unsupported for torch comparison")
    for attr in ("stride_x", "stride_y"):
        if _ints(l, attr) and _ints(l, attr)[0] != stride:
            raise UnsupportedForTorch(f"{where}: unequal x/y strides are unsupported for "
                                      f"torch comparison")
    # the padding minidark resolved (darknet: pad=1 means size/2): the candidate
    # whose output size matches the layer's
    pad = None
    for p in _ints(l, "pad", "padding") + [0]:
        if ((l.h + 2 * p - size) // stride + 1, (l.w + 2 * p - size) // stride + 1) == \
                (l.out_h, l.out_w):
            pad = p
            break
    if pad is None or filters != l.out_c:
        raise UnsupportedForTorch(f"{where}: cannot reproduce its output {l.out_w}x{l.out_h}"
                                  f"x{l.out_c} from size {size}, stride {stride}, pad "
                                  f"{_ints(l, 'pad', 'padding')}; unsupported for torch "
                                  f"comparison")
    bn = getattr(l, "batch_normalize", False)
    conv = nn.Conv2d(l.c, filters, size, stride, pad, groups=groups, bias=not bn)
    norm = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.01) if bn else None
    return conv, norm


def _maxpool_modules(l, where):
    """darknet: out = (w + padding - size) // stride + 1, windows start at
    -padding // 2 + i * stride, out-of-image values are -inf."""
    from torch import nn
    size = _one(l, where, "size")
    stride = _one(l, where, "stride")
    total = None
    for p in _ints(l, "padding", "pad") + [size - 1]:
        if ((l.h + p - size) // stride + 1, (l.w + p - size) // stride + 1) == \
                (l.out_h, l.out_w):
            total = p
            break
    if total is None or l.out_c != l.c:
        raise UnsupportedForTorch(f"{where}: cannot reproduce its output {l.out_w}x{l.out_h}"
                                  f"x{l.out_c} from size {size}, stride {stride}; "
                                  f"unsupported for torch comparison")
    left = total // 2

    def torch_out(n, ceil):   # PyTorch's pooling output size (symmetric padding `left`)
        span = n + 2 * left - size
        out = (-(-span // stride) if ceil else span // stride) + 1
        if ceil and (out - 1) * stride >= n + left:
            out -= 1
        return out

    if left <= size // 2:
        for ceil in (False, True):   # same window starts; pick the matching count
            if (torch_out(l.h, ceil), torch_out(l.w, ceil)) == (l.out_h, l.out_w):
                return [nn.MaxPool2d(size, stride, padding=left, ceil_mode=ceil)]
    return [nn.ConstantPad2d((left, total - left, left, total - left), float("-inf")),
            nn.MaxPool2d(size, stride)]


def build_torch_model(net, copy_weights=True):
    """The same network in PyTorch (a TorchNet), from a parsed minidark Network.

    Raises UnsupportedForTorch naming the layer when a layer, activation or
    option has no exact PyTorch equivalent here.
    """
    import torch
    from torch import nn

    modules, pairs = [], []
    image = None                      # (c, h, w) while the tensor is NCHW, None when flat
    layers = list(net.layers)
    head = None
    for i, l in enumerate(layers):
        where = f"layer {i} [{l.type}]"
        kind = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool",
                "conn": "connected", "soft": "softmax"}.get(l.type, l.type)
        if head is not None:
            raise UnsupportedForTorch(f"{where}: layers after the softmax head are "
                                      f"unsupported for torch comparison")
        if kind in ("convolutional", "maxpool", "avgpool") and image is None:
            if not (l.c and l.h and l.w) or l.c * l.h * l.w != l.inputs:
                raise UnsupportedForTorch(f"{where}: a non-image input is unsupported for "
                                          f"torch comparison")
            modules.append(nn.Unflatten(1, (l.c, l.h, l.w)))
            image = (l.c, l.h, l.w)
        if kind == "convolutional":
            conv, norm = _conv_modules(l, where)
            modules += [m for m in (conv, norm) if m is not None]
            act = _torch_activation(l.activation, where)
            modules += [act] if act is not None else []
            pairs.append((l, conv, norm))
            image = (l.out_c, l.out_h, l.out_w)
        elif kind == "maxpool":
            modules += _maxpool_modules(l, where)
            image = (l.out_c, l.out_h, l.out_w)
        elif kind == "avgpool":
            if l.outputs != l.c:
                raise UnsupportedForTorch(f"{where}: non-global average pooling is "
                                          f"unsupported for torch comparison")
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            image = None
        elif kind == "connected":
            if image is not None:
                modules.append(nn.Flatten())
                image = None
            bn = getattr(l, "batch_normalize", False)
            linear = nn.Linear(l.inputs, l.outputs, bias=not bn)
            norm = nn.BatchNorm1d(l.outputs, eps=1e-5, momentum=0.01) if bn else None
            modules += [m for m in (linear, norm) if m is not None]
            act = _torch_activation(l.activation, where)
            modules += [act] if act is not None else []
            pairs.append((l, linear, norm))
        elif kind == "dropout":
            modules.append(nn.Dropout(l.probability))
        elif kind == "activation":
            act = _torch_activation(l.activation, where, inplace=False)
            modules += [act] if act is not None else []
        elif kind == "softmax":
            if (l.groups != 1 or l.temperature != 1 or getattr(l, "tree", None) is not None
                    or getattr(l, "spatial", False)):
                raise UnsupportedForTorch(f"{where}: groups, temperature, tree and spatial are "
                                          f"unsupported for torch comparison (only the "
                                          f"defaults)")
            head = l
        else:
            raise UnsupportedForTorch(
                f"{where}: layer type '{l.type}' is unsupported for torch comparison "
                f"(supported: connected, convolutional, maxpool, avgpool, dropout, "
                f"activation, softmax)")
    if head is None:
        raise UnsupportedForTorch("a network without a [softmax] head is unsupported for "
                                  "torch comparison (the head maps to cross_entropy)")
    if image is not None:
        modules.append(nn.Flatten())
    model = nn.Sequential(*modules)
    twin = TorchNet(model, pairs, net, head.inputs)
    if copy_weights:
        twin.copy_weights_from(net)
    with torch.no_grad():            # the shapes must agree layer by layer: check the end
        model.eval()
        out = model(torch.zeros(1, net.inputs))
        model.train()
    if tuple(out.shape) != (1, head.inputs):
        raise UnsupportedForTorch(f"torch model gives {tuple(out.shape)[1:]} outputs, "
                                  f"minidark {head.inputs}: unsupported for torch comparison")
    return twin


# ==========================================================================
# FLOPs and the net's own GEMMs
# ==========================================================================
def forward_flops(net):
    """FLOPs per image of one forward pass (sum of l.flops)."""
    return int(sum(l.flops for l in net.layers))


def training_flops(net):
    """FLOPs per image of one training step: 3x the forward (forward, input
    gradient, weight gradient), less the input gradient of layer 0, which
    neither engine computes."""
    first = net.layers[0] if net.layers else None
    skipped = first.flops if first is not None and first.type in (
        "connected", "conn", "convolutional", "conv") else 0
    return int(3 * forward_flops(net) - skipped)


def gemm_shapes(net):
    """The (m, k, n, count) matrix products of one batch, per pass:
    ``{"eval": [...], "train": [...]}``. Connected: x (B, in) @ W^T;
    convolutional: W (n/g, c/g*k*k) @ columns (c/g*k*k, B*out_hw) per group.
    Training adds the weight gradient and, except for layer 0, the input
    gradient. The eval products' 2*m*k*n sum to the layers' forward FLOPs."""
    shapes = {"eval": [], "train": []}
    for i, l in enumerate(net.layers):
        kind = {"conv": "convolutional", "conn": "connected"}.get(l.type, l.type)
        if kind == "connected":
            fwd, groups = (net.batch, l.inputs, l.outputs), 1
            wgrad, igrad = (l.outputs, net.batch, l.inputs), (net.batch, l.outputs, l.inputs)
        elif kind == "convolutional":
            groups = _ints(l, "groups")[0] if _ints(l, "groups") else 1
            size = _ints(l, "size")[0]
            m, k, n = l.out_c // groups, l.c // groups * size * size, net.batch * l.out_h * l.out_w
            fwd, wgrad, igrad = (m, k, n), (m, n, k), (k, m, n)
        else:
            continue
        shapes["eval"].append(fwd + (groups,))
        shapes["train"] += [fwd + (groups,), wgrad + (groups,)]
        if i > 0:
            shapes["train"].append(igrad + (groups,))
    return shapes


# ==========================================================================
# Workers: one measurement per fresh process
# ==========================================================================
def _rss_now_mb():
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_mb():
    """This process's RSS high-water mark. On Linux /proc's VmHWM (the peak of
    this address space, reset by exec); ru_maxrss elsewhere. Linux carries
    ru_maxrss over fork + exec, so a worker would report its parent's peak."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _limit_threads(threads, torch=None):
    """Apply the thread count in-process; return what the libraries report."""
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(threads)
    info = {"threads": threads, "pools": [
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''} "
        f"({p.get('num_threads')} threads)".replace("  ", " ")
        for p in threadpool_info()]}
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["pools"].insert(0, _torch_config())
    return info


def _worker(args):
    """Run one measurement and print it as one JSON line."""
    import numpy as np
    torch = None
    if args.engine == "torch":
        import torch
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:
            pass
    result = {"engine": args.engine, "mode": args.worker, "rss_after_import_mb": _rss_now_mb()}
    if args.plugin:
        from ..plugins import load_plugins
        load_plugins(args.plugin)
    if args.worker == "gemm":
        result.update(_limit_threads(args.threads, torch))
        result.update(_worker_gemm(args, np, torch))
    elif args.worker == "accuracy":
        result.update(_limit_threads(args.threads, torch))
        try:
            result.update(_worker_accuracy(args, np, torch))
        except UnsupportedForTorch as exc:
            print(json.dumps({"error": str(exc)}))
            return 0
    else:
        import minidark
        data = np.load(os.path.join(args.data, f"{args.worker}_x.npy"))
        labels = np.load(os.path.join(args.data, f"{args.worker}_y.npy"))
        if args.engine == "minidark":
            result.update(_limit_threads(args.threads))
            net = minidark.load_network(args.cfg, seed=args.seed)
            measure = _minidark_train if args.worker == "train" else _minidark_eval
            result.update(measure(net, data, labels, args, np))
        else:
            result.update(_limit_threads(args.threads, torch))
            try:
                twin = build_torch_model(minidark.load_network(args.cfg, batch=1,
                                                               seed=args.seed))
            except UnsupportedForTorch as exc:
                print(json.dumps({"error": str(exc)}))
                return 0
            measure = _torch_train if args.worker == "train" else _torch_eval
            result.update(measure(twin, data, labels, args, torch))
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))
    return 0


def _timed_steps(step, count, warmup):
    times = []
    for i in range(warmup + count):
        start = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _minidark_train(net, data, labels, args, np):
    batch = net.batch
    truths = np.zeros((labels.size, net.truths), np.float32)
    truths[np.arange(labels.size), labels % net.truths] = 1
    count = data.shape[0] // batch
    batches = [(data[j * batch:(j + 1) * batch], truths[j * batch:(j + 1) * batch])
               for j in range(count)]

    def step(i):
        x, truth = batches[i % count]
        net.forward(x, truth, train=True)
        net.backward()
        net.update()

    times = _timed_steps(step, args.steps, args.warmup)
    return {"step_s": times, "img_s": batch / statistics.median(times), "batch": batch,
            "final_loss": net.cost / batch}


def _minidark_eval(net, data, labels, args, np):
    net.predict(data[:2 * net.batch])                        # warm-up
    times = _timed_steps(lambda i: net.predict(data), args.eval_passes, 0)
    return {"pass_s": times, "img_s": data.shape[0] / statistics.median(times),
            "rows": int(data.shape[0]), "batch": net.batch}


def _torch_train(twin, data, labels, args, torch):
    batch = args.batch
    count = data.shape[0] // batch
    x = torch.from_numpy(data)
    y = torch.from_numpy(labels.astype("int64") % twin.outputs)
    batches = [(x[j * batch:(j + 1) * batch], y[j * batch:(j + 1) * batch])
               for j in range(count)]
    model, opt = twin.model, twin.optimizer()
    model.train()
    last = []

    def step(i):
        xb, yb = batches[i % count]
        opt.zero_grad(set_to_none=True)
        loss = twin.loss(model(xb), yb)
        loss.backward()
        opt.step()
        last[:] = [loss]

    times = _timed_steps(step, args.steps, args.warmup)
    return {"step_s": times, "img_s": batch / statistics.median(times), "batch": batch,
            "final_loss": float(last[0]) * twin.subdivisions}


def _torch_eval(twin, data, labels, args, torch):
    import numpy as np
    batch, model = args.batch, twin.model
    model.eval()
    x = torch.from_numpy(data)

    def predict(rows):
        result = torch.from_numpy(np.empty((rows.shape[0], twin.outputs), np.float32))
        for start in range(0, rows.shape[0], batch):
            result[start:start + batch] = torch.softmax(model(rows[start:start + batch]), 1)
        return result

    with torch.inference_mode():
        predict(x[:2 * batch])                               # warm-up
        times = _timed_steps(lambda i: predict(x), args.eval_passes, 0)
    return {"pass_s": times, "img_s": data.shape[0] / statistics.median(times),
            "rows": int(data.shape[0]), "batch": batch}


def _time_matmul(np, m, k, n, min_time=0.05, reps=3, torch=None):
    """Best (minimum) seconds of one float32 (m, k) @ (k, n) into a preallocated
    output: a limit, so noise from other processes should not lower it."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    c = np.empty((m, n), np.float32)
    if torch is not None:
        a, b, c = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        matmul = torch.matmul
    else:
        matmul = np.matmul
    matmul(a, b, out=c)
    times, total = [], 0.0
    while len(times) < reps or total < min_time:
        start = time.perf_counter()
        matmul(a, b, out=c)
        times.append(time.perf_counter() - start)
        total += times[-1]
    return min(times)


def _worker_gemm(args, np, torch=None):
    size = args.gemm_size
    seconds = _time_matmul(np, size, size, size, min_time=0.3, reps=5, torch=torch)
    result = {"gemm_size": size, "gflops": 2 * size ** 3 / seconds / 1e9, "nets": {}}
    if args.shapes:
        with open(args.shapes) as handle:
            nets = json.load(handle)
        for name, shapes in nets.items():
            result["nets"][name] = {
                kind: sum(count * _time_matmul(np, m, k, n, torch=torch)
                          for m, k, n, count in products)
                for kind, products in shapes.items()}
    return result


def _torch_config():
    """PyTorch's BLAS and oneDNN, from its build configuration."""
    import re

    import torch
    match = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return (f"torch {torch.__version__} BLAS {match.group(1) if match else '?'}, oneDNN "
            f"{'on' if torch.backends.mkldnn.is_available() else 'off'} "
            f"({torch.get_num_threads()} threads)")


# ==========================================================================
# The parent: data, interleaved runs, summary
# ==========================================================================
def resolve_cfg(path):
    """A cfg path as given, or relative to the repository root (default cfgs)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def find_mnist():
    """The MNIST directory (IDX files), or None."""
    from ..data.mnist import FILES, find_idx
    candidates = []
    if os.environ.get("MINIDARK_DATA"):
        base = os.environ["MINIDARK_DATA"]
        candidates += [os.path.join(base, "mnist"), base]
    candidates += [os.path.join("data", "mnist"), os.path.join(REPO_ROOT, "data", "mnist")]
    for directory in candidates:
        if all(find_idx(directory, stem) for pair in FILES.values() for stem in pair):
            return directory
    return None


def prepare_data(net, directory, train_batches, eval_rows, seed=0):
    """Write train_x/y.npy (train_batches * batch rows) and eval_x/y.npy into
    ``directory``; return a description of the data."""
    import numpy as np
    rng = np.random.default_rng(seed)
    train_rows = train_batches * net.batch
    classes = net.output_layer.outputs
    mnist = find_mnist() if (net.inputs == 784 and classes == 10) else None
    if mnist is not None:
        from ..data.mnist import load_mnist
        train_x, train_y = load_mnist(mnist, "train")
        eval_x, eval_y = load_mnist(mnist, "test")
        repeat = -(-eval_rows // eval_x.shape[0])
        eval_x = np.tile(eval_x, (repeat, 1))[:eval_rows]
        eval_y = np.tile(eval_y, repeat)[:eval_rows]
        train_x, train_y = train_x[:train_rows], train_y[:train_rows]
        description = (f"MNIST ({train_batches} training batches of {net.batch}, "
                       f"{eval_rows} test rows)")
    else:
        train_x = rng.random((train_rows, net.inputs), np.float32)
        eval_x = rng.random((eval_rows, net.inputs), np.float32)
        train_y = rng.integers(0, classes, train_rows)
        eval_y = rng.integers(0, classes, eval_rows)
        description = (f"random uniform ({train_batches} training batches of {net.batch}, "
                       f"{eval_rows} rows)" + ("" if net.inputs != 784 else
                                              "; MNIST not found"))
    for name, array in (("train_x", train_x), ("train_y", train_y),
                        ("eval_x", eval_x), ("eval_y", eval_y)):
        dtype = np.float32 if name.endswith("x") else np.int64
        np.save(os.path.join(directory, name + ".npy"), np.ascontiguousarray(array, dtype))
    return description


# Variables some machines set to pin OpenBLAS to an older kernel (e.g. Haswell's
# AVX2 on an AVX-512 CPU, for the sake of old OpenBLAS builds); a current numpy
# runs its native kernel, about twice as fast here, once both are dropped.
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def pinned_kernel():
    """The OpenBLAS kernel forced by the environment, or None."""
    return os.environ.get("OPENBLAS_CORETYPE") or None


def worker_environment(threads, native_blas=False):
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    if native_blas:
        for name in KERNEL_VARIABLES:
            env.pop(name, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + path if path else "")
    return env


def run_worker(mode, engine, options, cfg=None, data=None, batch=None, shapes=None,
               seed=None, extra=()):
    """Run one measurement in a fresh process; return its JSON result (with
    ``wall_s``, the process's wall time, imports and data loading included)."""
    seed = options.seed if seed is None else seed
    command = [sys.executable, "-m", "minidark.tools.bench", "--worker", mode, "--engine", engine,
               "--threads", str(options.threads), "--steps", str(options.steps),
               "--warmup", str(options.warmup), "--eval-passes", str(options.eval_passes),
               "--gemm-size", str(options.gemm_size), "--seed", str(seed)]
    for flag, value in (("--cfg", cfg), ("--data", data), ("--batch", batch),
                        ("--shapes", shapes)):
        if value is not None:
            command += [flag, str(value)]
    command += [str(e) for e in extra]
    for spec in getattr(options, "plugin", None) or ():
        command += ["--plugin", spec]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env=worker_environment(options.threads,
                                                 getattr(options, "native_blas", True)))
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise MinidarkError(f"bench worker ({engine} {mode} {cfg or ''}) failed with exit "
                            f"code {done.returncode}:\n{done.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    result.setdefault("wall_s", wall)
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio_summary(pairs):
    pairs = [p for p in pairs if p is not None]
    if not pairs:
        return None
    return {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs),
            "pairs": pairs}


def torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


METRICS = (("train_img_s", "train", "img_s"), ("eval_img_s", "eval", "img_s"),
           ("train_peak_rss_mb", "train", "peak_rss_mb"),
           ("eval_peak_rss_mb", "eval", "peak_rss_mb"),
           ("rss_after_import_mb", "train", "rss_after_import_mb"))


def run_bench(cfgs, options, progress=None):
    """Measure every cfg; return the result dictionary (see --json)."""
    import minidark
    say = progress or (lambda message: None)
    use_torch = not options.no_torch and torch_available()
    started = datetime.datetime.now().astimezone()
    result = {"meta": machine_info(options, use_torch, started), "results": []}
    nets = {}
    with tempfile.TemporaryDirectory(prefix="minidark-bench-") as tmp:
        plans = []
        for index, cfg in enumerate(cfgs):
            net = minidark.load_network(cfg, seed=options.seed)
            data = os.path.join(tmp, f"cfg{index}")
            os.makedirs(data)
            entry = {"cfg": cfg, "batch": net.batch, "subdivisions": net.subdivisions,
                     "params": int(net.params), "forward_flops": forward_flops(net),
                     "training_flops": training_flops(net),
                     "data": prepare_data(net, data, options.train_batches,
                                          options.eval_rows, options.seed),
                     "runs": {engine: [] for engine in ENGINES}, "torch_error": None}
            if not use_torch:
                entry["torch_error"] = ("disabled (--no-torch)" if options.no_torch else
                                        "PyTorch not installed: pip install -e '.[bench]'")
            nets[cfg] = gemm_shapes(net)
            plans.append((entry, data))
            del net
        shapes_file = os.path.join(tmp, "shapes.json")
        with open(shapes_file, "w") as handle:
            json.dump(nets, handle)
        gemms, torch_gemms = [], []
        for repeat in range(options.repeats):
            say(f"repeat {repeat + 1}/{options.repeats}: GEMM")
            gemms.append(run_worker("gemm", "minidark", options, shapes=shapes_file))
            if use_torch:
                torch_gemms.append(run_worker("gemm", "torch", options))
            for entry, data in plans:
                for mode in ("train", "eval"):
                    for engine in ENGINES:
                        if engine == "torch" and entry["torch_error"] is not None:
                            continue
                        say(f"repeat {repeat + 1}/{options.repeats}: {entry['cfg']} "
                            f"{ENGINE_NAMES[engine]} {mode}")
                        run = run_worker(mode, engine, options, cfg=entry["cfg"], data=data,
                                         batch=entry["batch"])
                        if "error" in run:
                            entry["torch_error"] = run["error"]
                            continue
                        entry["runs"][engine].append(run)
    result["meta"]["gemm"] = {
        "size": options.gemm_size, "gflops": max(g["gflops"] for g in gemms),
        "gflops_runs": [g["gflops"] for g in gemms], "blas": gemms[0]["pools"],
        "torch_gflops": max((g["gflops"] for g in torch_gemms), default=None),
        "torch_blas": torch_gemms[0]["pools"][0] if torch_gemms else None}
    for entry, _ in plans:
        summarize(entry, gemms, result["meta"]["gemm"]["gflops"])
        result["results"].append(entry)
    return result


def summarize(entry, gemms, gflops):
    """Medians per engine, per-pair ratios, fractions of the GEMM rate."""
    flops = {"train": entry["training_flops"], "eval": entry["forward_flops"]}
    limits = [g["nets"].get(entry["cfg"]) for g in gemms]
    entry["gemm_limit_img_s"] = {
        kind: entry["batch"] / min(l[kind] for l in limits if l) if any(
            l and l[kind] for l in limits) else None for kind in ("train", "eval")}
    for engine in ENGINES:
        runs = entry["runs"][engine]
        if not runs:
            entry[engine] = None
            continue
        summary = {}
        for name, mode, key in METRICS:
            summary[name] = _median(r.get(key) for r in runs if r["mode"] == mode)
        summary["train_img_s_runs"] = [r["img_s"] for r in runs if r["mode"] == "train"]
        summary["eval_img_s_runs"] = [r["img_s"] for r in runs if r["mode"] == "eval"]
        summary["pools"] = runs[0]["pools"]
        summary["torch_threads"] = runs[0].get("torch_threads")
        for mode in ("train", "eval"):
            rate = summary[f"{mode}_img_s"]
            summary[f"{mode}_gflops"] = rate * flops[mode] / 1e9 if rate else None
            summary[f"{mode}_gemm_fraction"] = (summary[f"{mode}_gflops"] / gflops
                                                if rate and gflops else None)
        entry[engine] = summary
    entry["ratios"] = {}
    if entry["minidark"] and entry["torch"]:
        for name, mode, key in METRICS:
            ours = [r.get(key) for r in entry["runs"]["minidark"] if r["mode"] == mode]
            theirs = [r.get(key) for r in entry["runs"]["torch"] if r["mode"] == mode]
            entry["ratios"][name] = _ratio_summary(
                [a / b if a is not None and b else None for a, b in zip(ours, theirs)])


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _program():
    """How this process was started, as a user would type it."""
    if sys.argv[0].endswith("bench.py"):
        return "python -m minidark.tools.bench"
    if sys.argv[0].endswith("__main__.py"):
        return "python -m minidark"
    return os.path.basename(sys.argv[0])


def machine_info(options, use_torch, started):
    import numpy as np
    info = {"date": started.isoformat(timespec="seconds"), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": options.threads,
            "steps": options.steps, "warmup": options.warmup, "repeats": options.repeats,
            "train_batches": options.train_batches, "eval_rows": options.eval_rows,
            "eval_passes": options.eval_passes, "torch": None,
            "pinned_kernel": pinned_kernel(),
            "native_blas": bool(getattr(options, "native_blas", True)),
            "command": " ".join([_program()] + sys.argv[1:])}
    if use_torch:
        from importlib.metadata import PackageNotFoundError, version
        try:
            info["torch"] = version("torch")
        except PackageNotFoundError:
            info["torch"] = "installed"
    return info


# ==========================================================================
# Accuracy: the same training run in both engines (--accuracy EPOCHS)
# ==========================================================================
ORDER_STREAM = 0x6D64          # keeps the data order's random stream apart from the weights'
ACCURACY_TARGET_POINTS = 0.3   # issue 7: within 0.3 points of PyTorch's top-1


def epoch_order(rows, epochs, batch_rows, seed):
    """Training row indices for ``epochs`` epochs back to back, a fresh random
    permutation of ``range(rows)`` each (as minidark's Trainer draws them),
    cut into whole iterations: an ``(iterations, batch_rows)`` int64 array,
    ``iterations = epochs * rows // batch_rows``. The same for both engines."""
    import numpy as np
    rng = np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM]))
    order = np.concatenate([rng.permutation(rows) for _ in range(epochs)]).astype(np.int64)
    iterations = order.size // batch_rows
    return order[:iterations * batch_rows].reshape(iterations, batch_rows)


def rate_at(net, seen):
    """minidark's learning rate (``net.current_rate()``, the cfg's policy and
    burn-in) when ``net.seen == seen``; ``net.seen`` is left as it was."""
    saved = net.seen
    net.seen = seen
    try:
        return net.current_rate()
    finally:
        net.seen = saved


def check_accuracy_net(net, cfg):
    """Raise MinidarkError unless ``net`` can be trained on MNIST by both engines
    with the same learning rates."""
    classes = net.output_layer.outputs
    if net.inputs != 784 or classes != 10:
        raise MinidarkError(f"{cfg}: --accuracy trains on MNIST, which needs 784 inputs "
                            f"(28x28x1) and 10 outputs; this cfg has {net.inputs} -> {classes}")
    if net.policy == "random":
        raise MinidarkError(f"{cfg}: policy=random draws a new rate at every call, so the two "
                            f"engines could not get the same rates; use another policy for "
                            f"--accuracy")


def _spy_rates(net, rates):
    """Make the first layer with parameters record ``args.learning_rate`` of
    every update; returns a function that undoes it."""
    layer = next((l for l in net.layers if l.update is not None), None)
    if layer is None:
        return lambda: None
    update = layer.update

    def spy(l, args):
        rates.append(args.learning_rate)
        update(l, args)

    layer.update = spy
    return lambda: setattr(layer, "update", update)


def train_minidark(net, images, labels, order, rates=None):
    """``net.train_step`` on ``images[rows]`` for each row set of ``order``
    (``batch * subdivisions`` rows: one update each; the rate is whatever
    minidark's policy gives). Returns the per-iteration mean losses;
    ``rates``, a list, receives the rate each update used."""
    import numpy as np
    rows = order.shape[1]
    x = np.empty((rows, net.inputs), np.float32)
    truth = np.zeros((rows, net.truths), np.float32)
    arange = np.arange(rows)
    undo = _spy_rates(net, rates) if rates is not None else (lambda: None)
    losses = []
    try:
        for indices in order:
            np.take(images, indices, axis=0, out=x)
            truth.fill(0)
            truth[arange, labels[indices] % net.truths] = 1
            losses.append(net.train_step(x, truth))
    finally:
        undo()
    return losses


def train_torch(twin, net, images, labels, order, rates=None, optimizer=None):
    """The same iterations in PyTorch: the rows of ``order`` in ``subdivisions``
    micro-batches of ``batch`` (gradients accumulated, loss divided by
    subdivisions, like minidark's train_step), then one SGD step whose
    groups' lr are minidark's policy rate for the seen count minidark's update
    has at that iteration (``net.seen`` + rows so far, this iteration's
    included) times each layer's scale. ``net`` only supplies the policy and
    ``seen``; it is not trained. ``optimizer``: ``twin.optimizer()`` made
    beforehand (its first construction imports ~1 s of torch modules).
    Returns the per-iteration mean losses."""
    import numpy as np
    import torch
    rows, batch = order.shape[1], net.batch
    if rows != net.batch * net.subdivisions:
        raise ValueError(f"order has {rows} rows per iteration; the net trains "
                         f"{net.batch} x {net.subdivisions}")
    model, opt = twin.model, optimizer or twin.optimizer()
    model.train()
    buffer = np.empty((rows, images.shape[1]), np.float32)
    x = torch.from_numpy(buffer)
    targets = torch.from_numpy(labels.astype(np.int64) % twin.outputs)
    seen, losses = net.seen, []
    for indices in order:
        seen += rows
        rate = rate_at(net, seen)
        twin.set_learning_rate(opt, rate)
        if rates is not None:
            rates.append(rate)
        np.take(images, indices, axis=0, out=buffer)
        y = targets[torch.from_numpy(indices)]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, rows, batch):
            loss = twin.loss(model(x[start:start + batch]), y[start:start + batch])
            loss.backward()
            total += loss.item()
        opt.step()
        losses.append(total)
    return losses


def top1_minidark(net, images, labels):
    """Fraction of rows whose highest output is the label (``net.predict``)."""
    return float((net.predict(images).argmax(1) == labels).mean())


def top1_torch(twin, images, labels, batch):
    """The same in eval mode (dropout off), in chunks of ``batch``."""
    import torch
    model = twin.model
    model.eval()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    correct = 0
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            logits = model(x[start:start + batch])
            correct += int((logits.argmax(1) == y[start:start + batch]).sum())
    return correct / x.shape[0]


def _digest(arrays):
    import hashlib

    import numpy as np
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _rate_changes(rates):
    """[[iteration (1-based), rate], ...] where the rate changes."""
    changes = []
    for i, rate in enumerate(rates):
        if not changes or rate != changes[-1][1]:
            changes.append([i + 1, rate])
    return changes


def _worker_accuracy(args, np, torch):
    """Train ``args.cfg`` (seed ``args.seed``) on the MNIST rows listed in the
    order file ``args.data``, then top-1 on the MNIST test set."""
    import hashlib

    import minidark
    from ..data.mnist import load_mnist
    order = np.load(args.data)
    train_x, train_y = load_mnist(args.mnist, "train")
    test_x, test_y = load_mnist(args.mnist, "test")
    net = minidark.load_network(args.cfg, seed=args.seed)
    rates = []
    if args.engine == "minidark":
        initial = _digest(a for l in net.layers if getattr(l, "weights", None) is not None
                          for a in (l.weights, l.biases))
        setup_s = 0.0
        start = time.perf_counter()
        losses = train_minidark(net, train_x, train_y, order, rates)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        top1 = top1_minidark(net, test_x, test_y)
    else:
        torch.manual_seed(args.seed)                 # dropout masks
        twin = build_torch_model(net)
        initial = _digest(t.detach().numpy() for _, module, bn in twin.pairs
                          for t in (module.weight, module.bias if bn is None else bn.bias))
        start = time.perf_counter()
        optimizer = twin.optimizer()                 # imports torch.optim's lazy modules
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        losses = train_torch(twin, net, train_x, train_y, order, rates, optimizer)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        top1 = top1_torch(twin, test_x, test_y, net.batch)
    eval_s = time.perf_counter() - start
    per_epoch = max(1, round((args.train_rows or train_x.shape[0]) / order.shape[1]))
    return {"seed": args.seed, "iterations": int(order.shape[0]),
            "rows_per_iteration": int(order.shape[1]), "top1": top1,
            "test_rows": int(test_x.shape[0]), "train_s": train_s, "eval_s": eval_s,
            "setup_s": setup_s,
            "first_loss": losses[0] if losses else None,
            "last_epoch_loss": statistics.fmean(losses[-per_epoch:]) if losses else None,
            "rates": rates, "initial_weights": initial,
            "order": hashlib.sha256(order.tobytes()).hexdigest()[:16]}


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": values}


def run_accuracy(cfgs, options, progress=None):
    """Train each cfg for ``options.accuracy`` epochs in both engines, per seed;
    return the result dictionary (see --json)."""
    import numpy as np

    import minidark
    from ..data.mnist import find_idx, read_idx
    say = progress or (lambda message: None)
    mnist = find_mnist()
    if mnist is None:
        raise MinidarkError("--accuracy trains on MNIST: put its four IDX files (.gz or raw) "
                            "in data/mnist, or in $MINIDARK_DATA/mnist")
    available = int(read_idx(find_idx(mnist, "train-labels-idx1-ubyte")).shape[0])
    train_rows = options.train_rows or available
    if train_rows > available:
        raise MinidarkError(f"--train-rows {train_rows}: MNIST has {available} training rows")
    seeds = options.seed_list
    epochs = options.accuracy
    use_torch = not options.no_torch and torch_available()
    started = datetime.datetime.now().astimezone()
    meta = machine_info(options, use_torch, started)
    for key in ("steps", "warmup", "repeats", "train_batches", "eval_rows", "eval_passes"):
        meta.pop(key, None)
    meta.update(mode="accuracy", epochs=epochs, seeds=seeds, train_rows=train_rows,
                mnist=mnist, target_points=ACCURACY_TARGET_POINTS)
    result = {"meta": meta, "results": []}
    with tempfile.TemporaryDirectory(prefix="minidark-bench-") as tmp:
        for index, cfg in enumerate(cfgs):
            net = minidark.load_network(cfg, seed=seeds[0])
            check_accuracy_net(net, cfg)
            rows = net.batch * net.subdivisions
            iterations = epochs * train_rows // rows
            if iterations < 1:
                raise MinidarkError(f"{cfg}: {epochs} epoch(s) of {train_rows} rows is less "
                                    f"than one iteration of {rows} rows")
            entry = {"cfg": cfg, "batch": net.batch, "subdivisions": net.subdivisions,
                     "rows_per_iteration": rows, "iterations": iterations,
                     "params": int(net.params), "policy": net.policy,
                     "runs": {engine: [] for engine in ENGINES}, "torch_error": None}
            if not use_torch:
                entry["torch_error"] = ("disabled (--no-torch)" if options.no_torch else
                                        "PyTorch not installed: pip install -e '.[bench]'")
            del net
            for seed in seeds:
                order_file = os.path.join(tmp, f"order{index}_{seed}.npy")
                np.save(order_file, epoch_order(train_rows, epochs, rows, seed))
                for engine in ENGINES:
                    if engine == "torch" and entry["torch_error"] is not None:
                        continue
                    say(f"{cfg} seed {seed}: {ENGINE_NAMES[engine]}, {iterations} iterations")
                    run = run_worker("accuracy", engine, options, cfg=cfg, data=order_file,
                                     seed=seed, extra=("--mnist", mnist,
                                                       "--train-rows", train_rows))
                    if "error" in run:
                        entry["torch_error"] = run["error"]
                        continue
                    entry["runs"][engine].append(run)
            summarize_accuracy(entry)
            result["results"].append(entry)
    return result


def summarize_accuracy(entry):
    """Per engine: top-1 (percent) and times, mean/std/min/max over seeds; the
    per-seed differences in points; whether both engines got the same rates
    and initial weights. Runs keep their rate change points, not every rate."""
    runs = entry["runs"]
    for engine in ENGINES:
        entry[engine] = None if not runs[engine] else {
            "top1_pct": _spread([100 * r["top1"] for r in runs[engine]]),
            "train_s": _spread([r["train_s"] for r in runs[engine]]),
            "eval_s": _spread([r["eval_s"] for r in runs[engine]]),
            "wall_s": _spread([r["wall_s"] for r in runs[engine]]),
            "last_epoch_loss": _spread([r["last_epoch_loss"] for r in runs[engine]]),
            "pools": runs[engine][0]["pools"]}
    pairs = list(zip(runs["minidark"], runs["torch"]))
    entry["difference_points"] = _spread([100 * (a["top1"] - b["top1"]) for a, b in pairs])
    entry["same_rates"] = all(a["rates"] == b["rates"] for a, b in pairs) if pairs else None
    entry["same_initial_weights"] = (all(a["initial_weights"] == b["initial_weights"]
                                         for a, b in pairs) if pairs else None)
    entry["same_order"] = (all(a["order"] == b["order"] and a["iterations"] ==
                               b["iterations"] == entry["iterations"] for a, b in pairs)
                           if pairs else None)
    first = (runs["minidark"] or runs["torch"] or [None])[0]
    entry["rate_schedule"] = _rate_changes(first["rates"]) if first else []
    for run in runs["minidark"] + runs["torch"]:
        run["rate_changes"] = _rate_changes(run.pop("rates"))
    diff = entry["difference_points"]
    entry["within_target"] = (abs(diff["mean"]) <= ACCURACY_TARGET_POINTS
                              if diff is not None else None)


def _pm(spread, digits=2, suffix="", sign=""):
    """'mean' or 'mean ± std (min to max)'."""
    if spread is None:
        return "-"
    text = f"{spread['mean']:{sign}.{digits}f}{suffix}"
    if spread["std"] is not None:
        text += f" ± {spread['std']:.{digits}f} ({spread['min']:{sign}.{digits}f} to " \
                f"{spread['max']:{sign}.{digits}f})"
    return text


def kernel_note(meta):
    """A line when the environment pins OpenBLAS's kernel and the run kept it."""
    pinned = meta.get("pinned_kernel")
    if not pinned:
        return []
    if meta.get("native_blas"):
        return [f"note: OPENBLAS_CORETYPE={pinned} from the environment was dropped in the "
                f"workers, so OpenBLAS runs the CPU's own kernel; --keep-blas-kernel keeps it"]
    return [f"note: OPENBLAS_CORETYPE={pinned} is set, so numpy's GEMMs run that kernel, "
            f"not the CPU's own (drop --keep-blas-kernel to measure that)"]


def format_accuracy_table(result):
    """The human-readable accuracy report."""
    meta = result["meta"]
    noisy = "  (more than 1 thread: times are noisy)" if meta["threads"] > 1 else ""
    lines = [f"minidark bench --accuracy {meta['epochs']}  {meta['date']}  {meta['cpu']} "
             f"({meta['cpu_count']} cores)", f"threads {meta['threads']}{noisy}"]
    first = next((e for e in result["results"] if e["minidark"] or e["torch"]), None)
    if first is not None:
        pools = (first["minidark"] or {}).get("pools", []) + \
            [p for p in (first["torch"] or {}).get("pools", []) if p.startswith("torch")]
        lines.append(f"numpy {meta['numpy']}, {'; '.join(pools)}")
    lines += kernel_note(meta)
    lines.append("")
    for entry in result["results"]:
        md, pt = entry["minidark"], entry["torch"]
        epochs = meta["epochs"]
        lines.append(f"{entry['cfg']}: batch {entry['batch']} x {entry['subdivisions']} "
                     f"subdivisions, {entry['iterations']} iterations = {epochs} epoch"
                     f"{'s' if epochs != 1 else ''} of {meta['train_rows']:,} MNIST training "
                     f"rows (reshuffled each epoch, the same order for both engines)")
        schedule = ", ".join(f"{rate:g} from iteration {i}" for i, rate in
                             entry["rate_schedule"][:6])
        if len(entry["rate_schedule"]) > 6:
            schedule += f", ... ({len(entry['rate_schedule'])} changes)"
        lines.append(f"  learning rate ({entry['policy']}): {schedule}")
        if entry["torch_error"]:
            lines.append(f"  PyTorch: {entry['torch_error']}")
        else:
            same = {True: "yes", False: "NO", None: "-"}
            lines.append(f"  PyTorch got minidark's rate at every iteration: "
                         f"{same[entry['same_rates']]}; same initial weights: "
                         f"{same[entry['same_initial_weights']]}; same batch order: "
                         f"{same[entry['same_order']]}")
        lines.append(f"  {'seed':<8}{'minidark top-1':>16}{'PyTorch top-1':>16}"
                     f"{'difference':>14}{'train s: minidark':>19}{'PyTorch':>9}")
        by_seed = {}
        for engine in ENGINES:
            for run in entry["runs"][engine]:
                by_seed.setdefault(run["seed"], {})[engine] = run
        for seed, pair in by_seed.items():
            a, b = pair.get("minidark"), pair.get("torch")
            diff = f"{100 * (a['top1'] - b['top1']):+.2f} pts" if a and b else "-"
            lines.append(f"  {seed:<8}{_fmt(a and 100 * a['top1'], 'f') + '%':>16}"
                         f"{(_fmt(100 * b['top1'], 'f') + '%') if b else '-':>16}{diff:>14}"
                         f"{_fmt(a and a['train_s'], 'f'):>19}{_fmt(b and b['train_s'], 'f'):>9}")
        count = len(by_seed)
        lines.append(f"  top-1 %, mean over {count} seed{'s' if count != 1 else ''}"
                     f"{' ± std (min to max)' if count > 1 else ''}:")
        lines.append(f"    minidark  {_pm(md and md['top1_pct'])}")
        lines.append(f"    PyTorch   {_pm(pt and pt['top1_pct'])}")
        lines.append(f"    minidark - PyTorch  "
                     f"{_pm(entry['difference_points'], suffix=' pts', sign='+')}")
        lines.append("  wall seconds per run:")
        for label, key in (("training", "train_s"), ("test pass", "eval_s"),
                           ("whole worker", "wall_s")):
            lines.append(f"    {label:<13} minidark {_pm(md and md[key])}, "
                         f"PyTorch {_pm(pt and pt[key])}")
        if entry["within_target"] is not None:
            verdict = "met" if entry["within_target"] else "NOT met"
            lines.append(f"  target |minidark - PyTorch| <= {meta['target_points']} points "
                         f"(mean over {count} seed{'s' if count != 1 else ''}): {verdict}"
                         + ("; one seed: pass --seeds 0,1,2 to see the spread"
                            if count == 1 else ""))
        lines.append("")
    lines.append("Each run trains from the same initial weights (the cfg and seed) in a fresh "
                 "process; dropout masks differ between engines.")
    return "\n".join(line.rstrip() for line in lines)


# ==========================================================================
# Output
# ==========================================================================
def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if kind == "mb":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_table(result):
    """The human-readable report."""
    meta = result["meta"]
    gemm = meta["gemm"]
    noisy = "  (more than 1 thread: expect noisy figures)" if meta["threads"] > 1 else ""
    torch_text = (gemm["torch_blas"] or f"torch {meta['torch']}") if meta["torch"] else \
        "PyTorch not used"
    lines = [f"minidark bench  {meta['date']}  {meta['cpu']} ({meta['cpu_count']} cores)",
             f"threads {meta['threads']}{noisy}",
             f"numpy {meta['numpy']}, {'; '.join(gemm['blas'])}; {torch_text}",
             *kernel_note(meta),
             f"float32 GEMM {gemm['size']}^3: numpy {_fmt(gemm['gflops'], 'int')} GFLOP/s "
             f"(best of {len(gemm['gflops_runs'])} runs; the reference for the fractions)"
             + (f", PyTorch {_fmt(gemm['torch_gflops'], 'int')} GFLOP/s"
                if gemm.get("torch_gflops") else ""), ""]
    for entry in result["results"]:
        md, pt, ratios = entry["minidark"], entry["torch"], entry["ratios"]
        lines.append(f"{entry['cfg']}: batch {entry['batch']}, {entry['params']:,} parameters, "
                     f"{entry['forward_flops'] / 1e6:.2f} MFLOPs/image forward, "
                     f"{entry['training_flops'] / 1e6:.2f} training")
        lines.append(f"  data: {entry['data']}; {meta['repeats']} x (minidark, PyTorch) "
                     f"pairs, {meta['steps']} timed steps after {meta['warmup']} warm-up, "
                     f"{meta['eval_passes']} eval passes")
        if entry["torch_error"]:
            lines.append(f"  PyTorch: {entry['torch_error']}")
        head = f"  {'':<30}{'minidark':>12}{'PyTorch':>12}   {'minidark/PyTorch (min-max)'}"
        lines.append(head)
        limit = entry["gemm_limit_img_s"]
        rows = [("training img/s", "train_img_s", "int"),
                ("  fraction of GEMM rate", "train_gemm_fraction", "pct"),
                ("inference img/s", "eval_img_s", "int"),
                ("  fraction of GEMM rate", "eval_gemm_fraction", "pct"),
                ("training peak RSS MB", "train_peak_rss_mb", "mb"),
                ("evaluation peak RSS MB", "eval_peak_rss_mb", "mb"),
                ("  RSS after imports MB", "rss_after_import_mb", "mb")]
        for label, key, kind in rows:
            ratio = ratios.get(key)
            ratio_text = (f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"
                          if ratio else "")
            lines.append(f"  {label:<30}{_fmt(md and md[key], kind):>12}"
                         f"{_fmt(pt and pt[key], kind):>12}   {ratio_text}")
        lines.append(f"  GEMM-only limit img/s (net's own GEMM shapes): training "
                     f"{_fmt(limit['train'], 'int')}, inference {_fmt(limit['eval'], 'int')}")
        lines.append("")
    lines.append("img/s: higher is better; RSS: lower is better. Ratios are medians of "
                 "per-pair ratios. Fraction of GEMM rate = img/s x FLOPs per image / GEMM GFLOP/s.")
    return "\n".join(line.rstrip() for line in lines)


# ==========================================================================
# Command line
# ==========================================================================
def add_arguments(parser):
    """The bench options (shared by ``python -m minidark.tools.bench`` and ``minidark bench``)."""
    parser.add_argument("cfgs", nargs="*", metavar="CFG",
                        help=f"cfg files (default: {' '.join(DEFAULT_CFGS)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS / PyTorch threads (default 1; >1 is noisy)")
    parser.add_argument("--steps", type=int, default=50,
                        help="timed training steps per measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed training steps first (default 5)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved (minidark, PyTorch) pairs (default 3)")
    parser.add_argument("--train-batches", type=int, default=8,
                        help="distinct training batches cycled through (default 8)")
    parser.add_argument("--eval-rows", type=int, default=10000,
                        help="rows per inference pass (default 10000: MNIST test set)")
    parser.add_argument("--eval-passes", type=int, default=3,
                        help="timed inference passes per measurement (default 3)")
    parser.add_argument("--gemm-size", type=int, default=1024,
                        help="square float32 GEMM size for the GFLOP/s reference")
    parser.add_argument("--seed", type=int, default=0, help="weights/data seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep-blas-kernel", dest="native_blas", action="store_false",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE from the environment "
                             "in the workers (by default they are dropped, so OpenBLAS runs "
                             "the CPU's own kernel; the table names the kernel used)")
    parser.add_argument("--no-torch", action="store_true",
                        help="measure minidark only, even if PyTorch is installed")
    group = parser.add_argument_group(
        "accuracy mode", "train minidark and its PyTorch twin on MNIST from the same weights, "
        "batch order and per-iteration learning rates; print both test top-1 accuracies")
    group.add_argument("--accuracy", type=int, metavar="EPOCHS",
                       help="train for EPOCHS epochs in each engine instead of timing steps")
    group.add_argument("--seeds", metavar="S,S,...",
                       help="comma-separated seeds, one run per engine each (default: --seed)")
    group.add_argument("--train-rows", type=int, metavar="N",
                       help="train on the first N MNIST training rows only (quick checks)")
    return parser


def parse_seeds(text):
    """'0,1,2' -> [0, 1, 2] (distinct, in order)."""
    seeds = []
    for part in text.split(","):
        try:
            seed = int(part.strip())
        except ValueError:
            raise MinidarkError(f"--seeds {text!r}: expected comma-separated integers, "
                                f"e.g. --seeds 0,1,2") from None
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def run(args):
    """Run the benchmark from parsed arguments; return the exit code."""
    for name in ("threads", "steps", "repeats", "train_batches", "eval_rows", "eval_passes",
                 "gemm_size"):
        if getattr(args, name) < 1:
            raise MinidarkError(f"--{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(args, name)}")
    if args.warmup < 0:
        raise MinidarkError(f"--warmup must be >= 0, got {args.warmup}")
    cfgs = [resolve_cfg(c) for c in args.cfgs]
    if not cfgs:
        cfgs = [resolve_cfg(c) for c in DEFAULT_CFGS if os.path.exists(resolve_cfg(c))]
        if not cfgs:
            raise MinidarkError(f"none of the default cfgs exist ({', '.join(DEFAULT_CFGS)}); "
                                f"name a cfg")
    for cfg in cfgs:
        if not os.path.exists(cfg):
            raise MinidarkError(f"{cfg}: no such cfg file")
    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr,
                                                      flush=True))
    if args.accuracy is None:
        if args.seeds is not None or args.train_rows is not None:
            raise MinidarkError("--seeds and --train-rows need --accuracy EPOCHS")
        result = run_bench(cfgs, args, progress)
        print(json.dumps(result, indent=1) if args.json else format_table(result))
        return 0
    for name in ("accuracy", "train_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise MinidarkError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.seed_list = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    result = run_accuracy(cfgs, args, progress)
    print(json.dumps(result, indent=1) if args.json else format_accuracy_table(result))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minidark.tools.bench",
        description="Training/inference images/s and peak memory of minidark, against "
                    "PyTorch on the same network when it is installed.")
    add_arguments(parser)
    # internal: one measurement in this (fresh) process
    parser.add_argument("--worker", choices=("train", "eval", "gemm", "accuracy"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--mnist", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, default="minidark", help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    parser.add_argument("--plugin", action="append", default=[], metavar="SPEC",
                        help="load layers from a .py file or module (repeatable)")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    try:
        if args.plugin:
            from ..plugins import load_plugins
            load_plugins(args.plugin)
        return run(args)
    except MinidarkError as exc:
        print(f"minidark bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
