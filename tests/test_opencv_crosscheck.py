"""Interoperability with a second, independent reader of darknet files:
OpenCV's darknet importer (``cv2.dnn.readNetFromDarknet``, opencv-python-headless
4.x; removed in 5.0) reads the same cfg and the ``.weights`` minidark writes.

For yolov3-tiny and yolov2-tiny (darknet's layer structure, and held-out
variants: other input sizes and class counts), and the full yolov3 (Darknet-53:
shortcuts, three heads through route and upsample) and yolov2 (reorg, route) at
160x160, with random weights -- batch-norm
statistics and scales randomised too, so inference BN is exercised -- on the
same letterboxed image:

* raw head outputs agree: OpenCV's region/yolo layers emit one row per cell and
  anchor, ``(x, y, w, h, obj, obj * p_c ...)`` with the class scores zeroed at or
  below the layer's threshold (.2 for yolo, the cfg's ``thresh`` for region);
  minidark's decoded boxes, objectness and ``obj * p_c`` must match them
  (OpenCV's region layer also runs darknet's do_nms_sort at .4 on its rows:
  so does the comparison, which checks minidark's NMS against OpenCV's too);
* the detections after NMS are the same boxes and classes: minidark's
  ``get_network_boxes`` + ``do_nms_sort`` against OpenCV's rows through
  ``cv2.dnn.NMSBoxesBatched`` (per-class NMS, as darknet's do_nms_sort).

OpenCV has no ``[detection]`` layer, so the YOLOv1 check reads the cfg without
it: the raw output of the last connected layer (which ``[detection]`` copies)
must match, and decoding both through minidark's YOLOv1 decoder and NMS must
give the same detections.
"""

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import minidark
from minidark.cfg import read_cfg_text
from minidark.data.image import letterbox_image, resize_image
from minidark.kernels.boxes import (
    Detections,
    decode_boxes,
    do_nms_sort,
    get_detection_detections,
    get_network_boxes,
)
from minidark.weights import save_weights

STOCK = os.path.join(os.path.dirname(__file__), "cfg", "stock")


def variant(name, size=None, classes=None, region_thresh=None):
    """A stock cfg's text with another input size and class count (the conv before
    each head resized to match), and [region] thresh (OpenCV's score cut) changed."""
    text = (Path(STOCK) / f"{name}.cfg").read_text()
    if region_thresh is not None:
        text = re.sub(r"^thresh=.*$", f"thresh={region_thresh}", text, flags=re.M)
    if size:
        text = re.sub(r"^width=\d+", f"width={size}", text, flags=re.M)
        text = re.sub(r"^height=\d+", f"height={size}", text, flags=re.M)
    if classes:
        sections = re.split(r"(?m)^(?=\[)", text)
        for k, section in enumerate(sections):
            head = re.match(r"\[(yolo|region)\]", section)
            if not head:
                continue
            anchors = (
                len(re.search(r"mask=(.*)", section).group(1).split(","))
                if head.group(1) == "yolo"
                else int(re.search(r"num=(\d+)", section)[1])
            )
            sections[k] = re.sub(r"classes=\d+", f"classes={classes}", section)
            j = max(i for i in range(k) if sections[i].startswith("[convolutional]"))
            sections[j] = re.sub(r"filters=\d+", f"filters={anchors * (5 + classes)}", sections[j])
        text = "".join(sections)
    return text


def randomize(net, seed, head_gain=3.0):
    """Random parameters in every saved array (rolling variance > 0); the convs
    feeding a head get a larger gain so that some classes score high."""
    rng = np.random.default_rng(seed)
    for i, layer in enumerate(net.layers):
        feeds_head = i + 1 < len(net.layers) and net.layers[i + 1].type in (
            "yolo",
            "region",
            "detection",
        )
        for name in layer.saved:
            array = getattr(layer, name)
            if name == "weights":
                fan_in = array.size // array.shape[0]
                values = rng.uniform(-1, 1, array.shape) * np.sqrt(3 / fan_in)
                values *= head_gain if feeds_head else 1
            elif name == "rolling_variance" or name == "scales":
                values = rng.uniform(0.5, 1.5, array.shape)
            else:
                values = rng.uniform(-0.3, 0.3, array.shape)
            array[...] = values


