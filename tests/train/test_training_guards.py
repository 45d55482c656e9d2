"""What the trainer refuses or warns about before and while it trains: a
dataset smaller than one update, earlier runs' weights about to be
overwritten, links planted where the log goes, labels without a class, and a
NaN stop that says what it checked."""

import errno
import os
import re

import numpy as np
import pytest
from tiny_training import tiny_data, tiny_trainer, write_tiny_cfg

import minidark.train.chart as chart
import minidark.train.metrics as metrics
from minidark.data.dataset import Dataset
from minidark.errors import DataError
from minidark.train.trainer import TrainingStopped


@pytest.fixture(autouse=True)
def no_chart(monkeypatch):
    monkeypatch.setattr(chart, "draw_chart", lambda *args, **kwargs: None)


def weights_files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith((".weights", ".backup")))


# ------------------------------------------------------------- small datasets
def test_a_dataset_smaller_than_one_update_warns_and_does_not_flood(tmp_path):
    """20 images, 128 per update: every iteration ends an epoch; epoch weights
    are still written at most once per backup_every iterations."""
    cfg = write_tiny_cfg(tmp_path, max_batches=50, backup_every=20, batch=128, subdivisions=4)
    trainer = tiny_trainer(cfg, tmp_path / "backup", data=tiny_data(20))
    with pytest.warns(UserWarning) as caught:
        trainer.run()
    messages = [str(w.message) for w in caught]
    assert any(
        m.startswith(
            "tiny-20: 20 training images, fewer than the 128 of one update "
            "(batch=128, subdivisions=4 in [net])"
        )
        for m in messages
    ), messages
    # epochs 6 (iteration 1), 134 (21) and 262 (41); backups at 20 and 40; the end
    assert weights_files(tmp_path / "backup") == [
        "tiny.backup",
        "tiny.weights",
        "tiny_134.weights",
        "tiny_262.weights",
        "tiny_6.weights",
    ]


def test_epoch_weights_are_still_written_every_epoch_when_epochs_are_long(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=12, backup_every=2)  # an epoch: 2.5 iterations
    tiny_trainer(cfg, tmp_path / "backup").run()
    epochs = [n for n in weights_files(tmp_path / "backup") if n.startswith("tiny_")]
    assert epochs == [f"tiny_{e}.weights" for e in (1, 2, 3, 4)]  # 3, 5, 8, 10; not 12 = 4.8


def test_no_warning_when_the_dataset_fills_an_update(tmp_path, recwarn):
    cfg = write_tiny_cfg(tmp_path, max_batches=2)
    tiny_trainer(cfg, tmp_path / "backup").run()
    assert not [w for w in recwarn if "fewer than" in str(w.message)]


# ------------------------------------------------------- earlier runs' files
def test_overwriting_an_earlier_runs_finished_weights_warns(tmp_path, recwarn):
    cfg = write_tiny_cfg(tmp_path, max_batches=4)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    earlier = (folder / "tiny.weights").read_bytes()
    assert not recwarn.list
    other_data = tiny_data(12, seed=1)  # another dataset, same cfg
    with pytest.warns(UserWarning) as caught:
        tiny_trainer(cfg, folder, data=other_data).run()
    message = str(caught[0].message)
    assert message.startswith(
        f"{folder} holds tiny.backup, tiny.weights, tiny_1.weights from "
        f"an earlier run, which this run did not start from and will "
        f"overwrite: this run writes its checkpoints, log and chart to "
        f"{folder}"
    )
    assert (folder / "tiny.weights").read_bytes() != earlier


def test_resuming_or_extending_a_run_does_not_warn_about_its_own_files(tmp_path, recwarn):
    cfg = write_tiny_cfg(tmp_path, max_batches=4)
    folder = tmp_path / "backup"
    first = tiny_trainer(cfg, folder)
    first.on_iteration = lambda t: t.request_stop() if t.net.current_batch == 3 else None
    assert first.run()["status"] == "interrupted"
    tiny_trainer(cfg, folder, weights=str(folder / "tiny.backup")).run()
    longer = write_tiny_cfg(tmp_path, max_batches=6, name="tiny6.cfg")
    extended = tiny_trainer(longer, folder, weights=str(folder / "tiny.weights"))
    extended.run()  # from the finished weights
    assert not [str(w.message) for w in recwarn]


