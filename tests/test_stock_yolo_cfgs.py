"""The stock YOLO cfgs (``tests/cfg/stock/yolov3-tiny``, ``yolov2-tiny``,
``yolov1-tiny``: darknet's layer structure) build with the sizes and BFLOPs
darknet prints for them, and run a forward pass at their network size."""
import os

import numpy as np
import pytest

import minidark

STOCK = os.path.join(os.path.dirname(__file__), "cfg", "stock")

# darknet's layer table for these cfgs: (layer, type, out_w, out_h, out_c, BFLOPs)
DARKNET_TABLES = {
    "yolov3-tiny": [
        (0, "convolutional", 416, 416, 16, .150), (1, "maxpool", 208, 208, 16, 0),
        (2, "convolutional", 208, 208, 32, .399), (4, "convolutional", 104, 104, 64, .399),
        (6, "convolutional", 52, 52, 128, .399), (8, "convolutional", 26, 26, 256, .399),
        (10, "convolutional", 13, 13, 512, .399), (11, "maxpool", 13, 13, 512, 0),
        (12, "convolutional", 13, 13, 1024, 1.595), (13, "convolutional", 13, 13, 256, .089),
        (14, "convolutional", 13, 13, 512, .399), (15, "convolutional", 13, 13, 255, .044),
        (16, "yolo", 13, 13, 255, 0), (17, "route", 13, 13, 256, 0),
        (18, "convolutional", 13, 13, 128, .011), (19, "upsample", 26, 26, 128, 0),
        (20, "route", 26, 26, 384, 0), (21, "convolutional", 26, 26, 256, 1.196),
        (22, "convolutional", 26, 26, 255, .088), (23, "yolo", 26, 26, 255, 0)],
    "yolov2-tiny": [
        (0, "convolutional", 416, 416, 16, .150), (10, "convolutional", 13, 13, 512, .399),
        (11, "maxpool", 13, 13, 512, 0), (12, "convolutional", 13, 13, 1024, 1.595),
        (13, "convolutional", 13, 13, 512, 1.595), (14, "convolutional", 13, 13, 425, .074),
        (15, "region", 13, 13, 425, 0)],
    "yolov1-tiny": [
        (0, "convolutional", 448, 448, 16, .173), (2, "convolutional", 224, 224, 32, .462),
        (11, "maxpool", 7, 7, 512, 0), (12, "convolutional", 7, 7, 1024, .462),
        (13, "convolutional", 7, 7, 256, .231), (14, "connected", 1, 1, 1470, 0),
        (15, "detection", 7, 7, 30, 0)],
}
# layers, and the sum of the convolutions' BFLOPs darknet prints
TOTALS = {"yolov3-tiny": (24, 5.568), "yolov2-tiny": (16, 5.409), "yolov1-tiny": (16, 3.176)}


@pytest.mark.parametrize("name", sorted(DARKNET_TABLES))
def test_stock_yolo_cfg_builds_with_darknets_table_and_runs(name):
    net = minidark.load_network(os.path.join(STOCK, name + ".cfg"))
    layers, bflops = TOTALS[name]
    assert len(net.layers) == layers
    for index, type_, w, h, c, flops in DARKNET_TABLES[name]:
        l = net.layers[index]
        assert (l.type, l.out_w, l.out_h, l.out_c) == (type_, w, h, c), index
        if type_ == "convolutional":     # darknet prints BFLOPs for convolutions only
            assert l.flops / 1e9 == pytest.approx(flops, abs=6e-4), index
    conv = sum(l.flops for l in net.layers if l.type == "convolutional") / 1e9
    assert conv == pytest.approx(bflops, abs=5e-3)   # a sum of rounded printed values
    assert "BFLOPs" in net.summary()
    x = np.random.default_rng(0).uniform(size=(1, net.inputs)).astype(np.float32)
    out = net.predict(x)
    assert out.shape == (1, net.outputs) and np.isfinite(out).all()
    heads = [l for l in net.layers if l.type in ("yolo", "region", "detection")]
    assert heads and all(l.truths for l in heads)