def photo_input(net, seed=0):
    rng = np.random.default_rng(seed)
    h, w = 300, 400
    y, x = np.mgrid[0:h, 0:w] / w
    image = np.stack(
        [np.sin(5 * x + rng.uniform(0, 6)) * np.cos(4 * y) * 0.5 + 0.5 for _ in range(3)]
    ).astype(np.float32)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.05, 0.2)
        image[:, (x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, (3, 1))
    return letterbox_image(image, net.w, net.h)


def calibrate(net, x):
    """Batch-norm statistics of this input (a training forward's batch mean and
    variance become the rolling ones), so that deep random networks (Darknet-53's
    residual stacks) keep their activations in range instead of overflowing. The
    variance is floored at .25: OpenCV divides by sqrt(var + eps), darknet by
    sqrt(var) + eps, which differ visibly only for tiny variances."""
    net.forward(x.reshape(1, -1), train=True)
    for l in net.layers:
        if l.batch_normalize:
            l.rolling_mean[...] = l.mean
            l.rolling_variance[...] = np.maximum(l.variance, 0.25)


def build_pair(tmp_path, text, seed, gain=3.0, opencv_text=None, x=None):
    """minidark and OpenCV networks reading the same cfg and the .weights minidark
    wrote (``opencv_text``: the cfg OpenCV reads, when it differs); with ``x`` the
    batch-norm statistics are calibrated on it."""
    cfg = tmp_path / "net.cfg"
    cfg.write_text(text)
    net = minidark.load_network(str(cfg), batch=1)
    randomize(net, seed, gain)
    if x is not None:
        calibrate(net, x)
    weights = tmp_path / "net.weights"
    save_weights(net, weights)
    ours = minidark.load_network(str(cfg), str(weights), batch=1)  # through the file
    if opencv_text is not None:
        cfg = tmp_path / "opencv.cfg"
        cfg.write_text(opencv_text)
    theirs = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    return ours, theirs


def opencv_rows(cvnet, x):
    cvnet.setInput(x[None])
    names = cvnet.getUnconnectedOutLayersNames()
    return [np.asarray(o) for o in cvnet.forward(names)]


def head_rows(l, net):
    """minidark's head output as OpenCV's rows: (x, y, w, h, obj, obj * p_c)."""
    per = l.outputs // (l.n * l.h * l.w)
    planes = l.output.reshape(l.n, per, l.h, l.w)
    if l.type == "yolo":
        anchors = l.biases.reshape(-1, 2)[l.mask]
        boxes = decode_boxes(planes, anchors[:, 0], anchors[:, 1], l.w, l.h, net.w, net.h)
    else:
        anchors = l.biases.reshape(-1, 2)[: l.n]
        boxes = decode_boxes(planes, anchors[:, 0], anchors[:, 1], l.w, l.h, l.w, l.h)
    obj = planes[:, 4]
    scores = obj[:, None] * planes[:, 5:]
    rows = np.concatenate(
        [
            boxes.transpose(1, 2, 0, 3),
            obj.transpose(1, 2, 0)[..., None],
            scores.transpose(2, 3, 0, 1),
        ],
        axis=-1,
    )
    return rows.reshape(-1, per)  # row = (j * w + i) * n + a


def opencv_detections(rows, classes, thresh, nms):
    boxes, corners, scores, ids = [], [], [], []
    for row in rows:
        for c in np.flatnonzero(row[5 : 5 + classes] > thresh):
            x, y, w, h = (float(v) for v in row[:4])
            boxes.append((x, y, w, h))
            corners.append([x - w / 2, y - h / 2, w, h])
            scores.append(float(row[5 + c]))
            ids.append(int(c))
    if not boxes:
        return []
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(corners, scores, ids, thresh, nms)).reshape(-1)
    return sorted((ids[k], *np.round(boxes[k], 4), round(scores[k], 4)) for k in keep)


def minidark_detections(dets, thresh, nms):
    do_nms_sort(dets, dets.classes, nms)
    found = []
    for i, c in zip(*np.nonzero(dets.prob > thresh), strict=True):
        found.append(
            (
                int(c),
                *np.round(dets.bbox[i].astype(np.float64), 4),
                round(float(dets.prob[i, c]), 4),
            )
        )
    return sorted(found)


def same_detections(ours, theirs, rtol=1e-4):
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1:], b[1:], rtol=20 * rtol, atol=2e-4)


CASES = [
    ("yolov3-tiny", None, None),
    ("yolov3-tiny", 320, 20),
    ("yolov2-tiny", None, None),
    ("yolov2-tiny", 288, 20),
    ("yolov3", 160, None),
    ("yolov2", 160, 20),
]
# gain on the convolution feeding each head: spread the logits so that some classes score high
GAINS = {"yolov3-tiny": 3.0, "yolov2-tiny": 8.0, "yolov3": 3.0, "yolov2": 8.0}
DEEP = ("yolov3", "yolov2")  # batch-norm statistics calibrated on the input (see calibrate)
REGION_NMS = 0.4  # OpenCV's darknet importer gives [region] layers nms_threshold .4
WANTED = 30  # the detection threshold keeps about this many (box, class) scores


