"""``minidark detector test`` (darknet's examples/detector.c: test_detector).

    minidark detector test DATA CFG WEIGHTS [IMAGE ...] [--thresh .5] [--hier .5]
                           [--nms .45] [--out DIR]
    minidark detector bench CFG... [--weights W] [--runs N] [--size S] [--no-opencv]

For each image: letterbox to the network size (plain resize for YOLOv1),
predict, decode every head's boxes, ``do_nms_sort`` at ``--nms``, print
darknet's lines (``<path>: Predicted in <s> seconds.``, then ``name: P%``
for every box and class above ``--thresh``) and draw the boxes with their
labels in darknet's class colours into ``predictions.png`` (with several
images, ``<image stem>_predictions.png``) in ``--out`` (default: the current
folder). Without IMAGE the paths are read from standard input, one per line,
as darknet's prompt loop does.

``detector bench`` times batch-1 inference on one thread against OpenCV's
dnn module reading the same cfg and weights (minidark/tools/infer_bench.py).

``names`` comes from the DATA file (``names=``); without it classes print as
their index. Differences from darknet: PNG instead of darknet's JPEG, labels
in Pillow's default font instead of darknet's glyph images, boxes drawn on
images under 167 px too (darknet's line width rounds to 0 there).
"""

import os
import sys
import time

from ..errors import DataError, printable
from .base import SUCCESS, USER_ERROR, add_command, check_file_kinds
from .classifier import say

TEST_USAGE = "minidark detector test DATA CFG WEIGHTS [IMAGE...]"


def test_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (names=, classes=)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml with a detection head")
    parser.add_argument("weights", metavar="WEIGHTS", help=".weights file")
    parser.add_argument(
        "images",
        metavar="IMAGE",
        nargs="*",
        help="image files (none: read paths from standard input)",
    )
    parser.add_argument("--thresh", type=float, default=0.5, help="probability threshold (.5)")
    parser.add_argument(
        "--hier", type=float, default=0.5, help="hierarchy threshold for tree heads (.5)"
    )
    parser.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (.45; 0: off)")
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
    from PIL import Image

    import minidark

    from ..data.datafile import read_data_file
    from ..data.image import detect, draw_detections

    check_file_kinds(
        TEST_USAGE,
        [
            ("DATA", args.data, "data"),
            ("CFG", args.cfg, "cfg"),
            ("WEIGHTS", args.weights, "weights"),
        ]
        + [("IMAGE", image, "image") for image in args.images],
    )
    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(
        args.cfg, args.weights, batch=1, strict=args.strict, verbose=args.verbose
    )
    net.freeze()
    heads = [l for l in net.layers if l.type in ("yolo", "region", "detection")]
    if not heads:
        raise DataError(f"{args.cfg}: no [yolo], [region] or [detection] layer to detect with")
    classes = heads[-1].classes
    if data.names is not None and len(data.names) != classes:
        raise DataError(
            f"{data.path}: {len(data.names)} names but the network's last head "
            f"has classes={classes}"
        )
    os.makedirs(args.out, exist_ok=True)
    several = len(args.images) != 1
    failed = 0
    for path in _paths(args):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            print(printable(f"minidark: error: {path}: cannot read image: {exc}"), file=sys.stderr)
            failed += 1
            continue
        tick = time.perf_counter()
        found = detect(
            net, image, thresh=args.thresh, hier_thresh=args.hier, nms=args.nms, names=data.names
        )
        print(printable(f"{path}: Predicted in {time.perf_counter() - tick:f} seconds."))
        for d in found:
            print(f"{d.label}: {100 * d.prob:.0f}%")
        draw_detections(image, found, classes)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{stem}_predictions.png" if several else "predictions.png"
        image.save(os.path.join(args.out, name))
    return USER_ERROR if failed else SUCCESS  # an unreadable image is a user error


def bench_arguments(parser):
    parser.add_argument("cfgs", metavar="CFG", nargs="+", help="network .cfg files")
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="weights for a single CFG (default: random weights written by minidark, read by both)",
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per side (10)")
    parser.add_argument("--size", type=int, help="override the cfg's width and height")
    parser.add_argument(
        "--no-opencv", dest="opencv", action="store_false", help="time minidark only"
    )


