"""Inference speed of a detection network against OpenCV's dnn module, side by side.

Both read the same cfg and ``.weights`` (random weights written by minidark
when none are given) and run batch 1 on the same input, each on one thread
(OpenBLAS through threadpoolctl, ``cv2.setNumThreads(1)``). Each side is
warmed up, then timed ``runs`` times in alternation; the median is reported
as images per second. minidark's time is broken down per layer type and per
layer (the slowest ones), so one can see where it goes.
"""
import collections
import contextlib
import os
import statistics
import tempfile
import time

import numpy as np


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "threadpoolctl missing: BLAS threads not limited"
    return threadpool_limits(1), None


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


def bench_inference(cfg, weights=None, runs=10, size=None, opencv=True):
    """Return a dict: ``minidark`` and ``opencv`` seconds per image (median),
    ``layers`` ({index: seconds}), the network and notes."""
    import minidark

    from ..weights import save_weights
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        if size:
            with open(cfg, encoding="utf-8") as handle:
                text = handle.read()
            import re
            text = re.sub(r"(?m)^width\s*=.*$", f"width={size}", text)
            text = re.sub(r"(?m)^height\s*=.*$", f"height={size}", text)
            cfg = os.path.join(tmp, os.path.basename(cfg))
            with open(cfg, "w") as handle:
                handle.write(text)
        net = minidark.load_network(cfg, weights, batch=1, seed=0)
        if weights is None:
            weights = os.path.join(tmp, "random.weights")
            save_weights(net, weights)
            notes.append("random weights (written by minidark, read by both)")
        x = np.random.default_rng(0).uniform(size=(1, net.c, net.h, net.w)).astype(np.float32)
        cv = None
        if opencv:
            try:
                import cv2
                cv2.setNumThreads(1)
                cv = cv2.dnn.readNetFromDarknet(cfg, weights)
                outputs = cv.getUnconnectedOutLayersNames()
            except ImportError:
                notes.append("OpenCV not installed (pip install 'opencv-python-headless<5')")
            except Exception as exc:
                notes.append(f"OpenCV cannot read this cfg: {str(exc).splitlines()[-1]}")
                cv = None
        limit, note = _one_thread()
        if note:
            notes.append(note)
        ours, theirs = [], []
        flat = x.reshape(1, -1)
        with limit:
            for _ in range(2):                      # warm-up
                net.predict(flat)
                if cv is not None:
                    cv.setInput(x)
                    cv.forward(outputs)
            for _ in range(runs):                   # alternate, so both see the same machine
                tick = time.perf_counter()
                net.predict(flat)
                ours.append(time.perf_counter() - tick)
                if cv is not None:
                    tick = time.perf_counter()
                    cv.setInput(x)
                    cv.forward(outputs)
                    theirs.append(time.perf_counter() - tick)
            layers = _layer_times(net, flat, max(3, runs // 2))
    return {"net": net, "minidark": statistics.median(ours),
            "opencv": statistics.median(theirs) if theirs else None, "layers": layers,
            "notes": notes, "runs": runs}


def format_report(name, result, top=8):
    net, ours, theirs = result["net"], result["minidark"], result["opencv"]
    flops = sum(l.flops for l in net.layers) / 1e9
    lines = [f"{name}: {net.w}x{net.h}x{net.c}, {flops:.3f} BFLOPs, batch 1, 1 thread, "
             f"median of {result['runs']} runs"]
    lines.append(f"  {'':10} {'ms/image':>9} {'images/s':>9}")
    lines.append(f"  {'minidark':10} {1000 * ours:9.1f} {1 / ours:9.2f}")
    if theirs is not None:
        lines.append(f"  {'OpenCV':10} {1000 * theirs:9.1f} {1 / theirs:9.2f}")
        lines.append(f"  minidark / OpenCV speed: {theirs / ours:.2f}x")
    layers = result["layers"]
    total = sum(layers.values())
    by_type = collections.defaultdict(float)
    for i, t in layers.items():
        by_type[net.layers[i].type] += t
    lines.append("  where minidark's time goes (per layer type):")
    for kind, t in sorted(by_type.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:14} {1000 * t:7.1f} ms  {100 * t / total:5.1f}%")
    lines.append("  slowest layers:")
    for i, t in sorted(layers.items(), key=lambda kv: -kv[1])[:top]:
        l = net.layers[i]
        rate = f"{l.flops / t / 1e9:6.1f} GFLOP/s" if l.flops and t else ""
        lines.append(f"    {i:3} {l.type:14} {l.desc:18} {1000 * t:7.1f} ms  {rate}")
    lines += [f"  note: {n}" for n in result["notes"]]
    return "\n".join(lines)
