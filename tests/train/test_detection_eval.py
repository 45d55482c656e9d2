"""Detection evaluation: COCO mAP against pycocotools, VOC AP against hand-worked cases."""

import contextlib
import io

import numpy as np
import pytest

from minidark.train.detection_eval import coco_map, iou_matrix, voc_ap, voc_map

pycocotools = pytest.importorskip("pycocotools", reason="pycocotools is in the test extra")


def random_set(rng, images, classes, coarse):
    """Truths and detections; ``coarse`` snaps coordinates and scores to a grid
    (IoU and score ties)."""
    truths, detections = [], []
    for _ in range(images):
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (m, 2))
        wh = rng.uniform(4, 40, (m, 2))
        if coarse:
            xy, wh = np.round(xy / 8) * 8, np.round(wh / 8) * 8 + 8
        gts = np.column_stack([rng.integers(0, classes, m), xy, xy + wh])
        n = int(rng.integers(0, 12))
        base = gts[rng.integers(0, m, n), 1:] if m else rng.uniform(0, 80, (n, 4))
        if m:
            jitter = rng.normal(0, 4, (n, 4))
            boxes = base + (np.round(jitter / 4) * 4 if coarse else jitter)
        else:
            boxes = np.column_stack([base[:, :2], base[:, :2] + rng.uniform(4, 30, (n, 2))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        cls = np.where(
            rng.random(n) < 0.8,
            gts[rng.integers(0, m, n), 0] if m else 0,
            rng.integers(0, classes, n),
        )
        scores = rng.random(n)
        if coarse:
            scores = np.round(scores * 4) / 4 + 0.01
        detections.append(np.column_stack([cls, scores, boxes]))
        truths.append(gts)
    return detections, truths


def pycocotools_ap(detections, truths, classes):
    """pycocotools' precision-derived AP per (threshold, class), -1 without truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (dets, gts) in enumerate(zip(detections, truths, strict=True)):
        images.append({"id": i + 1, "width": 200, "height": 200})
        for c, x0, y0, x1, y1 in gts:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for c, s, x0, y0, x1, y1 in dets:
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": s,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(classes)],
        }
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.catIds = list(range(1, classes + 1))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # T, R, K at area all, 100 dets
    ap = np.where((precision > -1).all(axis=1), precision.mean(axis=1), -1)
    return ap, evaluator.stats


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("coarse", [False, True])
def test_coco_map_equals_pycocotools(seed, coarse):
    rng = np.random.default_rng(seed)
    classes = 4
    detections, truths = random_set(rng, 25, classes, coarse)
    expected_ap, stats = pycocotools_ap(detections, truths, classes)
    ours = coco_map(detections, truths, classes)
    np.testing.assert_allclose(ours["ap"], expected_ap, atol=1e-6, rtol=0)
    assert ours["map"] == pytest.approx(stats[0], abs=1e-6)
    assert ours["ap50"] == pytest.approx(stats[1], abs=1e-6)
    assert ours["ap75"] == pytest.approx(stats[2], abs=1e-6)


def test_coco_empty_class_and_more_than_100_detections():
    rng = np.random.default_rng(5)
    truths = [np.array([[0, 10, 10, 30, 30], [2, 40, 40, 60, 70]], float)]
    boxes = np.column_stack([rng.uniform(0, 20, (150, 2)), rng.uniform(25, 70, (150, 2))])
    dets = np.column_stack([np.zeros(150), rng.random(150), boxes])
    dets = np.vstack([dets, [[1, 0.9, 0, 0, 5, 5]]])  # class 1 has no truth
    expected_ap, stats = pycocotools_ap([dets], truths, 3)
    ours = coco_map([dets], truths, 3)
    np.testing.assert_allclose(ours["ap"], expected_ap, atol=1e-6, rtol=0)
    assert ours["ap"][0, 1] == -1 and ours["ap"][0, 2] == 0
    assert ours["map"] == pytest.approx(stats[0], abs=1e-6)


def test_voc_ap_hand_worked():
    # 3 truths; ranked detections TP, FP, TP, FP: recall .33 .33 .67 .67, precision 1 .5 .67 .5
    recall = np.array([1, 1, 2, 2]) / 3
    precision = np.array([1, 1 / 2, 2 / 3, 2 / 4])
    # all-point: envelope 1, 2/3, 2/3, 1/2 -> 1/3 * 1 + 1/3 * 2/3 (recall never reaches 1)
    assert voc_ap(recall, precision) == pytest.approx(1 / 3 + 2 / 9)
    # 11-point: t = 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7 ... 1 -> 0
    assert voc_ap(recall, precision, points=11) == pytest.approx((4 + 3 * 2 / 3) / 11)


def test_voc_map_matching():
    truths = [
        np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], float),
        np.array([[1, 0, 0, 10, 10]], float),
    ]
    detections = [
        np.array(
            [
                [0, 0.9, 0, 0, 10, 10],  # TP
                [0, 0.8, 1, 1, 10, 10],  # duplicate of the same truth: FP
                [0, 0.7, 50, 50, 60, 60],  # no overlap: FP
                [0, 0.6, 20, 20, 30, 31],
            ]
        ),  # TP (IoU 10/11)
        np.zeros((0, 6)),
    ]
    result = voc_map(detections, truths, classes=3)
    # class 0: recall .5 .5 .5 1, precision 1 .5 .33 .5 -> .5 * 1 + .5 * .5
    assert result["ap"][0] == pytest.approx(0.75)
    assert result["ap"][1] == 0 and result["ap"][2] == 0  # no detections; no truth
    assert result["map"] == pytest.approx(0.75 / 3)
    assert result["tp"][0] == 2 and result["fp"][0] == 2
    # strict threshold: IoU exactly .5 is not a match
    half = [np.array([[0, 0.9, 0, 0, 10, 5]])]
    assert iou_matrix(half[0][:, 2:], truths[0][:1, 1:])[0, 0] == 0.5
    assert voc_map(half, truths[:1], 1)["ap"][0] == 0
