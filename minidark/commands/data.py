"""``minidark data export-mnist``: MNIST as PNG files plus darknet image lists."""
from .base import add_command, positive_int


def export_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="folder for the PNGs, lists, "
                        "mnist.names and mnist.data")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="export only the first N images of each split")
    parser.add_argument("--mnist", metavar="DIR", default=None,
                        help="folder with the IDX files (default: data/mnist, "
                             "then $MINIDARK_DATA)")


def run_export(args):
    from ..data.export import export_mnist
    data = export_mnist(args.out, args.mnist, args.limit)
    print(f"wrote MNIST as PNG image lists to {args.out}; train on them with: "
          f"minidark classifier train {data} cfg/mnist_mlp.cfg")
    return 0


add_command("data export-mnist", "write MNIST as PNG files plus darknet image lists",
            export_arguments, run_export)
