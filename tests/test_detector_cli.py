"""``minidark detector test`` and ``data.image.detect``: a hand-set network whose one
prediction is known (box decoding, letterbox correction, probabilities,
labels and the drawn box checked in pixels), the stdin loop, and the stock
yolov3-tiny with random weights on a photograph-like JPEG."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minidark
from minidark.data.image import class_color, detect
from minidark.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOCK = os.path.join(ROOT, "tests", "cfg", "stock")

ONE_BOX = """[net]
batch=1
width=32
height=32
channels=3

[convolutional]
filters=8
size=1
stride=32
pad=0
activation=linear

[yolo]
mask=0
anchors=16,16
classes=3
num=1
"""


def run(*args, stdin=None, cwd=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "minidark", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def photo(path, w=200, h=150, seed=0):
    """A smooth, photograph-like JPEG (gradients and blobs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    image = np.stack([np.sin(6 * x + rng.uniform(0, 6)) * 0.5 + 0.5 for _ in range(3)], axis=2)
    for _ in range(5):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.05, 0.2)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    Image.fromarray((255 * image).astype(np.uint8)).save(path, quality=90)
    return path


def one_box_files(tmp_path, w_px=24, h_px=12):
    """cfg + weights: one grid cell, one anchor (16x16 px), class 1 at ~99%, a
    w_px x h_px box centred in the 32x32 network input."""
    cfg = tmp_path / "one.cfg"
    cfg.write_text(ONE_BOX)
    net = minidark.load_network(str(cfg))
    conv = net.layers[0]
    conv.weights[...] = 0
    conv.biases[...] = [0, 0, math.log(w_px / 16), math.log(h_px / 16), 5, -5, 5, -5]
    save_weights(net, tmp_path / "one.weights")
    data = tmp_path / "one.data"
    (tmp_path / "one.names").write_text("cat\ndog\nbird\n")
    data.write_text(f"classes=3\nnames={tmp_path / 'one.names'}\n")
    return str(data), str(cfg), str(tmp_path / "one.weights")


def test_net_detect_decodes_letterboxes_and_scales_to_the_image(tmp_path):
    _, cfg, weights = one_box_files(tmp_path)
    net = minidark.load_network(cfg, weights)
    image = np.zeros((48, 64, 3), np.uint8)  # 64 x 48: letterboxed to 32 x 24
    found = detect(net, image, names=["cat", "dog", "bird"])
    assert len(found) == 1
    d = found[0]
    assert (d.class_index, d.name) == (1, "dog")
    p = 1 / (1 + math.exp(-5))
    assert d.prob == pytest.approx(p * p, rel=1e-5)
    # centre of the input -> centre of the image; 24 px of 32 -> 48 of 64; 12 of 24 -> 24 of 48
    np.testing.assert_allclose(d.box, (32, 24, 48, 24), rtol=1e-5)
    assert d.corners == pytest.approx((8, 12, 56, 36), rel=1e-5)
    assert detect(net, image, thresh=0.999) == []


def test_cli_prints_darknets_lines_and_draws_the_box(tmp_path):
    data, cfg, weights = one_box_files(tmp_path)
    picture = tmp_path / "blank.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(picture)
    result = run("detector", "test", data, cfg, weights, str(picture), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{picture}: Predicted in ") and lines[0].endswith(" seconds.")
    assert lines[1:] == ["dog: 99%"]
    drawn = np.asarray(Image.open(tmp_path / "predictions.png").convert("RGB"))
    assert drawn.shape == (480, 640, 3)
    colour = np.array([int(255 * v) for v in class_color(1, 3)])
    # box (x, y, w, h) = (320, 240, 480, 240) px: left 80, right 560, top 120, bottom 360
    assert (drawn[240, 80] == colour).all() and (drawn[240, 559] == colour).all()
    assert (drawn[300, 320] == 255).all()  # inside the box: untouched
    assert (drawn[240, 70] == 255).all()  # outside: untouched


def test_cli_reads_paths_from_stdin_and_names_each_output(tmp_path):
    data, cfg, weights = one_box_files(tmp_path)
    a, b = photo(tmp_path / "a.jpg"), photo(tmp_path / "b.jpg", seed=1)
    out = tmp_path / "out"
    result = run("detector", "test", data, cfg, weights, "--out", str(out), stdin=f"{a}\n{b}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Predicted in") == 2
    assert sorted(os.listdir(out)) == ["a_predictions.png", "b_predictions.png"]


def test_cli_errors_are_one_line(tmp_path):
    data, cfg, weights = one_box_files(tmp_path)
    result = run(
        "detector",
        "test",
        data,
        cfg,
        weights,
        str(tmp_path / "missing.jpg"),
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2 and "missing.jpg" in result.stderr
    plain = tmp_path / "plain.cfg"
    plain.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[maxpool]\nsize=2\nstride=2\n")
    save_weights(minidark.load_network(str(plain)), tmp_path / "plain.weights")
    result = run(
        "detector",
        "test",
        data,
        str(plain),
        str(tmp_path / "plain.weights"),
        str(photo(tmp_path / "p.jpg")),
    )
    assert result.returncode != 0 and "no [yolo], [region] or [detection]" in result.stderr


def test_yolov3_tiny_with_random_weights_on_a_photograph(tmp_path):
    cfg = os.path.join(STOCK, "yolov3-tiny.cfg")
    net = minidark.load_network(cfg, seed=1)
    save_weights(net, tmp_path / "random.weights")
    data = os.path.join(ROOT, "cfg", "coco.data")  # darknet's 80 COCO names
    names = (Path(ROOT) / "data" / "coco.names").read_text().splitlines()
    picture = photo(tmp_path / "street.jpg", 500, 375)
    result = run(
        "detector",
        "test",
        data,
        cfg,
        str(tmp_path / "random.weights"),
        str(picture),
        "--out",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Predicted in" in result.stdout
    for line in result.stdout.splitlines()[1:]:
        name, percent = line.rsplit(": ", 1)
        assert name in names and 50 <= int(percent[:-1]) <= 100
    assert Image.open(tmp_path / "predictions.png").size == (500, 375)


def test_bench_times_minidark_beside_opencv(tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text((Path(STOCK) / "yolov3-tiny.cfg").read_text())
    result = run("detector", "bench", str(cfg), "--size", "96", "--runs", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "small.cfg: 96x96x3" in out and "minidark / OpenCV speed: " in out
    assert "convolutional" in out.split("where minidark's time goes")[1]


def test_cli_names_files_given_in_the_wrong_place(tmp_path):
    data, cfg, weights = one_box_files(tmp_path)
    result = run("detector", "test", cfg, data, weights, str(photo(tmp_path / "p.jpg")))
    assert result.returncode == 2 and "swapped" in result.stderr
