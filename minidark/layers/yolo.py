"""[yolo]: the YOLOv3 detection head (yolo_layer.c).

Input (batch, n (5 + C), h, w); slot a holds planes x, y, w, h, obj, C
classes. Forward copies it and applies the logistic to x, y, obj and the
classes (w, h stay raw), in training and inference alike. With anchor index
``m = mask[a]`` (anchors in input pixels, the whole ``anchors=`` list indexed
by m) the predicted box of cell (i, j) is::

    ((i + sx)/w, (j + sy)/h, e^tw anchor_w[m]/net_w, e^th anchor_h[m]/net_h)

Loss (train mode with a truth: ``max`` boxes of (x, y, w, h, class) per
image, ending at the first x == 0), writing ``delta`` = darknet's targets
minus outputs:

* every slot: ``d_obj = -obj``, or 0 when its best IoU with a truth is >
  ``ignore_thresh``; above ``truth_thresh`` the slot is a positive for that
  truth (the box, obj and class deltas below);
* every truth, in order: cell ``(int(x w), int(y h))``, best of all ``num``
  anchors by IoU of the centred shapes; if that anchor is in ``mask``, with
  ``s = 2 - w h``: ``d_x = s (x w - i - sx)``, ``d_w = s (ln(w net_w /
  anchor_w) - tw)`` (likewise y, h), ``d_obj = 1 - obj`` and the classes
  ``d_c = [c = class] - p_c`` -- or, when class 0's delta there is already
  set (an earlier truth in that slot), only ``d_class = 1 - p_class``.

``cost = sum(delta^2)``. Backward adds the delta to net.delta unchanged:
for obj and classes that is the gradient of binary cross-entropy with
respect to the logit; for x and y it is ``s (t - sx)`` used as if it were a
logit gradient (no logistic derivative: darknet's design, kept). The
statistics darknet prints are in ``l.stats`` (see ``stats_line``).

cfg keys: ``classes`` (20), ``num`` (1), ``mask`` (0..num-1), ``anchors``
(all .5), ``max`` (90), ``jitter`` (.2), ``ignore_thresh`` (.5),
``truth_thresh`` (1), ``random`` (0), ``map`` (none: a file of class
indexes, one per line). jitter and random steer the detection data loader.
Deliberate deviations from darknet: ``l.truths = 5 * max`` (darknet keeps
450 whatever ``max`` is, misaligning truth rows when max != 90); a truth
whose cell index reaches the grid edge is clamped into it, a class outside
``[0, classes)`` is an error (darknet writes out of bounds).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate
from ..kernels.blas import axpy
from ..kernels.boxes import box_iou, decode_boxes
from ..kernels.buffers import zeros
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

F32 = np.float32


def read_anchors(options, count):
    """``anchors=`` as float32 (count,), default .5 each (darknet's biases)."""
    biases = np.full(count, 0.5, F32)
    values = options.floats("anchors", None)
    if values is not None:
        if len(values) != count:
            raise options.error(
                f"expected {count} anchor values ({count // 2} w,h pairs, "
                f"one per num), got {len(values)}",
                "anchors",
            )
        biases[:] = values
    return biases


def find_file(options, path):
    """A file named in a cfg: as given (darknet: relative to the current folder),
    else beside the cfg or in its parent (darknet's layout: cfg/x.cfg naming
    data/...), so a stock cfg works from any folder."""
    if path is None or os.path.exists(path) or os.path.isabs(path) or not options.file:
        return path
    folder = os.path.dirname(os.path.abspath(options.file))
    for base in (folder, os.path.dirname(folder)):
        if os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return path


def read_map(options):
    """``map=`` file: one class index per line (darknet's read_map), or None."""
    path = find_file(options, options.str("map", None))
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return np.array([int(line) for line in handle if line.strip()], np.int64)
    except OSError as exc:
        raise options.error(f"cannot read map file '{path}': {exc.strerror}", "map") from None
    except ValueError:
        raise options.error(f"map file '{path}' must hold one integer per line", "map") from None


def check_channels(options, params, per_slot, slots, what):
    params.require_image(options)
    if params.c != per_slot * slots:
        raise options.error(
            f"the input has {params.c} channels but {what} needs "
            f"{slots} x {per_slot} = {slots * per_slot}; set the previous "
            f"layer's filters to {slots * per_slot}",
            "classes",
        )


@register_layer("yolo")
def make_yolo(options: Section, params: SizeParams) -> Layer:
    classes = options.int("classes", 20)
    total = options.int("num", 1)
    if classes < 1 or total < 1:
        raise options.error(
            f"classes and num must be >= 1, got {classes} and {total}",
            "classes" if classes < 1 else "num",
        )
    mask = options.ints("mask", None)
    mask = list(range(total)) if mask is None else mask
    if any(not 0 <= m < total for m in mask):
        raise options.error(
            f"mask entries must index the {total} anchors (0..{total - 1}), got {mask}", "mask"
        )
    n = len(mask)
    check_channels(
        options, params, 5 + classes, n, f"[yolo] with {n} masked anchors and {classes} classes"
    )
    max_boxes = options.int("max", 90)
    if max_boxes < 1:
        raise options.error(f"max must be >= 1, got {max_boxes}", "max")
    # check_channels made the input h w n (5 + classes) values: the output's size
    batch, outputs = params.batch, params.inputs
    l = Layer(
        type="yolo",
        **params.same_shape(),
        n=n,
        total=total,
        mask=np.array(mask, np.int64),
        classes=classes,
        coords=4,
        max_boxes=max_boxes,
        truths=5 * max_boxes,
        jitter=options.float("jitter", 0.2),
        ignore_thresh=options.float("ignore_thresh", 0.5),
        truth_thresh=options.float("truth_thresh", 1.0),
        random=options.int("random", 0),
        map=read_map(options),
        biases=read_anchors(options, 2 * total),
        cost=0.0,
        stats={},
    )
    # slot of each anchor index in this layer's mask, -1 when not in it (first wins)
    l.mask_slot = np.full(total, -1, np.int64)
    for slot, m in reversed(list(enumerate(mask))):
        l.mask_slot[m] = slot
    l.output = np.zeros((batch, outputs), F32)
    l.delta = zeros((batch, outputs))
    l.desc = "mask " + ",".join(map(str, mask))
    l.gradcheck_gap = HEAD_GAP
    l.forward, l.backward = forward_yolo, backward_yolo
    return l


def planes(l, array):
    """(batch, n, 5 + C, h, w) view of a (batch, outputs) buffer."""
    return array.reshape(l.batch, l.n, 5 + l.classes, l.h, l.w)


def forward_yolo(l: Layer, net: Network) -> None:
    np.copyto(l.output, net.input.reshape(l.output.shape))
    out = planes(l, l.output)
    activate(out[:, :, 0:2], "logistic")
    activate(out[:, :, 4:], "logistic")
    l.delta.fill(0)
    if not net.train or net.truth is None:
        l.cost = 0.0
        return
    delta = planes(l, l.delta)
    truth = net.truth.reshape(l.batch, -1)[:, : l.truths].reshape(l.batch, l.max_boxes, 5)
    valid = np.cumprod(truth[:, :, 0] != 0, axis=1).astype(bool)  # list ends at x == 0
    anchors = l.biases.reshape(-1, 2)
    pred = decode_boxes(
        out.reshape(-1, 5 + l.classes, l.h, l.w),
        np.tile(anchors[l.mask, 0], l.batch),
        np.tile(anchors[l.mask, 1], l.batch),
        l.w,
        l.h,
        net.w,
        net.h,
    ).reshape(l.batch, l.n, l.h, l.w, 4)
    classes = _classes(l, truth)

    # no-object pass: best IoU of every slot with any truth of its image
    best = np.zeros(pred.shape[:4], F32)
    best_t = np.zeros(pred.shape[:4], np.int64)
    for t in range(int(valid.sum(axis=1).max(initial=0))):
        iou = box_iou(pred, truth[:, None, None, None, t, :4])
        better = (iou > best) & valid[:, t, None, None, None]
        best[better], best_t[better] = iou[better], t
    obj = out[:, :, 4]
    np.negative(obj, out=delta[:, :, 4])
    delta[:, :, 4][best > F32(l.ignore_thresh)] = 0
    b, a, j, i = np.nonzero(best > F32(l.truth_thresh))
    if b.size:
        t = best_t[b, a, j, i]
        delta[b, a, 4, j, i] = 1 - obj[b, a, j, i]
        _class_delta(l, out, delta, b, a, j, i, classes[b, t])
        _box_delta(l, net, out, delta, truth[b, t, :4], l.mask[a], b, a, j, i)

    # truth pass: each truth trains the slot of its cell and best anchor in this mask
    stats = dict(iou=0.0, cat=0.0, obj=0.0, recall=0, recall75=0, count=0)
    shapes = np.zeros((l.total, 4), F32)
    shapes[:, 2], shapes[:, 3] = anchors[:, 0] / F32(net.w), anchors[:, 1] / F32(net.h)
    for t in range(int(valid.sum(axis=1).max(initial=0))):
        b = np.flatnonzero(valid[:, t])
        box = truth[b, t, :4]
        centred = box.copy()
        centred[:, :2] = 0
        fit = box_iou(centred[:, None, :], shapes[None])
        best_n = np.argmax(np.where(fit > 0, fit, F32(-1)), axis=1)  # strict >, first wins
        best_n[~(fit > 0).any(axis=1)] = 0
        a = l.mask_slot[best_n]
        keep = a >= 0
        b, a, box, best_n, cls = b[keep], a[keep], box[keep], best_n[keep], classes[b[keep], t]
        if not b.size:
            continue
        i = np.clip((box[:, 0] * F32(l.w)).astype(np.int64), 0, l.w - 1)
        j = np.clip((box[:, 1] * F32(l.h)).astype(np.int64), 0, l.h - 1)
        iou = box_iou(pred[b, a, j, i], box)
        _box_delta(l, net, out, delta, box, best_n, b, a, j, i)
        delta[b, a, 4, j, i] = 1 - out[b, a, 4, j, i]
        _class_delta(l, out, delta, b, a, j, i, cls)
        stats["cat"] += float(out[b, a, 5 + cls, j, i].sum(dtype=np.float64))
        stats["obj"] += float(out[b, a, 4, j, i].sum(dtype=np.float64))
        stats["iou"] += float(iou.sum(dtype=np.float64))
        stats["recall"] += int((iou > 0.5).sum())
        stats["recall75"] += int((iou > 0.75).sum())
        stats["count"] += b.size
    flat = l.delta.reshape(-1)
    l.cost = float(np.dot(flat, flat))
    count = stats["count"]
    l.stats = {
        "avg_iou": _ratio(stats["iou"], count),
        "avg_class_prob": _ratio(stats["cat"], count),
        "avg_obj_pos": _ratio(stats["obj"], count),
        "avg_obj_all": float(obj.sum(dtype=np.float64)) / obj.size,
        "recall_iou_gt_0.5": _ratio(stats["recall"], count),
        "recall_iou_gt_0.75": _ratio(stats["recall75"], count),
        "count": count,
    }


def _ratio(total, count):
    return total / count if count else math.nan


def _classes(l, truth):
    """Integer classes of every truth slot (C truncation, then ``map``)."""
    classes = truth[:, :, 4].astype(np.int64)
    if l.map is not None:
        valid = (classes >= 0) & (classes < len(l.map))
        classes = np.where(valid, l.map[np.clip(classes, 0, len(l.map) - 1)], -1)
    in_list = np.cumprod(truth[:, :, 0] != 0, axis=1).astype(bool)
    bad = in_list & ((classes < 0) | (classes >= l.classes))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(
            f"[{l.type}] layer {l.index}: truth box {t} of image {b} has class "
            f"{truth[b, t, 4]:g}, outside 0..{l.classes - 1}"
        )
    return classes


def _class_delta(l, out, delta, b, a, j, i, cls):
    """darknet's delta_yolo_class at the slots (b, a, j, i): a one-hot target, or
    -- where class 0's delta is already set -- only the truth's class."""
    already = delta[b, a, 5, j, i] != 0
    full = ~already
    fb, fa, fj, fi = b[full], a[full], j[full], i[full]
    target = np.zeros((fb.size, l.classes), F32)
    target[np.arange(fb.size), cls[full]] = 1
    delta[fb, fa, 5:, fj, fi] = target - out[fb, fa, 5:, fj, fi]
    sb, sa, sj, si, sc = b[already], a[already], j[already], i[already], cls[already]
    delta[sb, sa, 5 + sc, sj, si] = 1 - out[sb, sa, 5 + sc, sj, si]


def _box_delta(l, net, out, delta, box, anchor, b, a, j, i):
    """darknet's delta_yolo_box: scale (2 - w h) times (target - output) for
    x, y (logistic outputs) and w, h (raw)."""
    scale = F32(2) - box[:, 2] * box[:, 3]
    anchors = l.biases.reshape(-1, 2)[anchor]
    tx = box[:, 0] * F32(l.w) - i.astype(F32)
    ty = box[:, 1] * F32(l.h) - j.astype(F32)
    tw = np.log(box[:, 2] * F32(net.w) / anchors[:, 0])
    th = np.log(box[:, 3] * F32(net.h) / anchors[:, 1])
    for k, target in enumerate((tx, ty, tw, th)):
        delta[b, a, k, j, i] = scale * (target - out[b, a, k, j, i])


def backward_yolo(l: Layer, net: Network) -> None:
    if net.delta is not None:
        axpy(1, l.delta, net.delta)


def stats_line(l):
    """The line darknet prints after a head's training forward."""
    s = l.stats
    if not s:
        return ""
    if l.type == "yolo":
        return (
            f"Region {l.index} Avg IOU: {s['avg_iou']:f}, Class: {s['avg_class_prob']:f}, "
            f"Obj: {s['avg_obj_pos']:f}, No Obj: {s['avg_obj_all']:f}, "
            f".5R: {s['recall_iou_gt_0.5']:f}, .75R: {s['recall_iou_gt_0.75']:f},  "
            f"count: {s['count']}"
        )
    if l.type == "region":
        return (
            f"Region Avg IOU: {s['avg_iou']:f}, Class: {s['avg_class_prob']:f}, "
            f"Obj: {s['avg_obj_pos']:f}, No Obj: {s['avg_obj_all']:f}, "
            f"Avg Recall: {s['avg_recall_iou_gt_0.5']:f},  count: {s['count']}"
        )
    return (
        f"Detection Avg IOU: {s['avg_iou']:f}, Pos Cat: {s['avg_true_class_prob']:f}, "
        f"All Cat: {s['avg_all_class_prob']:f}, Pos Obj: {s['avg_obj_pos']:f}, "
        f"Any Obj: {s['avg_obj_all']:f}, count: {s['count']}"
    )


class HeadGap:
    """The gradcheck tool's KnownGap interface, declared here so layers import no tool:
    the generic check uses ``cost`` as the loss, which for darknet's heads is
    sum(delta^2), not the loss whose negative gradient the delta is."""

    tolerance, scale = math.inf, 1.0

    def __init__(self, type):
        self.note = (
            f"not checked generically: [{type}] cost is sum(delta^2); the true-loss "
            f"checks are in tests/layers/test_{type}.py"
        )

    def applies_to(self, array):
        return True


def head_gap(layer, train):
    return HeadGap(layer.type)


HEAD_GAP = head_gap
