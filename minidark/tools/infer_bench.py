"""Inference speed of a darknet network against OpenCV's dnn module, side by side.

Both read the same cfg and ``.weights`` (random weights written by minidark
when none are given) and run the same input batch, each on one thread
(OpenBLAS through threadpoolctl, ``cv2.setNumThreads(1)``), in one process,
so both see the same CPU pinning and the same machine load. Each side is
warmed up, then ``runs`` (minidark, OpenCV) pairs are timed in alternation;
the ratio reported is the median of the per-pair ratios (on a shared machine
only ratios of interleaved runs mean anything), beside the median times.
minidark's time is broken down per layer type and per layer (the slowest
ones), so one can see where it goes; ``--layers`` lists every layer beside
OpenCV's own per-layer time (``getPerfProfile``, its layers named after
darknet's indexes: ``conv_12``; batch norm and activation fused into the
convolution show there).

Like ``minidark bench`` (docs/benchmark.md), the measurement runs in a
worker process without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``, so
OpenBLAS runs the CPU's own kernel (``keep_blas_kernel`` keeps them); the
result names the kernel each BLAS reported (threadpoolctl).

    python -m minidark.tools.infer_bench CFG... [--batch B] [--size S] [--runs N]
                                                [--layers] [--json]
"""

import argparse
import collections
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _threads(threads):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "threadpoolctl missing: BLAS threads not limited"
    return threadpool_limits(threads), None


# One engine alone in a fresh process: load, then PASSES passes; prints its peak
# RSS in MB (what each needs on its own; the timing shares a process): VmHWM,
# the peak of this address space (ru_maxrss would carry the parent's over exec).
PEAK_RSS = """
def peak_mb():
    with open("/proc/self/status") as handle:
        return next(int(l.split()[1]) / 1024 for l in handle if l.startswith("VmHWM:"))
"""
RSS_PROGRAMS = {
    "minidark": PEAK_RSS
    + """
import sys, numpy as np, minidark
cfg, weights, batch, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
net = minidark.load_network(cfg, weights, batch=batch, seed=0)
net.freeze()
x = np.random.default_rng(0).uniform(size=(batch, net.inputs)).astype(np.float32)
for _ in range(passes):
    net.predict(x)
print(peak_mb())
""",
    "opencv": PEAK_RSS
    + """
import sys, numpy as np, cv2
cfg, weights, batch, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cv2.setNumThreads(int(sys.argv[5]))
net = cv2.dnn.readNetFromDarknet(cfg, weights)
names = net.getUnconnectedOutLayersNames()
size = [int(v) for v in sys.argv[6:9]]
x = np.random.default_rng(0).uniform(size=(batch, *size)).astype(np.float32)
for _ in range(passes):
    net.setInput(x)
    net.forward(names)
print(peak_mb())
""",
}


def peak_rss_mb(engine, cfg, weights, batch, shape, threads=1, passes=3):
    """Peak RSS (MB) of ``engine`` running the network alone in a fresh process,
    or None if that process fails (e.g. OpenCV cannot read the cfg)."""
    from .bench.runner import worker_environment

    env = worker_environment(threads)  # BLAS threads, this checkout first on the path
    args = [cfg, weights, str(batch), str(passes), str(threads), *(str(v) for v in shape)]
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROGRAMS[engine], *args], capture_output=True, text=True, env=env
    )
    lines = done.stdout.strip().splitlines()
    return float(lines[-1]) if done.returncode == 0 and lines else None


def _kernels():
    """What each BLAS/OpenMP library in the process reports: api, version, kernel."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''} (in "
        f"{os.path.basename(os.path.dirname(p.get('filepath', '')))})".replace("  ", " ")
        for p in threadpool_info()
    ]


def _layer_times(net, x, runs):
    """Median seconds per layer of minidark's forward, over ``runs`` passes."""
    samples = collections.defaultdict(list)
    originals = [l.forward for l in net.layers]
    try:
        for l, forward in zip(net.layers, originals, strict=True):

            def timed(layer, n, _f=forward):
                tick = time.perf_counter()
                _f(layer, n)
                samples[layer.index].append(time.perf_counter() - tick)

            l.forward = timed
        for _ in range(runs):
            net.predict(x)
    finally:
        for l, forward in zip(net.layers, originals, strict=True):
            l.forward = forward
    return {i: statistics.median(v) for i, v in samples.items()}


