"""``minidark classifier train|valid|predict`` (darknet's examples/classifier.c).

Preprocessing as darknet's (data/preprocess.py): ``predict`` letterboxes
(predict_classifier); ``valid`` on an image list resizes the short side to
the network's width and centre-crops (validate_classifier_single);
``train --workers N`` streams an image list through N loader workers with
darknet's load_data_augment from each image's own size (data/stream.py);
without it the list is decoded once, resized to the network size, and
augmented there. Differences from darknet's ``classifier``: ``valid``
evaluates the whole set in batches and prints a confusion table instead of
a line per image; ``train`` without ``--seed`` draws a seed and prints it,
so every run can be repeated.
"""

import os
import secrets
import sys
import warnings

from ..errors import DataError, printable
from .base import SUCCESS, USER_ERROR, add_command, check_file_kinds, positive_int

TRAIN_USAGE = "minidark classifier train DATA CFG [WEIGHTS]"
VALID_USAGE = "minidark classifier valid DATA CFG WEIGHTS"
PREDICT_USAGE = "minidark classifier predict DATA CFG WEIGHTS IMAGE..."


def check_kinds(usage, args):
    """DATA, CFG and WEIGHTS (and IMAGEs) must be those kinds of file: say which is which."""
    images = [("IMAGE", image, "image") for image in getattr(args, "images", None) or ()]
    check_file_kinds(
        usage,
        [
            ("DATA", args.data, "data"),
            ("CFG", args.cfg, "cfg"),
            ("WEIGHTS", args.weights, "weights"),
        ]
        + images,
    )


def say(text):
    """Print one status line, control characters from paths escaped."""
    print(printable(text), flush=True)


def input_shape(net):
    """(c, h, w) of the network's input image, or None for a flat-input net."""
    return (net.c, net.h, net.w) if net.c and net.h and net.w else None


def check_classes(net, data, top=None):
    """The data's classes, and the k of top-k, must fit the network's outputs."""
    if data.classes is not None and net.outputs != data.classes:
        raise DataError(
            f"{data.path}: classes={data.classes} but the network "
            f"({net.cfg_file}) outputs {net.outputs} values"
        )
    top = top or data.top
    if top > net.outputs:
        origin = f"--top {top}" if top != data.top else f"{data.path}: top={top}"
        raise DataError(f"{origin}: the network ({net.cfg_file}) has only {net.outputs} classes")


def load_split(data, key, net, progress=True):
    from ..data.dataset import load_dataset

    dataset = load_dataset(
        data.require(key),
        input_shape(net),
        data.labels,
        data.classes,
        progress=progress,
        labels_file=data.labels_file,
    )
    if dataset.inputs != net.inputs:
        raise DataError(
            f"{dataset.source}: images of {dataset.inputs} values "
            f"{'x'.join(map(str, dataset.shape))} but the network takes "
            f"{net.inputs} inputs"
        )
    return dataset


def streamable(data, key, net):
    """Whether split ``key`` is an image list the streaming loader can read."""
    from ..data.dataset import is_idx

    path = getattr(data, key)
    return bool(path) and not is_idx(path) and input_shape(net) is not None and data.labels


def read_hierarchy(data, net):
    """The .data file's tree (darknet's fill_hierarchy truth); it must have a node per output."""
    from ..kernels.tree import read_tree

    tree = read_tree(data.tree)
    if tree.n != net.outputs:
        raise DataError(
            f"{data.path}: tree {data.tree} has {tree.n} nodes but the network "
            f"({net.cfg_file}) has {net.outputs} outputs"
        )
    return tree


def train_arguments(
    parser,
    data_help=".data file (classes, train, valid, names, backup, top)",
    cfg_help="network .cfg or .yaml",
    streaming=True,
):
    """DATA CFG [WEIGHTS] and the training options (detector train shares them)."""
    parser.add_argument("data", metavar="DATA", help=data_help)
    parser.add_argument("cfg", metavar="CFG", help=cfg_help)
    parser.add_argument(
        "weights",
        metavar="WEIGHTS",
        nargs="?",
        help="start from these weights (a .backup or .weights resumes "
        "exactly when its .state.npz sidecar is beside it)",
    )
    train_options(parser, streaming)


