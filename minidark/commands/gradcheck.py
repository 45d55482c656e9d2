"""``minidark gradcheck CFG [--layer N] [--batch B] [--inference] [--plugin SPEC]``.

Runs minidark.tools.gradcheck.gradcheck on every layer of CFG (or one): float64
central differences on random inputs of the cfg's shapes, for the input
and every learnable array; prints a table of max relative errors with the
bound, ok / FAIL / gap (within an expected gap's documented bound) / skip /
kink (every entry picked sat at an activation's kink), and a summary line.
Exit status 0 when every checked array passes, 1 when any fails (a check
that ran and failed); a cfg or plugin error is a user error (one line on
stderr, exit 2, as for every minidark command).

The CLI (minidark/cli.py) calls ``add_arguments(parser)`` and ``run(args)``;
``--plugin`` is its option on every command, loaded before ``run`` (loading
again here is harmless). ``python -m minidark.commands.gradcheck ARGS`` is
``minidark gradcheck ARGS``.
"""

import sys

from ..errors import MinidarkError
from .base import CHECK_FAILED, SUCCESS, add_command, check_file_kinds, positive_int


def add_arguments(parser):
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml file")
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        metavar="N",
        help="check only layer N (0-based; negative counts from the end)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=2,
        metavar="B",
        help="batch size of the random inputs (default 2; batch-norm layers need B * pixels >= 8)",
    )
    parser.add_argument(
        "--inference", action="store_true", help="check the inference-mode backward (train=False)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max relative error that passes (default 1e-4)",
    )
    parser.add_argument(
        "--max-checks",
        type=positive_int,
        default=40,
        metavar="K",
        help="entries perturbed per array, picked at random (default 40)",
    )
    return parser


def run(args):
    """Gradient-check a cfg; returns the exit code (0 pass, 1 fail)."""
    from ..cfg import parse_network_cfg
    from ..plugins import load_plugins
    from ..tools.gradcheck import format_results, gradcheck, summarize

    load_plugins(getattr(args, "plugin", None) or [])
    if args.batch < 1:  # library callers bypass argparse's positive_int
        raise MinidarkError(f"--batch must be >= 1, got {args.batch}")
    if args.max_checks < 1:
        raise MinidarkError(f"--max-checks must be >= 1, got {args.max_checks}")
    check_file_kinds("minidark gradcheck CFG", [("CFG", args.cfg, "cfg")])
    net = parse_network_cfg(
        args.cfg,
        batch=args.batch,
        seed=args.seed,
        strict=getattr(args, "strict", False),
        verbose=False,
    )
    count = len(net.layers)
    if args.layer is not None and not -count <= args.layer < count:
        raise MinidarkError(f"--layer {args.layer}: {args.cfg} has {count} layers (0-{count - 1})")
    mode = "inference" if args.inference else "training"
    which = "all layers" if args.layer is None else f"layer {args.layer % count}"
    print(
        f"gradcheck {args.cfg}: {which} of {count}, batch {net.batch}, {mode} mode; "
        f"float64 central differences, up to {args.max_checks} entries per array"
    )
    results = gradcheck(
        net,
        args.layer,
        train=not args.inference,
        seed=args.seed,
        tolerance=args.tolerance,
        max_checks=args.max_checks,
    )
    print(format_results(results))
    print(summarize(results))
    return CHECK_FAILED if any(r.status == "FAIL" for r in results) else SUCCESS


if __name__ == "__main__":
    # python -m minidark.commands.gradcheck ARGS is minidark gradcheck ARGS: an entry
    # point, so it may import the CLI (which imports this module again, registering the verb)
    from minidark.cli import main

    sys.exit(main(["gradcheck", *sys.argv[1:]]))
else:
    add_command(
        "gradcheck", "numerical gradient check of every layer (or one) of a cfg", add_arguments, run
    )
