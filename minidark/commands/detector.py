"""``minidark detector test`` (darknet's examples/detector.c: test_detector).

    minidark detector test DATA CFG WEIGHTS [IMAGE ...] [--thresh .5] [--hier .5]
                           [--nms .45] [--out DIR]

For each image: letterbox to the network size (plain resize for YOLOv1),
predict, decode every head's boxes, ``do_nms_sort`` at ``--nms``, print
darknet's lines (``<path>: Predicted in <s> seconds.``, then ``name: P%``
for every box and class above ``--thresh``) and draw the boxes with their
labels in darknet's class colours into ``predictions.png`` (with several
images, ``<image stem>_predictions.png``) in ``--out`` (default: the current
folder). Without IMAGE the paths are read from standard input, one per line,
as darknet's prompt loop does.

``names`` comes from the DATA file (``names=``); without it classes print as
their index. Differences from darknet: PNG instead of darknet's JPEG, labels
in Pillow's default font instead of darknet's glyph images, boxes drawn on
images under 167 px too (darknet's line width rounds to 0 there).
"""
import os
import sys
import time

from ..errors import DataError
from .base import add_command


def test_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (names=, classes=)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml with a detection head")
    parser.add_argument("weights", metavar="WEIGHTS", help=".weights file")
    parser.add_argument("images", metavar="IMAGE", nargs="*",
                        help="image files (none: read paths from standard input)")
    parser.add_argument("--thresh", type=float, default=.5, help="probability threshold (.5)")
    parser.add_argument("--hier", type=float, default=.5,
                        help="hierarchy threshold for tree heads (.5)")
    parser.add_argument("--nms", type=float, default=.45, help="NMS IoU threshold (.45; 0: off)")
    parser.add_argument("--out", metavar="DIR", default=".", help="folder for predictions.png")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument("--verbose", action="store_true", help="print the layer table")


def _paths(args):
    if args.images:
        yield from args.images
        return
    while True:
        if sys.stdin.isatty():
            print("Enter Image Path: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def run_test(args):
    import minidark
    from PIL import Image

    from ..data.datafile import read_data_file
    from ..data.image import detect, draw_detections
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(args.cfg, args.weights, batch=1, strict=args.strict,
                                verbose=args.verbose)
    heads = [l for l in net.layers if l.type in ("yolo", "region", "detection")]
    if not heads:
        raise DataError(f"{args.cfg}: no [yolo], [region] or [detection] layer to detect with")
    classes = heads[-1].classes
    if data.names is not None and len(data.names) != classes:
        raise DataError(f"{data.path}: {len(data.names)} names but the network's last head "
                        f"has classes={classes}")
    os.makedirs(args.out, exist_ok=True)
    several = len(args.images) != 1
    failed = 0
    for path in _paths(args):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            print(f"minidark: error: {path}: cannot read image: {exc}", file=sys.stderr)
            failed += 1
            continue
        tick = time.perf_counter()
        found = detect(net, image, thresh=args.thresh, hier_thresh=args.hier, nms=args.nms,
                       names=data.names)
        print(f"{path}: Predicted in {time.perf_counter() - tick:f} seconds.")
        for d in found:
            print(f"{d.label}: {100 * d.prob:.0f}%")
        draw_detections(image, found, classes)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{stem}_predictions.png" if several else "predictions.png"
        image.save(os.path.join(args.out, name))
    return 2 if failed else 0      # an unreadable image is a user error


add_command("detector test", "detect objects in images with a YOLO network (darknet detector test)",
            test_arguments, run_test)