def train_options(parser, streaming=True):
    """Options every training verb shares; ``streaming`` adds the classifier's
    image-list loader workers (a detector reads its images per batch anyway)."""
    parser.add_argument(
        "--clear",
        action="store_true",
        help="reset seen to 0 (darknet's -clear): fine-tune from WEIGHTS",
    )
    parser.add_argument(
        "--cutoff",
        type=positive_int,
        metavar="N",
        help="load WEIGHTS into layers 0..N-1 only (darknet's load_weights_upto): "
        "a backbone for a new head; usually with --clear",
    )
    if streaming:
        parser.add_argument(
            "--workers",
            type=positive_int,
            metavar="N",
            help="stream an image list through N loader workers (decoded and augmented per "
            "batch at each image's own size, as darknet) instead of decoding it into memory",
        )
        parser.add_argument(
            "--loader",
            choices=("thread", "process"),
            default="thread",
            help="loader workers are threads (default) or processes",
        )
    parser.add_argument(
        "--no-exact-resume",
        dest="exact_resume",
        action="store_false",
        help="resume from WEIGHTS alone, without its .state.npz sidecar "
        "(momentum and data order start fresh, as in darknet): for a "
        "sidecar that is damaged or belongs to other data",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed for initialization, data order, augmentation, dropout",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="unknown cfg / data-file keys are errors, not warnings",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print darknet's per-iteration line (always in <backup>/<base>.log)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


def run_train(args):
    """Train; under ``mpiexec -n N`` as one rank of a data-parallel job
    (minidark/train/distributed.py)."""
    from ..train import distributed

    group = distributed.join()
    if group is None:
        return train(args)
    with group.guard():
        group.silence()
        return train(args, group)


def load_for_training(usage, args, group):
    """What every training verb does first: the .data file, the seed (one for every
    rank) and the network with its weights, attached to the MPI group if any."""
    import minidark

    from ..data.datafile import read_data_file

    check_kinds(usage, args)
    data = read_data_file(args.data, strict=args.strict)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    if group is not None:
        seed = group.broadcast(seed)  # every rank: one initialisation, one data order
    net = minidark.load_network(
        args.cfg, args.weights, clear=args.clear, strict=args.strict, seed=seed, cutoff=args.cutoff
    )
    if group is not None:
        from ..train.distributed import attach

        attach(net, group)  # before the max_batches check: it counts global updates
        say(group.describe(net))
    return data, seed, net


def already_trained(args, net, data, base):
    """True, and said, when WEIGHTS are already trained to max_batches (and no
    interrupted final checkpoint is left to complete)."""
    from ..train.trainer import final_missing, tidy

    if not (
        net.max_batches
        and net.current_batch >= net.max_batches
        and not (args.exact_resume and final_missing(args.weights, data.backup, base))
    ):
        return False
    tidy(data.backup, base)  # what a run killed after its last checkpoint left
    say(
        f"{base}: {args.weights} is already trained to max_batches={net.max_batches} "
        f"(seen {net.seen} images): nothing to do; raise max_batches in {args.cfg}, "
        f"or pass --clear to train again from these weights"
    )
    return True


def train(args, group=None):
    from ..train.trainer import Trainer, cfg_base, format_accuracy

    data, seed, net = load_for_training(TRAIN_USAGE, args, group)
    check_classes(net, data)
    base = cfg_base(args.cfg)
    if already_trained(args, net, data, base):
        return 0
    extra = {} if group is None else {"group": group}
    if group is None:
        kind = Trainer
    else:
        from ..train.distributed import DistributedTrainer as kind
    if args.workers and group is None and streamable(data, "train", net):
        from ..data.stream import ImageList
        from ..train.stream_trainer import StreamingTrainer

        train_set = ImageList(data.train)
        valid_set = (
            ImageList(data.valid)
            if streamable(data, "valid", net)
            else load_split(data, "valid", net, args.progress)
            if data.valid
            else None
        )
        kind, extra = (
            StreamingTrainer,
            {
                "labels": data.labels,
                "workers": args.workers,
                "kind": args.loader,
                "labels_file": data.labels_file,
            },
        )
    else:
        if net.config.random:
            warnings.warn(
                f"{args.cfg}: random=1 (multi-scale) needs images decoded at each size: "
                f"train with --workers N on an image list; the input size stays fixed",
                UserWarning,
                stacklevel=2,
            )
        train_set = load_split(data, "train", net, args.progress)
        valid_set = load_split(data, "valid", net, args.progress) if data.valid else None
    print(net.summary(), file=sys.stderr)  # darknet's layer table, once the data is ready
    trainer = kind(
        net,
        train_set,
        valid_set,
        **extra,
        backup_dir=data.backup,
        base=base,
        top=data.top,
        seed=seed,
        progress=args.progress,
        verbose=args.verbose,
        header=f"train {args.data} {args.cfg} {args.weights or ''} seed {seed}",
        start=args.weights,
    )
    if data.tree:
        trainer.hierarchy = read_hierarchy(data, net)
    if args.weights:
        state = (
            "seen reset to 0 (--clear): momentum and data order start fresh"
            if args.clear
            else trainer.restore(args.weights, exact=args.exact_resume)
        )
        say(f"{base}: from {args.weights}: iteration {net.current_batch}, seen {net.seen}; {state}")
    if not trainer.restored:
        say(f"{base}: seed {seed} (--seed {seed} repeats this run)")
    say(f"{base}: checkpoints, log and chart go to {data.backup}")
    if valid_set is None:
        say(f"{base}: no valid= in {args.data}: no evaluation")
    summary = trainer.run()
    if summary["status"] == "interrupted":
        return 130
    if summary.get("accuracy"):
        say(
            f"{base}: test accuracy {format_accuracy(summary['accuracy'])} "
            f"({os.path.basename(valid_set.source)})"
        )
    return 0


def valid_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (valid=, names=, top=)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("weights", metavar="WEIGHTS", help="trained .weights")
    parser.add_argument(
        "--top", type=positive_int, metavar="K", help="k of top-k (default: the data file's top=)"
    )
    parser.add_argument(
        "--multi",
        action="store_true",
        help="darknet's validmulti: an image list at five scales and mirrored, outputs summed "
        "(the network is resized to each image)",
    )
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument("--verbose", action="store_true", help="print the layer table")


def run_valid(args):
    import minidark

    from ..data.datafile import read_data_file
    from ..train.trainer import evaluate, format_accuracy

    check_kinds(VALID_USAGE, args)
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(
        args.cfg,
        args.weights,
        batch=2 if args.multi else 100,
        strict=args.strict,
        verbose=args.verbose,
    )
    net.freeze()
    check_classes(net, data, args.top)
    top = args.top or data.top
    if args.multi:
        from ..data.stream import ImageList
        from ..train.stream_trainer import evaluate_multi

        if not streamable(data, "valid", net):
            raise DataError(f"{data.path}: --multi needs valid= to be an image list")
        source = data.require("valid")
        try:
            result = evaluate_multi(net, ImageList(source), data.labels, top, confusion=True)
        except ValueError as exc:  # a network that cannot be resized
            raise DataError(f"{args.cfg}: --multi resizes the network: {exc}") from None
    elif streamable(data, "valid", net):  # darknet's resize_min + centre crop
        from ..data.stream import ImageList
        from ..train.stream_trainer import evaluate_stream

        source = data.require("valid")
        result = evaluate_stream(
            net, ImageList(source), data.labels, top, workers=2, confusion=True
        )
    else:
        valid_set = load_split(data, "valid", net)
        source = valid_set.source
        result = evaluate(net, valid_set, top, confusion=True, classes=net.outputs)
    say(f"{source}: {format_accuracy(result)}")
    print(confusion_table(result["confusion"], data.names))
    return 0


def confusion_table(matrix, names=None):
    """Per-class counts and accuracy; the full matrix when there are <= 20 classes."""
    classes = matrix.shape[0]
    names = [printable(n) for n in names] if names else [str(i) for i in range(classes)]
    width = max(6, max(len(n) for n in names))
    totals, hits = matrix.sum(axis=1), matrix.diagonal()
    lines = []
    if classes <= 20:
        cell = max(6, len(str(int(matrix.max()))) + 1)
        lines.append("confusion (rows: true class, columns: predicted)")
        lines.append(
            " " * width
            + "".join(f"{i:>{cell}}" for i in range(classes))
            + f"{'images':>9}{'top-1':>9}"
        )
        for i in range(classes):
            acc = f"{100 * hits[i] / totals[i]:.2f}%" if totals[i] else "-"
            lines.append(
                f"{names[i]:<{width}}"
                + "".join(f"{v:>{cell}}" for v in matrix[i])
                + f"{totals[i]:>9}{acc:>9}"
            )
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
    parser.add_argument(
        "--top",
        type=positive_int,
        metavar="K",
        help="how many labels to print (default: the data file's top=)",
    )
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument("--verbose", action="store_true", help="print the layer table")


def run_predict(args):
    import time

    import minidark

    from ..data.datafile import read_data_file
    from ..data.preprocess import predict_input
    from ..train.trainer import topk_indices

    check_kinds(PREDICT_USAGE, args)
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(
        args.cfg, args.weights, batch=1, strict=args.strict, verbose=args.verbose
    )
    net.freeze()
    check_classes(net, data, args.top)
    shape = input_shape(net)
    if shape is None:
        raise DataError(
            f"{args.cfg}: [net] has no height, width and channels, so images cannot be fed to it"
        )
    names = data.names or [str(i) for i in range(net.outputs)]
    top = args.top or data.top
    failed = 0
    for image in args.images:
        try:
            x = predict_input(image, shape)
        except DataError as exc:
            print(f"minidark: error: {printable(exc)}", file=sys.stderr)
            failed += 1
            continue
        tick = time.perf_counter()
        probs = net.predict(x)[0]
        say(f"{image}: predicted in {time.perf_counter() - tick:.4f} s")
        for index in topk_indices(probs[None], top)[0]:
            say(f"{100 * probs[index]:5.2f}%: {names[index]}")
    return USER_ERROR if failed else SUCCESS


add_command(
    "classifier train", "train a classifier (darknet classifier train)", train_arguments, run_train
)
add_command(
    "classifier valid",
    "top-1/top-k accuracy and confusion table on the valid set",
    valid_arguments,
    run_valid,
)
add_command(
    "classifier predict",
    "top-k labels with probabilities for image files",
    predict_arguments,
    run_predict,
)
