"""kernels/boxes.py and data/image.py against naive loops written from darknet's
box.c / image.c semantics: IoU, NMS (sort and obj), letterbox correction,
yolo/region decoding, the tree's top prediction, resize and letterbox."""

import math
import time

import numpy as np
import pytest

from minidark.data.image import letterbox_image, resize_image
from minidark.kernels.boxes import (
    Detections,
    box_iou,
    correct_boxes,
    do_nms_obj,
    do_nms_sort,
    get_region_detections,
    get_yolo_detections,
    hierarchy_top_prediction,
    letterbox_size,
)
from minidark.kernels.tree import Tree
from minidark.layer import Layer


def naive_iou(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else math.nan


def random_boxes(rng, n):
    return np.column_stack([rng.uniform(0, 1, (n, 2)), rng.uniform(0.02, 0.4, (n, 2))]).astype(
        np.float32
    )


def test_iou_matches_the_naive_formula_and_edge_cases():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 300), random_boxes(rng, 300)
    ours = box_iou(a, b)
    expected = [naive_iou(p, q) for p, q in zip(a.astype(float), b.astype(float), strict=True)]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
    assert (ours == 0).sum() > 50 and (ours > 0.1).sum() > 5
    assert box_iou([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]) == pytest.approx(1)
    assert box_iou([0.2, 0.5, 0.2, 0.2], [0.4, 0.5, 0.2, 0.2]) == 0  # touching
    assert box_iou([0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2]) == pytest.approx(0.25)
    assert math.isnan(box_iou([0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]))
    matrix = box_iou(a[:, None], b[None, :20])  # broadcasting
    assert matrix.shape == (300, 20) and matrix[7, 3] == pytest.approx(
        naive_iou(a[7], b[3]), abs=1e-7
    )


def naive_nms_sort(bbox, obj, prob, thresh):
    prob = prob.copy()
    live = [i for i in range(len(obj)) if obj[i] != 0]
    for k in range(prob.shape[1]):
        order = sorted(live, key=lambda i: -prob[i, k])
        for x, i in enumerate(order):
            if prob[i, k] == 0:
                continue
            for j in order[x + 1 :]:
                if naive_iou(bbox[i], bbox[j]) > thresh:
                    prob[j, k] = 0
    return prob


def naive_nms_obj(bbox, obj, prob, thresh):
    obj, prob = obj.copy(), prob.copy()
    order = sorted([i for i in range(len(obj)) if obj[i] != 0], key=lambda i: -obj[i])
    for x, i in enumerate(order):
        if obj[i] == 0:
            continue
        for j in order[x + 1 :]:
            if obj[j] != 0 and naive_iou(bbox[i], bbox[j]) > thresh:
                obj[j], prob[j] = 0, 0
    return obj, prob


def detections(rng, n, classes, clustered=True):
    centres = rng.uniform(0.2, 0.8, (6, 2))
    bbox = random_boxes(rng, n)
    if clustered:  # overlapping groups, as a detector's output is
        bbox[:, :2] = centres[rng.integers(0, 6, n)] + rng.normal(0, 0.02, (n, 2))
        bbox[:, 2:] = rng.uniform(0.15, 0.25, (n, 2))
    obj = rng.uniform(0, 1, n).astype(np.float32)
    obj[rng.uniform(size=n) < 0.2] = 0
    prob = rng.uniform(0, 1, (n, classes)).astype(np.float32) * obj[:, None]
    prob[prob < 0.3] = 0
    return Detections(bbox, obj, prob)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_sort_and_obj_match_the_naive_greedy_loops(seed):
    rng = np.random.default_rng(seed)
    dets = detections(rng, 120, 4)
    expected = naive_nms_sort(dets.bbox.astype(float), dets.objectness, dets.prob, 0.45)
    ours = do_nms_sort(Detections(dets.bbox, dets.objectness, dets.prob.copy()), 4, 0.45)
    np.testing.assert_array_equal(ours.prob, expected)
    assert 0 < (ours.prob > 0).sum() < (dets.prob > 0).sum()
    obj, prob = naive_nms_obj(dets.bbox.astype(float), dets.objectness, dets.prob, 0.45)
    ours = do_nms_obj(Detections(dets.bbox, dets.objectness.copy(), dets.prob.copy()), 4, 0.45)
    np.testing.assert_array_equal(ours.objectness, obj)
    np.testing.assert_array_equal(ours.prob, prob)


