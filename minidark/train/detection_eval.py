"""Detection evaluation: VOC average precision and COCO mAP@[.5:.95].

Inputs, per image (a list, one entry per image, in a fixed order)::

    detections[i]: (n, 6) rows  class, score, x0, y0, x1, y1
    truths[i]:     (m, 5) rows  class, x0, y0, x1, y1

in any one unit (pixels or relative); IoU is ``area(A & B) / area(A | B)``
without darknet-VOC's +1 pixel (AB's ``detector map`` has none either).

**VOC AP** (``voc_map``, AB's ``detector map``): per class, detections sorted
by score (stable: ties keep their input order, image by image); each takes
its best-IoU truth of the class in its image; IoU > ``iou_thresh`` (strict)
and that truth not yet taken -> TP (it is taken), else FP. ``rec = TP/npos``,
``prec = TP/(TP + FP)``. ``points=0`` (the default: AB's ``detector map``
and VOC2010+, ``reval_voc.py`` with year >= 2010) is the all-point area:
``sum (r[i+1] - r[i]) max_{j > i} p[j]`` over recall steps with the
precision envelope; ``points=11`` is VOC2007's mean over recall
``t = 0, .1, ..., 1`` of ``max(p where r >= t)`` (0 when none); any N
works as AB's ``-points N``. mAP averages **all** classes, a class without
truth counting 0 (AB's rule).

**COCO** (``coco_map``, pycocotools' ``COCOeval`` for bbox, crowd-free, area
range all, ``maxDets`` 100): for each IoU threshold t in .50:.05:.95, per
image and class, the image's detections (stable-sorted by score, first 100)
each take, greedily, the unmatched truth with the highest IoU >= t (ties:
the later truth, as pycocotools); then all images' detections of a class
are stable-sorted by score, precision made a non-increasing envelope, and
read at the 101 recalls 0:.01:1 (first rank reaching each recall; 0
beyond the last); AP is their mean. A class without truth is left out of
the mean (pycocotools' -1). mAP@[.5:.95] is the mean over thresholds and
classes; AP50 and AP75 are its t = .5 and .75 slices.
"""

import numpy as np

COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALLS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = 100


def iou_matrix(a, b):
    """IoU of every corner box in a (n, 4) with every one in b (m, 4): (n, m) float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _as_rows(rows, width):
    return np.asarray(rows, np.float64).reshape(-1, width)


# ------------------------------------------------------------------------ VOC
def voc_ap(recall, precision, points=0):
    """Area under the precision/recall curve: all-point (points=0) or the mean
    of the best precision at ``points`` evenly spaced recalls (11: VOC2007)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if points:
        total = 0.0
        for t in np.linspace(0, 1, points):
            above = precision[recall >= t]
            total += above.max() if above.size else 0.0
        return total / points
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def voc_class(detections, truths, cls, iou_thresh=0.5):
    """(recall, precision, npos, tp, fp) of one class, VOC's greedy matching."""
    scores, image_of, matched, npos = [], [], [], 0
    for i, (dets, gts) in enumerate(zip(detections, truths, strict=True)):
        dets, gts = _as_rows(dets, 6), _as_rows(gts, 5)
        dets, gts = dets[dets[:, 0] == cls], gts[gts[:, 0] == cls]
        npos += len(gts)
        if not len(dets):
            continue
        best = np.full(len(dets), -1, np.int64)
        if len(gts):
            iou = iou_matrix(dets[:, 2:6], gts[:, 1:5])
            arg = iou.argmax(axis=1)
            best = np.where(iou[np.arange(len(dets)), arg] > iou_thresh, arg, -1)
        scores.append(dets[:, 1])
        image_of.append(np.full(len(dets), i))
        matched.append(best)
    if not scores:
        return np.zeros(0), np.zeros(0), npos, 0, 0
    scores, image_of, matched = map(np.concatenate, (scores, image_of, matched))
    order = np.argsort(-scores, kind="stable")
    taken, tp = set(), np.zeros(len(order))
    for rank, k in enumerate(order):
        if matched[k] >= 0 and (image_of[k], matched[k]) not in taken:
            taken.add((image_of[k], matched[k]))
            tp[rank] = 1
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1 - tp)
    recall = tp_sum / npos if npos else np.zeros_like(tp_sum)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    return recall, precision, npos, int(tp_sum[-1]), int(fp_sum[-1])


