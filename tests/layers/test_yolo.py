"""[yolo] (yolo_layer.c): shapes and cfg keys, the loss against a naive loop
written from darknet's semantics, and what the delta is the gradient of.

* obj and class deltas are the negative gradient of binary cross-entropy with
  respect to the logits, and the w, h deltas of ``s/2 (t - tw)^2``: checked by
  central differences of that loss, with the targets re-derived at every
  evaluation by the naive loop;
* the x, y deltas are ``s (t - sx)``, the negative gradient of ``s/2 (t -
  sx)^2`` with respect to the *logistic output*, passed back as if it were the
  logit gradient (no logistic derivative): darknet's design, stated below.
"""

import math

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import to_float64

from conftest import net_from

NET = 96  # the network input size the anchors (pixels) refer to; the grid is 4x4
ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"
CFG = """[net]
batch={batch}
width=32
height=32
channels={channels}

[yolo]
mask={mask}
anchors={anchors}
classes=3
num=6
ignore_thresh={ignore}
truth_thresh={truth_thresh}
jitter=.3
random=1
max=6
"""


def yolo_net(tmp_path, batch=2, mask="0,1,2", ignore=0.5, truth_thresh=1, grid=4):
    channels = len(mask.split(",")) * 8
    text = CFG.format(
        batch=batch,
        channels=channels,
        mask=mask,
        anchors=ANCHORS,
        ignore=ignore,
        truth_thresh=truth_thresh,
    ).replace("width=32\nheight=32", f"width={grid}\nheight={grid}")
    net = net_from(tmp_path, text, verbose=False)
    net.w = net.h = NET  # the input size the anchors refer to (grid != input here)
    return net


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def iou(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def naive_yolo(x, truth, l, net_w, net_h, ignore, truth_thresh):
    """darknet's forward_yolo_layer as plain loops, in float64. Returns delta,
    cost, stats and the two losses: BCE(obj, classes) + s/2 (t - tw)^2 (w, h),
    and s/2 (t - sx)^2 for x, y."""
    B, n, C, H, W = x.shape[0], l.n, l.classes, l.h, l.w
    x = x.reshape(B, n, 5 + C, H, W)
    out = x.copy()
    for k in [0, 1, 4] + list(range(5, 5 + C)):
        out[:, :, k] = sigmoid(x[:, :, k])
    delta = np.zeros_like(out)
    anchors = np.asarray(l.biases, np.float64).reshape(-1, 2)
    boxes = truth.reshape(B, -1, 5)

    def pred(b, a, j, i):
        m = l.mask[a]
        return (
            (i + out[b, a, 0, j, i]) / W,
            (j + out[b, a, 1, j, i]) / H,
            math.exp(out[b, a, 2, j, i]) * anchors[m, 0] / net_w,
            math.exp(out[b, a, 3, j, i]) * anchors[m, 1] / net_h,
        )

    def truths(b):
        for t in range(boxes.shape[1]):
            if boxes[b, t, 0] == 0:
                return
            yield t, boxes[b, t]

    def box_delta(b, a, j, i, box, m):
        s = 2 - box[2] * box[3]
        targets = (
            box[0] * W - i,
            box[1] * H - j,
            math.log(box[2] * net_w / anchors[m, 0]),
            math.log(box[3] * net_h / anchors[m, 1]),
        )
        for k in range(4):
            delta[b, a, k, j, i] = s * (targets[k] - out[b, a, k, j, i])

    def class_delta(b, a, j, i, c):
        if delta[b, a, 5, j, i]:
            delta[b, a, 5 + c, j, i] = 1 - out[b, a, 5 + c, j, i]
            return
        for k in range(C):
            delta[b, a, 5 + k, j, i] = (k == c) - out[b, a, 5 + k, j, i]

    stats = dict(iou=0, cat=0, obj=0, count=0, recall=0)
    for b in range(B):
        for j in range(H):
            for i in range(W):
                for a in range(n):
                    best, best_t = 0, 0
                    for t, box in truths(b):
                        v = iou(pred(b, a, j, i), box)
                        if v > best:
                            best, best_t = v, t
                    delta[b, a, 4, j, i] = -out[b, a, 4, j, i]
                    if best > ignore:
                        delta[b, a, 4, j, i] = 0
                    if best > truth_thresh:
                        delta[b, a, 4, j, i] = 1 - out[b, a, 4, j, i]
                        class_delta(b, a, j, i, int(boxes[b, best_t, 4]))
                        box_delta(b, a, j, i, boxes[b, best_t], l.mask[a])
        for _, box in truths(b):
            i, j = int(box[0] * W), int(box[1] * H)
            fits = [
                iou((0, 0, box[2], box[3]), (0, 0, anchors[m, 0] / net_w, anchors[m, 1] / net_h))
                for m in range(l.total)
            ]
            m = int(np.argmax(fits))
            if m not in list(l.mask):
                continue
            a = list(l.mask).index(m)
            stats["iou"] += iou(pred(b, a, j, i), box)
            stats["recall"] += iou(pred(b, a, j, i), box) > 0.5
            box_delta(b, a, j, i, box, m)
            stats["obj"] += out[b, a, 4, j, i]
            delta[b, a, 4, j, i] = 1 - out[b, a, 4, j, i]
            stats["cat"] += out[b, a, 5 + int(box[4]), j, i]
            class_delta(b, a, j, i, int(box[4]))
            stats["count"] += 1
    # binary cross-entropy of the trained obj and class entries: target = delta + output
    bce_terms = [4] + list(range(5, 5 + C))
    p = out[:, :, bce_terms]
    target = delta[:, :, bce_terms] + p
    trained = delta[:, :, bce_terms] != 0
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    return delta.reshape(B, -1), float((delta**2).sum()), stats, (bce, trained, target)


def truth_rows(batch, rows):
    truth = np.zeros((batch, 6 * 5))
    for b, boxes in enumerate(rows):
        for t, box in enumerate(boxes):
            truth[b, 5 * t : 5 * t + 5] = box
    return truth


def scenario(net, rng):
    """Truths exercising the branches: a truth placed on a prediction (ignore and
    truth_thresh), two truths in one cell and anchor with different classes
    (class quirk), a truth whose best anchor is outside the mask."""
    l = net.layers[0]
    x = rng.uniform(-1, 1, (net.batch, l.inputs))
    net.forward(x, train=False)
    out = l.output.reshape(net.batch, l.n, 8, l.h, l.w)
    anchors = l.biases.reshape(-1, 2)
    j, i, a = 1, 2, 1
    planted = [
        (i + out[0, a, 0, j, i]) / l.w,
        (j + out[0, a, 1, j, i]) / l.h,
        1.05 * math.exp(out[0, a, 2, j, i]) * anchors[l.mask[a], 0] / net.w,  # IoU ~.95
        math.exp(out[0, a, 3, j, i]) * anchors[l.mask[a], 1] / net.h,
        2,
    ]
    rows = [
        [planted, [0.61, 0.37, 0.3, 0.35, 1], [0.13, 0.86, 0.9, 0.8, 0]],
        [[0.4, 0.4, 0.3, 0.35, 0], [0.45, 0.42, 0.32, 0.36, 2], [0.8, 0.2, 0.12, 0.15, 1]],
    ]
    return x, truth_rows(net.batch, rows[: net.batch])


# ----------------------------------------------------------------------------- tests
def test_shapes_keys_and_fields(tmp_path, recwarn):
    net = yolo_net(tmp_path, mask="3,4,5")
    l = net.layers[0]
    assert (l.n, l.total, l.classes, l.max_boxes, l.truths) == (3, 6, 3, 6, 30)
    assert list(l.mask) == [3, 4, 5] and l.biases.tolist() == [float(v) for v in ANCHORS.split(",")]
    assert (l.out_c, l.out_h, l.out_w, l.outputs) == (24, 4, 4, 384)
    assert (l.jitter, l.random, l.ignore_thresh, l.truth_thresh) == (np.float64(0.3), 1, 0.5, 1)
    assert net.truths == 30
    assert not [w for w in recwarn if "nused" in str(w.message)]


@pytest.mark.parametrize(
    "text,key", [("mask=0,7", "mask"), ("anchors=1,2,3", "anchors"), ("classes=4", "classes")]
)
def test_bad_values_name_the_key(tmp_path, text, key):
    cfg = CFG.format(
        batch=1, channels=24, mask="0,1,2", anchors=ANCHORS, ignore=0.5, truth_thresh=1
    )
    for line in (f"{key}=",):
        cfg = "\n".join(l for l in cfg.splitlines() if not l.startswith(line))
    with pytest.raises(ConfigError) as info:
        net_from(tmp_path, cfg + "\n" + text + "\n", verbose=False)
    assert key in str(info.value)


def test_inference_forward_is_the_logistic_on_x_y_obj_classes(tmp_path):
    net = yolo_net(tmp_path)
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    out = net.forward(x).reshape(2, 3, 8, 4, 4)
    raw = x.reshape(2, 3, 8, 4, 4)
    for k in range(8):
        expected = raw[:, :, k] if k in (2, 3) else 1 / (1 + np.exp(-raw[:, :, k]))
        np.testing.assert_allclose(out[:, :, k], expected, rtol=1e-6)


@pytest.mark.parametrize("ignore,truth_thresh", [(0.5, 1), (0.3, 0.6)])
def test_loss_matches_a_naive_loop(tmp_path, ignore, truth_thresh):
    net = to_float64(yolo_net(tmp_path, ignore=ignore, truth_thresh=truth_thresh))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(1))
    net.forward(x, truth, train=True)
    delta, cost, stats, _ = naive_yolo(x, truth, l, NET, NET, ignore, truth_thresh)
    np.testing.assert_allclose(l.delta, delta, atol=1e-12)
    assert l.cost == pytest.approx(cost, rel=1e-12)
    assert l.stats["count"] == stats["count"] == 5  # one truth's best anchor is not in the mask
    assert l.stats["avg_iou"] == pytest.approx(stats["iou"] / stats["count"])
    assert l.stats["avg_class_prob"] == pytest.approx(stats["cat"] / stats["count"])
    assert l.stats["avg_obj_pos"] == pytest.approx(stats["obj"] / stats["count"])
    # the planted truth (IoU ~.95 with slot 1's prediction at cell (1, 2) of image 0) is
    # above truth_thresh .6 in the second case: that slot is then a positive for it
    planted = l.delta.reshape(2, 3, 8, 4, 4)[0, 1, :, 1, 2]
    assert (planted[0] != 0) and (truth_thresh < 1 or planted[4] != 0)
    # the two truths of image 1 share cell (1, 1) and their anchor: the class target is multi-hot
    d = l.delta.reshape(2, 3, 8, 4, 4)[1, :, 5:, 1, 1]
    o = l.output.reshape(2, 3, 8, 4, 4)[1, :, 5:, 1, 1]
    hot = np.isclose(d + o, 1)
    assert hot.sum() == 2 and set(np.nonzero(hot)[1]) == {0, 2}