def run_bench(args):
    from ..tools.infer_bench import bench_inference, format_report

    if args.weights and len(args.cfgs) > 1:
        raise DataError("--weights goes with a single CFG")
    for cfg in args.cfgs:
        result = bench_inference(
            cfg, args.weights, runs=args.runs, size=args.size, opencv=args.opencv
        )
        print(format_report(os.path.basename(cfg), result))
    return SUCCESS


add_command(
    "detector bench",
    "inference images/s of a YOLO cfg, minidark beside OpenCV's dnn "
    "(1 thread), with minidark's time per layer",
    bench_arguments,
    run_bench,
)
add_command(
    "detector test",
    "detect objects in images with a YOLO network (darknet detector test)",
    test_arguments,
    run_test,
)


# ---------------------------------------------------------------------------
# detector train | valid | recall | map | calc-anchors (darknet's train_detector,
# validate_detector, validate_detector_recall; AB's map and calc_anchors)
# ---------------------------------------------------------------------------


def _detection_split(data, key, classes):
    from ..data.detection import DetectionDataset

    return DetectionDataset.from_list(data.require(key), classes)


def _last_head(net, cfg):
    from ..data.detection import head_of

    return head_of(net)


def _check_names(data, head):
    if data.names is not None and len(data.names) != head.classes:
        raise DataError(
            f"{data.path}: {len(data.names)} names but the network's last head "
            f"has classes={head.classes}"
        )
    if data.classes is not None and data.classes != head.classes:
        raise DataError(
            f"{data.path}: classes={data.classes} but the network's last head "
            f"has classes={head.classes}"
        )


def train_detector_arguments(parser):
    from .classifier import train_arguments

    train_arguments(
        parser,
        data_help=".data file (classes, train, valid, names, backup)",
        cfg_help="network .cfg or .yaml with a YOLO head",
        streaming=False,
    )
    parser.add_argument(
        "--points",
        type=int,
        default=0,
        metavar="N",
        help="mAP@0.5 interpolation: 0 all-point (default), 11 VOC2007",
    )
    parser.add_argument(
        "--valid-images",
        type=int,
        default=None,
        metavar="N",
        help="evaluate on the first N valid images only (default: all)",
    )


def run_train_detector(args):
    """Train; under ``mpiexec -n N`` as one rank of a data-parallel job
    (minidark/train/distributed.py)."""
    from ..train import distributed

    group = distributed.join()
    if group is None:
        return train_detector(args)
    with group.guard():
        group.silence()
        return train_detector(args, group)


def train_detector(args, group=None):
    from ..train.detection_trainer import DetectionTrainer, DistributedDetectionTrainer
    from ..train.trainer import cfg_base
    from .classifier import already_trained, load_for_training

    data, seed, net = load_for_training("minidark detector train DATA CFG [WEIGHTS]", args, group)
    head = _last_head(net, args.cfg)
    _check_names(data, head)
    base = cfg_base(args.cfg)
    if already_trained(args, net, data, base):
        return 0
    train_set = _detection_split(data, "train", head.classes)
    valid_set = _detection_split(data, "valid", head.classes) if data.valid else None
    print(net.summary(), file=sys.stderr)
    extra = {} if group is None else {"group": group}
    kind = DetectionTrainer if group is None else DistributedDetectionTrainer
    trainer = kind(
        net,
        train_set,
        valid_set,
        **extra,
        points=args.points,
        valid_limit=args.valid_images,
        backup_dir=data.backup,
        base=base,
        seed=seed,
        progress=args.progress,
        verbose=args.verbose,
        start=args.weights,
        header=f"detector train {args.data} {args.cfg} {args.weights or ''} seed {seed}",
    )
    if args.weights:
        state = (
            "seen reset to 0 (--clear): momentum and data order start fresh"
            if args.clear
            else trainer.restore(args.weights, exact=args.exact_resume)
        )
        say(f"{base}: from {args.weights}: iteration {net.current_batch}, seen {net.seen}; {state}")
    if not trainer.restored:
        say(f"{base}: seed {seed} (--seed {seed} repeats this run)")
    say(
        f"{base}: {len(train_set)} training images ({train_set.objects} objects); "
        f"checkpoints, log and chart go to {data.backup}"
    )
    summary = trainer.run()
    if summary["status"] == "interrupted":
        return 130
    result = summary.get("accuracy")
    if result:
        say(f"mAP@0.5 = {result['map50']:.4f}")
        say(f"mAP@[.5:.95] = {result['map']:.4f}")
    return 0


