"""Boxes: IoU, decoding the detection heads, NMS (darknet's box.c and the
``get_*_detections`` functions of yolo_layer.c, region_layer.c,
detection_layer.c and network.c).

A box is ``(x, y, w, h)``: centre and size, relative to the image unless a
caller asks for pixels. Arrays of boxes have shape ``(..., 4)``; everything
broadcasts and runs in float32, as darknet's ``float`` code does.

IoU, per axis ``overlap = min(right edges) - max(left edges)``::

    inter = 0 if overlap_x < 0 or overlap_y < 0 else overlap_x * overlap_y
    iou   = inter / (w_a h_a + w_b h_b - inter)        (NaN for two empty boxes)

Decoding (cell column i, row j, grid lw x lh, network input net_w x net_h):

* ``[yolo]``: ``x = (i + sx)/lw, y = (j + sy)/lh, w = e^tw aw[mask[a]]/net_w,
  h = e^th ah[mask[a]]/net_h`` (anchors in input pixels); only slots with
  objectness > thresh; ``prob_c = obj * p_c`` if above thresh, else 0;
* ``[region]``: the same with anchors in grid cells (``/lw``, ``/lh``);
  every slot; objectness = obj if above thresh, else 0; with a ``tree=``
  hierarchy the probabilities are made absolute first and either mapped
  (``map=``, 200 entries) or reduced to the top prediction at ``hier_thresh``;
* ``[detection]`` (YOLOv1): ``x = (px + col)/side``, ``w = pw^2`` with sqrt;
  objectness = confidence (not thresholded); ``prob_c = conf * P(c)``.

``correct_boxes`` undoes the letterbox: with the letterboxed size
``(new_w, new_h)`` of a ``w x h`` image in a ``net_w x net_h`` input::

    x' = (x - (net_w - new_w) / (2 net_w)) * net_w / new_w,   w' = w * net_w / new_w

NMS follows ``do_nms_sort`` (per class, greedy in descending probability:
every kept box zeroes that class's probability of later boxes with IoU >
thresh) and ``do_nms_obj`` (one pass by objectness; a kept box zeroes the
objectness and every probability of later overlapping ones). Entries with
objectness 0 take no part. darknet sorts with ``qsort`` (tie order
undefined) and reorders its array; minidark sorts stably and keeps the
original order of the detections, only changing their scores.
"""

import numpy as np

F32 = np.float32


# ---------------------------------------------------------------------- box algebra
def box_iou(a, b):
    """IoU of broadcastable ``(..., 4)`` box arrays (float32, darknet's formula)."""
    a = np.asarray(a, F32)
    b = np.asarray(b, F32)
    ow = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    oh = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    inter = np.where((ow < 0) | (oh < 0), F32(0), ow * oh)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def _overlap(x1, w1, x2, w2):
    half = F32(2)
    left = np.maximum(x1 - w1 / half, x2 - w2 / half)
    right = np.minimum(x1 + w1 / half, x2 + w2 / half)
    return right - left


def box_rmse(a, b):
    """sqrt of the summed squared differences of (x, y, w, h)."""
    d = np.asarray(a, F32) - np.asarray(b, F32)
    return np.sqrt((d * d).sum(axis=-1))


def letterbox_size(w, h, net_w, net_h):
    """(new_w, new_h) of a ``w x h`` image letterboxed into ``net_w x net_h``
    (darknet's integer rule, shared by letterbox_image and correct_*_boxes)."""
    if F32(net_w) / F32(w) < F32(net_h) / F32(h):
        return net_w, (h * net_w) // w
    return (w * net_h) // h, net_h


def correct_boxes(boxes, w, h, net_w, net_h, relative=True, letterbox=True):
    """Map boxes from the (letterboxed) network input back to the image, in place.

    ``relative=False`` gives pixels of the ``w x h`` image. With
    ``letterbox=False`` the input was a plain resize: only the pixel scaling
    applies.
    """
    if letterbox:
        new_w, new_h = letterbox_size(w, h, net_w, net_h)
    else:
        new_w, new_h = net_w, net_h
    # darknet: offsets in double ((netw - new_w)/2./netw), ratios in float
    boxes[:, 0] = (boxes[:, 0] - (net_w - new_w) / 2.0 / net_w) / (F32(new_w) / F32(net_w))
    boxes[:, 1] = (boxes[:, 1] - (net_h - new_h) / 2.0 / net_h) / (F32(new_h) / F32(net_h))
    boxes[:, 2] *= F32(net_w) / F32(new_w)
    boxes[:, 3] *= F32(net_h) / F32(new_h)
    if not relative:
        boxes[:, (0, 2)] *= F32(w)
        boxes[:, (1, 3)] *= F32(h)
    return boxes


