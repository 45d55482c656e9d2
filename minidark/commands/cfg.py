"""``minidark cfg summary|convert``: the layer table, and .cfg <-> .yaml."""

import os

from ..errors import DataError, printable
from .base import add_command, check_file_kinds


def summary_arguments(parser):
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")


def run_summary(args):
    import minidark

    check_file_kinds("minidark cfg summary CFG", [("CFG", args.cfg, "cfg")])
    net = minidark.load_network(args.cfg, batch=1, strict=args.strict)
    print(net.summary())
    return 0


def convert_arguments(parser):
    parser.add_argument("source", metavar="SRC", help="a .cfg or .yaml network")
    parser.add_argument(
        "destination",
        metavar="DST",
        help="output; .yaml/.yml writes YAML, anything else darknet cfg",
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="convert even if SRC does not build a network (by default it must, so that "
        "a bad value is reported here, not when the converted file is used)",
    )


def run_convert(args):
    from ..cfg import convert_cfg

    check_file_kinds("minidark cfg convert SRC DST", [("SRC", args.source, "cfg")])
    if args.check:  # a cfg error (a 400-digit output=, say) names SRC's line and key
        import minidark

        minidark.load_network(args.source, batch=1)
    shown = printable(args.destination)
    if os.path.exists(args.destination) and not os.path.isfile(args.destination):
        # opening a FIFO for writing would wait for a reader forever
        raise DataError(f"{shown}: DST exists and is not a regular file")
    try:
        convert_cfg(args.source, args.destination)
    except OSError as exc:
        raise DataError(f"cannot write {shown}: {exc.strerror}") from None
    print(f"wrote {shown}")
    return 0


add_command(
    "cfg summary", "layer table, parameters and FLOPs per image", summary_arguments, run_summary
)
add_command(
    "cfg convert", "convert a network between .cfg and .yaml", convert_arguments, run_convert
)
