"""[region] (region_layer.c): cfg keys, the loss against a naive loop of
darknet's semantics, and a gradient check of the backward minidark follows
(darknet's GPU path: logistic derivative on x, y, obj; darknet's CPU backward
is empty, listed as a deviation in the reference harness).

With ``rescore=0`` the region delta after backward is the exact negative
gradient of ``sum s/2 (t - sigma(x))^2`` (x, y, obj), ``s/2 (t - tw)^2`` (w,
h) and ``class_scale * cross-entropy`` of the softmax (one-hot truth).
"""

import math

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import to_float64

from conftest import net_from

ANCHORS = "1.08,1.19, 3.42,4.41, 6.63,11.38"
CFG = """[net]
batch=2
width=5
height=5
channels=21

[region]
anchors={anchors}
bias_match={bias_match}
classes=2
coords=4
num=3
softmax={softmax}
jitter=.2
rescore={rescore}
object_scale=5
noobject_scale=1
class_scale=1.5
coord_scale=1.2
absolute=1
thresh={thresh}
random=1
max=4
"""


def region_net(tmp_path, softmax=1, rescore=1, bias_match=1, thresh=0.6):
    return net_from(
        tmp_path,
        CFG.format(
            anchors=ANCHORS, softmax=softmax, rescore=rescore, bias_match=bias_match, thresh=thresh
        ),
        verbose=False,
    )


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def iou(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def naive_region(x, truth, l, seen):
    """darknet's forward_region_layer as loops (float64): (delta, cost, stats, loss).
    ``loss`` is the function the GPU-path backward is the gradient of (rescore off)."""
    B, n, C, H, W = x.shape[0], l.n, l.classes, l.h, l.w
    raw = x.reshape(B, n, 5 + C, H, W)
    out = raw.copy()
    for k in (0, 1, 4):
        out[:, :, k] = sigmoid(raw[:, :, k])
    if l.softmax:
        e = np.exp(raw[:, :, 5:] - raw[:, :, 5:].max(axis=2, keepdims=True))
        out[:, :, 5:] = e / e.sum(axis=2, keepdims=True)
    else:
        out[:, :, 5:] = sigmoid(raw[:, :, 5:])
    delta = np.zeros_like(out)
    scale = np.zeros_like(out)  # s of each trained entry
    anchors = l.biases.reshape(-1, 2).astype(np.float64)
    boxes = truth.reshape(B, -1, 5)
    loss = 0.0

    def pred(b, a, j, i):
        return (
            (i + out[b, a, 0, j, i]) / W,
            (j + out[b, a, 1, j, i]) / H,
            math.exp(out[b, a, 2, j, i]) * anchors[a, 0] / W,
            math.exp(out[b, a, 3, j, i]) * anchors[a, 1] / H,
        )

    def truths(b):
        for t in range(boxes.shape[1]):
            if boxes[b, t, 0] == 0:
                return
            yield boxes[b, t]

    def box_delta(b, a, j, i, box, s):
        targets = (
            box[0] * W - i,
            box[1] * H - j,
            math.log(box[2] * W / anchors[a, 0]),
            math.log(box[3] * H / anchors[a, 1]),
        )
        for k in range(4):
            delta[b, a, k, j, i] = s * (targets[k] - out[b, a, k, j, i])
            scale[b, a, k, j, i] = s

    stats = dict(iou=0, cat=0, obj=0, count=0, recall=0)
    for b in range(B):
        for j in range(H):
            for i in range(W):
                for a in range(n):
                    best = max([iou(pred(b, a, j, i), t) for t in truths(b)] + [0])
                    delta[b, a, 4, j, i] = l.noobject_scale * (0 - out[b, a, 4, j, i])
                    scale[b, a, 4, j, i] = l.noobject_scale
                    if best > l.thresh:
                        delta[b, a, 4, j, i] = scale[b, a, 4, j, i] = 0
                    if seen < 12800:
                        box_delta(
                            b,
                            a,
                            j,
                            i,
                            ((i + 0.5) / W, (j + 0.5) / H, anchors[a, 0] / W, anchors[a, 1] / H),
                            0.01,
                        )
        for box in truths(b):
            i, j = int(box[0] * W), int(box[1] * H)
            fits = []
            for a in range(n):
                p = pred(b, a, j, i)
                shape = (anchors[a, 0] / W, anchors[a, 1] / H) if l.bias_match else p[2:]
                fits.append(iou((0, 0, *shape), (0, 0, box[2], box[3])))
            a = int(np.argmax(fits))
            v = iou(pred(b, a, j, i), box)
            box_delta(b, a, j, i, box, l.coord_scale * (2 - box[2] * box[3]))
            stats["iou"] += v
            stats["recall"] += v > 0.5
            stats["obj"] += out[b, a, 4, j, i]
            delta[b, a, 4, j, i] = l.object_scale * ((v if l.rescore else 1) - out[b, a, 4, j, i])
            scale[b, a, 4, j, i] = l.object_scale
            c = int(box[4])
            if not l.softmax and delta[b, a, 5, j, i]:
                delta[b, a, 5 + c, j, i] = l.class_scale * (1 - out[b, a, 5 + c, j, i])
            else:
                for k in range(C):
                    delta[b, a, 5 + k, j, i] = l.class_scale * ((k == c) - out[b, a, 5 + k, j, i])
                stats["cat"] += out[b, a, 5 + c, j, i]
            scale[b, a, 5:, j, i] = l.class_scale
            stats["count"] += 1
    trained = scale != 0
    target = np.where(trained, delta / np.where(trained, scale, 1) + out, 0)
    sq = [0, 1, 2, 3, 4]
    loss = float((scale[:, :, sq] / 2 * (target[:, :, sq] - out[:, :, sq]) ** 2).sum())
    cls = trained[:, :, 5]
    loss += float(
        -(scale[:, :, 5:] * target[:, :, 5:] * np.log(out[:, :, 5:])).sum(axis=2)[cls].sum()
    )
    return delta.reshape(B, -1), float((delta**2).sum()), stats, loss


def scenario(net, rng):
    l = net.layers[0]
    x = rng.uniform(-1, 1, (net.batch, l.inputs))
    net.forward(x, train=False)
    out = l.output.reshape(net.batch, l.n, 7, l.h, l.w)
    anchors = l.biases.reshape(-1, 2)
    a, j, i = 1, 2, 3  # a truth on a prediction: IoU above thresh
    planted = [
        (i + out[0, a, 0, j, i]) / l.w,
        (j + out[0, a, 1, j, i]) / l.h,
        1.03 * math.exp(out[0, a, 2, j, i]) * anchors[a, 0] / l.w,
        math.exp(out[0, a, 3, j, i]) * anchors[a, 1] / l.h,
        1,
    ]
    rows = [
        [planted, [0.15, 0.2, 0.2, 0.25, 0]],
        [[0.5, 0.5, 0.8, 0.9, 1], [0.55, 0.52, 0.75, 0.8, 0], [0.9, 0.1, 0.1, 0.1, 1]],
    ]
    truth = np.zeros((net.batch, 4 * 5))
    for b, boxes in enumerate(rows):
        for t, box in enumerate(boxes):
            truth[b, 5 * t : 5 * t + 5] = box
    return x, truth


def test_keys_fields_and_errors(tmp_path, recwarn):
    net = region_net(tmp_path)
    l = net.layers[0]
    assert (l.n, l.classes, l.coords, l.max_boxes, l.truths, net.truths) == (3, 2, 4, 4, 20, 20)
    assert (l.object_scale, l.class_scale, l.coord_scale, l.thresh) == (5, 1.5, 1.2, 0.6)
    assert (l.softmax, l.rescore, l.bias_match, l.absolute, l.random) == (True, True, True, 1, 1)
    assert not [w for w in recwarn if "nused" in str(w.message)]
    with pytest.raises(ConfigError, match="anchors"):
        net_from(
            tmp_path,
            CFG.format(anchors="1,2,3", softmax=1, rescore=1, bias_match=1, thresh=0.6),
            verbose=False,
        )
    with pytest.raises(ConfigError, match="classes"):
        net_from(
            tmp_path,
            CFG.format(anchors=ANCHORS, softmax=1, rescore=1, bias_match=1, thresh=0.6).replace(
                "classes=2", "classes=3"
            ),
            verbose=False,
        )


@pytest.mark.parametrize(
    "softmax,rescore,bias_match,seen", [(1, 1, 1, 0), (0, 0, 0, 12800), (1, 0, 1, 100)]
)
def test_loss_matches_a_naive_loop(tmp_path, softmax, rescore, bias_match, seen):
    net = to_float64(region_net(tmp_path, softmax, rescore, bias_match))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(4))
    net.seen = seen
    net.forward(x, truth, train=True)
    delta, cost, stats, _ = naive_region(x, truth, l, seen)
    np.testing.assert_allclose(l.delta, delta, atol=2e-6)  # IoU (rescore target) is float32
    assert l.cost == pytest.approx(cost, rel=1e-6)
    assert l.stats["count"] == stats["count"] == 5
    assert l.stats["avg_iou"] == pytest.approx(stats["iou"] / 5, rel=1e-6)
    assert l.stats["avg_recall_iou_gt_0.5"] == pytest.approx(stats["recall"] / 5)
    assert l.stats["avg_obj_pos"] == pytest.approx(stats["obj"] / 5)
    d = l.delta.reshape(2, 3, 7, 5, 5)
    assert d[0, 1, 4, 2, 3] != 0 and (d[0, :, 4] == 0).any()  # planted: above thresh