def true_loss(net, x, truth):
    """Binary cross-entropy of obj and classes and s/2 (t - tw)^2 of w, h (targets
    re-derived by the naive loop at this x); the x, y terms separately."""
    l = net.layers[0]
    delta, _, _, (bce, trained, _) = naive_yolo(
        x, truth, l, NET, NET, l.ignore_thresh, l.truth_thresh
    )
    d = delta.reshape(bce.shape[0], l.n, 8, l.h, l.w)
    raw = x.reshape(d.shape)
    out = sigmoid(raw)
    s = _scales(net, truth)
    loss = float(bce[trained].sum())
    targets = d[:, :, 2:4] / np.where(s > 0, s, 1) + raw[:, :, 2:4]
    loss += float((s / 2 * (targets - raw[:, :, 2:4]) ** 2).sum())
    xy_target = d[:, :, 0:2] / np.where(s > 0, s, 1) + out[:, :, 0:2]
    xy = float((s / 2 * (xy_target - out[:, :, 0:2]) ** 2).sum())
    return loss, xy


def _scales(net, truth):
    """s = 2 - w h of the truth trained at each slot (0 elsewhere), shape (B, n, 2, h, w)."""
    l = net.layers[0]
    d = l.delta.reshape(-1, l.n, 8, l.h, l.w)
    scale = np.zeros(d[:, :, 0:2].shape)
    boxes = truth.reshape(truth.shape[0], -1, 5)
    anchors = l.biases.reshape(-1, 2)
    for b in range(boxes.shape[0]):
        for box in boxes[b]:
            if box[0] == 0:
                break
            fits = [iou((0, 0, box[2], box[3]), (0, 0, a[0] / NET, a[1] / NET)) for a in anchors]
            m = int(np.argmax(fits))
            if m in list(l.mask):
                scale[b, list(l.mask).index(m), :, int(box[1] * l.h), int(box[0] * l.w)] = (
                    2 - box[2] * box[3]
                )
    return scale