def eval_arguments(parser, thresh):
    parser.add_argument("data", metavar="DATA", help=".data file (valid, names, ...)")
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml with a YOLO head")
    parser.add_argument("weights", metavar="WEIGHTS", help="trained .weights")
    parser.add_argument(
        "--thresh", type=float, default=thresh, help=f"probability threshold ({thresh:g})"
    )
    parser.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (.45)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass (16)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N images of the valid list",
    )
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )


def _eval_setup(args):
    import minidark

    from ..data.datafile import read_data_file

    data = read_data_file(args.data, strict=args.strict)
    net = minidark.load_network(args.cfg, args.weights, batch=args.batch, strict=args.strict)
    net.freeze()
    head = _last_head(net, args.cfg)
    _check_names(data, head)
    return data, net, head, _detection_split(data, "valid", head.classes)


def valid_arguments(parser):
    eval_arguments(parser, 0.005)
    parser.add_argument(
        "--out",
        metavar="STEM",
        default=None,
        help="file stem (default comp4_det_test_ for voc, coco_results for coco)",
    )


COCO_IDS = (
    list(range(1, 12))
    + list(range(13, 26))
    + [27, 28]
    + list(range(31, 45))
    + list(range(46, 66))
    + [67, 70]
    + list(range(72, 83))
    + list(range(84, 91))
)


def coco_image_id(path):
    """darknet's image id: the number after the last '_' of the path, else after the
    last '/' (its leading digits; 0 when there are none)."""
    tail = path.rsplit("_", 1)[1] if "_" in path else os.path.basename(path)
    digits = ""
    for ch in tail:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


def run_valid(args):
    import json

    from ..train.detection_eval import predict_dataset

    data, net, head, valid = _eval_setup(args)
    kind = data.values.get("eval", "voc")
    if kind not in ("voc", "coco"):
        raise DataError(f"{data.path}: eval={kind}: minidark writes voc or coco results")
    folder = data.resolve(data.values.get("results", "results"))
    os.makedirs(folder, exist_ok=True)
    names = data.names or [str(k) for k in range(head.classes)]
    tick = time.perf_counter()
    detections, _, sizes = predict_dataset(
        net, valid, args.thresh, args.nms, limit=args.limit, progress=args.progress
    )
    if kind == "voc":
        stem = args.out or "comp4_det_test_"
        handles = [
            open(  # noqa: SIM115  (one file per class, closed together below)
                os.path.join(folder, f"{stem}{name}.txt"), "w", encoding="utf-8"
            )
            for name in names
        ]
        try:
            for path, rows, (w, h) in zip(valid.paths, detections, sizes, strict=False):
                image_id = os.path.basename(path).split(".")[0]
                for c, p, x0, y0, x1, y1 in rows:
                    # darknet: 1-based pixels, xmin/ymin >= 1, xmax/ymax <= the image size
                    handles[int(c)].write(
                        f"{image_id} {p:f} {max(x0 * w + 1, 1):f} {max(y0 * h + 1, 1):f} "
                        f"{min(x1 * w + 1, w):f} {min(y1 * h + 1, h):f}\n"
                    )
        finally:
            for handle in handles:
                handle.close()
        written = os.path.join(folder, f"{stem}<class>.txt")
    else:
        records = []
        for path, rows, (w, h) in zip(valid.paths, detections, sizes, strict=False):
            image_id = coco_image_id(path)
            for c, p, x0, y0, x1, y1 in rows:
                x0, x1 = min(max(x0 * w, 0), w), min(max(x1 * w, 0), w)
                y0, y1 = min(max(y0 * h, 0), h), min(max(y1 * h, 0), h)
                # darknet's 80 COCO classes map to COCO's category ids; others keep their index
                category = COCO_IDS[int(c)] if head.classes == 80 else int(c)
                records.append(
                    {
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(p),
                    }
                )
        written = os.path.join(folder, f"{args.out or 'coco_results'}.json")
        with open(written, "w", encoding="utf-8") as handle:
            json.dump(records, handle)
    print(f"Total Detection Time: {time.perf_counter() - tick:f} Seconds", file=sys.stderr)
    say(
        f"wrote {sum(len(r) for r in detections)} detections of {len(detections)} images to "
        f"{written}"
    )
    return 0


