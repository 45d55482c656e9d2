"""The ``minidark`` command (darknet's CLI verbs) and ``python train.py``.

    minidark classifier train   DATA CFG [WEIGHTS] [--clear] [--seed N] [--strict] [--verbose]
    minidark classifier valid   DATA CFG WEIGHTS [--top K]
    minidark classifier predict DATA CFG WEIGHTS IMAGE... [--top K]
    minidark cfg summary CFG
    minidark cfg convert SRC DST
    minidark data export-mnist OUT [--limit N]
    minidark gradcheck CFG ...   (minidark/gradcheck_cli.py)
    minidark bench ...           (minidark/bench.py)

Every command takes ``--plugin SPEC`` (repeatable: a .py file or a module
with layers to register) and ``--help``. User mistakes (MinidarkError and
bad arguments) print one line on stderr and exit non-zero (2 for bad
arguments, 1 for other errors, 130 when interrupted); warnings print as
``minidark: warning: ...``.

Differences from darknet's ``classifier``: ``valid`` and ``predict`` load
images the way training does (convert to ``channels``, resize to
``width`` x ``height``) where darknet centre-crops (valid) or letterboxes
(predict); ``valid`` evaluates the whole set in batches and prints a
confusion table instead of a line per image; ``train`` without ``--seed``
draws a seed and prints it, so every run can be repeated.

Adding a subcommand takes one call, e.g.::

    def gradcheck_arguments(parser): parser.add_argument("cfg")
    def run_gradcheck(args): ...; return 0
    add_command("gradcheck", "check layer gradients numerically",
                gradcheck_arguments, run_gradcheck)
"""
import argparse
import os
import secrets
import sys
import warnings

from .errors import DataError, MinidarkError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors instead of usage + message + exit."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class Command:
    def __init__(self, words, help, add_arguments, run):
        self.words = tuple(words.split()) if isinstance(words, str) else tuple(words)
        self.help, self.add_arguments, self.run = help, add_arguments, run


COMMANDS = []


def add_command(words, help, add_arguments, run):
    """Register a subcommand: ``words`` like "gradcheck" or "classifier train";
    ``add_arguments(parser)`` declares its arguments; ``run(args)`` returns
    the exit status (None = 0)."""
    COMMANDS.append(Command(words, help, add_arguments, run))


# ----------------------------------------------------------------------------
# Plugins
# ----------------------------------------------------------------------------
def load_plugins(specs):
    """Load layer plugins (files, modules, installed entry points) before running."""
    from .plugins import load_plugins as load
    load(list(specs or []))


# ----------------------------------------------------------------------------
# classifier train / valid / predict
# ----------------------------------------------------------------------------
def input_shape(net):
    """(c, h, w) of the network's input image, or None for a flat-input net."""
    return (net.c, net.h, net.w) if net.c and net.h and net.w else None


def check_classes(net, data):
    if data.classes is not None and net.outputs != data.classes:
        raise DataError(f"{data.path}: classes={data.classes} but the network "
                        f"({net.cfg_file}) outputs {net.outputs} values")


def load_split(data, key, net, progress=True):
    from .data.dataset import load_dataset
    dataset = load_dataset(data.require(key), input_shape(net), data.labels, data.classes,
                           progress=progress, labels_file=data.labels_file)
    if dataset.inputs != net.inputs:
        raise DataError(f"{dataset.source}: images of {dataset.inputs} values "
                        f"{'x'.join(map(str, dataset.shape))} but the network takes "
                        f"{net.inputs} inputs")
    return dataset


def train_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (classes, train, valid, "
                        "names, backup, top)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("weights", metavar="WEIGHTS", nargs="?",
                        help="start from these weights (a .backup or .weights resumes "
                             "exactly when its .state.npz sidecar is beside it)")
    train_options(parser)


def train_options(parser):
    parser.add_argument("--clear", action="store_true",
                        help="reset seen to 0 (darknet's -clear): fine-tune from WEIGHTS")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed for initialization, data order, augmentation, dropout")
    parser.add_argument("--strict", action="store_true",
                        help="unknown cfg / data-file keys are errors, not warnings")
    parser.add_argument("--verbose", action="store_true",
                        help="print darknet's per-iteration line (always in <backup>/<base>.log)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")