def voc_map(detections, truths, classes, iou_thresh=0.5, points=0):
    """{'ap': per-class AP list, 'map': mean over all classes, 'tp', 'fp', 'npos'}."""
    aps, tps, fps, npos = [], [], [], []
    for cls in range(classes):
        recall, precision, n, tp, fp = voc_class(detections, truths, cls, iou_thresh)
        aps.append(voc_ap(recall, precision, points) if n else 0.0)
        tps.append(tp)
        fps.append(fp)
        npos.append(n)
    return {
        "ap": aps,
        "map": float(np.mean(aps)) if aps else 0.0,
        "tp": tps,
        "fp": fps,
        "npos": npos,
    }


# ----------------------------------------------------------------------- COCO
def _coco_image(dets, gts, thresholds):
    """pycocotools' evaluateImg for one image and class: (scores, matched (T, n))."""
    order = np.argsort(-dets[:, 1], kind="stable")[:MAX_DETS]
    dets = dets[order]
    matched = np.zeros((len(thresholds), len(dets)), bool)
    if len(gts) and len(dets):
        iou = iou_matrix(dets[:, 2:6], gts[:, 1:5])
        for t, thresh in enumerate(thresholds):
            free = np.ones(len(gts), bool)
            limit = min(thresh, 1 - 1e-10)
            for d in range(len(dets)):
                candidates = np.where(free & (iou[d] >= limit), iou[d], -1.0)
                if candidates.max() < 0:
                    continue
                g = len(gts) - 1 - int(np.argmax(candidates[::-1]))  # ties: the later truth
                free[g] = False
                matched[t, d] = True
    return dets[:, 1], matched


def coco_map(detections, truths, classes, thresholds=COCO_IOUS):
    """pycocotools' bbox AP: {'ap': (T, classes) with -1 for classes without
    truth, 'map' (mean over T and classes), 'ap50', 'ap75', 'per_class' (mean over T)}."""
    thresholds = np.asarray(thresholds, np.float64)
    ap = -np.ones((len(thresholds), classes))
    for cls in range(classes):
        scores, matched, npos = [], [], 0
        for dets, gts in zip(detections, truths, strict=True):
            dets, gts = _as_rows(dets, 6), _as_rows(gts, 5)
            dets, gts = dets[dets[:, 0] == cls], gts[gts[:, 0] == cls]
            npos += len(gts)
            if len(dets):
                s, m = _coco_image(dets, gts, thresholds)
                scores.append(s)
                matched.append(m)
        if npos == 0:
            continue
        if not scores:
            ap[:, cls] = 0
            continue
        scores, matched = np.concatenate(scores), np.concatenate(matched, axis=1)
        order = np.argsort(-scores, kind="mergesort")
        tp = np.cumsum(matched[:, order], axis=1).astype(np.float64)
        fp = np.cumsum(~matched[:, order], axis=1).astype(np.float64)
        for t in range(len(thresholds)):
            recall = tp[t] / npos
            precision = tp[t] / (fp[t] + tp[t] + np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            where = np.searchsorted(recall, COCO_RECALLS, side="left")
            q = np.where(
                where < len(precision), precision[np.minimum(where, len(precision) - 1)], 0.0
            )
            ap[t, cls] = q.mean()
    valid = ap > -1

    def mean(mask_rows):
        values = ap[mask_rows][valid[mask_rows]]
        return float(values.mean()) if values.size else -1.0

    def at(value):
        rows = np.isclose(thresholds, value)
        return mean(rows) if rows.any() else -1.0

    per_class = [float(ap[:, k].mean()) if valid[:, k].all() else -1.0 for k in range(classes)]
    return {
        "ap": ap,
        "map": mean(slice(None)),
        "ap50": at(0.5),
        "ap75": at(0.75),
        "per_class": per_class,
    }


# ------------------------------------------------------------------ from nets
def truth_corners(boxes, w=1.0, h=1.0):
    """``class x y w h`` label rows -> ``class x0 y0 x1 y1`` rows, scaled by (w, h)."""
    boxes = _as_rows(boxes, 5)
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 0]
    out[:, 1], out[:, 3] = (boxes[:, 1] - boxes[:, 3] / 2) * w, (boxes[:, 1] + boxes[:, 3] / 2) * w
    out[:, 2], out[:, 4] = (boxes[:, 2] - boxes[:, 4] / 2) * h, (boxes[:, 2] + boxes[:, 4] / 2) * h
    return out


