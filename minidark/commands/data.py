"""``minidark data export-mnist``: MNIST as PNG files plus darknet image lists."""

from ..errors import printable
from .base import add_command, positive_int


def export_arguments(parser):
    parser.add_argument(
        "out", metavar="OUT", help="folder for the PNGs, lists, mnist.names and mnist.data"
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="export only the first N images of each split",
    )
    parser.add_argument(
        "--mnist",
        metavar="DIR",
        default=None,
        help="folder with the IDX files (default: data/mnist, then $MINIDARK_DATA)",
    )


def run_export(args):
    from ..data.export import export_mnist

    data = export_mnist(args.out, args.mnist, args.limit)
    print(
        printable(
            f"wrote MNIST as PNG image lists to {args.out}; train on them with: "
            f"minidark classifier train {data} cfg/mnist_mlp.cfg"
        )
    )
    return 0


add_command(
    "data export-mnist",
    "write MNIST as PNG files plus darknet image lists",
    export_arguments,
    run_export,
)


def export_detection_arguments(parser):
    parser.add_argument(
        "out",
        metavar="OUT",
        help="folder for images/, labels/, train.txt, "
        "valid.txt, the names file and mnist_detection.data",
    )
    parser.add_argument(
        "--images",
        type=positive_int,
        default=10000,
        metavar="N",
        help="training canvases, from MNIST's training digits (10000)",
    )
    parser.add_argument(
        "--valid",
        type=positive_int,
        default=2000,
        metavar="M",
        help="validation canvases, from MNIST's test digits only (2000)",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=128,
        metavar="S",
        help="canvas width and height in pixels (128)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--mnist",
        metavar="DIR",
        default=None,
        help="folder with the IDX files (default: data/mnist, then $MINIDARK_DATA)",
    )


def run_export_detection(args):
    from ..data.mnist_detection import export_mnist_detection

    data = export_mnist_detection(
        args.out, args.images, args.valid, args.size, args.seed, args.mnist
    )
    print(
        printable(
            f"wrote MNIST detection ({args.images} train, {args.valid} valid canvases) to "
            f"{args.out}; train on it with: OPENBLAS_NUM_THREADS=1 mpiexec -n 2 "
            f"minidark detector train {data} cfg/mnist_yolo.cfg (or without mpiexec, "
            f"on one core)"
        )
    )
    return 0


add_command(
    "data export-mnist-detection",
    "write MNIST digits pasted on canvases as a darknet detection dataset",
    export_detection_arguments,
    run_export_detection,
)