def run_train(args):
    import minidark
    from .data.datafile import read_data_file
    from .trainer import Trainer, cfg_base, format_accuracy
    data = read_data_file(args.data, strict=args.strict)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    net = minidark.load_network(args.cfg, args.weights, clear=args.clear, strict=args.strict,
                                seed=seed)
    check_classes(net, data)
    base = cfg_base(args.cfg)
    if net.max_batches and net.current_batch >= net.max_batches:
        print(f"{base}: {args.weights} is already trained to max_batches={net.max_batches} "
              f"(seen {net.seen} images): nothing to do; raise max_batches in {args.cfg}, "
              f"or pass --clear to train again from these weights")
        return 0
    train_set = load_split(data, "train", net, args.progress)
    valid_set = load_split(data, "valid", net, args.progress) if data.valid else None
    print(net.summary(), file=sys.stderr)   # darknet's layer table, once the data is ready
    trainer = Trainer(net, train_set, valid_set, backup_dir=data.backup, base=base,
                      top=data.top, seed=seed, progress=args.progress, verbose=args.verbose,
                      header=f"train {args.data} {args.cfg} {args.weights or ''} seed {seed}")
    if args.weights:
        state = ("seen reset to 0 (--clear): momentum and data order start fresh"
                 if args.clear else trainer.restore(args.weights))
        print(f"{base}: from {args.weights}: iteration {net.current_batch}, seen {net.seen}; "
              f"{state}", flush=True)
    if not trainer.restored:
        print(f"{base}: seed {seed} (--seed {seed} repeats this run)", flush=True)
    print(f"{base}: checkpoints, log and chart go to {data.backup}", flush=True)
    if valid_set is None:
        print(f"{base}: no valid= in {args.data}: no evaluation", flush=True)
    summary = trainer.run()
    if summary["status"] == "interrupted":
        return 130
    if summary.get("accuracy"):
        print(f"{base}: test accuracy {format_accuracy(summary['accuracy'])} "
              f"({os.path.basename(valid_set.source)})", flush=True)
    return 0


def valid_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (valid=, names=, top=)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("weights", metavar="WEIGHTS", help="trained .weights")
    parser.add_argument("--top", type=positive_int, metavar="K", help="k of top-k (default: the "
                        "data file's top=)")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument("--verbose", action="store_true", help="print the layer table")


def run_valid(args):
    import minidark
    from .data.datafile import read_data_file
    from .trainer import evaluate, format_accuracy
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(args.cfg, args.weights, batch=100, strict=args.strict,
                                verbose=args.verbose)
    check_classes(net, data)
    valid_set = load_split(data, "valid", net)
    top = args.top or data.top
    result = evaluate(net, valid_set, top, confusion=True, classes=net.outputs)
    print(f"{valid_set.source}: {format_accuracy(result)}")
    print(confusion_table(result["confusion"], data.names))
    return 0


def confusion_table(matrix, names=None):
    """Per-class counts and accuracy; the full matrix when there are <= 20 classes."""
    classes = matrix.shape[0]
    names = list(names or [str(i) for i in range(classes)])
    width = max(6, max(len(n) for n in names))
    totals, hits = matrix.sum(axis=1), matrix.diagonal()
    lines = []
    if classes <= 20:
        cell = max(6, len(str(int(matrix.max()))) + 1)
        lines.append("confusion (rows: true class, columns: predicted)")
        lines.append(" " * width + "".join(f"{i:>{cell}}" for i in range(classes))
                     + f"{'images':>9}{'top-1':>9}")
        for i in range(classes):
            acc = f"{100 * hits[i] / totals[i]:.2f}%" if totals[i] else "-"
            lines.append(f"{names[i]:<{width}}" + "".join(f"{v:>{cell}}" for v in matrix[i])
                         + f"{totals[i]:>9}{acc:>9}")
        lines.append("columns: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    else:
        confused = matrix.copy()
        confused[range(classes), range(classes)] = -1
        lines.append(f"{'class':<{width}}{'images':>9}{'top-1':>9}  most often mistaken for")
        for i in range(classes):
            acc = f"{100 * hits[i] / totals[i]:.2f}%" if totals[i] else "-"
            j = int(confused[i].argmax())
            worst = f"{names[j]} ({matrix[i, j]})" if matrix[i, j] else "-"
            lines.append(f"{names[i]:<{width}}{totals[i]:>9}{acc:>9}  {worst}")
    return "\n".join(lines)


def predict_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (names=, top=)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("weights", metavar="WEIGHTS", help="trained .weights")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    parser.add_argument("--top", type=positive_int, metavar="K", help="how many labels to print "
                        "(default: the data file's top=)")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument("--verbose", action="store_true", help="print the layer table")


def run_predict(args):
    import time
    import minidark
    from .data.datafile import read_data_file
    from .data.dataset import image_to_input
    from .trainer import topk_indices
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(args.cfg, args.weights, batch=1, strict=args.strict,
                                verbose=args.verbose)
    check_classes(net, data)
    shape = input_shape(net)
    if shape is None:
        raise DataError(f"{args.cfg}: [net] has no height, width and channels, so images "
                        f"cannot be fed to it")
    names = data.names or [str(i) for i in range(net.outputs)]
    top = args.top or data.top
    failed = 0
    for image in args.images:
        try:
            x = image_to_input(image, shape)
        except DataError as exc:
            print(f"minidark: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        tick = time.perf_counter()
        probs = net.predict(x)[0]
        print(f"{image}: predicted in {time.perf_counter() - tick:.4f} s")
        for index in topk_indices(probs[None], top)[0]:
            print(f"{100 * probs[index]:5.2f}%: {names[index]}")
    return 1 if failed else 0


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------
# cfg and data utilities
# ----------------------------------------------------------------------------
def summary_arguments(parser):
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")


def run_summary(args):
    import minidark
    net = minidark.load_network(args.cfg, batch=1, strict=args.strict)
    print(net.summary())
    return 0


def convert_arguments(parser):
    parser.add_argument("source", metavar="SRC", help="a .cfg or .yaml network")
    parser.add_argument("destination", metavar="DST",
                        help="output; .yaml/.yml writes YAML, anything else darknet cfg")


def run_convert(args):
    from .parser import convert_cfg
    try:
        convert_cfg(args.source, args.destination)
    except OSError as exc:
        raise DataError(f"cannot write {args.destination}: {exc.strerror}") from None
    print(f"wrote {args.destination}")
    return 0


def export_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="folder for the PNGs, lists, "
                        "mnist.names and mnist.data")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="export only the first N images of each split")
    parser.add_argument("--mnist", metavar="DIR", default=None,
                        help="folder with the IDX files (default: data/mnist, "
                             "then $MINIDARK_DATA)")


