"""Workers: one measurement per fresh process (``python -m minidark.tools.bench
--worker MODE``), printed as one JSON line, so that peak memory never mixes and
the thread count is set in the environment before numpy or torch loads.
"""

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import statistics
import sys
import time

import numpy as np

from ... import load_network
from ...plugins import add_plugin_argument, load_plugins
from .common import ENGINES, UnsupportedForTorch, add_arguments
from .torch_twin import build_torch_model


def _rss_now_mb():
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def process_peak_rss_mb():
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _limit_threads(threads, with_torch=False):
    """Apply the thread count in-process; return what the libraries report."""
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(threads)
    info = {
        "threads": threads,
        "pools": [
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''} "
            f"({p.get('num_threads')} threads)".replace("  ", " ")
            for p in threadpool_info()
        ],
    }
    if with_torch:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["pools"].insert(0, _torch_config())
    return info


def _worker(args):
    """Run one measurement and print it as one JSON line."""
    with_torch = args.engine == "torch"
    if with_torch:
        import torch

        torch.set_num_threads(args.threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(args.threads)
    result = {"engine": args.engine, "mode": args.worker, "rss_after_import_mb": _rss_now_mb()}
    if args.plugin:
        load_plugins(args.plugin)
    if args.worker == "gemm":
        result.update(_limit_threads(args.threads, with_torch))
        result.update(_worker_gemm(args, with_torch))
    elif args.worker == "rnn":
        from .recurrent import worker_rnn

        result.update(_limit_threads(args.threads, with_torch))
        result.update(worker_rnn(args))
    elif args.worker == "accuracy":
        result.update(_limit_threads(args.threads, with_torch))
        try:
            result.update(_worker_accuracy(args))
        except UnsupportedForTorch as exc:
            print(json.dumps({"error": str(exc)}))
            return 0
    else:
        data = np.load(os.path.join(args.data, f"{args.worker}_x.npy"))
        labels = np.load(os.path.join(args.data, f"{args.worker}_y.npy"))
        if args.engine == "minidark":
            result.update(_limit_threads(args.threads))
            net = load_network(args.cfg, seed=args.seed)
            measure = _minidark_train if args.worker == "train" else _minidark_eval
            result.update(measure(net, data, labels, args))
        else:
            result.update(_limit_threads(args.threads, with_torch))
            try:
                twin = build_torch_model(load_network(args.cfg, batch=1, seed=args.seed))
            except UnsupportedForTorch as exc:
                print(json.dumps({"error": str(exc)}))
                return 0
            measure = _torch_train if args.worker == "train" else _torch_eval
            result.update(measure(twin, data, labels, args))
    result["peak_rss_mb"] = process_peak_rss_mb()
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


def _minidark_train(net, data, labels, args):
    batch = net.batch
    truths = np.zeros((labels.size, net.truths), np.float32)
    truths[np.arange(labels.size), labels % net.truths] = 1
    count = data.shape[0] // batch
    batches = [
        (data[j * batch : (j + 1) * batch], truths[j * batch : (j + 1) * batch])
        for j in range(count)
    ]

    def step(i):
        x, truth = batches[i % count]
        net.forward(x, truth, train=True)
        net.backward()
        net.update()

    times = _timed_steps(step, args.steps, args.warmup)
    return {
        "step_s": times,
        "img_s": batch / statistics.median(times),
        "batch": batch,
        "final_loss": net.cost / batch,
    }


def _minidark_eval(net, data, labels, args):
    net.freeze()  # inference only, as PyTorch's model runs under inference_mode
    net.predict(data[: 2 * net.batch])  # warm-up
    times = _timed_steps(lambda i: net.predict(data), args.eval_passes, 0)
    return {
        "pass_s": times,
        "img_s": data.shape[0] / statistics.median(times),
        "rows": int(data.shape[0]),
        "batch": net.batch,
    }


def _torch_train(twin, data, labels, args):
    import torch

    batch = args.batch
    count = data.shape[0] // batch
    x = torch.from_numpy(data)
    y = torch.from_numpy(labels.astype("int64") % twin.outputs)
    batches = [
        (x[j * batch : (j + 1) * batch], y[j * batch : (j + 1) * batch]) for j in range(count)
    ]
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
    return {
        "step_s": times,
        "img_s": batch / statistics.median(times),
        "batch": batch,
        "final_loss": float(last[0]) * twin.subdivisions,
    }


def _torch_eval(twin, data, labels, args):
    import torch

    batch, model = args.batch, twin.model
    model.eval()
    x = torch.from_numpy(data)

    def predict(rows):
        result = torch.from_numpy(np.empty((rows.shape[0], twin.outputs), np.float32))
        for start in range(0, rows.shape[0], batch):
            result[start : start + batch] = torch.softmax(model(rows[start : start + batch]), 1)
        return result

    with torch.inference_mode():
        predict(x[: 2 * batch])  # warm-up
        times = _timed_steps(lambda i: predict(x), args.eval_passes, 0)
    return {
        "pass_s": times,
        "img_s": data.shape[0] / statistics.median(times),
        "rows": int(data.shape[0]),
        "batch": batch,
    }


def _time_matmul(m, k, n, min_time=0.05, reps=3, with_torch=False):
    """Best (minimum) seconds of one float32 (m, k) @ (k, n) into a preallocated
    output: a limit, so noise from other processes should not lower it."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    c = np.empty((m, n), np.float32)
    if with_torch:
        import torch

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


def _worker_gemm(args, with_torch=False):
    size = args.gemm_size
    seconds = _time_matmul(size, size, size, min_time=0.3, reps=5, with_torch=with_torch)
    result = {"gemm_size": size, "gflops": 2 * size**3 / seconds / 1e9, "nets": {}}
    if args.shapes:
        with open(args.shapes) as handle:
            nets = json.load(handle)
        for name, shapes in nets.items():
            result["nets"][name] = {
                kind: sum(
                    count * _time_matmul(m, k, n, with_torch=with_torch)
                    for m, k, n, count in products
                )
                for kind, products in shapes.items()
            }
    return result


def _worker_accuracy(args):
    """Train ``args.cfg`` (seed ``args.seed``) on the MNIST rows listed in the
    order file ``args.data``, then top-1 on the MNIST test set."""
    # only accuracy workers read MNIST and train: the speed workers import no more
    # than they measure, so their "RSS after imports" is minidark's own
    from ...data.mnist import load_mnist
    from .accuracy import _digest, top1_minidark, top1_torch, train_minidark, train_torch

    order = np.load(args.data)
    train_x, train_y = load_mnist(args.mnist, "train")
    test_x, test_y = load_mnist(args.mnist, "test")
    net = load_network(args.cfg, seed=args.seed)
    rates = []
    if args.engine == "minidark":
        initial = _digest(
            a for l in net.layers if l.weights is not None for a in (l.weights, l.biases)
        )
        setup_s = 0.0
        start = time.perf_counter()
        losses = train_minidark(net, train_x, train_y, order, rates)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        top1 = top1_minidark(net, test_x, test_y)
    else:
        import torch

        torch.manual_seed(args.seed)  # dropout masks
        twin = build_torch_model(net)
        initial = _digest(
            t.detach().numpy()
            for _, module, bn in twin.pairs
            for t in (module.weight, module.bias if bn is None else bn.bias)
        )
        start = time.perf_counter()
        optimizer = twin.optimizer()  # imports torch.optim's lazy modules
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        losses = train_torch(twin, net, train_x, train_y, order, rates, optimizer)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        top1 = top1_torch(twin, test_x, test_y, net.batch)
    eval_s = time.perf_counter() - start
    per_epoch = max(1, round((args.train_rows or train_x.shape[0]) / order.shape[1]))
    return {
        "seed": args.seed,
        "iterations": int(order.shape[0]),
        "rows_per_iteration": int(order.shape[1]),
        "top1": top1,
        "test_rows": int(test_x.shape[0]),
        "train_s": train_s,
        "eval_s": eval_s,
        "setup_s": setup_s,
        "first_loss": losses[0] if losses else None,
        "last_epoch_loss": statistics.fmean(losses[-per_epoch:]) if losses else None,
        "rates": rates,
        "initial_weights": initial,
        "order": hashlib.sha256(order.tobytes()).hexdigest()[:16],
    }


def _torch_config():
    """PyTorch's BLAS and oneDNN, from its build configuration."""
    import torch

    match = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return (
        f"torch {torch.__version__} BLAS {match.group(1) if match else '?'}, oneDNN "
        f"{'on' if torch.backends.mkldnn.is_available() else 'off'} "
        f"({torch.get_num_threads()} threads)"
    )


def worker_main(argv):
    """``python -m minidark.tools.bench --worker MODE ...``: one measurement in this
    fresh process, started by the parent (see bench/__main__.py)."""
    parser = argparse.ArgumentParser(
        prog="python -m minidark.tools.bench",
        description="Training/inference images/s and peak memory of minidark, against "
        "PyTorch on the same network when it is installed.",
    )
    add_arguments(parser)
    # internal: one measurement in this (fresh) process
    parser.add_argument(
        "--worker", choices=("train", "eval", "gemm", "accuracy", "rnn"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mnist", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, default="minidark", help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    add_plugin_argument(parser)
    return _worker(parser.parse_args(argv))