def _opencv_layer_times(cv, x, outputs, runs):
    """Median seconds per darknet layer index of OpenCV's forward (its layer
    names end in the darknet index; fused layers report 0)."""
    import cv2

    names = cv.getLayerNames()
    samples = collections.defaultdict(list)
    for _ in range(runs):
        cv.setInput(x)
        cv.forward(outputs)
        per_layer = collections.defaultdict(float)
        for name, ticks in zip(names, cv.getPerfProfile()[1].ravel(), strict=False):
            index = re.search(r"_(\d+)$", name)
            if index:
                per_layer[int(index.group(1))] += ticks / cv2.getTickFrequency()
        for index, seconds in per_layer.items():
            samples[index].append(seconds)
    return {i: statistics.median(v) for i, v in samples.items()}


def rewritten_cfg(cfg, directory, **values):
    """A copy of ``cfg`` in ``directory`` whose lines ``key=...`` read ``key=value``
    for each of ``values`` (e.g. width, height; batch, subdivisions)."""
    with open(cfg, encoding="utf-8") as handle:
        text = handle.read()
    for key, value in values.items():
        text = re.sub(rf"(?m)^{key}\s*=.*$", f"{key}={value}", text)
    path = os.path.join(directory, os.path.basename(cfg))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def measure(cfg, weights=None, runs=10, size=None, opencv=True, batch=1, threads=1, rss=False):
    """Time minidark and OpenCV in this process, on ``threads`` threads each; with
    ``rss``, also each one's peak RSS alone in a fresh process; return a
    JSON-ready dict."""
    import minidark

    from ..weights import save_weights

    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        if size:
            cfg = rewritten_cfg(cfg, tmp, width=size, height=size)
        net = minidark.load_network(cfg, weights, batch=batch, seed=0)
        if weights is None:
            weights = os.path.join(tmp, "random.weights")
            save_weights(net, weights)
            notes.append("random weights (written by minidark, read by both)")
        net.freeze()  # an inference engine, as OpenCV's net is
        x = np.random.default_rng(0).uniform(size=(batch, net.c, net.h, net.w))
        x = x.astype(np.float32)
        cv = outputs = None
        if opencv:
            try:
                import cv2

                cv2.setNumThreads(threads)
                cv = cv2.dnn.readNetFromDarknet(cfg, weights)
                outputs = cv.getUnconnectedOutLayersNames()
                notes.append(f"OpenCV {cv2.__version__} dnn, {cv2.getNumThreads()} thread(s)")
            except ImportError:
                notes.append("OpenCV not installed (pip install 'opencv-python-headless<5')")
            except Exception as exc:
                notes.append(f"OpenCV cannot read this cfg: {str(exc).splitlines()[-1]}")
                cv = None
        limit, note = _threads(threads)
        if note:
            notes.append(note)
        ours, theirs = [], []
        flat = x.reshape(batch, -1)
        with limit:
            for _ in range(2):  # warm-up (minidark's first pass also plans its paths)
                net.predict(flat)
                if cv is not None:
                    cv.setInput(x)
                    cv.forward(outputs)
            for _ in range(runs):  # alternate, so both see the same machine
                tick = time.perf_counter()
                net.predict(flat)
                ours.append(time.perf_counter() - tick)
                if cv is not None:
                    tick = time.perf_counter()
                    cv.setInput(x)
                    cv.forward(outputs)
                    theirs.append(time.perf_counter() - tick)
            layers = _layer_times(net, flat, max(3, runs // 2))
            cv_layers = {} if cv is None else _opencv_layer_times(cv, x, outputs, max(3, runs // 2))
            kernels = _kernels()
        peak_rss = {}
        if rss:
            shape = (net.c, net.h, net.w)
            peak_rss["minidark"] = peak_rss_mb("minidark", cfg, weights, batch, shape, threads)
            if cv is not None:
                peak_rss["opencv"] = peak_rss_mb("opencv", cfg, weights, batch, shape, threads)
    pairs = [t / o for o, t in zip(ours, theirs, strict=False)]
    return {
        "cfg": os.path.basename(cfg),
        "width": net.w,
        "height": net.h,
        "channels": net.c,
        "batch": batch,
        "threads": threads,
        "bflops": sum(l.flops for l in net.layers) / 1e9,
        "runs": runs,
        "minidark_s": statistics.median(ours) / batch,
        "opencv_s": statistics.median(theirs) / batch if theirs else None,
        "pair_ratios": pairs,
        "ratio": statistics.median(pairs) if pairs else None,
        "layers": [
            {
                "index": l.index,
                "type": l.type,
                "desc": l.desc,
                "flops": l.flops,
                "seconds": layers.get(l.index, 0.0),
                "opencv_seconds": cv_layers.get(l.index),
                "path": _path(l, net.layers),
            }
            for l in net.layers
        ],
        "kernels": kernels,
        "peak_rss_mb": peak_rss,
        "blas_environment": {k: os.environ.get(k) for k in KERNEL_VARIABLES},
        "notes": notes,
    }


def _path(l, layers):
    """The convolution path a layer runs (its plan); for a max-pool filled by the
    convolution before it, that; '' for other layers."""
    if l.type == "maxpool" and l.index and layers[l.index - 1].pool_after is l:
        return f"filled by layer {l.index - 1}'s pass"
    if l.type != "convolutional":
        return ""
    if l.pointwise:
        return "gemm 1x1"
    if l.winograd:
        return f"winograd F({l.winograd},3)"
    return "im2col " + ("cnhw" if l.cnhw else "nhwc") + (" banded" if l.band else "")


def bench_inference(
    cfg, weights=None, runs=10, size=None, opencv=True, batch=1, keep_blas_kernel=False,
    threads=1, rss=False,
):  # fmt: skip
    """Run ``measure`` in a worker process without the OpenBLAS kernel pin (unless
    ``keep_blas_kernel`` or there is none), and return its dict; ``notes`` says
    which pin was dropped."""
    pinned = {k: os.environ[k] for k in KERNEL_VARIABLES if os.environ.get(k)}
    if keep_blas_kernel or not pinned:
        return measure(cfg, weights, runs, size, opencv, batch, threads, rss)
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    env["PYTHONPATH"] = REPO_ROOT + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    command = [sys.executable, "-m", "minidark.tools.infer_bench", "--worker", cfg,
               "--runs", str(runs), "--batch", str(batch), "--threads", str(threads)]  # fmt: skip
    command += ["--rss"] if rss else []
    command += ["--size", str(size)] if size else []
    command += ["--weights", weights] if weights else []
    command += [] if opencv else ["--no-opencv"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        from ..errors import MinidarkError

        raise MinidarkError(
            f"inference bench worker for {cfg} failed with exit code {done.returncode}:\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    result = json.loads(lines[-1])
    result["notes"].append(
        "dropped "
        + ", ".join(f"{k}={v}" for k, v in pinned.items())
        + " in the worker: OpenBLAS runs the CPU's own kernel"
    )
    return result


def format_report(name, result, top=8, every_layer=False):
    ours, theirs = result["minidark_s"], result["opencv_s"]
    lines = [
        f"{name}: {result['width']}x{result['height']}x{result['channels']}, "
        f"{result['bflops']:.3f} BFLOPs, batch {result['batch']}, "
        f"{result.get('threads', 1)} thread(s), "
        f"{result['runs']} interleaved pairs"
    ]
    lines.append(f"  {'':10} {'ms/image':>9} {'images/s':>9}")
    lines.append(f"  {'minidark':10} {1000 * ours:9.1f} {1 / ours:9.2f}")
    if theirs is not None:
        lines.append(f"  {'OpenCV':10} {1000 * theirs:9.1f} {1 / theirs:9.2f}")
        ratios = sorted(result["pair_ratios"])
        lines.append(
            f"  minidark / OpenCV speed: {result['ratio']:.2f}x (median of the pairs' "
            f"ratios; range {ratios[0]:.2f}-{ratios[-1]:.2f})"
        )
    rss = result.get("peak_rss_mb") or {}
    if rss:
        alone = ", ".join(f"{k} {v:.0f} MB" if v else f"{k} failed" for k, v in rss.items())
        lines.append(f"  peak RSS, each alone in a fresh process: {alone}")
    lines.append("  BLAS: " + "; ".join(result["kernels"]))
    layers = result["layers"]
    total = sum(l["seconds"] for l in layers) or 1.0
    by_type = collections.defaultdict(float)
    for l in layers:
        by_type[l["type"]] += l["seconds"]
    lines.append("  where minidark's time goes (per layer type):")
    for kind, t in sorted(by_type.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:14} {1000 * t:7.1f} ms  {100 * t / total:5.1f}%")
    if every_layer:
        lines.append(
            f"  every layer ({'ms':>5}: minidark, OpenCV; OpenCV's profile is of "
            "separate passes, so its sum may differ from its total):"
        )
        shown = layers
    else:
        lines.append("  slowest layers:")
        shown = sorted(layers, key=lambda l: -l["seconds"])[:top]
    for l in shown:
        t, cv = l["seconds"], l.get("opencv_seconds")
        timed = l["flops"] and t > 1e-5  # (a pool filled by the convolution before it: ~0)
        rate = f"{l['flops'] * result['batch'] / t / 1e9:6.1f} GFLOP/s" if timed else ""
        where = f"{l['index']:3} {l['type']:14} {l['desc']:18}"
        theirs = f" {1000 * cv:7.1f} ms" if every_layer and cv is not None else ""
        lines.append(f"    {where} {1000 * t:7.1f} ms{theirs}  {rate:15} {l['path']}".rstrip())
    lines += [f"  note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minidark.tools.infer_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("cfgs", metavar="CFG", nargs="+")
    parser.add_argument("--weights", metavar="FILE")
    parser.add_argument("--runs", type=int, default=10, help="interleaved pairs (10)")
    parser.add_argument("--size", type=int, help="override the cfg's width and height")
    parser.add_argument("--batch", type=int, default=1, help="images per pass (1)")
    parser.add_argument("--no-opencv", dest="opencv", action="store_false")
    keep = "keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (default: dropped)"
    parser.add_argument("--keep-blas-kernel", action="store_true", help=keep)
    parser.add_argument("--json", action="store_true", help="one JSON document")
    every = "list every layer's time, minidark beside OpenCV (default: the slowest)"
    parser.add_argument("--layers", action="store_true", help=every)
    parser.add_argument("--threads", type=int, default=1, help="threads per engine (1)")
    rss = "also each engine's peak RSS, alone in a fresh process"
    parser.add_argument("--rss", action="store_true", help=rss)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("runs", "batch", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.worker:
        result = measure(args.cfgs[0], args.weights, args.runs, args.size, args.opencv,
                         args.batch, args.threads, args.rss)  # fmt: skip
        print(json.dumps(result))
        return 0
    results = []
    for cfg in args.cfgs:
        result = bench_inference(cfg, args.weights, args.runs, args.size, args.opencv,
                                 args.batch, args.keep_blas_kernel, args.threads,
                                 args.rss)  # fmt: skip
        results.append(result)
        if not args.json:
            print(format_report(os.path.basename(cfg), result, every_layer=args.layers), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
