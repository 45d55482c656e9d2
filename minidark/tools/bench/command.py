"""The command line: ``minidark bench`` (through minidark/commands/bench.py) and
``python -m minidark.tools.bench``, which is also how the parent starts a worker.
"""

import argparse
import importlib.util
import json
import os
import sys

from ...errors import MinidarkError
from ...plugins import add_plugin_argument
from .accuracy import run_accuracy
from .common import DEFAULT_CFGS, ENGINES
from .output import format_accuracy_table, format_table
from .runner import resolve_cfg, run_bench
from .worker import _worker


def add_arguments(parser):
    """The bench options (shared by ``python -m minidark.tools.bench`` and ``minidark bench``)."""
    parser.add_argument(
        "cfgs", nargs="*", metavar="CFG", help=f"cfg files (default: {' '.join(DEFAULT_CFGS)})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS / PyTorch threads (default 1; >1 is noisy)"
    )
    parser.add_argument(
        "--steps", type=int, default=50, help="timed training steps per measurement (default 50)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed training steps first (default 5)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved (minidark, PyTorch) pairs (default 3)"
    )
    parser.add_argument(
        "--train-batches",
        type=int,
        default=8,
        help="distinct training batches cycled through (default 8)",
    )
    parser.add_argument(
        "--eval-rows",
        type=int,
        default=10000,
        help="rows per inference pass (default 10000: MNIST test set)",
    )
    parser.add_argument(
        "--eval-passes",
        type=int,
        default=3,
        help="timed inference passes per measurement (default 3)",
    )
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=1024,
        help="square float32 GEMM size for the GFLOP/s reference",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights/data seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--keep-blas-kernel",
        dest="native_blas",
        action="store_false",
        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE from the environment "
        "in the workers (by default they are dropped, so OpenBLAS runs "
        "the CPU's own kernel; the table names the kernel used)",
    )
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="measure minidark only, even if PyTorch is installed",
    )
    group = parser.add_argument_group(
        "accuracy mode",
        "train minidark and its PyTorch twin on MNIST from the same weights, "
        "batch order and per-iteration learning rates; print both test top-1 accuracies",
    )
    group.add_argument(
        "--accuracy",
        type=int,
        metavar="EPOCHS",
        help="train for EPOCHS epochs in each engine instead of timing steps",
    )
    group.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="comma-separated seeds, one run per engine each (default: --seed)",
    )
    group.add_argument(
        "--train-rows",
        type=int,
        metavar="N",
        help="train on the first N MNIST training rows only (quick checks)",
    )
    return parser


def parse_seeds(text):
    """'0,1,2' -> [0, 1, 2] (distinct, in order)."""
    seeds = []
    for part in text.split(","):
        try:
            seed = int(part.strip())
        except ValueError:
            raise MinidarkError(
                f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2"
            ) from None
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def run(args):
    """Run the benchmark from parsed arguments; return the exit code."""
    if importlib.util.find_spec("threadpoolctl") is None:  # every worker pins its threads
        raise MinidarkError(
            "minidark bench needs the 'bench' extra: pip install -e '.[bench]' "
            "(threadpoolctl; and PyTorch, to compare against)"
        )
    for name in (
        "threads",
        "steps",
        "repeats",
        "train_batches",
        "eval_rows",
        "eval_passes",
        "gemm_size",
    ):
        if getattr(args, name) < 1:
            raise MinidarkError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    if args.warmup < 0:
        raise MinidarkError(f"--warmup must be >= 0, got {args.warmup}")
    cfgs = [resolve_cfg(c) for c in args.cfgs]
    if not cfgs:
        cfgs = [resolve_cfg(c) for c in DEFAULT_CFGS if os.path.exists(resolve_cfg(c))]
        if not cfgs:
            raise MinidarkError(
                f"none of the default cfgs exist ({', '.join(DEFAULT_CFGS)}); name a cfg"
            )
    for cfg in cfgs:
        if not os.path.exists(cfg):
            raise MinidarkError(f"{cfg}: no such cfg file")
    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr, flush=True))
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
        "--worker", choices=("train", "eval", "gemm", "accuracy"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mnist", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, default="minidark", help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    add_plugin_argument(parser)
    return _worker(parser.parse_args(argv))