def test_nms_is_fast_on_thousands_of_boxes():
    rng = np.random.default_rng(3)
    dets = detections(rng, 4000, 80, clustered=False)
    dets.prob[dets.prob < 0.9] = 0  # a detector's few candidates per class at .5
    tick = time.perf_counter()
    do_nms_sort(dets, 80, 0.45)
    elapsed = time.perf_counter() - tick
    print(f"do_nms_sort, 4000 boxes x 80 classes: {1000 * elapsed:.1f} ms")
    assert elapsed < 1.0


def test_letterbox_correction_maps_back_to_the_image():
    # a 640x480 image letterboxed into 416x416: 416x312, 52 rows of padding above
    assert letterbox_size(640, 480, 416, 416) == (416, 312)
    assert letterbox_size(480, 640, 416, 416) == (312, 416)
    box = np.array([[0.5, (52 + 156) / 416, 0.25, 78 / 416]], np.float32)
    correct_boxes(box, 640, 480, 416, 416, relative=False)
    np.testing.assert_allclose(box[0], [320, 240, 160, 120], rtol=1e-5)
    plain = np.array([[0.5, 0.5, 0.25, 0.5]], np.float32)
    correct_boxes(plain, 640, 480, 416, 416, relative=False, letterbox=False)
    np.testing.assert_allclose(plain[0], [320, 240, 160, 240], rtol=1e-6)


def head(kind, rng, n=2, classes=3, h=3, w=4, coords=4):
    per = (5 if kind == "yolo" else coords + 1) + classes
    l = Layer(
        type=kind,
        n=n,
        classes=classes,
        coords=coords,
        h=h,
        w=w,
        batch=1,
        outputs=n * per * h * w,
        background=False,
        softmax_tree=None,
    )
    l.output = rng.uniform(0, 1, (1, l.outputs)).astype(np.float32)
    l.output.reshape(n, per, h, w)[:, 2:4] = rng.normal(0, 0.5, (n, 2, h, w))
    if kind == "yolo":
        l.biases = np.array([10, 14, 23, 27, 37, 58, 81, 82], np.float32)
        l.mask = np.array([1, 3])
    else:
        l.biases = np.array([1.1, 1.2, 3.4, 4.4], np.float32)
    return l


def test_yolo_detections_order_values_and_threshold():
    rng = np.random.default_rng(4)
    l = head("yolo", rng)
    dets = get_yolo_detections(l, 64, 64, 64, 64, 0.5)
    out = l.output.reshape(2, 8, 3, 4)
    expected = []
    for cell in range(12):  # cells row-major, anchors inner
        j, i = divmod(cell, 4)
        for a in range(2):
            obj = out[a, 4, j, i]
            if obj <= 0.5:
                continue
            m = l.mask[a]
            box = (
                (i + out[a, 0, j, i]) / 4,
                (j + out[a, 1, j, i]) / 3,
                math.exp(out[a, 2, j, i]) * l.biases[2 * m] / 64,
                math.exp(out[a, 3, j, i]) * l.biases[2 * m + 1] / 64,
            )
            prob = [obj * out[a, 5 + c, j, i] for c in range(3)]
            expected.append((box, obj, [p if p > 0.5 else 0 for p in prob]))
    assert len(dets) == len(expected) > 0
    for k, (box, obj, prob) in enumerate(expected):
        np.testing.assert_allclose(dets.bbox[k], box, rtol=1e-5)
        assert dets.objectness[k] == pytest.approx(obj)
        np.testing.assert_allclose(dets.prob[k], prob, rtol=1e-6)


