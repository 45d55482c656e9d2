"""The stock YOLO cfgs (``tests/cfg/stock/yolov3-tiny``, ``yolov2-tiny``,
``yolov1-tiny``, ``yolov3``, ``yolov2``: darknet's layer structure) build with
the sizes and BFLOPs darknet prints for them and run a forward pass (the tiny
ones at their network size, the full ones at 160x160 to stay quick)."""

import os
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark.cfg import read_cfg_text

STOCK = os.path.join(os.path.dirname(__file__), "cfg", "stock")

# darknet's layer table for these cfgs: (layer, type, out_w, out_h, out_c, BFLOPs)
DARKNET_TABLES = {
    "yolov3-tiny": [
        (0, "convolutional", 416, 416, 16, 0.150),
        (1, "maxpool", 208, 208, 16, 0),
        (2, "convolutional", 208, 208, 32, 0.399),
        (4, "convolutional", 104, 104, 64, 0.399),
        (6, "convolutional", 52, 52, 128, 0.399),
        (8, "convolutional", 26, 26, 256, 0.399),
        (10, "convolutional", 13, 13, 512, 0.399),
        (11, "maxpool", 13, 13, 512, 0),
        (12, "convolutional", 13, 13, 1024, 1.595),
        (13, "convolutional", 13, 13, 256, 0.089),
        (14, "convolutional", 13, 13, 512, 0.399),
        (15, "convolutional", 13, 13, 255, 0.044),
        (16, "yolo", 13, 13, 255, 0),
        (17, "route", 13, 13, 256, 0),
        (18, "convolutional", 13, 13, 128, 0.011),
        (19, "upsample", 26, 26, 128, 0),
        (20, "route", 26, 26, 384, 0),
        (21, "convolutional", 26, 26, 256, 1.196),
        (22, "convolutional", 26, 26, 255, 0.088),
        (23, "yolo", 26, 26, 255, 0),
    ],
    "yolov2-tiny": [
        (0, "convolutional", 416, 416, 16, 0.150),
        (10, "convolutional", 13, 13, 512, 0.399),
        (11, "maxpool", 13, 13, 512, 0),
        (12, "convolutional", 13, 13, 1024, 1.595),
        (13, "convolutional", 13, 13, 512, 1.595),
        (14, "convolutional", 13, 13, 425, 0.074),
        (15, "region", 13, 13, 425, 0),
    ],
    "yolov1-tiny": [
        (0, "convolutional", 448, 448, 16, 0.173),
        (2, "convolutional", 224, 224, 32, 0.462),
        (11, "maxpool", 7, 7, 512, 0),
        (12, "convolutional", 7, 7, 1024, 0.462),
        (13, "convolutional", 7, 7, 256, 0.231),
        (14, "connected", 1, 1, 1470, 0),
        (15, "detection", 7, 7, 30, 0),
    ],
    "yolov3": [
        (0, "convolutional", 608, 608, 32, 0.639),
        (1, "convolutional", 304, 304, 64, 3.407),
        (36, "shortcut", 76, 76, 256, 0),
        (61, "shortcut", 38, 38, 512, 0),
        (74, "shortcut", 19, 19, 1024, 0),
        (75, "convolutional", 19, 19, 512, 0.379),
        (81, "convolutional", 19, 19, 255, 0.189),
        (82, "yolo", 19, 19, 255, 0),
        (83, "route", 19, 19, 512, 0),
        (84, "convolutional", 19, 19, 256, 0.095),
        (85, "upsample", 38, 38, 256, 0),
        (86, "route", 38, 38, 768, 0),
        (93, "convolutional", 38, 38, 255, 0.377),
        (94, "yolo", 38, 38, 255, 0),
        (98, "route", 76, 76, 384, 0),
        (105, "convolutional", 76, 76, 255, 0.754),
        (106, "yolo", 76, 76, 255, 0),
    ],
    "yolov2": [
        (0, "convolutional", 608, 608, 32, 0.639),
        (24, "convolutional", 19, 19, 1024, 6.814),
        (25, "route", 38, 38, 512, 0),
        (26, "convolutional", 38, 38, 64, 0.095),
        (27, "reorg", 19, 19, 256, 0),
        (28, "route", 19, 19, 1280, 0),
        (29, "convolutional", 19, 19, 1024, 8.517),
        (30, "convolutional", 19, 19, 425, 0.314),
        (31, "region", 19, 19, 425, 0),
    ],
}
FULL = ("yolov3", "yolov2")  # run at 160x160 in the forward check
# layers, and the sum of the convolutions' BFLOPs darknet prints
TOTALS = {
    "yolov3-tiny": (24, 5.568),
    "yolov2-tiny": (16, 5.409),
    "yolov1-tiny": (16, 3.176),
    "yolov3": (107, 140.69),
    "yolov2": (32, 62.94),
}  # the last two: pjreddie.com's table


@pytest.mark.parametrize("name", sorted(DARKNET_TABLES))
def test_stock_yolo_cfg_builds_with_darknets_table_and_runs(name):
    net = minidark.load_network(os.path.join(STOCK, name + ".cfg"))
    layers, bflops = TOTALS[name]
    assert len(net.layers) == layers
    for index, type_, w, h, c, flops in DARKNET_TABLES[name]:
        l = net.layers[index]
        assert (l.type, l.out_w, l.out_h, l.out_c) == (type_, w, h, c), index
        if type_ == "convolutional":  # darknet prints BFLOPs for convolutions only
            assert l.flops / 1e9 == pytest.approx(flops, abs=6e-4), index
    conv = sum(l.flops for l in net.layers if l.type == "convolutional") / 1e9
    assert conv == pytest.approx(bflops, abs=5e-3)  # a sum of rounded printed values
    assert "BFLOPs" in net.summary()
    if name in FULL:
        text = (Path(STOCK) / f"{name}.cfg").read_text()
        net = minidark.parse_network(
            read_cfg_text(
                text.replace("width=608", "width=160").replace("height=608", "height=160")
            ),
            verbose=False,
        )
    x = np.random.default_rng(0).uniform(size=(1, net.inputs)).astype(np.float32)
    out = net.predict(x)
    assert out.shape == (1, net.outputs) and np.isfinite(out).all()
    heads = [l for l in net.layers if l.type in ("yolo", "region", "detection")]
    assert heads and all(l.truths for l in heads)