# ------------------------------------------------------------------ detections
class Detections:
    """darknet's ``detection`` array as columns: ``bbox`` (N, 4), ``objectness``
    (N,), ``prob`` (N, classes), and ``mask`` (N, coords - 4) for region layers
    with coords > 4 (else None)."""

    def __init__(self, bbox, objectness, prob, mask=None):
        self.bbox = np.ascontiguousarray(bbox, F32).reshape(-1, 4)
        self.objectness = np.ascontiguousarray(objectness, F32).reshape(-1)
        self.prob = np.ascontiguousarray(prob, F32)
        if self.prob.ndim != 2:
            self.prob = self.prob.reshape(len(self.objectness), -1)
        self.mask = mask

    def __len__(self):
        return len(self.objectness)

    @property
    def classes(self):
        return self.prob.shape[1]

    @classmethod
    def concatenate(cls, parts, classes):
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, classes)))
        prob = np.zeros((sum(len(p) for p in parts), classes), F32)
        row = 0
        for p in parts:  # heads with fewer classes fill the first columns
            prob[row : row + len(p), : p.classes] = p.prob[:, :classes]
            row += len(p)
        return cls(
            np.concatenate([p.bbox for p in parts]),
            np.concatenate([p.objectness for p in parts]),
            prob,
        )

    def __repr__(self):
        return f"<Detections {len(self)} boxes, {self.classes} classes>"


def _planes(l, batch_index=0):
    """A head's output for one image as (n, entries, lh, lw)."""
    per = l.outputs // (l.n * l.h * l.w)
    return l.output.reshape(l.batch, l.n, per, l.h, l.w)[batch_index]


def _grid(lh, lw):
    return (np.arange(lw, dtype=F32)[None, None, :], np.arange(lh, dtype=F32)[None, :, None])


def decode_boxes(planes, anchors_w, anchors_h, lw, lh, div_w, div_h):
    """Boxes (n, lh, lw, 4) of planes (n, >=4, lh, lw) whose x, y are already
    logistic: ``((i + x)/lw, (j + y)/lh, e^tw aw/div_w, e^th ah/div_h)``."""
    col, row = _grid(lh, lw)
    boxes = np.empty(planes.shape[:1] + (lh, lw, 4), F32)
    boxes[..., 0] = (col + planes[:, 0]) / F32(lw)
    boxes[..., 1] = (row + planes[:, 1]) / F32(lh)
    with np.errstate(over="ignore"):
        boxes[..., 2] = (
            np.exp(planes[:, 2]) * np.asarray(anchors_w, F32)[:, None, None] / F32(div_w)
        )
        boxes[..., 3] = (
            np.exp(planes[:, 3]) * np.asarray(anchors_h, F32)[:, None, None] / F32(div_h)
        )
    return boxes


def yolo_boxes(l, net_w, net_h, batch_index=0):
    """Every predicted box of a [yolo] layer for one image: (n, lh, lw, 4)."""
    anchors = l.biases.reshape(-1, 2)[l.mask]
    return decode_boxes(
        _planes(l, batch_index), anchors[:, 0], anchors[:, 1], l.w, l.h, net_w, net_h
    )


def region_boxes(l, batch_index=0):
    """Every predicted box of a [region] layer for one image: (n, lh, lw, 4)."""
    anchors = l.biases.reshape(-1, 2)[: l.n]
    return decode_boxes(_planes(l, batch_index), anchors[:, 0], anchors[:, 1], l.w, l.h, l.w, l.h)


def get_yolo_detections(
    l, w, h, net_w, net_h, thresh, relative=True, letterbox=True, batch_index=0
):
    """Slots with objectness > thresh, cells row-major and anchors inner (darknet's order)."""
    planes = _planes(l, batch_index)  # (n, 5 + C, lh, lw)
    boxes = yolo_boxes(l, net_w, net_h, batch_index)
    obj = planes[:, 4]
    # darknet's order: cell (row-major) outer, anchor inner
    keep = (obj > F32(thresh)).transpose(1, 2, 0)  # (lh, lw, n)
    objectness = obj.transpose(1, 2, 0)[keep]
    prob = planes[:, 5:].transpose(2, 3, 0, 1)[keep] * objectness[:, None]
    prob[prob <= F32(thresh)] = 0
    bbox = boxes.transpose(1, 2, 0, 3)[keep]
    correct_boxes(bbox, w, h, net_w, net_h, relative, letterbox)
    return Detections(bbox, objectness, prob)