def test_gradcheck_obj_class_bce_and_wh_terms_and_the_xy_design(tmp_path):
    net = to_float64(yolo_net(tmp_path, ignore=0.5, truth_thresh=1))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(1))
    net.forward(x, truth, train=True)
    grad = np.zeros_like(x)
    net.input, net.delta = x, grad
    l.backward(l, net)
    out = l.output.copy().reshape(2, 3, 8, 4, 4)
    rng = np.random.default_rng(2)
    eps = 1e-6
    view = grad.reshape(out.shape)
    entries = [e for e in np.ndindex(out.shape) if e[2] >= 2]
    picks = [entries[k] for k in rng.choice(len(entries), 60, replace=False)]
    picks += [(0, 1, k, 1, 2) for k in range(2, 8)] + [(1, 0, k, 1, 1) for k in range(2, 8)]
    for e in picks:
        flat = np.ravel_multi_index(e, out.shape)
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[flat] += eps
        minus.reshape(-1)[flat] -= eps
        numeric = -(true_loss(net, plus, truth)[0] - true_loss(net, minus, truth)[0]) / (2 * eps)
        assert numeric == pytest.approx(view[e], abs=1e-6), e
    # x, y: delta = s (t - sx) = -d(s/2 (t - sx)^2)/d(sx); as a logit gradient it lacks sx(1 - sx)
    trained = [e for e in np.ndindex(out.shape) if e[2] < 2 and view[e] != 0]
    assert len(trained) >= 6
    for e in trained:
        flat = np.ravel_multi_index(e, out.shape)
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[flat] += eps
        minus.reshape(-1)[flat] -= eps
        numeric = -(true_loss(net, plus, truth)[1] - true_loss(net, minus, truth)[1]) / (2 * eps)
        slope = out[e] * (1 - out[e])
        assert numeric == pytest.approx(view[e] * slope, abs=1e-6), e
        assert abs(view[e] - numeric) > 1e-3 * abs(view[e])  # not the logit gradient