def run_recall(args):
    import numpy as np

    from ..data.image import load_image, resize_image
    from ..kernels.boxes import do_nms_obj, get_network_boxes
    from ..train.detection_eval import iou_matrix, truth_corners

    _, net, _, valid = _eval_setup(args)
    count = len(valid) if args.limit is None else min(args.limit, len(valid))
    total = correct = proposals = 0
    avg_iou = 0.0
    batch = np.zeros((net.batch, net.inputs), np.float32)
    for start in range(0, count, net.batch):
        rows = range(start, min(start + net.batch, count))
        for k, i in enumerate(rows):
            batch[k] = resize_image(load_image(valid.paths[i], net.c), net.w, net.h).reshape(-1)
        net.forward(batch, train=False)
        for k, i in enumerate(rows):
            dets = get_network_boxes(
                net, 1, 1, args.thresh, 0.5, relative=True, letterbox=False, batch_index=k
            )
            do_nms_obj(dets, 1, args.nms)
            keep = dets.objectness > args.thresh
            proposals += int(keep.sum())
            truths = truth_corners(valid.boxes[i])
            boxes = dets.bbox[keep].astype(np.float64)
            corners = np.column_stack(
                [boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2]
            )
            for truth in truths:
                total += 1
                best = iou_matrix(truth[None, 1:], corners).max(initial=0.0)
                avg_iou += best
                correct += best > 0.5
            print(
                f"{i:5d} {correct:5d} {total:5d}\tRPs/Img: {proposals / (i + 1):.2f}\t"
                f"IOU: {100 * avg_iou / max(total, 1):.2f}%\t"
                f"Recall:{100 * correct / max(total, 1):.2f}%"
            )
    return 0


def recall_arguments(parser):
    eval_arguments(parser, 0.001)
    parser.set_defaults(nms=0.4)


def map_arguments(parser):
    eval_arguments(parser, 0.005)
    parser.add_argument(
        "--points",
        type=int,
        default=0,
        metavar="N",
        help="0: all-point interpolation (default, AB's -points 0 and "
        "VOC2010+); 11: VOC2007's 11 points",
    )
    parser.add_argument(
        "--iou-thresh",
        type=float,
        default=0.5,
        help="IoU of a true positive for the per-class AP (.5)",
    )


def run_map(args):
    from ..train.detection_eval import coco_map, predict_dataset, voc_map

    data, net, head, valid = _eval_setup(args)
    names = data.names or [str(k) for k in range(head.classes)]
    tick = time.perf_counter()
    detections, truths, _ = predict_dataset(
        net, valid, args.thresh, args.nms, limit=args.limit, progress=args.progress
    )
    seconds = time.perf_counter() - tick
    voc = voc_map(detections, truths, head.classes, args.iou_thresh, args.points)
    coco = coco_map(detections, truths, head.classes)
    print(
        f"detections_count = {sum(len(d) for d in detections)}, "
        f"unique_truth_count = {sum(len(t) for t in truths)}"
    )
    for k, name in enumerate(names):
        print(
            f"class_id = {k}, name = {name}, ap = {100 * voc['ap'][k]:.2f}%   "
            f"(TP = {voc['tp'][k]}, FP = {voc['fp'][k]}), "
            f"AP@[.5:.95] = {100 * max(coco['per_class'][k], 0):.2f}%"
        )
    how = (
        f"used {args.points} Recall-points"
        if args.points
        else "used Area-Under-Curve for each unique Recall"
    )
    print(f"IoU threshold = {100 * args.iou_thresh:.0f} %, {how}")
    print(
        f"mAP@{args.iou_thresh:.2g} = {voc['map']:.4f}"
        if args.iou_thresh != 0.5
        else f"mAP@0.5 = {voc['map']:.4f}"
    )
    print(f"mAP@[.5:.95] = {max(coco['map'], 0):.4f}")
    print(
        f"{len(truths)} images in {seconds:.1f} s ({len(truths) / seconds:.1f} images/s)",
        file=sys.stderr,
    )
    return 0