def get_region_detections(
    l,
    w,
    h,
    net_w,
    net_h,
    thresh,
    hier_thresh=0.5,
    class_map=None,
    relative=True,
    letterbox=True,
    batch_index=0,
):
    """All n * lh * lw slots, anchor-major (darknet's index ``a * lw * lh + cell``)."""
    planes = _planes(l, batch_index)  # (n, coords + 1 + C, lh, lw)
    count = l.n * l.h * l.w
    bbox = region_boxes(l, batch_index).reshape(count, 4)
    scale = np.ones(count, F32) if l.background else planes[:, l.coords].reshape(count).copy()
    objectness = np.where(scale > F32(thresh), scale, F32(0))
    first = l.coords + (0 if l.background else 1)
    classes = planes[:, first : first + l.classes].transpose(0, 2, 3, 1).reshape(count, l.classes)
    tree = l.softmax_tree
    if tree is not None:
        absolute = hierarchy_absolute(classes, tree)
        if class_map is not None:
            picked = absolute[:, np.asarray(class_map[:200])] * scale[:, None]
            prob = np.where(picked > F32(thresh), picked, F32(0))
        else:
            prob = np.zeros((count, l.classes), F32)
            top = hierarchy_top_prediction(absolute, tree, hier_thresh)
            prob[np.arange(count), top] = np.where(scale > F32(thresh), scale, F32(0))
    else:
        prob = classes * scale[:, None]
        prob = np.where((prob > F32(thresh)) & (objectness[:, None] != 0), prob, F32(0))
    mask = None
    if l.coords > 4:
        mask = planes[:, 4 : l.coords].transpose(0, 2, 3, 1).reshape(count, l.coords - 4).copy()
    correct_boxes(bbox, w, h, net_w, net_h, relative, letterbox)
    return Detections(bbox, objectness, prob, mask)