def detection_rows(dets, w=1.0, h=1.0):
    """darknet Detections (after NMS) -> ``class score x0 y0 x1 y1`` rows, one per
    (box, class) with probability > 0 (what darknet's valid writes), scaled by (w, h)."""
    box, cls = np.nonzero(dets.prob > 0)
    b = dets.bbox[box].astype(np.float64)
    rows = np.empty((len(box), 6))
    rows[:, 0], rows[:, 1] = cls, dets.prob[box, cls]
    rows[:, 2], rows[:, 4] = (b[:, 0] - b[:, 2] / 2) * w, (b[:, 0] + b[:, 2] / 2) * w
    rows[:, 3], rows[:, 5] = (b[:, 1] - b[:, 3] / 2) * h, (b[:, 1] + b[:, 3] / 2) * h
    return rows


def predict_dataset(
    net, dataset, thresh=0.005, nms=0.45, hier_thresh=0.5, limit=None, progress=False, start=0
):
    """Detections of ``net`` on the images ``start .. limit - 1`` of a
    DetectionDataset (all by default), decoded in relative coordinates:
    (detections, truths, sizes) lists as this module takes them (boxes
    relative to the image), plus each image's (w, h). Images go through the
    network ``net.batch`` at a time from ``start``: a share that starts at a
    multiple of ``net.batch`` gives the very bytes the whole run gives."""
    from ..data.image import letterbox_image, load_image, resize_image, uses_letterbox
    from ..kernels.boxes import do_nms_sort, get_network_boxes

    count = len(dataset) if limit is None else min(limit, len(dataset))
    letterbox = uses_letterbox(net)
    detections, truths, sizes = [], [], []
    batch = np.zeros((net.batch, net.inputs), np.float32)
    from tqdm import tqdm

    shown = max(count - start, 0)
    bar = tqdm(total=shown, unit="img", disable=not progress, leave=False, desc="evaluating")
    for first in range(start, count, net.batch):
        rows = range(first, min(first + net.batch, count))
        chunk_sizes = []
        for k, index in enumerate(rows):
            im = load_image(dataset.paths[index], net.c)
            chunk_sizes.append((im.shape[2], im.shape[1]))
            sized = (
                letterbox_image(im, net.w, net.h) if letterbox else resize_image(im, net.w, net.h)
            )
            batch[k] = sized.reshape(-1)
        net.forward(batch, train=False)
        for k, index in enumerate(rows):
            w, h = chunk_sizes[k]
            dets = get_network_boxes(
                net, w, h, thresh, hier_thresh, relative=True, letterbox=letterbox, batch_index=k
            )
            if nms:
                do_nms_sort(dets, dets.classes, nms)
            detections.append(detection_rows(dets))
            truths.append(truth_corners(dataset.boxes[index]))
            sizes.append((w, h))
        bar.update(len(rows))
    bar.close()
    return detections, truths, sizes


def evaluate_detector(
    net, dataset, classes, thresh=0.005, nms=0.45, points=0, limit=None, progress=False
):
    """mAP@0.5 (VOC, ``points``) and COCO mAP@[.5:.95] of ``net`` on ``dataset``."""
    detections, truths, _ = predict_dataset(
        net, dataset, thresh, nms, limit=limit, progress=progress
    )
    return score_detections(detections, truths, classes, points)


def score_detections(detections, truths, classes, points=0):
    """evaluate_detector's result from per-image (detections, truths) lists
    (predict_dataset's, or several shares of them joined in image order)."""
    voc = voc_map(detections, truths, classes, 0.5, points)
    coco = coco_map(detections, truths, classes)
    return {
        "map50": voc["map"],
        "map": coco["map"],
        "ap50_coco": coco["ap50"],
        "ap": voc["ap"],
        "coco_per_class": coco["per_class"],
        "tp": voc["tp"],
        "fp": voc["fp"],
        "npos": voc["npos"],
        "images": len(truths),
    }
