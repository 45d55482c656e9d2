"""The training loop: checkpoints (names, atomicity), NaN guard, logs, metrics, chart."""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import minidark
from minidark.data.dataset import Dataset
from minidark.train.trainer import (
    Trainer,
    TrainingStopped,
    cfg_base,
    evaluate,
    sidecar_path,
    topk_indices,
    train_state_names,
)
from minidark.weights import atomic_write

from conftest import mnist_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = """[net]
batch=32
height=28
width=28
channels=1
learning_rate={lr}
momentum=0.9
decay=0.0005
policy=steps
steps={step}
scales={scale}
max_batches={max_batches}
backup_every={backup_every}
min_crop=28
max_crop=28
flip=0

[connected]
output=32
activation=relu

[connected]
output=10
activation=linear

[softmax]
"""


@pytest.fixture(scope="module")
def data():
    return mnist_datasets(320, 200)  # 10 iterations per epoch


def make_trainer(
    tmp_path,
    data,
    lr=0.1,
    step=1000,
    scale=1,
    max_batches=25,
    backup_every=10,
    valid=True,
    weights=None,
    **cfg_keys,
):
    text = CFG.format(
        lr=lr, step=step, scale=scale, max_batches=max_batches, backup_every=backup_every
    )
    text = text.replace("flip=0\n", "flip=0\n" + "".join(f"{k}={v}\n" for k, v in cfg_keys.items()))
    cfg = tmp_path / "small.cfg"
    cfg.write_text(text)
    net = minidark.load_network(str(cfg), weights, seed=3)
    out = io.StringIO()
    trainer = Trainer(
        net,
        data[0],
        data[1] if valid else None,
        backup_dir=tmp_path / "backup",
        base=cfg_base(cfg),
        top=3,
        seed=3,
        progress=False,
        out=out,
    )
    return trainer, out