@pytest.mark.parametrize(
    "name,size,classes", CASES, ids=[f"{n}-{s or 'stock'}-{c or 80}" for n, s, c in CASES]
)
def test_yolo_and_region_heads_agree_with_opencv(tmp_path, name, size, classes):
    text = variant(name, size, classes, region_thresh=0.2)
    probe = minidark.parse_network(read_cfg_text(text), batch=1, verbose=False)
    x = photo_input(probe)
    ours, theirs = build_pair(
        tmp_path,
        text,
        seed=len(name) + (size or 0),
        gain=GAINS[name],
        x=x if name in DEEP else None,
    )
    rtol = 1e-4 if name not in DEEP else 1e-3  # float32 rounding over 24 to 75 convolutions
    ours.predict(x.reshape(1, -1))
    outputs = opencv_rows(theirs, x)
    heads = [l for l in ours.layers if l.type in ("yolo", "region")]
    assert len(outputs) == len(heads)
    for l, rows in zip(heads, outputs, strict=True):
        mine = head_rows(l, ours)
        assert rows.shape == mine.shape
        for k in (0, 1, 4):  # x, y, obj
            np.testing.assert_allclose(rows[:, k], mine[:, k], rtol=rtol, atol=2e-5)
        # w, h = e^t anchor: the raw t to the tolerance (float32 sums over the whole net)
        np.testing.assert_allclose(np.log(rows[:, 2:4]), np.log(mine[:, 2:4]), atol=20 * rtol)
        cut = 0.2 if l.type == "yolo" else l.thresh  # OpenCV zeroes scores at or below
        expected = np.where(mine[:, 5:] > cut, mine[:, 5:], 0)
        if l.type == "region":  # OpenCV's region layer runs do_nms_sort at .4 itself
            do_nms_sort(
                Detections(mine[:, :4], np.where(mine[:, 4] > cut, mine[:, 4], 0), expected),
                l.classes,
                REGION_NMS,
            )
        clear = np.abs(mine[:, 5:] - cut) > 10 * rtol
        np.testing.assert_allclose(rows[:, 5:][clear], expected[clear], rtol=10 * rtol, atol=2e-5)
    scores = np.sort(np.concatenate([head_rows(l, ours)[:, 5:].reshape(-1) for l in heads]))
    scores = scores[scores > 0.2 + 1e-3]
    # a threshold in the widest gap between scores near the WANTED-th largest: no score sits
    # on it, so rounding cannot put a box on different sides for the two readers
    k = max(
        range(WANTED // 2, min(2 * WANTED, len(scores) - 1)),
        key=lambda k: scores[-k] - scores[-k - 1],
        default=None,
    )
    assert k is not None, "random weights should give a few scores above .2"
    thresh = float(scores[-k] + scores[-k - 1]) / 2
    nms = REGION_NMS if heads[-1].type == "region" else 0.45
    theirs_found = opencv_detections(np.concatenate(outputs), heads[-1].classes, thresh, nms)
    dets = get_network_boxes(ours, ours.w, ours.h, thresh, relative=True)
    ours_found = minidark_detections(dets, thresh, nms)
    assert len(ours_found) >= 3, "random weights should give a few detections to compare"
    same_detections(ours_found, theirs_found, rtol)


def test_yolov1_style_network_agrees_with_opencv(tmp_path):
    """YOLOv1-tiny at darknet's 448x448: OpenCV reads the cfg without the [detection]
    section (which it does not know); the head is a copy of the connected output."""
    text = variant("yolov1-tiny")
    ours, theirs = build_pair(
        tmp_path, text, seed=5, gain=1.0, opencv_text=text[: text.index("[detection]")]
    )
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (3, 240, 320)).astype(np.float32)
    x = resize_image(image, ours.w, ours.h)  # YOLOv1 runs on a plain resize
    ours.predict(x.reshape(1, -1))
    raw = opencv_rows(theirs, x)[0].reshape(-1)
    head = ours.layers[-1]
    np.testing.assert_allclose(
        raw, head.output.reshape(-1), rtol=1e-4, atol=1e-4 * np.abs(raw).max()
    )
    mine = minidark_detections(get_detection_detections(head, 1, 1, 0.2), 0.2, 0.45)
    head.output[0] = raw  # OpenCV's numbers, minidark's decoder
    other = minidark_detections(get_detection_detections(head, 1, 1, 0.2), 0.2, 0.45)
    assert len(mine) >= 1
    same_detections(mine, other)


def test_single_class_nms_agrees_with_opencv_nmsboxes():
    """darknet's greedy NMS (minidark's do_nms_sort, one class) keeps the same boxes
    as OpenCV's NMSBoxes on clustered boxes with distinct scores."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.2, 0.8, (8, 2))
    xy = centres[rng.integers(0, 8, 300)] + rng.normal(0, 0.03, (300, 2))
    wh = rng.uniform(0.1, 0.3, (300, 2))
    scores = rng.permutation(300).astype(np.float32) / 300 + 0.01
    for nms in (0.3, 0.45, 0.6):
        dets = Detections(np.column_stack([xy, wh]), np.ones(300), scores[:, None])
        do_nms_sort(dets, 1, nms)
        ours = set(np.flatnonzero(dets.prob[:, 0] > 0).tolist())
        topleft = np.column_stack([xy - wh / 2, wh]).tolist()
        theirs = set(
            np.asarray(cv2.dnn.NMSBoxes(topleft, scores.tolist(), 0, nms)).reshape(-1).tolist()
        )
        assert ours == theirs and 8 <= len(ours) < 300
