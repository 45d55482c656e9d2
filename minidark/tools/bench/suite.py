"""``minidark bench --suite``: the speed table in one command.

Inference against OpenCV's dnn (``minidark.tools.infer_bench``: the same cfg,
``.weights`` and input batch, interleaved pairs in one process, then each
engine's peak RSS alone in a fresh process) on darknet's ``tiny.cfg`` and
``darknet19.cfg`` at 224x224, batch 8, and ``yolov3-tiny.cfg`` at 416x416,
batch 1; training and inference against PyTorch (``run_bench``: a fresh
process per measurement) on ``cifar.cfg`` at batch 32 and the MNIST nets.
Every row names its target; ratios are medians of interleaved pairs.
"""

import copy
import os
import tempfile

from ...errors import MinidarkError
from ..infer_bench import bench_inference, rewritten_cfg
from .common import REPO_ROOT
from .runner import run_bench

STOCK = os.path.join(REPO_ROOT, "tests", "cfg", "stock")
# (cfg in STOCK, width = height, batch, interleaved pairs, speed target against OpenCV)
INFERENCE_ROWS = (
    ("tiny.cfg", 224, 8, 7, 1.0),
    ("darknet19.cfg", 224, 8, 5, 1.0),
    ("yolov3-tiny.cfg", 416, 1, 9, 0.8),
)
# (cfg, batch override, timed steps, inference rows, interleaved pairs (None: --repeats),
#  training speed target against PyTorch); the MNIST nets' steps take milliseconds, so
#  their pairs read 0.7-1.5x on a shared machine: more and longer pairs steady the median
TRAINING_ROWS = (
    (os.path.join(STOCK, "cifar.cfg"), 32, 6, 320, None, 1.3),
    (os.path.join(REPO_ROOT, "cfg", "mnist_mlp.cfg"), None, 100, 10000, 7, 1.2),
    (os.path.join(REPO_ROOT, "cfg", "mnist_lenet.cfg"), None, 30, 10000, 7, 1.0),
)


def run_suite(options, progress=None):
    """Every row of the table; returns a JSON-ready dict."""
    say = progress or (lambda message: None)
    for name, *_ in INFERENCE_ROWS:
        if not os.path.exists(os.path.join(STOCK, name)):
            raise MinidarkError(f"--suite needs darknet's cfgs in {STOCK} (a source checkout)")
    result = {"threads": options.threads, "inference": [], "training": None}
    for name, size, batch, runs, target in INFERENCE_ROWS:
        say(f"{name} {size}x{size} batch {batch}: minidark and OpenCV, {runs} pairs")
        row = bench_inference(
            os.path.join(STOCK, name),
            runs=runs,
            size=size,
            batch=batch,
            keep_blas_kernel=not options.native_blas,
            threads=options.threads,
            rss=True,
        )
        row["target"] = target
        row.pop("layers", None)
        result["inference"].append(row)
    with tempfile.TemporaryDirectory(prefix="minidark-suite-") as tmp:
        entries = []
        for cfg, batch, steps, rows, pairs, target in TRAINING_ROWS:
            run_options = copy.copy(options)
            run_options.steps, run_options.eval_rows = steps, rows
            run_options.repeats = pairs or options.repeats
            run_options.warmup = min(options.warmup, 2) if batch else options.warmup
            path = rewritten_cfg(cfg, tmp, batch=batch, subdivisions=1) if batch else cfg
            training = run_bench([path], run_options, progress)
            entry = training["results"][0]
            entry["cfg"], entry["target"] = os.path.relpath(cfg, REPO_ROOT), target
            entry["pairs"] = run_options.repeats
            entry.pop("runs", None)
            entries.append(entry)
        result["training"] = dict(training, results=entries)
    return result


def _ratio(summary):
    if not summary:
        return "-", "-"
    return f"{summary['median']:.2f}x", f"{summary['min']:.2f}-{summary['max']:.2f}"