def test_gradcheck_gpu_path_backward(tmp_path):
    net = to_float64(region_net(tmp_path, softmax=1, rescore=0))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(4))
    net.seen = 0
    net.forward(x, truth, train=True)
    grad = np.zeros_like(x)
    net.input, net.delta = x, grad
    l.backward(l, net)
    eps, rng = 1e-6, np.random.default_rng(5)
    picks = list(rng.choice(x.size, 80, replace=False))
    picks += list(np.flatnonzero(np.abs(l.delta.reshape(-1)) > 0.05)[:40])
    for k in picks:
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[k] += eps
        minus.reshape(-1)[k] -= eps
        numeric = -(naive_region(plus, truth, l, 0)[3] - naive_region(minus, truth, l, 0)[3]) / (
            2 * eps
        )
        assert numeric == pytest.approx(grad.reshape(-1)[k], abs=1e-6), k


def test_backward_scales_delta_by_the_logistic_derivative_and_adds(tmp_path):
    net = region_net(tmp_path)
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(6))
    net.forward(x, truth, train=True)
    before = l.delta.copy().reshape(2, 3, 7, 5, 5)
    out = l.output.reshape(2, 3, 7, 5, 5)
    start = np.ones_like(x, dtype=np.float32)
    net.input, net.delta = x, start.copy()
    l.backward(l, net)
    added = (net.delta - start).reshape(before.shape)
    for k in range(7):
        factor = out[:, :, k] * (1 - out[:, :, k]) if k in (0, 1, 4) else 1
        np.testing.assert_allclose(added[:, :, k], before[:, :, k] * factor, rtol=1e-5, atol=1e-7)