def calc_anchors_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".data file (train=)")
    parser.add_argument(
        "--num-of-clusters", type=int, default=5, metavar="K", help="number of anchors (5)"
    )
    parser.add_argument("--width", type=int, required=True, help="network width")
    parser.add_argument("--height", type=int, required=True, help="network height")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the initial centres (0)"
    )
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors")


def anchor_iou(boxes, centres):
    """IoU of (w, h) pairs aligned at a corner: (n, k)."""
    import numpy as np

    inter = np.minimum(boxes[:, None, 0], centres[None, :, 0]) * np.minimum(
        boxes[:, None, 1], centres[None, :, 1]
    )
    return inter / (
        boxes[:, None, 0] * boxes[:, None, 1] + centres[None, :, 0] * centres[None, :, 1] - inter
    )


def calc_anchors(sizes, k, rng, iterations=1000):
    """AB's calc_anchors: k-means on 1 - IoU, random initial centres (a
    permutation's first k boxes), arithmetic means; centres sorted by area."""
    import numpy as np

    centres = sizes[rng.permutation(len(sizes))[:k]].copy()
    assign = np.zeros(len(sizes), np.int64)
    for step in range(iterations):
        new = anchor_iou(sizes, centres).argmax(axis=1)
        if step and (new == assign).all():
            break
        assign = new
        for c in range(k):
            members = sizes[assign == c]
            if len(members):
                mean = members.mean(axis=0)
                centres[c] = np.where(mean == 0, centres[c], mean)
    centres = centres[np.argsort(centres[:, 0] * centres[:, 1], kind="stable")]
    avg = float(anchor_iou(sizes, centres).max(axis=1).mean())
    return centres, avg, step + 1


def run_calc_anchors(args):
    import numpy as np

    from ..data.datafile import read_data_file

    data = read_data_file(args.data, strict=args.strict)
    train = _detection_split(data, "train", data.classes)
    if not train.objects:
        raise DataError(f"{train.source}: no label boxes to cluster")
    if args.num_of_clusters < 1 or args.num_of_clusters > train.objects:
        raise DataError(
            f"--num-of-clusters must be in 1..{train.objects} (the boxes), got "
            f"{args.num_of_clusters}"
        )
    sizes = np.concatenate([b[:, 3:5] for b in train.boxes]).astype(np.float64)
    sizes *= (args.width, args.height)
    centres, avg, steps = calc_anchors(
        sizes, args.num_of_clusters, np.random.default_rng(args.seed)
    )
    print(f"iterations = {steps}")
    print(f"avg IoU = {100 * avg:.2f} %")
    fmt = "{:3.0f},{:3.0f}" if args.width > 32 else "{:2.4f},{:2.4f}"
    print("anchors = " + ", ".join(fmt.format(w, h) for w, h in centres))
    return 0


add_command(
    "detector train",
    "train a YOLO network on a darknet detection dataset (darknet detector train)",
    train_detector_arguments,
    run_train_detector,
)
add_command(
    "detector valid",
    "write darknet's result files for the valid list (darknet detector valid)",
    valid_arguments,
    run_valid,
)
add_command(
    "detector recall",
    "darknet's recall table on the valid list (darknet detector recall)",
    recall_arguments,
    run_recall,
)
add_command(
    "detector map",
    "per-class AP, mAP@0.5 and COCO mAP@[.5:.95] on the valid list (AB's detector map)",
    map_arguments,
    run_map,
)
add_command(
    "detector calc-anchors",
    "k-means anchors from the train list's boxes (AB's detector calc_anchors)",
    calc_anchors_arguments,
    run_calc_anchors,
)