# ------------------------------------------------------------------ symlinks
def test_the_log_is_never_appended_through_a_planted_link(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=2)
    folder = tmp_path / "backup"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, folder / "tiny.log")
    with pytest.raises(TrainingStopped) as stopped:
        tiny_trainer(cfg, folder).run()
    assert str(stopped.value) == (
        f"{folder / 'tiny.log'} is a symbolic link: refusing to append to it (remove the link)"
    )
    assert victim.read_text() == "precious\n"
    os.unlink(folder / "tiny.log")
    os.mkfifo(folder / "tiny.log")  # would block an open for writing
    with pytest.raises(TrainingStopped, match="is not a regular file: refusing to append"):
        tiny_trainer(cfg, folder).run()


def test_metrics_are_never_appended_through_a_planted_link(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=4, valid_every=2)
    folder = tmp_path / "backup"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, folder / "tiny_metrics.jsonl")
    with pytest.raises(TrainingStopped, match=r"tiny_metrics\.jsonl is a symbolic link"):
        tiny_trainer(cfg, folder, valid=tiny_data(6, seed=2)).run()
    assert victim.read_text() == "precious\n"
    assert not (folder / "tiny.log").exists()  # refused before training, not at iteration 2


def test_a_log_write_that_fails_stops_with_one_line(tmp_path, monkeypatch):
    cfg = write_tiny_cfg(tmp_path, max_batches=4)
    real_open = metrics.open_append

    class Full:
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, text):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(text)

        def close(self):
            self.handle.close()

    monkeypatch.setattr(metrics, "open_append", lambda path: Full(real_open(path)))
    with pytest.raises(TrainingStopped) as stopped:
        tiny_trainer(cfg, tmp_path / "backup").run()
    assert str(stopped.value) == (
        f"cannot write {tmp_path / 'backup' / 'tiny.log'}: No space left on device"
    )


# ------------------------------------------------------------ labels and NaN
@pytest.mark.parametrize("label", [3, -1])
def test_a_label_outside_the_classes_is_refused_before_training(tmp_path, label):
    cfg = write_tiny_cfg(tmp_path)
    data = tiny_data()
    labels = data.labels.copy()
    labels[[4, 7]] = label
    bad = Dataset(data.images, labels, "bad-labels")
    with pytest.raises(DataError) as error:
        tiny_trainer(cfg, tmp_path / "backup", data=bad)
    assert str(error.value).startswith(
        f"bad-labels: 2 of 10 images have no class among the network's 3 (0..2), e.g. "
        f"image 4 with label {label}: their truth would be all zero"
    )
    assert not (tmp_path / "backup").exists()


def test_nan_from_the_input_pipeline_is_blamed_on_the_data(tmp_path, monkeypatch):
    cfg = write_tiny_cfg(tmp_path, max_batches=6, backup_every=1)
    trainer = tiny_trainer(cfg, tmp_path / "backup")
    real_batch = trainer.train_set.batch

    def batch(indices, out):
        x = real_batch(indices, out=out)
        if trainer.net.current_batch == 3:
            x[0, :3] = np.nan  # e.g. a broken augmentation
        return x

    monkeypatch.setattr(trainer.train_set, "batch", batch)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    message = str(stopped.value)
    assert message.startswith(
        "loss is nan at iteration 4 (seen 16): training stopped and "
        "nothing was saved after it; the last good checkpoint is "
    )
    assert re.search(
        r"\. The input batch holds \d+ NaN or infinite values: the data "
        r"\(tiny-10\) or its augmentation produced them$",
        message,
    ), message
    assert "learning_rate" not in message


def test_nan_from_an_unusable_cfg_value_names_it(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=400, backup_every=1000)
    trainer = tiny_trainer(cfg, tmp_path / "backup")
    trainer.net.config.momentum = 1.5  # set past the parser's checks
    trainer.net.config.learning_rate = 10.0
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    message = str(stopped.value)
    assert "Checked: the input batch is finite; every truth row holds one class" in message
    assert message.endswith("The cfg's momentum=1.5 cannot train: fix it in [net]")


def test_without_backups_epoch_weights_keep_the_default_spacing(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=30, backup_every=0, batch=128, subdivisions=4)
    with pytest.warns(UserWarning, match="at most once per 1000 iterations"):
        tiny_trainer(cfg, tmp_path / "backup", data=tiny_data(20)).run()
    assert weights_files(tmp_path / "backup") == ["tiny.weights", "tiny_6.weights"]


def test_a_log_line_a_killed_run_left_unfinished_is_ended(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=2)
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "tiny.log").write_text("1, 0.400: 1.0986")  # killed mid-line
    tiny_trainer(cfg, folder).run()
    lines = (folder / "tiny.log").read_text().splitlines()
    assert lines[0] == "1, 0.400: 1.0986" and lines[1].startswith("# ")
    assert len(lines) == 4
