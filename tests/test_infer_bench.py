"""infer_bench's per-layer comparison: every layer of minidark beside OpenCV's own
profile of the same layer (matched by darknet index)."""

import re
from pathlib import Path

from minidark.tools.infer_bench import format_report, measure

STOCK = Path(__file__).parent / "cfg" / "stock"


def test_layers_lists_every_layer_beside_opencv():
    result = measure(str(STOCK / "yolov3-tiny.cfg"), runs=2, size=64)
    layers = result["layers"]
    assert len(layers) == 24 and all(l["seconds"] > 0 for l in layers)
    convs = [l for l in layers if l["type"] == "convolutional"]
    assert all(l["opencv_seconds"] > 0 for l in convs)  # OpenCV's conv_N, BN and leaky fused
    report = format_report("yolov3-tiny.cfg", result, every_layer=True)
    rows = report.split("every layer")[1].splitlines()[1:]
    rows = [r for r in rows if re.match(r"\s+\d+ ", r)]
    assert [int(r.split()[0]) for r in rows] == list(range(24))
    for row in rows:
        if " convolutional " in row:
            assert len(re.findall(r"\d+\.\d ms", row)) == 2  # minidark, OpenCV
    assert "slowest layers" in format_report("yolov3-tiny.cfg", result)


def test_peak_rss_is_each_engines_own(tmp_path):
    """Each engine's peak is measured alone in a fresh process, from its own address
    space: a parent holding 600 MB does not show in either (Linux carries
    ru_maxrss over fork + exec; VmHWM starts again)."""
    import numpy as np

    import minidark
    from minidark.tools.infer_bench import peak_rss_mb
    from minidark.weights import save_weights

    cfg = str(STOCK / "yolov3-tiny.cfg")
    net = minidark.load_network(cfg, batch=1, seed=0)
    weights = str(tmp_path / "random.weights")
    save_weights(net, weights)
    ballast = np.ones(600 * 2**20 // 8)  # touched: resident in this process
    peaks = {
        engine: peak_rss_mb(engine, cfg, weights, 1, (net.c, 64, 64), passes=1)
        for engine in ("minidark", "opencv")
    }
    assert ballast.sum() > 0
    for engine, peak in peaks.items():
        assert peak is not None and 20 < peak < 500, (engine, peak)
