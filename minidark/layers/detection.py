"""[detection]: the YOLOv1 head (detection_layer.c).

Input per image, side S, n boxes per cell, C classes (inputs = S^2 (C + n
(1 + coords))): S^2 C class values (cell-major), S^2 n confidences, S^2 n
coords box values (x, y: the centre's offset inside its cell; w, h:
fractions of the image, or their square roots with ``sqrt``). Forward
copies the input (softmax over each cell's classes with ``softmax=1``).

Loss (train mode; truth per cell: is_obj, one-hot class (C), x, y, w, h),
``delta`` = scale (target - output), the gradient of
``sum scale/2 (target - output)^2``:

* every confidence: ``noobject_scale (0 - conf)``;
* object cells: classes ``class_scale (t_c - p_c)``; the responsible box is
  the one with the largest IoU with the truth (boxes compared as ``(x/S,
  y/S, w^2, h^2)`` with sqrt), or, while no box overlaps at all, the one
  with the smallest RMSE; ``forced`` picks by truth area, ``random`` (while
  seen < 64000) at random. Its confidence gets ``object_scale (1 - conf)``
  (``(iou - conf)`` with ``rescore``, iou held constant), its coordinates
  ``coord_scale (t - out)`` with ``sqrt(t_w)``, ``sqrt(t_h)`` under sqrt.

``cost = sum(delta^2)`` (darknet's final value). Backward adds the delta.

cfg keys: ``coords`` (1), ``classes`` (1), ``rescore`` (0), ``num`` (1),
``side`` (7), ``softmax`` (0), ``sqrt`` (0), ``max`` (90), ``coord_scale``,
``object_scale``, ``noobject_scale``, ``class_scale`` (1), ``forced`` (0),
``jitter`` (.2), ``random`` (0), ``reorg`` (0; darknet's reorg code is
commented out). Deliberate deviations: a size mismatch is a ConfigError
(darknet asserts); when no box overlaps and every RMSE is >= 20 darknet
indexes box -1 (out of bounds), minidark takes the smallest RMSE anyway;
``random`` draws from the network's generator, not C's ``rand()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.blas import axpy
from ..kernels.boxes import box_iou, box_rmse
from ..layer import Layer
from ..registry import register_layer
from .yolo import HEAD_GAP, _ratio

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

F32 = np.float32
RANDOM_SEEN = 64000


@register_layer("detection")
def make_detection(options: Section, params: SizeParams) -> Layer:
    coords, classes = options.int("coords", 1), options.int("classes", 1)
    rescore, n, side = options.bool("rescore", False), options.int("num", 1), options.int("side", 7)
    if coords < 4 or classes < 1 or n < 1 or side < 1:
        raise options.error(
            f"need coords >= 4, classes, num, side >= 1; got {coords}, {classes}, {n}, {side}",
            "coords" if coords < 4 else "classes" if classes < 1 else "num" if n < 1 else "side",
        )
    per_cell = classes + n * (1 + coords)
    if params.inputs != side * side * per_cell:
        raise options.error(
            f"the input has {params.inputs} values but side={side}, num={n}, "
            f"classes={classes}, coords={coords} need {side}^2 x {per_cell} = "
            f"{side * side * per_cell}",
            "side",
        )
    forced = options.int("forced", 0)
    if forced and n < 2:
        raise options.error("forced=1 picks box 0 or 1 and needs num >= 2", "forced")
    batch, outputs = params.batch, params.inputs
    l = Layer(
        type="detection",
        batch=batch,
        inputs=outputs,
        outputs=outputs,
        n=n,
        classes=classes,
        coords=coords,
        rescore=rescore,
        side=side,
        h=side,
        w=side,
        c=per_cell,
        out_h=side,
        out_w=side,
        out_c=per_cell,
        truths=side * side * (1 + coords + classes),
        softmax=options.bool("softmax", False),
        sqrt=options.bool("sqrt", False),
        max_boxes=options.int("max", 90),
        coord_scale=options.float("coord_scale", 1.0),
        forced=forced,
        object_scale=options.float("object_scale", 1.0),
        noobject_scale=options.float("noobject_scale", 1.0),
        class_scale=options.float("class_scale", 1.0),
        jitter=options.float("jitter", 0.2),
        random=options.int("random", 0),
        reorg=options.int("reorg", 0),
        cost=0.0,
        stats={},
    )
    l.output = np.zeros((batch, outputs), F32)
    l.delta = np.zeros((batch, outputs), F32)
    l.desc = f"side {side}, {n} boxes"
    l.gradcheck_gap = HEAD_GAP
    l.forward, l.backward = forward_detection, backward_detection
    return l


def parts(l, array):
    """(classes (B, S^2, C), confidences (B, S^2, n), coords (B, S^2, n, coords)) views."""
    cells = l.side * l.side
    flat = array.reshape(l.batch, l.outputs)
    return (
        flat[:, : cells * l.classes].reshape(l.batch, cells, l.classes),
        flat[:, cells * l.classes : cells * (l.classes + l.n)].reshape(l.batch, cells, l.n),
        flat[:, cells * (l.classes + l.n) :].reshape(l.batch, cells, l.n, l.coords),
    )


def forward_detection(l: Layer, net: Network) -> None:
    np.copyto(l.output, net.input.reshape(l.output.shape))
    probs, conf, coords = parts(l, l.output)
    if l.softmax:
        np.subtract(probs, probs.max(axis=2, keepdims=True), out=probs)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=2, keepdims=True)
    l.delta.fill(0)
    if not net.train or net.truth is None:
        l.cost = 0.0
        return
    d_probs, d_conf, d_coords = parts(l, l.delta)
    cells = l.side * l.side
    truth = net.truth.reshape(l.batch, cells, 1 + l.classes + l.coords)
    is_obj = truth[:, :, 0].astype(np.int64) != 0  # C truncation of the flag
    np.multiply(F32(l.noobject_scale), -conf, out=d_conf)
    b, k = np.nonzero(is_obj)
    t_class = truth[b, k, 1 : 1 + l.classes]
    d_probs[b, k] = F32(l.class_scale) * (t_class - probs[b, k])

    t_box = truth[b, k, 1 + l.classes : 1 + l.classes + 4].copy()
    t_box[:, :2] /= F32(l.side)
    out_box = coords[b, k, :, :4].copy()  # (m, n, 4)
    out_box[..., :2] /= F32(l.side)
    if l.sqrt:
        out_box[..., 2:] *= out_box[..., 2:]
    iou = box_iou(out_box, t_box[:, None, :])
    rmse = box_rmse(out_box, t_box[:, None, :])
    overlap = np.where(iou > 0, iou, F32(-1))
    best = np.where((iou > 0).any(axis=1), np.argmax(overlap, axis=1), np.argmin(rmse, axis=1))
    if l.forced:
        best = np.where(t_box[:, 2] * t_box[:, 3] < F32(0.1), 1, 0)
    if l.random and net.seen < RANDOM_SEEN:
        best = net.rng.integers(0, l.n, best.size)
    rows = np.arange(b.size)
    chosen_iou = iou[rows, best]
    p = conf[b, k, best]
    goal = chosen_iou if l.rescore else F32(1)
    d_conf[b, k, best] = F32(l.object_scale) * (goal - p)
    target = truth[b, k, 1 + l.classes : 1 + l.classes + 4].copy()
    if l.sqrt:
        target[:, 2:] = np.sqrt(target[:, 2:])
    d_coords[b, k, best, :4] = F32(l.coord_scale) * (target - coords[b, k, best, :4])

    flat = l.delta.reshape(-1)
    l.cost = float(np.dot(flat, flat))
    count = int(b.size)
    true_class = t_class != 0
    l.stats = {
        "avg_iou": _ratio(float(chosen_iou.sum(dtype=np.float64)), count),
        "avg_true_class_prob": _ratio(float(probs[b, k][true_class].sum(dtype=np.float64)), count),
        "avg_all_class_prob": _ratio(float(probs[b, k].sum(dtype=np.float64)), count * l.classes),
        "avg_obj_pos": _ratio(float(p.sum(dtype=np.float64)), count),
        "avg_obj_all": float(conf.sum(dtype=np.float64)) / conf.size,
        "count": count,
    }


def backward_detection(l: Layer, net: Network) -> None:
    if net.delta is not None:
        axpy(1, l.delta, net.delta)
