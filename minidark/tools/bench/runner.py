"""The parent process: the data each measurement reads, the workers run in
turn (minidark, PyTorch, minidark, PyTorch ...), and the summary of their
results: medians, per-pair ratios, fractions of the GEMM rate.
"""

import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from ... import load_network
from ...data.mnist import FILES, find_idx, load_mnist
from ...errors import MinidarkError
from .common import ENGINE_NAMES, ENGINES, REPO_ROOT, THREAD_VARIABLES
from .flops import forward_flops, gemm_shapes, training_flops


def resolve_cfg(path):
    """A cfg path as given, or relative to the repository root (default cfgs)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def find_mnist():
    """The MNIST directory (IDX files), or None."""
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
    rng = np.random.default_rng(seed)
    train_rows = train_batches * net.batch
    classes = net.output_layer.outputs
    mnist = find_mnist() if (net.inputs == 784 and classes == 10) else None
    if mnist is not None:
        train_x, train_y = load_mnist(mnist, "train")
        eval_x, eval_y = load_mnist(mnist, "test")
        repeat = -(-eval_rows // eval_x.shape[0])
        eval_x = np.tile(eval_x, (repeat, 1))[:eval_rows]
        eval_y = np.tile(eval_y, repeat)[:eval_rows]
        train_x, train_y = train_x[:train_rows], train_y[:train_rows]
        description = (
            f"MNIST ({train_batches} training batches of {net.batch}, {eval_rows} test rows)"
        )
    else:
        train_x = rng.random((train_rows, net.inputs), np.float32)
        eval_x = rng.random((eval_rows, net.inputs), np.float32)
        train_y = rng.integers(0, classes, train_rows)
        eval_y = rng.integers(0, classes, eval_rows)
        description = (
            f"random uniform ({train_batches} training batches of {net.batch}, "
            f"{eval_rows} rows)" + ("" if net.inputs != 784 else "; MNIST not found")
        )
    for name, array in (
        ("train_x", train_x),
        ("train_y", train_y),
        ("eval_x", eval_x),
        ("eval_y", eval_y),
    ):
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


def run_worker(
    mode, engine, options, cfg=None, data=None, batch=None, shapes=None, seed=None, extra=()
):
    """Run one measurement in a fresh process; return its JSON result (with
    ``wall_s``, the process's wall time, imports and data loading included)."""
    seed = options.seed if seed is None else seed
    command = [
        sys.executable,
        "-m",
        "minidark.tools.bench",
        "--worker",
        mode,
        "--engine",
        engine,
        "--threads",
        str(options.threads),
        "--steps",
        str(options.steps),
        "--warmup",
        str(options.warmup),
        "--eval-passes",
        str(options.eval_passes),
        "--gemm-size",
        str(options.gemm_size),
        "--seed",
        str(seed),
    ]
    for flag, value in (("--cfg", cfg), ("--data", data), ("--batch", batch), ("--shapes", shapes)):
        if value is not None:
            command += [flag, str(value)]
    command += [str(e) for e in extra]
    for spec in options.plugin or ():
        command += ["--plugin", spec]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=worker_environment(options.threads, options.native_blas),
    )
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise MinidarkError(
            f"bench worker ({engine} {mode} {cfg or ''}) failed with exit "
            f"code {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )
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
    return {
        "median": statistics.median(pairs),
        "min": min(pairs),
        "max": max(pairs),
        "pairs": pairs,
    }


def torch_available():
    return importlib.util.find_spec("torch") is not None


METRICS = (
    ("train_img_s", "train", "img_s"),
    ("eval_img_s", "eval", "img_s"),
    ("train_peak_rss_mb", "train", "peak_rss_mb"),
    ("eval_peak_rss_mb", "eval", "peak_rss_mb"),
    ("rss_after_import_mb", "train", "rss_after_import_mb"),
)


def run_bench(cfgs, options, progress=None):
    """Measure every cfg; return the result dictionary (see --json)."""
    say = progress or (lambda message: None)
    use_torch = not options.no_torch and torch_available()
    started = datetime.datetime.now().astimezone()
    result = {"meta": machine_info(options, use_torch, started), "results": []}
    nets = {}
    with tempfile.TemporaryDirectory(prefix="minidark-bench-") as tmp:
        plans = []
        for index, cfg in enumerate(cfgs):
            net = load_network(cfg, seed=options.seed)
            data = os.path.join(tmp, f"cfg{index}")
            os.makedirs(data)
            entry = {
                "cfg": cfg,
                "batch": net.batch,
                "subdivisions": net.subdivisions,
                "params": int(net.params),
                "forward_flops": forward_flops(net),
                "training_flops": training_flops(net),
                "data": prepare_data(
                    net, data, options.train_batches, options.eval_rows, options.seed
                ),
                "runs": {engine: [] for engine in ENGINES},
                "torch_error": None,
            }
            if not use_torch:
                entry["torch_error"] = (
                    "disabled (--no-torch)"
                    if options.no_torch
                    else "PyTorch not installed: pip install -e '.[bench]'"
                )
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
                        say(
                            f"repeat {repeat + 1}/{options.repeats}: {entry['cfg']} "
                            f"{ENGINE_NAMES[engine]} {mode}"
                        )
                        run = run_worker(
                            mode, engine, options, cfg=entry["cfg"], data=data, batch=entry["batch"]
                        )
                        if "error" in run:
                            entry["torch_error"] = run["error"]
                            continue
                        entry["runs"][engine].append(run)
    result["meta"]["gemm"] = {
        "size": options.gemm_size,
        "gflops": max(g["gflops"] for g in gemms),
        "gflops_runs": [g["gflops"] for g in gemms],
        "blas": gemms[0]["pools"],
        "torch_gflops": max((g["gflops"] for g in torch_gemms), default=None),
        "torch_blas": torch_gemms[0]["pools"][0] if torch_gemms else None,
    }
    for entry, _ in plans:
        summarize(entry, gemms, result["meta"]["gemm"]["gflops"])
        result["results"].append(entry)
    return result


def summarize(entry, gemms, gflops):
    """Medians per engine, per-pair ratios, fractions of the GEMM rate."""
    flops = {"train": entry["training_flops"], "eval": entry["forward_flops"]}
    limits = [g["nets"].get(entry["cfg"]) for g in gemms]
    entry["gemm_limit_img_s"] = {
        kind: entry["batch"] / min(l[kind] for l in limits if l)
        if any(l and l[kind] for l in limits)
        else None
        for kind in ("train", "eval")
    }
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
            summary[f"{mode}_gemm_fraction"] = (
                summary[f"{mode}_gflops"] / gflops if rate and gflops else None
            )
        entry[engine] = summary
    entry["ratios"] = {}
    if entry["minidark"] and entry["torch"]:
        for name, mode, key in METRICS:
            ours = [r.get(key) for r in entry["runs"]["minidark"] if r["mode"] == mode]
            theirs = [r.get(key) for r in entry["runs"]["torch"] if r["mode"] == mode]
            pairs = zip(ours, theirs, strict=False)  # torch may have stopped early
            entry["ratios"][name] = _ratio_summary(
                [a / b if a is not None and b else None for a, b in pairs]
            )


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
    if sys.argv[0].endswith(os.path.join("bench", "__main__.py")):
        return "python -m minidark.tools.bench"
    if sys.argv[0].endswith("__main__.py"):
        return "python -m minidark"
    return os.path.basename(sys.argv[0])


def machine_info(options, use_torch, started):
    info = {
        "date": started.isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "threads": options.threads,
        "steps": options.steps,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "train_batches": options.train_batches,
        "eval_rows": options.eval_rows,
        "eval_passes": options.eval_passes,
        "torch": None,
        "pinned_kernel": pinned_kernel(),
        "native_blas": bool(options.native_blas),
        "command": " ".join([_program()] + sys.argv[1:]),
    }
    if use_torch:
        try:
            info["torch"] = version("torch")
        except PackageNotFoundError:
            info["torch"] = "installed"
    return info
