"""The ``minidark`` command (darknet's CLI verbs) and ``python train.py``.

    minidark classifier train   DATA CFG [WEIGHTS] [--clear] [--seed N] [--strict] [--verbose]
    minidark classifier valid   DATA CFG WEIGHTS [--top K]
    minidark classifier predict DATA CFG WEIGHTS IMAGE... [--top K]
    minidark cfg summary CFG
    minidark cfg convert SRC DST
    minidark data export-mnist OUT [--limit N]
    minidark gradcheck CFG ...
    minidark bench ...

Each verb family is one module in ``minidark/commands/`` (darknet's
``examples/*.c``); this module imports them, builds the argument parser and
turns errors into exit statuses. Every command takes ``--plugin SPEC``
(repeatable: a .py file or a module with layers to register; it runs that
code, so load trusted code only) and ``--help``. Exit statuses (``EXIT_STATUS``,
printed by ``--help``): 0 success; 1 a check that ran and failed (gradcheck
FAIL); 2 a user error (bad arguments, or a MinidarkError: a bad cfg, data or
weights file, missing data), printed as one line on stderr; 130 interrupted
(Ctrl-C); 141 output pipe closed early (``minidark ... | head``). A
MemoryError or an OSError that no reader turned into a MinidarkError is
still one line and exit 2, never a traceback. Warnings
print as ``minidark: warning: ...``; messages have control characters escaped.
"""

import argparse
import contextlib
import os
import sys
import warnings

from .commands import bench, cfg, classifier, data, detector, gradcheck, rnn, weights  # noqa: F401  (each registers its verbs)
from .commands.base import (
    CHECK_FAILED,
    COMMANDS,
    INTERRUPTED,
    PIPE_CLOSED,
    SUCCESS,
    USER_ERROR,
    Parser,
    UsageError,
    check_file_kinds,
    load_plugins,
)
from .commands.classifier import run_train, train_options
from .errors import MinidarkError, printable
from .plugins import add_plugin_argument

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_STATUS = f"""exit status:
  {SUCCESS}    success
  {CHECK_FAILED}    a check ran and failed (gradcheck FAIL)
  {USER_ERROR}    user error: bad arguments, or a bad cfg, data, weights or image file,
       missing data (one line on stderr)
  {INTERRUPTED}  interrupted (Ctrl-C; training saves a .backup first)
  {PIPE_CLOSED}  the output pipe closed early (minidark ... | head)

--plugin and installed minidark.layers entry points RUN Python code: load trusted
code only (MINIDARK_NO_ENTRY_POINTS=1 skips entry points; --verbose lists what loaded)."""


def plugin_parent():
    """The parent parser of every command: ``--plugin`` (defined once, in plugins.py)."""
    return add_plugin_argument(argparse.ArgumentParser(add_help=False))


