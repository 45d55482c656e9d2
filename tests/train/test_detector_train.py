"""minidark detector train / valid / map / recall / calc-anchors on a tiny synthetic set:
checkpoints, the per-head log lines, exact resume (across multi-scale resizes), errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minidark
from minidark.data.detection import DetectionDataset
from minidark.train.detection_trainer import DetectionTrainer, multiscale_sizes

CFG = """
[net]
batch=2
subdivisions=1
width={size}
height={size}
channels=3
learning_rate=.001
momentum=.9
decay=.0005
burn_in=2
max_batches={max_batches}
policy=steps
steps=5
scales=.5
saturation=1.5
exposure=1.5
hue=.1

[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask=0,1
anchors=10,10, 20,20
classes=2
num=2
jitter=.2
random={random}
"""


def make_dataset(root, images=6, size=40, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for split in ("train", "valid"):
        listing = []
        for i in range(images):
            canvas = np.full((size, size, 3), 40, np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(2))
                w, h = (int(rng.integers(8, 16)), int(rng.integers(8, 16)))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                canvas[y : y + h, x : x + w] = (220, 60, 60) if cls else (60, 220, 60)
                lines.append(
                    f"{cls} {(x + w / 2) / size} {(y + h / 2) / size} {w / size} {h / size}\n"
                )
            image = root / "images" / split / f"{i:03d}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas).save(image)
            label = root / "labels" / split / f"{i:03d}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(lines))
            listing.append(str(image))
        (root / f"{split}.txt").write_text("\n".join(listing) + "\n")
        paths.append(root / f"{split}.txt")
    (root / "shapes.names").write_text("green\nred\n")
    data = root / "shapes.data"
    data.write_text(
        f"classes=2\ntrain={paths[0]}\nvalid={paths[1]}\nnames={root}/shapes.names\n"
        f"backup={root}/backup\neval=voc\nresults={root}/results\n"
    )
    return data


def write_cfg(root, size=32, max_batches=6, random=0, name="tiny"):
    path = root / f"{name}.cfg"
    path.write_text(CFG.format(size=size, max_batches=max_batches, random=random))
    return path


def cli(*args, cwd=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "minidark", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = make_dataset(root)
    cfg = write_cfg(root)
    run = cli("detector", "train", data, cfg, "--seed", "3", "--no-progress", cwd=root)
    return root, data, cfg, run


def test_train_writes_checkpoints_log_and_summary(trained):
    root, _, _, run = trained
    assert run.returncode == 0, run.stderr
    backup = root / "backup"
    assert (backup / "tiny.weights").exists() and (backup / "tiny.weights.state.npz").exists()
    log = (backup / "tiny.log").read_text().splitlines()
    heads = [line for line in log if line.startswith("Region 4 Avg IOU:")]
    assert len(heads) == 6 and all(".5R:" in line and "No Obj:" in line for line in heads)
    assert any(line.startswith("6, ") for line in log)
    assert "mAP@0.5 = " in run.stdout and "mAP@[.5:.95] = " in run.stdout
    record = json.loads((backup / "tiny_metrics.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 6 and 0 <= record["map50"] <= 1
    assert (backup / "tiny_chart.png").exists()


def test_map_valid_and_recall(trained):
    root, data, cfg, _ = trained
    weights = root / "backup" / "tiny.weights"
    run = cli("detector", "map", data, cfg, weights, "--no-progress", cwd=root)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("detections_count = ")
    assert sum(line.startswith("class_id = ") for line in lines) == 2
    assert any(line.startswith("mAP@0.5 = ") for line in lines)
    assert any(line.startswith("mAP@[.5:.95] = ") for line in lines)
    run = cli("detector", "valid", data, cfg, weights, "--no-progress", cwd=root)
    assert run.returncode == 0, run.stderr
    for name in ("green", "red"):
        text = (root / "results" / f"comp4_det_test_{name}.txt").read_text()
        for line in text.splitlines():
            image_id, score, x0, _, x1, _ = line.split()
            assert len(image_id) == 3 and 0 < float(score) <= 1
            assert float(x0) >= 1 and float(x1) <= 40
    run = cli("detector", "recall", data, cfg, weights, cwd=root)
    assert run.returncode == 0, run.stderr
    assert "RPs/Img:" in run.stdout.splitlines()[-1] and "Recall:" in run.stdout


def test_calc_anchors(trained):
    root, data, _, _ = trained
    run = cli(
        "detector",
        "calc-anchors",
        data,
        "--num-of-clusters",
        "2",
        "--width",
        "40",
        "--height",
        "40",
        cwd=root,
    )
    assert run.returncode == 0, run.stderr
    anchors = run.stdout.splitlines()[-1].split("=")[1]
    values = [float(v) for v in anchors.replace(" ", "").split(",")]
    assert len(values) == 4 and all(8 <= v <= 16 for v in values)
    assert values[0] * values[1] <= values[2] * values[3]


def test_bad_label_is_one_line(tmp_path):
    data = make_dataset(tmp_path, images=2)
    (tmp_path / "labels" / "train" / "001.txt").write_text("0 .5 .5 .2 .2\n1 .5 .5 .2\n")
    run = cli("detector", "train", data, write_cfg(tmp_path), "--no-progress", cwd=tmp_path)
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "labels/train/001.txt:2: expected 'class x_center y_center width height' (5 fields), "
            "got 4: '1 .5 .5 .2'"
        )
    )
    assert "Traceback" not in run.stderr


def trainer_for(root, data, cfg, weights=None, seed=6):  # 6: multi-scale draws 96, then 128
    from minidark.data.datafile import read_data_file

    config = read_data_file(data)
    net = minidark.load_network(cfg, weights, seed=seed)
    train = DetectionDataset.from_list(config.train, 2)
    trainer = DetectionTrainer(
        net, train, None, backup_dir=root / "backup", base="tiny", seed=seed, progress=False
    )
    return net, trainer


def stop_at(batch, sizes=None):
    def hook(t):
        if sizes is not None:
            sizes.append(t.net.w)
        if t.net.current_batch == batch:
            t.request_stop()

    return hook


@pytest.mark.parametrize("random", [0, 1])
def test_resume_is_byte_identical(tmp_path, random):
    """Stopped at 14 in one go, or at 11 and resumed: the same bytes (max_batches=0
    trains until stopped; multi-scale resizes at 0 and 10, 96 or 128 for a 96 cfg)."""
    data = make_dataset(tmp_path, images=5)
    cfg = write_cfg(tmp_path, size=96 if random else 32, max_batches=0, random=random)
    sizes = []
    net, trainer = trainer_for(tmp_path / "a", data, cfg)
    trainer.on_iteration = stop_at(14, sizes)
    assert trainer.run()["status"] == "interrupted"
    straight = (tmp_path / "a" / "backup" / "tiny.backup").read_bytes()
    assert trainer.bar_suffix().startswith("; [4] IoU ") and " no-obj " in trainer.bar_suffix()
    if random:
        assert multiscale_sizes(96) == [96, 128] and sizes[0] != sizes[-1]
    net, trainer = trainer_for(tmp_path / "b", data, cfg)
    trainer.on_iteration = stop_at(11)
    trainer.run()
    backup = tmp_path / "b" / "backup" / "tiny.backup"
    net, trainer = trainer_for(tmp_path / "b", data, cfg, weights=backup, seed=99)
    assert "restored" in trainer.restore(backup)
    assert net.current_batch == 11 and net.w == sizes[10]
    trainer.on_iteration = stop_at(14)
    trainer.run()
    assert backup.read_bytes() == straight


def test_cutoff_trains_from_the_backbone_only(trained, tmp_path):
    """--cutoff 2 on whole weights trains exactly as the 2-layer backbone file
    (``minidark partial``) does: the head starts fresh, not from the file."""
    root, data, cfg, _ = trained
    weights = root / "backup" / "tiny.weights"
    backbone = tmp_path / "tiny.conv.2"
    run = cli("partial", cfg, weights, backbone, "2")
    assert run.returncode == 0, run.stderr
    results = {}
    for name, start, extra in (
        ("cut", weights, ("--cutoff", "2")),
        ("backbone", backbone, ()),
        ("whole", weights, ()),
    ):
        tuned = tmp_path / f"{name}.data"
        tuned.write_text(
            data.read_text().replace(f"backup={root}/backup", f"backup={tmp_path}/{name}")
        )
        run = cli(
            "detector", "train", tuned, cfg, start, "--clear", "--seed", "4", "--no-progress",
            *extra, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        results[name] = (tmp_path / name / "tiny.weights").read_bytes()
    assert results["cut"] == results["backbone"]
    assert results["cut"] != results["whole"]


def test_detector_train_has_no_stream_workers(tmp_path):
    run = cli("detector", "train", "a.data", "b.cfg", "--workers", "2", cwd=tmp_path)
    assert run.returncode == 2 and "unrecognized arguments: --workers 2" in run.stderr