def get_detection_detections(l, w, h, thresh, batch_index=0):
    """All side^2 * n boxes of a [detection] (YOLOv1) layer, cell-major, in
    pixels of a ``w x h`` image (w = h = 1 gives relative boxes). No letterbox
    correction: YOLOv1 runs on a plain resize."""
    side, n, classes = l.side, l.n, l.classes
    cells = side * side
    out = l.output.reshape(l.batch, -1)[batch_index]
    probs = out[: cells * classes].reshape(cells, classes)
    conf = out[cells * classes : cells * (classes + n)].reshape(cells, n)
    coords = out[cells * (classes + n) :].reshape(cells, n, -1)[..., :4]
    col = (np.arange(cells) % side).astype(F32)[:, None]
    row = (np.arange(cells) // side).astype(F32)[:, None]
    bbox = np.empty((cells, n, 4), F32)
    bbox[..., 0] = (coords[..., 0] + col) / F32(side) * F32(w)
    bbox[..., 1] = (coords[..., 1] + row) / F32(side) * F32(h)
    power = 2 if l.sqrt else 1
    bbox[..., 2] = coords[..., 2] ** power * F32(w)
    bbox[..., 3] = coords[..., 3] ** power * F32(h)
    prob = conf[:, :, None] * probs[:, None, :]  # (cells, n, classes)
    prob = np.where(prob > F32(thresh), prob, F32(0))
    return Detections(bbox.reshape(-1, 4), conf.reshape(-1), prob.reshape(-1, classes))


def get_network_boxes(
    net,
    w,
    h,
    thresh=0.5,
    hier_thresh=0.5,
    class_map=None,
    relative=True,
    letterbox=True,
    batch_index=0,
):
    """darknet's get_network_boxes: the detections of every head, layer by layer,
    for image ``batch_index`` of the batch, in the coordinates of the original ``w x h`` image."""
    parts, classes = [], 0
    for l in net.layers:
        if l.type == "yolo":
            parts.append(
                get_yolo_detections(l, w, h, net.w, net.h, thresh, relative, letterbox, batch_index)
            )
        elif l.type == "region":
            parts.append(
                get_region_detections(
                    l,
                    w,
                    h,
                    net.w,
                    net.h,
                    thresh,
                    hier_thresh,
                    class_map,
                    relative,
                    letterbox,
                    batch_index,
                )
            )
        elif l.type == "detection":
            parts.append(
                get_detection_detections(
                    l, 1 if relative else w, 1 if relative else h, thresh, batch_index
                )
            )
        else:
            continue
        classes = l.classes
    return Detections.concatenate(parts, classes)


# --------------------------------------------------------------------- hierarchy
def hierarchy_absolute(probs, tree):
    """P(node) *= P(parent) in file order (darknet's hierarchy_predictions):
    (N, tree.n) conditional -> absolute probabilities."""
    probs = np.array(probs, F32, copy=True)
    for j, parent in enumerate(tree.parent):
        if parent >= 0:
            probs[:, j] *= probs[:, parent]
    return probs


def hierarchy_top_prediction(probs, tree, thresh):
    """darknet's hierarchy_top_prediction for every row of absolute ``probs``:
    descend from group 0 through each group's arg-max while the running
    product ``p * max`` stays above ``thresh``."""
    rows = np.arange(len(probs))
    result = np.zeros(len(probs), np.int64)
    p = np.ones(len(probs), F32)
    group = np.zeros(len(probs), np.int64)
    active = np.ones(len(probs), bool)
    child = np.asarray(tree.child)
    parent = np.asarray(tree.parent)
    offsets = np.asarray(tree.group_offset)
    sizes = np.asarray(tree.group_size)
    while active.any():
        idx = rows[active]
        best, best_i = np.zeros(len(idx), F32), np.zeros(len(idx), np.int64)
        for g in np.unique(group[idx]):  # one arg-max per group present (a tree walk)
            sel = group[idx] == g
            block = probs[idx[sel], offsets[g] : offsets[g] + sizes[g]]
            arg = np.argmax(block, axis=1)  # first maximum, as strict '>'
            value = block[np.arange(len(arg)), arg]
            positive = value > 0  # darknet starts from max 0, index 0
            best[sel] = np.where(positive, value, F32(0))
            best_i[sel] = np.where(positive, offsets[g] + arg, 0)
        go = p[idx] * best > F32(thresh)
        leaf = go & (child[best_i] < 0)
        stop_root = ~go & (group[idx] == 0)
        stop_inner = ~go & (group[idx] != 0)
        result[idx[leaf]] = best_i[leaf]
        result[idx[stop_root]] = best_i[stop_root]
        result[idx[stop_inner]] = parent[offsets[group[idx[stop_inner]]]]
        cont = go & ~leaf
        p[idx[cont]] *= best[cont]
        group[idx[cont]] = child[best_i[cont]]
        active[idx[~cont]] = False
    return result


# ---------------------------------------------------------------------------- NMS
def _greedy_keep(rank, first, second):
    """Greedy NMS on ranked boxes (0 = highest score; -1 = not a candidate),
    given the overlapping pairs ``(first[k], second[k])`` (IoU > thresh): a box
    survives when no earlier survivor overlaps it. Returns a boolean mask over
    the ranks; the loop runs once per box that overlaps a later one."""
    m = int(rank.max(initial=-1)) + 1
    alive = np.ones(m, bool)
    ra, rb = rank[first], rank[second]
    both = (ra >= 0) & (rb >= 0)
    ra, rb = ra[both], rb[both]
    winner, loser = np.minimum(ra, rb), np.maximum(ra, rb)
    order = np.argsort(winner, kind="stable")
    winner, loser = winner[order], loser[order]
    starts = np.flatnonzero(np.r_[True, winner[1:] != winner[:-1]]) if winner.size else []
    bounds = list(starts) + [winner.size]
    for k in range(len(starts)):
        if alive[winner[bounds[k]]]:
            alive[loser[bounds[k] : bounds[k + 1]]] = False
    return alive


def _overlapping_pairs(boxes, thresh):
    """Index pairs (i < j) of boxes with IoU > thresh, computed once for all classes."""
    over = box_iou(boxes[:, None, :], boxes[None, :, :]) > F32(thresh)
    return np.nonzero(np.triu(over, 1))


def _ranks(count, order):
    rank = np.full(count, -1, np.int64)
    rank[order] = np.arange(order.size)
    return rank


def do_nms_sort(dets, classes=None, thresh=0.45):
    """darknet's do_nms_sort, in place on a Detections: per class, in descending
    probability, each surviving box zeroes that class's probability of every
    later box with IoU > thresh. Entries with objectness 0 take no part."""
    classes = dets.classes if classes is None else classes
    active = np.flatnonzero(dets.objectness != 0)
    scored = active[(dets.prob[active, :classes] != 0).any(axis=1)]  # boxes NMS can change
    if scored.size < 2:
        return dets
    first, second = _overlapping_pairs(dets.bbox[scored], thresh)
    if not first.size:
        return dets
    for k in range(classes):
        p = dets.prob[scored, k]
        candidates = np.flatnonzero(p != 0)
        if candidates.size < 2:
            continue
        order = candidates[np.argsort(-p[candidates], kind="stable")]
        keep = _greedy_keep(_ranks(scored.size, order), first, second)
        dets.prob[scored[order[~keep]], k] = 0
    return dets


def do_nms_obj(dets, classes=None, thresh=0.45):
    """darknet's do_nms_obj, in place: one pass in descending objectness; a
    surviving box zeroes the objectness and every probability of later boxes
    with IoU > thresh (class-agnostic)."""
    active = np.flatnonzero(dets.objectness != 0)
    if active.size < 2:
        return dets
    order = np.argsort(-dets.objectness[active], kind="stable")
    first, second = _overlapping_pairs(dets.bbox[active], thresh)
    keep = _greedy_keep(_ranks(active.size, order), first, second)
    order = active[order]
    gone = order[~keep]
    dets.objectness[gone] = 0
    dets.prob[gone] = 0
    return dets