def run_export(args):
    from .data.export import export_mnist
    data = export_mnist(args.out, args.mnist, args.limit)
    print(f"wrote MNIST as PNG image lists to {args.out}; train on them with: "
          f"minidark classifier train {data} cfg/mnist_mlp.cfg")
    return 0


add_command("classifier train", "train a classifier (darknet classifier train)",
            train_arguments, run_train)
add_command("classifier valid", "top-1/top-k accuracy and confusion table on the valid set",
            valid_arguments, run_valid)
add_command("classifier predict", "top-k labels with probabilities for image files",
            predict_arguments, run_predict)
add_command("cfg summary", "layer table, parameters and FLOPs per image",
            summary_arguments, run_summary)
add_command("cfg convert", "convert a network between .cfg and .yaml",
            convert_arguments, run_convert)
add_command("data export-mnist", "write MNIST as PNG files plus darknet image lists",
            export_arguments, run_export)
from .gradcheck_cli import add_arguments as gradcheck_arguments, run as run_gradcheck  # noqa: E402
add_command("gradcheck", "numerical gradient check of every layer (or one) of a cfg",
            gradcheck_arguments, run_gradcheck)
from .bench import add_arguments as bench_arguments, run as run_bench  # noqa: E402
add_command("bench", "training/inference images/s and peak memory, against PyTorch",
            bench_arguments, run_bench)


# ----------------------------------------------------------------------------
# Parser and entry points
# ----------------------------------------------------------------------------
def plugin_parent():
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--plugin", action="append", default=[], metavar="SPEC",
                        help="load layers from a .py file or module (repeatable)")
    return parent


def build_parser(prog="minidark"):
    from . import __version__
    top = Parser(prog=prog, description="minidark: darknet in Python on numpy.")
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
            command.words[-1], help=command.help, description=command.help,
            parents=[parent])
        command.add_arguments(leaf)
        leaf.set_defaults(run=command.run)
    return top


def _choose(parser, subparsers):
    def run(args):
        raise UsageError(f"{parser.prog}: choose a command: "
                         f"{', '.join(subparsers.choices)} (see {parser.prog} --help)")
    return run


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"minidark: warning: {message}", file=sys.stderr)


def _run(parse):
    """Parse and run, turning user errors into one line and an exit status."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = parse()
            load_plugins(getattr(args, "plugin", []))
            status = args.run(args)
            return 0 if status is None else status
        except SystemExit as exc:          # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return 2
        except MinidarkError as exc:
            print(f"minidark: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("minidark: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:            # e.g. minidark ... | head
            return 1


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
        parser = Parser(prog=prog, description=train_main.__doc__.split("\n\n")[1],
                        parents=[plugin_parent()])
        train_options(parser)
        parser.add_argument("files", nargs="*", metavar="FILE",
                            help="nothing (MNIST, default cfg), CFG, or DATA CFG [WEIGHTS]")
        args = parser.parse_args(argv)
        files = args.files
        if len(files) > 3:
            raise UsageError(f"{prog}: expected CFG or DATA CFG [WEIGHTS], got "
                             f"{len(files)} files (see {prog} --help)")
        if not files:
            lenet = _default(os.path.join("cfg", "mnist_lenet.cfg"))
            files = [lenet if os.path.exists(lenet) else _default(os.path.join("cfg",
                                                                                "mnist_mlp.cfg"))]
        if len(files) == 1:
            files = [_default(os.path.join("cfg", "mnist.data"))] + files
        args.data, args.cfg = files[0], files[1]
        args.weights = files[2] if len(files) > 2 else None
        args.run = run_train
        return args
    return _run(parse)


if __name__ == "__main__":
    sys.exit(main())