def test_tree_softmax_per_group(tmp_path):
    tree = tmp_path / "t.tree"
    tree.write_text("animal -1\nthing -1\ncat 0\ndog 0\nbird 0\n")
    text = CFG.format(anchors=ANCHORS, softmax=1, rescore=1, bias_match=1, thresh=0.6)
    text = text.replace("classes=2", "classes=5\ntree=" + str(tree)).replace(
        "channels=21", "channels=30"
    )
    net = net_from(tmp_path, text, verbose=False)
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    out = net.forward(x).reshape(2, 3, 10, 5, 5)
    np.testing.assert_allclose(out[:, :, 5:7].sum(axis=2), 1, rtol=1e-5)
    np.testing.assert_allclose(out[:, :, 7:10].sum(axis=2), 1, rtol=1e-5)
    truth = np.zeros((2, 20), np.float32)
    truth[0, :5] = [0.3, 0.3, 0.2, 0.2, 3]  # dog: trains dog vs cat/bird and animal vs thing
    net.forward(x, truth, train=True)
    l = net.layers[0]
    assert l.stats["count"] == 1 and np.isfinite(l.cost)


def test_tree_class_only_label_trains_its_class_at_the_most_confident_slot(tmp_path):
    """A YOLO9000 label without a box (x, y > 100000): no-object on every slot of
    that image, the label's class and its ancestors' groups at the slot with the
    highest obj * P(class), no box and no anchor prior."""
    tree = tmp_path / "t.tree"
    tree.write_text("animal -1\nthing -1\ncat 0\ndog 0\nbird 0\n")
    text = CFG.format(anchors=ANCHORS, softmax=1, rescore=1, bias_match=1, thresh=0.6)
    text = text.replace("classes=2", "classes=5\ntree=" + str(tree)).replace(
        "channels=21", "channels=30"
    )
    net = net_from(tmp_path, text, verbose=False)
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    truth = np.zeros((2, 20), np.float32)
    truth[0, :5] = [999999, 999999, 999999, 999999, 4]  # bird, no box
    truth[1, :5] = [0.3, 0.3, 0.2, 0.2, 3]
    net.forward(x, truth, train=True)
    l = net.layers[0]
    out, d = l.output.reshape(2, 3, 10, 5, 5), l.delta.reshape(2, 3, 10, 5, 5)
    score = out[0, :, 4] * out[0, :, 5 + 4] * out[0, :, 5 + 0]  # obj * P(bird | animal) P(animal)
    a, j, i = np.unravel_index(np.argmax(score), score.shape)
    assert d[0, a, 4, j, i] == 0 and (d[0, :, 4] != 0).sum() == 3 * 25 - 1
    assert set(np.flatnonzero(d[0, a, 5:, j, i])) == {0, 1, 2, 3, 4}
    assert d[0, a, 5 + 4, j, i] == pytest.approx(1.5 * (1 - out[0, a, 5 + 4, j, i]))
    assert (d[0, :, :4] == 0).all() and l.stats["count"] == 1
