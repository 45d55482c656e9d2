"""The command line: ``minidark bench`` (through minidark/commands/bench.py) and
``python -m minidark.tools.bench``, which is also how the parent starts a worker.
"""

import importlib.util
import json
import os
import sys

from ...errors import MinidarkError
from .accuracy import run_accuracy
from .common import DEFAULT_CFGS
from .output import format_accuracy_table, format_table
from .runner import resolve_cfg, run_bench


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
    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    if args.suite:
        from .suite import format_suite, run_suite

        if args.cfgs or args.rnn is not None or args.accuracy is not None:
            raise MinidarkError("--suite runs its own networks: no CFG, --rnn or --accuracy")
        result = run_suite(args, progress)
        print(json.dumps(result, indent=1) if args.json else format_suite(result))
        return 0
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
    if args.rnn is not None:
        from .recurrent import format_rnn_table, run_rnn

        if args.accuracy is not None:
            raise MinidarkError("--rnn and --accuracy are separate modes: choose one")
        for name in ("rnn", "valid_bytes"):
            if getattr(args, name) < 1:
                raise MinidarkError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
                )
        if not args.cfgs:
            cfgs = [resolve_cfg("cfg/char_lstm.cfg")]
        args.seed_list = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
        result = run_rnn(cfgs, args, progress)
        print(json.dumps(result, indent=1) if args.json else format_rnn_table(result))
        return 0
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
