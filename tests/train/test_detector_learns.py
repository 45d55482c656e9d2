"""A detector that learns: a small [yolo] net trained for 500 iterations on coloured
rectangles (two classes) reaches a real mAP on images it has not seen."""

import numpy as np
import pytest
from test_detector_train import CFG, make_dataset

import minidark
from minidark.data.detection import DetectionDataset
from minidark.train.detection_eval import evaluate_detector
from minidark.train.detection_trainer import DetectionTrainer


@pytest.mark.slow
def test_yolo_learns_rectangles(tmp_path):
    make_dataset(tmp_path, images=64, size=48)
    cfg = tmp_path / "rect.cfg"
    cfg.write_text(
        CFG.format(size=48, max_batches=500, random=0)
        .replace("batch=2", "batch=8")
        .replace("learning_rate=.001", "learning_rate=.01")
        .replace("steps=5", "steps=400")
        .replace("burn_in=2", "burn_in=20")
    )
    net = minidark.load_network(cfg, seed=1)
    train = DetectionDataset.from_list(tmp_path / "train.txt", 2)
    valid = DetectionDataset.from_list(tmp_path / "valid.txt", 2)
    before = evaluate_detector(net, valid, 2)
    trainer = DetectionTrainer(
        net, train, valid, backup_dir=tmp_path / "backup", base="rect", seed=1, progress=False
    )
    after = trainer.run()["accuracy"]
    assert before["map50"] < 0.05
    assert after["map50"] >= 0.45, after
    assert after["map"] > 0.08
    assert np.mean(after["npos"]) > 10  # the valid set has objects of both classes
