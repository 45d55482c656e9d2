"""[detection] (YOLOv1, detection_layer.c): cfg keys, the loss against a naive
loop, and a gradient check: with rescore=0 the delta is exactly the negative
gradient of ``sum scale/2 (target - output)^2`` (the sse darknet trains);
with rescore=1 the confidence target is the IoU, held constant."""

import numpy as np
import pytest

from minidark.errors import ConfigError
from minidark.testing import to_float64

from conftest import net_from

S, N, C = 3, 2, 2
CFG = f"""[net]
batch=2
inputs={S * S * (C + N * 5)}

[detection]
classes={C}
coords=4
rescore={{rescore}}
side={S}
num={N}
softmax={{softmax}}
sqrt=1
jitter=.2
object_scale=1.5
noobject_scale=.5
class_scale=1.2
coord_scale=5
forced=0
random=0
max=20
reorg=0
"""


def det_net(tmp_path, rescore=1, softmax=0):
    return net_from(tmp_path, CFG.format(rescore=rescore, softmax=softmax), verbose=False)


def iou(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def naive(x, truth, l):
    """darknet's forward_detection_layer as loops: (delta, stats, sse loss)."""
    B, cells = x.shape[0], S * S
    out = x.copy()
    delta = np.zeros_like(out)
    scale = np.zeros_like(out)
    stats = dict(iou=0, count=0, by_rmse=0)
    for b in range(B):
        for i in range(cells):
            t = truth[b, i * (1 + C + 4) : (i + 1) * (1 + C + 4)]
            for j in range(N):
                p = cells * C + i * N + j
                delta[b, p], scale[b, p] = l.noobject_scale * (0 - out[b, p]), l.noobject_scale
            if not int(t[0]):
                continue
            for k in range(C):
                q = i * C + k
                delta[b, q], scale[b, q] = l.class_scale * (t[1 + k] - out[b, q]), l.class_scale
            tb = (t[1 + C] / S, t[2 + C] / S, t[3 + C], t[4 + C])
            best, best_iou, best_rmse = -1, 0, 20
            for j in range(N):
                o = out[b, cells * (C + N) + (i * N + j) * 4 :][:4]
                ob = (o[0] / S, o[1] / S, o[2] ** 2, o[3] ** 2)
                v = iou(ob, tb)
                r = np.sqrt(sum((u - w) ** 2 for u, w in zip(ob, tb, strict=True)))
                if best_iou > 0 or v > 0:
                    if v > best_iou:
                        best_iou, best = v, j
                elif r < best_rmse:
                    best_rmse, best = r, j
            stats["by_rmse"] += best_iou == 0
            o0 = cells * (C + N) + (i * N + best) * 4
            o = out[b, o0 : o0 + 4]
            v = iou((o[0] / S, o[1] / S, o[2] ** 2, o[3] ** 2), tb)
            p = cells * C + i * N + best
            delta[b, p] = l.object_scale * ((v if l.rescore else 1) - out[b, p])
            scale[b, p] = l.object_scale
            target = [t[1 + C], t[2 + C], np.sqrt(t[3 + C]), np.sqrt(t[4 + C])]
            for k in range(4):
                delta[b, o0 + k] = l.coord_scale * (target[k] - o[k])
                scale[b, o0 + k] = l.coord_scale
            stats["iou"] += v
            stats["count"] += 1
    trained = scale != 0
    loss = float((delta[trained] ** 2 / (2 * scale[trained])).sum())
    return delta, stats, loss


def scenario(net, rng):
    x = rng.uniform(0, 1, (net.batch, net.inputs))
    truth = np.zeros((net.batch, S * S * (1 + C + 4)))
    for b, cell, cls, box in [
        (0, 4, 1, (0.4, 0.6, 0.3, 0.2)),
        (0, 0, 0, (0.5, 0.5, 0.9, 0.8)),
        (1, 8, 1, (0.1, 0.9, 0.05, 0.04)),
        (1, 3, 0, (0.7, 0.2, 0.5, 0.6)),
    ]:
        row = truth[b, cell * (1 + C + 4) : (cell + 1) * (1 + C + 4)]
        row[0], row[1 + cls], row[1 + C :] = 1, 1, box
    return x, truth


def test_keys_fields_and_errors(tmp_path, recwarn):
    net = det_net(tmp_path)
    l = net.layers[0]
    assert (l.side, l.n, l.classes, l.coords, l.truths) == (S, N, C, 4, S * S * 7)
    assert (l.out_w, l.out_h, l.out_c) == (S, S, C + N * 5)
    assert (l.sqrt, l.rescore, l.forced, l.max_boxes) == (True, True, 0, 20)
    assert not [w for w in recwarn if "nused" in str(w.message)]
    with pytest.raises(ConfigError, match="side"):
        net_from(
            tmp_path, CFG.format(rescore=1, softmax=0).replace("side=3", "side=4"), verbose=False
        )


@pytest.mark.parametrize("rescore", [1, 0])
def test_loss_matches_a_naive_loop(tmp_path, rescore):
    net = to_float64(det_net(tmp_path, rescore))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(0))
    x[1, S * S * (C + N) :].reshape(S * S, N, 4)[8] = [0.9, 0.9, 0.1, 0.1]  # no overlap: by RMSE
    net.forward(x, truth, train=True)
    delta, stats, _ = naive(x, truth, l)
    np.testing.assert_allclose(l.delta, delta, atol=2e-6)  # IoU runs in float32
    assert l.cost == pytest.approx(float((delta**2).sum()), rel=1e-6)
    assert l.stats["count"] == stats["count"] == 4 and stats["by_rmse"] >= 1
    assert l.stats["avg_iou"] == pytest.approx(stats["iou"] / 4, abs=1e-6)


def test_gradcheck_sse(tmp_path):
    net = to_float64(det_net(tmp_path, rescore=0))
    l = net.layers[0]
    x, truth = scenario(net, np.random.default_rng(1))
    net.forward(x, truth, train=True)
    grad = np.zeros_like(x)
    net.input, net.delta = x, grad
    l.backward(l, net)
    eps = 1e-6
    for k in range(x.shape[1]):
        for b in range(x.shape[0]):
            plus, minus = x.copy(), x.copy()
            plus[b, k] += eps
            minus[b, k] -= eps
            numeric = -(naive(plus, truth, l)[2] - naive(minus, truth, l)[2]) / (2 * eps)
            assert numeric == pytest.approx(grad[b, k], abs=1e-6), (b, k)


def test_softmax_classes_and_inference_copy(tmp_path):
    net = det_net(tmp_path, softmax=1)
    x = np.random.default_rng(2).normal(size=(2, net.inputs)).astype(np.float32)
    out = net.forward(x)
    np.testing.assert_allclose(out[:, : S * S * C].reshape(2, S * S, C).sum(axis=2), 1, rtol=1e-6)
    np.testing.assert_array_equal(out[:, S * S * C :], x[:, S * S * C :])