def build_parser(prog="minidark"):
    from . import __version__

    top = Parser(
        prog=prog,
        description="minidark: darknet in Python on numpy.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"minidark {__version__}")
    groups = {(): top.add_subparsers(metavar="COMMAND", parser_class=Parser)}
    top.set_defaults(run=_choose(top, groups[()]))
    parent = plugin_parent()
    for command in COMMANDS:
        for depth in range(1, len(command.words)):
            path = command.words[:depth]
            if path not in groups:
                group = groups[path[:-1]].add_parser(path[-1], help=f"{path[-1]} commands")
                groups[path] = group.add_subparsers(metavar="COMMAND", parser_class=Parser)
                group.set_defaults(run=_choose(group, groups[path]))
        leaf = groups[command.words[:-1]].add_parser(
            command.words[-1],
            help=command.help,
            description=command.help,
            parents=[parent],
            epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(leaf)
        leaf.set_defaults(run=command.run)
    return top


def _choose(parser, subparsers):
    def run(args):
        raise UsageError(
            f"{parser.prog}: choose a command: "
            f"{', '.join(subparsers.choices)} (see {parser.prog} --help)"
        )

    return run


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"minidark: warning: {printable(message)}", file=sys.stderr)


def _report_plugins():
    """--verbose: say which plugins ran (entry points load with the built-ins)."""
    from .plugins import load_layers, loaded_plugins

    load_layers()
    loaded = loaded_plugins()
    print(
        f"minidark: plugins loaded (their code ran): {'; '.join(loaded)}"
        if loaded
        else "minidark: no plugins loaded",
        file=sys.stderr,
    )


def _run(parse):
    """Parse and run, turning user errors into one line and an exit status."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = parse()
            load_plugins(getattr(args, "plugin", []))
            if getattr(args, "verbose", False):
                _report_plugins()
            status = args.run(args)
            return SUCCESS if status is None else status
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else SUCCESS
        except UsageError as exc:
            print(printable(exc), file=sys.stderr)
            return USER_ERROR
        except MinidarkError as exc:
            print(f"minidark: error: {printable(exc)}", file=sys.stderr)
            return USER_ERROR
        except KeyboardInterrupt:
            print("minidark: interrupted", file=sys.stderr)
            return INTERRUPTED
        except BrokenPipeError:  # e.g. minidark ... | head
            # no second BrokenPipeError when Python flushes stdout at exit
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return PIPE_CLOSED
        except MemoryError:
            print(
                "minidark: error: out of memory: the network or data is larger than this "
                "machine can hold (MINIDARK_MAX_MEMORY sets the budget minidark checks first)",
                file=sys.stderr,
            )
            return USER_ERROR
        except OSError as exc:  # a file problem no reader turned into a MinidarkError
            where = f"{printable(exc.filename)}: " if exc.filename else ""
            print(f"minidark: error: {where}{printable(exc.strerror or exc)}", file=sys.stderr)
            return USER_ERROR


def main(argv=None):
    """The ``minidark`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return _run(lambda: build_parser().parse_args(argv))


def _default(path):
    """``path`` relative to the current directory if it exists, else to the project."""
    return path if os.path.exists(path) else os.path.join(PROJECT_ROOT, path)


def train_main(argv=None, prog="train.py"):
    """``python train.py [CFG | DATA CFG [WEIGHTS]] [options]``.

    No argument: cfg/mnist_lenet.cfg (if it exists, else cfg/mnist_mlp.cfg) on
    cfg/mnist.data. One: that cfg on MNIST. Two or three: classifier train.
    """
    argv = sys.argv[1:] if argv is None else list(argv)

    def parse():
        parser = Parser(
            prog=prog,
            description=train_main.__doc__.split("\n\n")[1],
            parents=[plugin_parent()],
            epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        train_options(parser)
        parser.add_argument(
            "files",
            nargs="*",
            metavar="FILE",
            help="nothing (MNIST, default cfg), CFG, or DATA CFG [WEIGHTS]",
        )
        args = parser.parse_args(argv)
        files = args.files
        if len(files) > 3:
            raise UsageError(
                f"{prog}: expected CFG or DATA CFG [WEIGHTS], got "
                f"{len(files)} files (see {prog} --help)"
            )
        if not files:
            lenet = _default(os.path.join("cfg", "mnist_lenet.cfg"))
            files = [
                lenet if os.path.exists(lenet) else _default(os.path.join("cfg", "mnist_mlp.cfg"))
            ]
        if len(files) == 1:
            files = [_default(os.path.join("cfg", "mnist.data"))] + files
        args.data, args.cfg = files[0], files[1]
        args.weights = files[2] if len(files) > 2 else None
        check_file_kinds(
            f"{prog} [CFG | DATA CFG [WEIGHTS]]",
            [
                ("DATA", args.data, "data"),
                ("CFG", args.cfg, "cfg"),
                ("WEIGHTS", args.weights, "weights"),
            ],
        )
        args.run = run_train
        return args

    return _run(parse)


if __name__ == "__main__":
    sys.exit(main())