def test_checkpoint_names_log_metrics_and_chart(tmp_path, data):
    trainer, out = make_trainer(tmp_path, data, valid_every=10)
    assert trainer.augment is None  # the cfg turns augmentation off
    summary = trainer.run()
    backup = tmp_path / "backup"
    assert summary["status"] == "finished" and summary["iterations"] == 25
    names = sorted(os.listdir(backup))
    assert names == sorted(
        [
            ".small.lock",
            "small.backup",
            "small.backup.state.npz",
            "small.weights",
            "small.weights.state.npz",
            "small_1.weights",
            "small_1.weights.state.npz",
            "small_2.weights",
            "small_2.weights.state.npz",
            "small.log",
            "small_metrics.jsonl",
            "small_chart.png",
        ]
    )
    # <base>_<epoch>.weights holds the weights as they were at that epoch
    check = minidark.load_network(str(tmp_path / "small.cfg"))
    assert minidark.load_weights(check, str(backup / "small_1.weights")) == 320
    assert minidark.load_weights(check, str(backup / "small.backup")) == 20 * 32
    # darknet's line, one per iteration
    lines = [l for l in (backup / "small.log").read_text().splitlines() if not l.startswith("#")]
    assert len(lines) == 25
    pattern = (
        r"^(\d+), (\d+\.\d{3}): (\d+\.\d{6}), (\d+\.\d{6}) avg, (\d+\.\d{6}) rate, "
        r"\d+\.\d{6} seconds, (\d+) images$"
    )
    first, last = re.match(pattern, lines[0]), re.match(pattern, lines[-1])
    assert first and last, lines[0]
    assert first.group(1) == "1" and first.group(3) == first.group(4)  # avg seeded by loss
    assert last.group(1) == "25" and last.group(2) == "2.500" and last.group(6) == "800"
    # metrics: every valid_every batches and at the end
    records = [json.loads(l) for l in (backup / "small_metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [10, 20, 25]
    assert records[-1]["k"] == 3 and records[-1]["images"] == 200
    assert 0.5 < records[-1]["top1"] <= records[-1]["topk"] <= 1
    assert summary["accuracy"]["top1"] == records[-1]["top1"]
    assert "valid top-1" in out.getvalue()
    with Image.open(backup / "small_chart.png") as chart:
        assert chart.size == (960, 560)
        pixels = np.asarray(chart.convert("RGB"))
    assert (np.abs(pixels - [20, 70, 160]).sum(axis=2) < 30).sum() > 100  # the avg curve
    assert (np.abs(pixels - [200, 40, 40]).sum(axis=2) < 30).sum() > 20  # accuracy marks


def test_sidecar_holds_momentum_rng_and_order(tmp_path, data):
    trainer, _ = make_trainer(tmp_path, data, max_batches=3, valid=False)
    trainer.run()
    path = sidecar_path(tmp_path / "backup" / "small.weights")
    with np.load(path, allow_pickle=False) as state:
        keys = set(state.files)
        np.testing.assert_array_equal(
            state["layer0/weight_updates"], trainer.net.layers[0].weight_updates
        )
        assert int(state["seen"]) == 96 and int(state["position"]) == 96
        assert sorted(state["order"]) == list(range(320))
    assert {"trainer_rng", "net_rng", "order", "layer1/bias_updates"} <= keys
    assert train_state_names(trainer.net.layers[0]) == ["bias_updates", "weight_updates"]


def test_already_at_max_batches_says_so(tmp_path, data):
    trainer, _ = make_trainer(tmp_path, data, max_batches=3, valid=False)
    trainer.run()
    done, out = make_trainer(
        tmp_path,
        data,
        max_batches=3,
        valid=False,
        weights=str(tmp_path / "backup" / "small.weights"),
    )
    before = os.path.getmtime(tmp_path / "backup" / "small.weights")
    assert done.run()["status"] == "done-already"
    assert "already trained to max_batches=3" in out.getvalue()
    assert os.path.getmtime(tmp_path / "backup" / "small.weights") == before


def test_nan_loss_stops_and_keeps_the_last_good_backup(tmp_path, data):
    # the rate jumps by 1e12 at batch 4: the loss becomes NaN a few iterations later
    trainer, _ = make_trainer(tmp_path, data, lr=0.05, step=4, scale=1e12, backup_every=1)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    message = str(stopped.value)
    match = re.search(r"at iteration (\d+)", message)
    assert match and "last good checkpoint is" in message and "learning_rate" in message
    # what was ruled out is said, not only the usual suspect
    assert "Checked: the input batch is finite; every truth row holds one class" in message
    assert "the first non-finite output is layer" in message
    iteration = int(match.group(1))
    assert 4 < iteration < 25
    backup = tmp_path / "backup"
    assert not (backup / "small.weights").exists()
    net = minidark.load_network(str(tmp_path / "small.cfg"))
    seen = minidark.load_weights(net, str(backup / "small.backup"))
    assert seen < iteration * 32
    assert all(np.isfinite(getattr(l, name)).all() for l in net.layers for name in l.saved)


def test_interrupted_write_leaves_the_previous_backup_intact(tmp_path, data, monkeypatch):
    trainer, _ = make_trainer(tmp_path, data, max_batches=2, valid=False)
    trainer.run()
    trainer.backup()
    backup = tmp_path / "backup" / "small.backup"
    before = backup.read_bytes(), (tmp_path / "backup" / "small.backup.state.npz").read_bytes()
    trainer.net.layers[0].weights += 1  # a different state to save

    def interrupted(fd):  # Ctrl-C between write and rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.backup()
    monkeypatch.undo()
    after = backup.read_bytes(), (tmp_path / "backup" / "small.backup.state.npz").read_bytes()
    assert after == before
    assert not [n for n in os.listdir(tmp_path / "backup") if n.startswith(".tmp-")]


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    """SIGKILL a process that keeps rewriting a 16 MB file: the file is always whole."""
    target = tmp_path / "big.weights"
    atomic_write(target, b"A" * (16 << 20))
    script = textwrap.dedent(f"""
        import sys
        from minidark.weights import atomic_write
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        for i in range(1000):
            atomic_write({str(target)!r}, (b"B" if i % 2 == 0 else b"A") * (16 << 20))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline() == b"ready\n"
    import time

    time.sleep(0.4)
    proc.kill()
    proc.wait()
    data = target.read_bytes()
    assert len(data) == 16 << 20 and data in (b"A" * len(data), b"B" * len(data))


def test_evaluate_topk_and_confusion():
    class Fixed:  # a 'network' that predicts fixed probabilities
        batch, outputs = 4, 3

        def predict(self, x):
            table = np.array(
                [[0.5, 0.5, 0], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], np.float32
            )
            return table[(x[:, 0] * 255).round().astype(int)]

    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    dataset = Dataset(images, [1, 2, 1, 2], "fixed")
    result = evaluate(Fixed(), dataset, top=2, confusion=True)
    # ties go to the lower index (darknet's top_k): row 0 predicts class 0
    assert result["top1"] == 0.25 and result["topk"] == 0.75
    assert result["confusion"].tolist() == [[0, 0, 0], [2, 0, 0], [0, 1, 1]]
    assert topk_indices(np.array([[0.5, 0.5, 0]]), 2).tolist() == [[0, 1]]