def test_region_detections_are_anchor_major_with_thresholded_objectness():
    rng = np.random.default_rng(5)
    l = head("region", rng)
    dets = get_region_detections(l, 4, 3, 4, 3, 0.5)
    out = l.output.reshape(2, 8, 3, 4)
    assert len(dets) == 24
    for a, j, i in [(0, 0, 0), (1, 2, 3), (1, 1, 2)]:
        k = a * 12 + j * 4 + i
        obj = out[a, 4, j, i]
        assert dets.objectness[k] == (obj if obj > 0.5 else 0)
        np.testing.assert_allclose(
            dets.bbox[k, 2], math.exp(out[a, 2, j, i]) * l.biases[2 * a] / 4, rtol=1e-5
        )
        prob = obj * out[a, 5:, j, i]
        expected = np.where((prob > 0.5) & (obj > 0.5), prob, 0)
        np.testing.assert_allclose(dets.prob[k], expected, rtol=1e-6)


def naive_top(p, tree, thresh):
    prob, group = 1.0, 0
    while True:
        best, best_i = 0, 0
        for i in range(tree.group_size[group]):
            index = tree.group_offset[group] + i
            if p[index] > best:
                best, best_i = p[index], index
        if prob * best > thresh:
            prob *= best
            group = tree.child[best_i]
            if tree.child[best_i] < 0:
                return best_i
        elif group == 0:
            return best_i
        else:
            return tree.parent[tree.group_offset[group]]


def test_hierarchy_top_prediction_matches_darknets_walk():
    tree = Tree(
        ["a", "b", "a1", "a2", "b1", "b2", "b3", "a2x", "a2y"], [-1, -1, 0, 0, 1, 1, 1, 3, 3]
    )
    rng = np.random.default_rng(6)
    probs = rng.uniform(0, 1, (200, tree.n)).astype(np.float32)
    for thresh in (0.05, 0.2, 0.5):
        ours = hierarchy_top_prediction(probs, tree, thresh)
        assert ours.tolist() == [naive_top(p, tree, thresh) for p in probs]


def naive_resize(im, w, h):
    c, H, W = im.shape
    part = np.zeros((c, H, w))
    ws, hs = (W - 1) / (w - 1), (H - 1) / (h - 1)
    for x in range(w):
        if x == w - 1 or W == 1:
            part[:, :, x] = im[:, :, W - 1]
        else:
            sx = np.float32(x * np.float32(ws))
            ix = int(sx)
            dx = sx - ix
            part[:, :, x] = (1 - dx) * im[:, :, ix] + dx * im[:, :, ix + 1]
    out = np.zeros((c, h, w))
    for y in range(h):
        sy = np.float32(y * np.float32(hs))
        iy = int(sy)
        dy = sy - iy
        out[:, y] = (1 - dy) * part[:, iy]
        if iy + 1 < H:  # darknet skips this on the last row (see image.py)
            out[:, y] += dy * part[:, iy + 1]
    return out


def test_resize_and_letterbox_follow_darknet():
    rng = np.random.default_rng(7)
    im = rng.uniform(0, 1, (3, 31, 50)).astype(np.float32)  # H = 31: darknet's dark-row case
    np.testing.assert_allclose(resize_image(im, 41, 26), naive_resize(im, 41, 26), atol=5e-6)
    big = resize_image(im, 416, 416)
    assert big[:, -1].min() > 0.01 or im[:, -1].min() < 0.02  # the bottom row is not black
    boxed = letterbox_image(im, 64, 64)
    new_w, new_h = letterbox_size(50, 31, 64, 64)
    assert (new_w, new_h) == (64, 39)
    top = (64 - 39) // 2
    assert np.all(boxed[:, :top] == 0.5) and np.all(boxed[:, top + 39 :] == 0.5)
    np.testing.assert_allclose(boxed[:, top : top + 39], naive_resize(im, 64, 39), atol=5e-6)