def test_backward_accumulates_and_layer_zero(tmp_path):
    net = yolo_net(tmp_path)
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(3))
    net.forward(x, truth, train=True)
    start = np.full(x.shape, 0.25, np.float32)
    net.input, net.delta = x, start.copy()
    l.backward(l, net)
    np.testing.assert_allclose(net.delta, start + l.delta)
    net.delta = None
    l.backward(l, net)  # layer 0: nothing to add to


def test_two_heads_network_cost_is_the_mean_and_log_line(tmp_path):
    text = f"""[net]
batch=1
width=16
height=16
channels=3
[convolutional]
filters=24
size=3
stride=4
pad=1
activation=linear
[yolo]
mask=3,4,5
anchors={ANCHORS}
classes=3
num=6
[route]
layers=-2
[upsample]
stride=2
[yolo]
mask=0,1,2
anchors={ANCHORS}
classes=3
num=6
"""
    net = net_from(tmp_path, text, verbose=False)
    assert [l.out_w for l in net.layers] == [4, 4, 4, 8, 8]
    truth = np.zeros((1, 450), np.float32)
    truth[0, :5] = [0.3, 0.4, 0.5, 0.6, 1]
    truth[0, 5:10] = [0.7, 0.7, 0.05, 0.08, 0]
    x = np.random.default_rng(0).uniform(size=(1, net.inputs)).astype(np.float32)
    net.forward(x, truth, train=True)
    heads = [net.layers[1], net.layers[4]]
    assert net.cost == pytest.approx((heads[0].cost + heads[1].cost) / 2)
    assert sum(h.stats["count"] for h in heads) == 2
    from minidark.layers.yolo import stats_line

    assert stats_line(heads[1]).startswith("Region 4 Avg IOU: ")


def test_generic_gradcheck_reports_the_head_as_not_checked(tmp_path):
    from minidark.testing import gradcheck

    text = CFG.format(
        batch=2, channels=24, mask="0,1,2", anchors=ANCHORS, ignore=0.5, truth_thresh=1
    )
    results = gradcheck(text)
    head = [r for r in results if r.type == "yolo"]
    assert head and all(r.status == "skip" and "test_yolo.py" in r.note for r in head)