def _met(value, target, at_most=False):
    if value is None:
        return "-"
    return "yes" if (value <= target if at_most else value >= target) else "NO"


def format_suite(result):
    """The table ``minidark bench --suite`` prints."""
    threads = result["threads"]
    lines = [
        f"speed suite, {threads} thread(s) per engine; ratios: medians of interleaved "
        "pairs (range); peak RSS: each engine alone in a fresh process",
        f"{'network':28} {'work':9} {'minidark':>10} {'reference':>18} {'ratio':>6} "
        f"{'range':>10} {'target':>7} {'met':>4}",
    ]
    rss_lines = []
    for row in result["inference"]:
        name = f"{row['cfg']} {row['width']}x{row['height']} b{row['batch']}"
        ours = f"{1 / row['minidark_s']:.1f} img/s"
        theirs = f"OpenCV {1 / row['opencv_s']:.1f} img/s" if row["opencv_s"] else "OpenCV -"
        ratios = sorted(row["pair_ratios"])
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if ratios else "-"
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        met = _met(row["ratio"], row["target"])
        lines.append(
            f"{name:28} {'inference':9} {ours:>10} {theirs:>18} {ratio:>6} {spread:>10} "
            f"{'>=' + str(row['target']):>7} {met:>4}"
        )
        rss = row.get("peak_rss_mb") or {}
        mine, cv = rss.get("minidark"), rss.get("opencv")
        if mine and cv:
            rss_lines.append(
                f"{name:28} {'inference':9} {mine:8.0f} MB {'OpenCV':>8} {cv:5.0f} MB "
                f"{mine / cv:5.2f}x {'<=1.0':>17} {_met(mine / cv, 1.0, True):>4}"
            )
    training = result["training"]
    for entry in training["results"]:
        name = f"{os.path.basename(entry['cfg'])} b{entry['batch']}"
        ours, theirs, ratios = entry["minidark"] or {}, entry["torch"] or {}, entry["ratios"]
        for mode, target in (("train", entry["target"]), ("eval", None)):
            rate = ours.get(f"{mode}_img_s")
            other = theirs.get(f"{mode}_img_s")
            ratio, spread = _ratio(ratios.get(f"{mode}_img_s"))
            value = (ratios.get(f"{mode}_img_s") or {}).get("median")
            work = "training" if mode == "train" else "inference"
            lines.append(
                f"{name:28} {work:9} {f'{rate:.0f} img/s' if rate else '-':>10} "
                f"{f'PyTorch {other:.0f} img/s' if other else 'PyTorch -':>18} {ratio:>6} "
                f"{spread:>10} {'>=' + str(target) if target else '':>7} "
                f"{_met(value, target) if target else '':>4}"
            )
            rss = (ratios.get(f"{mode}_peak_rss_mb") or {}).get("median")
            mine, other_rss = ours.get(f"{mode}_peak_rss_mb"), theirs.get(f"{mode}_peak_rss_mb")
            if rss and mine and other_rss:
                rss_lines.append(
                    f"{name:28} {work:9} {mine:8.0f} MB {'PyTorch':>8} {other_rss:5.0f} MB "
                    f"{rss:5.2f}x {'<=1.0':>17} {_met(rss, 1.0, True):>4}"
                )
        limit = (entry.get("gemm_limit_img_s") or {}).get("train")
        if entry["cfg"].endswith("cifar.cfg") and limit and ours.get("train_img_s"):
            lines.append(
                f"{'':28} {'':9} im2col GEMM-only training limit {limit:.1f} img/s: "
                f"{'above' if ours['train_img_s'] > limit else 'BELOW'}"
            )
    lines.append("peak RSS:")
    lines += rss_lines
    kernels = {k for row in result["inference"] for k in row["kernels"]}
    lines.append("BLAS: " + "; ".join(sorted(kernels)))
    gemm = training["meta"].get("gemm") or {}
    if gemm.get("torch_blas"):
        lines.append(f"PyTorch BLAS: {gemm['torch_blas']}")
    return "\n".join(lines)
