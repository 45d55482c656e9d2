"""[region]: the YOLOv2 detection head (region_layer.c).

Input (batch, n (coords + 1 + C), h, w); anchor a holds planes x, y, w, h,
(coords - 4 mask planes), obj, C classes. Forward: logistic on x, y, the
mask planes and obj (obj stays raw with ``background=1``); the classes get a
softmax computed from the raw input (``softmax=1``; with ``background=1`` it
spans obj and the classes), a softmax per group of a ``tree=`` hierarchy, or
else the logistic. Anchors are in grid cells::

    box = ((i + sx)/w, (j + sy)/h, e^tw anchor_w[a]/w, e^th anchor_h[a]/h)

Loss (train mode; truth: ``max`` boxes of (x, y, w, h[, mask], class) per
image, ending at the first x == 0), ``delta`` = scale (target - output):

* every slot: ``d_obj = noobject_scale (0 - obj)`` (target 1 with
  background), 0 when its best IoU with a truth is > ``thresh``; while
  ``net.seen < 12800`` also a prior pulling the box to the cell centre with
  the anchor's size at scale .01;
* every truth: cell ``(int(x w), int(y h))``; best anchor by IoU of centred
  shapes (the anchors' with ``bias_match``, else the predicted ones);
  ``s = coord_scale (2 - w h)``; ``d_x = s (x w - i - sx)``, ``d_w = s (ln(w
  w_grid / anchor_w) - tw)``; ``d_obj = object_scale (1 - obj)``, or ``(iou
  - obj)`` with ``rescore``; classes ``class_scale ([c = class] - p_c)``
  (without softmax, an already-set slot only gets its class set, as in yolo;
  with a tree every ancestor's group is trained).

``cost = sum(delta^2)``. Backward as darknet's GPU path: x, y, mask and obj
deltas are multiplied by the logistic derivative ``out (1 - out)``, then the
whole delta is added to net.delta. With ``rescore`` the iou target is held
constant (no gradient through it).

cfg keys: ``coords`` (4), ``classes`` (20), ``num`` (1), ``anchors`` (all
.5), ``log``, ``sqrt`` (0; unused by darknet's region code), ``softmax``
(0), ``background`` (0), ``max`` (30), ``jitter`` (.2), ``rescore`` (0),
``thresh`` (.5), ``classfix``, ``absolute`` (0; unused), ``random`` (0),
``coord_scale``, ``object_scale``, ``noobject_scale``, ``mask_scale``,
``class_scale`` (1), ``bias_match`` (0), ``tree``, ``map`` (none).
Deliberate deviations from darknet: its CPU backward is empty (no gradient
reaches earlier layers) and its CPU tree softmax indexes the wrong layout
with temperature 0 (NaN): minidark follows the GPU code for both, and for
the logistic on mask planes; ``mask_scale`` is not truncated to an int;
``l.truths = max (coords + 1)`` and the truth loop runs to ``max`` (darknet:
always 30 boxes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate
from ..kernels.blas import axpy
from ..kernels.boxes import box_iou, decode_boxes
from ..kernels.tree import read_tree
from ..layer import Layer
from ..registry import register_layer
from .yolo import HEAD_GAP, _classes, _ratio, check_channels, find_file, read_anchors, read_map

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

F32 = np.float32
PRIOR_SEEN = 12800  # images seen before the anchor-prior term switches off


@register_layer("region")
def make_region(options: Section, params: SizeParams) -> Layer:
    coords, classes, n = options.int("coords", 4), options.int("classes", 20), options.int("num", 1)
    if coords < 4 or classes < 1 or n < 1:
        raise options.error(
            f"need coords >= 4, classes >= 1, num >= 1; got {coords}, {classes}, {n}",
            "coords" if coords < 4 else "classes" if classes < 1 else "num",
        )
    check_channels(
        options,
        params,
        coords + 1 + classes,
        n,
        f"[region] with num={n}, coords={coords} and {classes} classes",
    )
    max_boxes = options.int("max", 30)
    if max_boxes < 1:
        raise options.error(f"max must be >= 1, got {max_boxes}", "max")
    # check_channels made the input h w n (coords + 1 + classes) values: the output's size
    batch, outputs = params.batch, params.inputs
    l = Layer(
        type="region",
        **params.same_shape(),
        n=n,
        classes=classes,
        coords=coords,
        max_boxes=max_boxes,
        truths=max_boxes * (coords + 1),
        log=options.int("log", 0),
        sqrt=options.bool("sqrt", False),
        softmax=options.bool("softmax", False),
        background=options.bool("background", False),
        jitter=options.float("jitter", 0.2),
        rescore=options.bool("rescore", False),
        thresh=options.float("thresh", 0.5),
        classfix=options.int("classfix", 0),
        absolute=options.int("absolute", 0),
        random=options.int("random", 0),
        coord_scale=options.float("coord_scale", 1.0),
        object_scale=options.float("object_scale", 1.0),
        noobject_scale=options.float("noobject_scale", 1.0),
        mask_scale=options.float("mask_scale", 1.0),
        class_scale=options.float("class_scale", 1.0),
        bias_match=options.bool("bias_match", False),
        softmax_tree=None,
        cost=0.0,
        stats={},
    )
    tree_file = find_file(options, options.str("tree", None))
    if tree_file is not None:
        l.softmax_tree = read_tree(tree_file, options)
        if l.softmax_tree.n != classes:
            raise options.error(f"tree has {l.softmax_tree.n} nodes but classes={classes}", "tree")
    l.map = read_map(options)
    l.biases = read_anchors(options, 2 * n)
    l.output = np.zeros((batch, outputs), F32)
    l.delta = np.zeros((batch, outputs), F32)
    l.desc = f"{n} anchors"
    l.gradcheck_gap = HEAD_GAP
    l.forward, l.backward = forward_region, backward_region
    return l


def planes(l, array):
    """(batch, n, coords + 1 + C, h, w) view of a (batch, outputs) buffer."""
    return array.reshape(l.batch, l.n, l.coords + 1 + l.classes, l.h, l.w)


def _softmax(x, out, axis=2):
    np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)


def forward_region(l: Layer, net: Network) -> None:
    np.copyto(l.output, net.input.reshape(l.output.shape))
    out, raw = planes(l, l.output), planes(l, net.input)
    activate(out[:, :, 0:2], "logistic")
    if l.coords > 4:
        activate(out[:, :, 4 : l.coords], "logistic")
    if not l.background:
        activate(out[:, :, l.coords], "logistic")
    first = l.coords + 1
    if l.softmax_tree is not None:
        tree = l.softmax_tree
        for offset, size in zip(tree.group_offset, tree.group_size, strict=True):
            s = slice(first + offset, first + offset + size)
            _softmax(raw[:, :, s], out[:, :, s])
    elif l.softmax:
        s = slice(first - l.background, first + l.classes)
        _softmax(raw[:, :, s], out[:, :, s])
    else:
        activate(out[:, :, first:], "logistic")
    l.delta.fill(0)
    if not net.train or net.truth is None:
        l.cost = 0.0
        return
    _loss(l, net, out, planes(l, l.delta))


def _loss(l, net, out, delta):
    C = l.coords
    truth = net.truth.reshape(l.batch, -1)[:, : l.truths].reshape(l.batch, l.max_boxes, C + 1)
    valid = np.cumprod(truth[:, :, 0] != 0, axis=1).astype(bool)
    anchors = l.biases.reshape(-1, 2)
    pred = decode_boxes(
        out.reshape(-1, C + 1 + l.classes, l.h, l.w),
        np.tile(anchors[:, 0], l.batch),
        np.tile(anchors[:, 1], l.batch),
        l.w,
        l.h,
        l.w,
        l.h,
    ).reshape(l.batch, l.n, l.h, l.w, 4)
    stats = dict(iou=0.0, cat=0.0, obj=0.0, recall=0, count=0, class_count=0)
    images = np.ones(l.batch, bool)
    if l.softmax_tree is not None:  # images with a class-only label train just that
        for b in range(l.batch):
            images[b] = not _class_only(l, out, delta, truth[b], valid[b], b, stats)
    valid &= images[:, None]
    classes = _classes(l, truth[:, :, [0, 1, 2, 3, C]]) if valid.any() else None
    last = int(valid.sum(axis=1).max(initial=0))

    best = np.zeros(pred.shape[:4], F32)
    for t in range(last):
        iou = box_iou(pred, truth[:, None, None, None, t, :4])
        better = (iou > best) & valid[:, t, None, None, None]
        best[better] = iou[better]
    obj = out[:, :, C]
    target = F32(1) if l.background else F32(0)
    d_obj = delta[:, :, C]
    d_obj[images] = F32(l.noobject_scale) * (target - obj[images])
    d_obj[(best > F32(l.thresh)) & images[:, None, None, None]] = 0
    if net.seen < PRIOR_SEEN:
        col = np.arange(l.w, dtype=F32)
        row = np.arange(l.h, dtype=F32)[:, None]
        prior = np.empty(pred.shape[1:], F32)  # (n, h, w, 4), the same for every image
        prior[..., 0] = (col + F32(0.5)) / F32(l.w)
        prior[..., 1] = (row + F32(0.5)) / F32(l.h)
        prior[..., 2] = (anchors[:, 0] / F32(l.w))[:, None, None]
        prior[..., 3] = (anchors[:, 1] / F32(l.h))[:, None, None]
        targets = _box_targets(l, prior, anchors[:, None, None, :], col, row)
        for k in range(4):
            delta[images, :, k] = F32(0.01) * (targets[k] - out[images, :, k])

    for t in range(last):
        b = np.flatnonzero(valid[:, t])
        box = truth[b, t, :4]
        i = np.clip((box[:, 0] * F32(l.w)).astype(np.int64), 0, l.w - 1)
        j = np.clip((box[:, 1] * F32(l.h)).astype(np.int64), 0, l.h - 1)
        shapes = pred[b, :, j, i].copy()  # (len(b), n, 4)
        if l.bias_match:
            shapes[..., 2] = anchors[:, 0] / F32(l.w)
            shapes[..., 3] = anchors[:, 1] / F32(l.h)
        shapes[..., :2] = 0
        centred = box.copy()
        centred[:, :2] = 0
        fit = box_iou(shapes, centred[:, None, :])
        a = np.argmax(np.where(fit > 0, fit, F32(-1)), axis=1)
        a[~(fit > 0).any(axis=1)] = 0
        iou = box_iou(pred[b, a, j, i], box)
        scale = F32(l.coord_scale) * (F32(2) - box[:, 2] * box[:, 3])
        targets = _box_targets(l, box, anchors[a], i.astype(F32), j.astype(F32))
        for k in range(4):
            delta[b, a, k, j, i] = scale * (targets[k] - out[b, a, k, j, i])
        if C > 4:
            mask_truth = truth[b, t, 4:C]
            delta[b, a, 4:C, j, i] = F32(l.mask_scale) * (mask_truth - out[b, a, 4:C, j, i])
        p_obj = out[b, a, C, j, i]
        goal = F32(0) if l.background else (iou if l.rescore else F32(1))
        delta[b, a, C, j, i] = F32(l.object_scale) * (goal - p_obj)
        _class_delta(l, out, delta, b, a, j, i, classes[b, t], stats)
        stats["iou"] += float(iou.sum(dtype=np.float64))
        stats["obj"] += float(p_obj.sum(dtype=np.float64))
        stats["recall"] += int((iou > 0.5).sum())
        stats["count"] += b.size
        stats["class_count"] += b.size
    flat = l.delta.reshape(-1)
    l.cost = float(np.dot(flat, flat))
    count = stats["count"]
    l.stats = {
        "avg_iou": _ratio(stats["iou"], count),
        "avg_class_prob": _ratio(stats["cat"], stats["class_count"]),
        "avg_obj_pos": _ratio(stats["obj"], count),
        "avg_obj_all": float(obj.sum(dtype=np.float64)) / obj.size,
        "avg_recall_iou_gt_0.5": _ratio(stats["recall"], count),
        "count": count,
    }


def _box_targets(l, box, anchor, i, j):
    """darknet's delta_region_box targets:
    (x w - i, y h - j, ln(w w_grid / aw), ln(h h_grid / ah))."""
    return (
        box[..., 0] * F32(l.w) - i,
        box[..., 1] * F32(l.h) - j,
        np.log(box[..., 2] * F32(l.w) / anchor[..., 0]),
        np.log(box[..., 3] * F32(l.h) / anchor[..., 1]),
    )


def _class_delta(l, out, delta, b, a, j, i, cls, stats):
    first, scale = l.coords + 1, F32(l.class_scale)
    if l.softmax_tree is not None:
        for k in range(b.size):
            stats["cat"] += _tree_class_delta(
                l,
                out[b[k], a[k], first:, j[k], i[k]],
                delta[b[k], a[k], first:, j[k], i[k]],
                cls[k],
            )
        return
    already = (delta[b, a, first, j, i] != 0) if not l.softmax else np.zeros(b.size, bool)
    full = ~already
    fb, fa, fj, fi, fc = b[full], a[full], j[full], i[full], cls[full]
    target = np.zeros((fb.size, l.classes), F32)
    target[np.arange(fb.size), fc] = 1
    delta[fb, fa, first:, fj, fi] = scale * (target - out[fb, fa, first:, fj, fi])
    stats["cat"] += float(out[fb, fa, first + fc, fj, fi].sum(dtype=np.float64))
    sb, sa, sj, si, sc = b[already], a[already], j[already], i[already], cls[already]
    delta[sb, sa, first + sc, sj, si] = scale * (1 - out[sb, sa, first + sc, sj, si])


def _tree_class_delta(l, probs, delta, cls):
    """Train class ``cls`` and each ancestor against its group; returns P(cls) along the path."""
    tree, scale, p = l.softmax_tree, F32(l.class_scale), 1.0
    while cls >= 0:
        p *= float(probs[cls])
        g = tree.group[cls]
        s = slice(tree.group_offset[g], tree.group_offset[g] + tree.group_size[g])
        delta[s] = scale * (0 - probs[s])
        delta[cls] = scale * (1 - probs[cls])
        cls = tree.parent[cls]
    return p


def _class_only(l, out, delta, truth, valid, b, stats):
    """A tree label without a box (x, y > 100000): train its class at the slot
    most confident in it, no-object elsewhere. True if the image had one."""
    C = l.coords
    for t in np.flatnonzero(valid):
        if not (truth[t, 0] > 100000 and truth[t, 1] > 100000):
            continue
        cls = int(truth[t, C])
        if l.map is not None:
            cls = int(l.map[cls])
        obj = out[b, :, C]
        delta[b, :, C] = F32(l.noobject_scale) * (0 - obj)
        p = obj.copy()
        node = cls
        while node >= 0:
            p *= out[b, :, C + 1 + node]
            node = l.softmax_tree.parent[node]
        flat = p.reshape(-1)
        best = int(np.argmax(np.where(flat > 0, flat, -1))) if (flat > 0).any() else 0
        a, rest = divmod(best, l.h * l.w)
        j, i = divmod(rest, l.w)
        stats["cat"] += _tree_class_delta(
            l, out[b, a, C + 1 :, j, i], delta[b, a, C + 1 :, j, i], cls
        )
        delta[b, a, C, j, i] = 0
        stats["class_count"] += 1
        return True
    return False


def backward_region(l: Layer, net: Network) -> None:
    """darknet's GPU backward: logistic derivative on x, y, mask and obj, then add."""
    out, delta = planes(l, l.output), planes(l, l.delta)
    logistic = [0, 1] + list(range(4, l.coords)) + ([] if l.background else [l.coords])
    y = out[:, :, logistic]
    delta[:, :, logistic] *= y * (1 - y)
    if net.delta is not None:
        axpy(1, l.delta, net.delta)
