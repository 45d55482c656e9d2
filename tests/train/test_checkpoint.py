"""Checkpoints survive any crash: a process killed at any write, fsync or rename
leaves every checkpoint name whole (old or new), the newest one resumes to the
same bytes as an uninterrupted run, and leftovers are cleared on the next run."""

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_training import tiny_data, tiny_trainer, write_tiny_cfg

import minidark
import minidark.train.chart as chart
from minidark.train.checkpoint import (
    CheckpointError,
    checkpoint_names,
    complete_checkpoints,
    newest_checkpoint,
    pending_path,
    sidecar_path,
)
from minidark.train.trainer import TrainingStopped
from minidark.weights import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KILLED = 86  # the exit status of an injected crash


def cheap_chart(path, *args, **kwargs):
    """The chart as a few bytes, written the same atomic way (still crash points)."""
    atomic_write(path, b"chart")


@pytest.fixture(autouse=True)
def fast_chart(monkeypatch):
    monkeypatch.setattr(chart, "draw_chart", cheap_chart)


class Injector:
    """Counts os.write, os.fsync and os.replace calls on files in ``folder`` and
    ends the process with os._exit (no cleanup runs: a kill) at call number
    ``crash_at``: before it, after it, or (writes) after writing half the bytes.
    fsync is counted but not performed: a killed process loses no page cache."""

    def __init__(self, folder, crash_at=None, mode="before"):
        self.folder, self.crash_at, self.mode = os.fspath(folder), crash_at, mode
        self.count, self.operations = 0, []

    def concerns(self, name, args):
        if name == "replace":
            return os.fspath(args[1]).startswith(self.folder)
        try:
            return os.readlink(f"/proc/self/fd/{args[0]}").startswith(self.folder)
        except OSError:
            return False

    def install(self, monkeypatch):
        real = {name: getattr(os, name) for name in ("write", "fsync", "replace")}
        real["fsync"] = lambda fd: None

        def wrap(name):
            def operation(*args):
                if not self.concerns(name, args):
                    return real[name](*args)
                self.count += 1
                self.operations.append(name)
                if self.count != self.crash_at:
                    return real[name](*args)
                if self.mode == "partial":
                    real["write"](args[0], bytes(args[1])[: max(1, len(args[1]) // 2)])
                elif self.mode == "after":
                    real[name](*args)
                os._exit(KILLED)

            return operation

        for name in real:
            monkeypatch.setattr(os, name, wrap(name))


def in_child(function):
    """Run ``function`` in a forked process; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child never returns
        status = 0
        try:
            function()
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 1
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def checkpoint_files(folder):
    pattern = checkpoint_names("tiny")
    return sorted(
        name for name in os.listdir(folder) if (m := pattern.fullmatch(name)) and not m.group(2)
    )


def resume_newest(cfg, folder):
    """What a user does after a crash: resume from the newest complete checkpoint
    (from scratch, same seed, when there is none). Returns how it went."""
    newest = newest_checkpoint(folder, "tiny")
    trainer = tiny_trainer(cfg, folder, weights=newest, seed=5 if newest is None else 999)
    assert newest is None or trainer.restored
    status = trainer.run()["status"]
    return "fresh" if newest is None else "finished" if status == "done-already" else "resumed"


def assert_every_checkpoint_is_whole(folder):
    """Each checkpoint name has the sidecar of its exact bytes (or that sidecar
    waits as .next): no name ever holds a partial or mixed state."""
    names = checkpoint_files(folder)
    complete = [os.path.basename(p) for p in complete_checkpoints(folder, "tiny")]
    assert sorted(complete) == names


def assert_no_leftovers(folder):
    left = [n for n in os.listdir(folder) if n.startswith(".tmp-") or n.endswith(".next")]
    assert not left


@pytest.fixture
def memory_tmp(tmp_path):
    """A fresh folder in /dev/shm when there is one (renames cost microseconds there;
    fsync is not what these tests exercise), else tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="minidark-test-", dir="/dev/shm")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_crash_at_any_write_or_rename_resumes_exactly(memory_tmp, monkeypatch):
    """A kill before every write and rename, half-way through every write, and
    after the last operation. (fsync is a no-op here: a kill keeps the page
    cache, so a kill at an fsync leaves what a kill before the next step does.)"""
    tmp_path = memory_tmp
    cfg = write_tiny_cfg(tmp_path, max_batches=6, backup_every=2)
    counter = Injector(tmp_path / "straight")
    with monkeypatch.context() as patch:
        counter.install(patch)
        tiny_trainer(cfg, tmp_path / "straight").run()
    reference = (tmp_path / "straight" / "tiny.weights").read_bytes()
    # 6 checkpoints (3 .backup, 2 epochs, the end) x 10 operations + 4 charts x 4
    assert counter.count == 76
    operations = list(enumerate(counter.operations, 1))
    cases = [(k, "before") for k, name in operations if name != "fsync"]
    cases += [(k, "partial") for k, name in operations if name == "write"]
    cases.append((counter.count, "after"))
    assert len(cases) == 55  # 38 kills before a write or rename, 16 mid-write, 1 at the end
    outcomes = {"fresh": 0, "resumed": 0, "finished": 0}
    for crash_at, mode in cases:
        folder = tmp_path / f"crash-{crash_at}-{mode}"

        def crash(folder=folder, crash_at=crash_at, mode=mode):
            Injector(folder, crash_at, mode).install(pytest.MonkeyPatch())
            tiny_trainer(cfg, folder).run()

        assert in_child(crash) == KILLED, (crash_at, mode)
        assert_every_checkpoint_is_whole(folder)
        outcomes[resume_newest(cfg, folder)] += 1
        assert (folder / "tiny.weights").read_bytes() == reference, (crash_at, mode)
        assert_no_leftovers(folder)
    # the crashes hit every phase: before the first checkpoint, mid-run, after the last
    assert all(outcomes.values()), outcomes


def test_kill_9_of_a_training_process_resumes_exactly(tmp_path, monkeypatch):
    """A real SIGKILL at random instants (real fsyncs in the killed process)."""
    cfg = write_tiny_cfg(tmp_path, max_batches=30, backup_every=1)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # only the killed run syncs
    tiny_trainer(cfg, tmp_path / "straight").run()
    reference = (tmp_path / "straight" / "tiny.weights").read_bytes()
    script = textwrap.dedent(f"""
        import sys
        import time
        sys.path.insert(0, {HERE!r})
        import minidark.train.chart as chart
        chart.draw_chart = lambda *args, **kwargs: None
        from tiny_training import tiny_trainer
        trainer = tiny_trainer({cfg!r}, sys.argv[1])
        def ready(trainer):
            if trainer.net.current_batch == 1:
                print("ready", flush=True)
            time.sleep(0.02)  # the 29 iterations left outlast the kills on any machine
        trainer.on_iteration = ready
        trainer.run()
    """)
    for delay in (20, 150):  # ms after the first iteration
        folder = tmp_path / f"kill-{delay}"
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(delay / 1000)
        proc.kill()
        assert proc.wait() == -signal.SIGKILL  # it was killed mid-run
        assert_every_checkpoint_is_whole(folder)
        resume_newest(cfg, folder)
        assert (folder / "tiny.weights").read_bytes() == reference, delay
        assert_no_leftovers(folder)


def test_leftovers_of_a_killed_run_are_removed_and_never_pile_up(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=4, backup_every=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    backup = folder / "tiny.backup"
    # what kills leave: temporaries of every kind of file, a sidecar never finished
    planted = [
        ".tmp-abcd1234tiny.backup",
        ".tmp-abcd1234tiny.backup.state.npz.next",
        ".tmp-zzzz_999tiny_3.weights",
        ".tmp-q1w2e3r4tiny_chart.png",
        "tiny_7.weights.state.npz.next",
    ]
    for name in planted:
        (folder / name).write_bytes(b"half a file")
    (folder / "tiny.backup.state.npz.next").write_bytes(b"stale: belongs to nothing")
    others = [".tmp-abcd1234other.backup", "notes.txt"]  # not this run's: left alone
    for name in others:
        (folder / name).write_bytes(b"keep")
    before = backup.read_bytes(), (folder / "tiny.backup.state.npz").read_bytes()
    out = io.StringIO()
    longer = write_tiny_cfg(tmp_path, max_batches=6, backup_every=2, name="longer.cfg")
    trainer = tiny_trainer(longer, folder, weights=str(backup), out=out)
    assert trainer.restored  # the stale .next did not get in the way
    assert (backup.read_bytes(), (folder / "tiny.backup.state.npz").read_bytes()) == before
    with pytest.warns(UserWarning, match="holds tiny.weights from an earlier run"):
        trainer.run()
    assert "removed 5 file(s) an interrupted write left" in out.getvalue()
    assert_no_leftovers_but(folder, others)
    for name in others:
        assert (folder / name).read_bytes() == b"keep"


def assert_no_leftovers_but(folder, allowed):
    left = [
        n
        for n in os.listdir(folder)
        if (n.startswith(".tmp-") or n.endswith(".next")) and n not in allowed
    ]
    assert not left


def test_a_pending_sidecar_that_matches_its_weights_is_finished(tmp_path):
    """A kill between the weights rename and the sidecar rename: the new sidecar
    waits as .next and is the state of the new weights."""
    cfg = write_tiny_cfg(tmp_path, max_batches=4, backup_every=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    weights = folder / "tiny.backup"
    os.replace(sidecar_path(weights), pending_path(weights))
    (folder / "tiny.backup.state.npz").write_bytes(
        (folder / "tiny_1.weights.state.npz").read_bytes()
    )  # the old one, say
    assert newest_checkpoint(folder, "tiny") == str(folder / "tiny.weights")
    trainer = tiny_trainer(cfg, folder, weights=str(weights))
    assert trainer.restored and trainer.net.seen == 16
    assert not os.path.exists(pending_path(weights))


# ------------------------------------------------------------ write failures
def test_disk_full_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = write_tiny_cfg(tmp_path, max_batches=8, backup_every=2)
    folder = tmp_path / "backup"
    real_write = os.write
    writes = {"n": 0}

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)) and os.readlink(
            f"/proc/self/fd/{fd}"
        ).endswith(".state.npz.next"):
            writes["n"] += 1
            if writes["n"] == 3:  # the third checkpoint: iteration 4
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    trainer = tiny_trainer(cfg, folder)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    monkeypatch.undo()
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith(
        f"cannot write {folder / 'tiny.backup'} (its training state): "
        f"No space left on device: training stopped; the last good "
        f"checkpoint is {folder / 'tiny_1.weights'}"
    )
    assert_no_leftovers(folder)
    # the checkpoint before it is whole and resumes: 2 iterations in, as written
    resumed = tiny_trainer(cfg, folder, weights=str(folder / "tiny.backup"))
    assert resumed.restored and resumed.net.current_batch == 2


@pytest.mark.parametrize("step", ["weights", "sidecar rename"])
def test_a_failure_after_the_sidecar_keeps_a_complete_checkpoint(tmp_path, monkeypatch, step):
    cfg = write_tiny_cfg(tmp_path, max_batches=2, backup_every=2)
    folder = tmp_path / "backup"
    trainer = tiny_trainer(cfg, folder)
    trainer.run()
    before = (folder / "tiny.backup").read_bytes()
    trainer.net.layers[0].weights += 1
    real_replace = os.replace

    def replace(source, target):
        failing = (
            str(target).endswith("tiny.backup")
            if step == "weights"
            else str(target).endswith("tiny.backup.state.npz")
        )
        if failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(TrainingStopped, match="Input/output error: training stopped"):
        trainer.backup()
    monkeypatch.undo()
    after = tiny_trainer(cfg, folder, weights=str(folder / "tiny.backup"))
    assert after.restored  # old or new, but whole
    assert ((folder / "tiny.backup").read_bytes() == before) == (step == "weights")
    assert_no_leftovers(folder)


def test_backup_path_that_is_a_file(tmp_path):
    cfg = write_tiny_cfg(tmp_path)
    (tmp_path / "backup").write_text("not a folder")
    with pytest.raises(TrainingStopped) as stopped:
        tiny_trainer(cfg, tmp_path / "backup").run()
    assert str(stopped.value) == (
        f"the backup folder {tmp_path / 'backup'} is a file, not a "
        f"folder: set backup= in the .data file to a folder"
    )
    with pytest.raises(
        TrainingStopped,
        match=r"cannot create the backup folder .*: Not a "
        r"directory; set backup=",
    ):
        tiny_trainer(cfg, tmp_path / "backup" / "inside").run()
    assert (tmp_path / "backup").read_text() == "not a folder"


def test_a_folder_that_cannot_be_created_or_written(tmp_path, monkeypatch):
    cfg = write_tiny_cfg(tmp_path)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "makedirs", refuse)
        with pytest.raises(
            TrainingStopped,
            match=r"cannot create the backup folder .*nope: "
            r"Permission denied; set backup=",
        ):
            tiny_trainer(cfg, tmp_path / "nope").run()
    real_open = os.open

    def no_write(path, flags, *args):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", no_write)
    with pytest.raises(
        TrainingStopped,
        match=r"cannot write in the backup folder .*ro: "
        r"Permission denied",
    ):
        tiny_trainer(cfg, tmp_path / "ro").run()


def test_two_runs_never_write_one_base_at_once(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=3)
    first = tiny_trainer(cfg, tmp_path / "backup")
    outcome = {}

    def second_run(trainer):
        if trainer.net.current_batch == 1:
            with pytest.raises(TrainingStopped) as stopped:
                tiny_trainer(cfg, tmp_path / "backup").run()
            outcome["message"] = str(stopped.value)

    first.on_iteration = second_run
    assert first.run()["status"] == "finished"
    assert outcome["message"].startswith("another run is writing tiny's checkpoints in ")
    with pytest.warns(UserWarning, match="earlier run"):  # the lock is free again
        assert tiny_trainer(cfg, tmp_path / "backup", seed=1).run()["status"] == "finished"


def test_newest_checkpoint_ignores_incomplete_ones(tmp_path):
    cfg = write_tiny_cfg(tmp_path, max_batches=8, backup_every=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    os.mkfifo(folder / "tiny_9.weights")  # never read (it would block)
    assert newest_checkpoint(folder, "tiny") == str(folder / "tiny.weights")
    os.unlink(sidecar_path(folder / "tiny.weights"))  # a darknet file: not exact
    assert newest_checkpoint(folder, "tiny") == str(folder / "tiny.backup")
    np.testing.assert_equal(
        minidark.load_weights(minidark.load_network(cfg), str(folder / "tiny.backup")), 32
    )
    (folder / "tiny.backup").write_bytes((folder / "tiny_1.weights").read_bytes())
    assert newest_checkpoint(folder, "tiny") == str(folder / "tiny_3.weights")
    assert newest_checkpoint(tmp_path / "missing", "tiny") is None


def test_an_unwritable_sidecar_message_names_the_data(tmp_path):
    """A sidecar saved for other data is refused, naming both sizes."""
    cfg = write_tiny_cfg(tmp_path, max_batches=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    with pytest.raises(
        CheckpointError,
        match=r"saved for 10 training images, this data has "
        r"12\. Pass --no-exact-resume",
    ):
        tiny_trainer(cfg, folder, weights=str(folder / "tiny.weights"), data=tiny_data(12))


def test_a_run_killed_while_writing_its_final_weights_finishes_on_resume(tmp_path, capsys):
    """The last .backup is at max_batches but <base>.weights never landed: resuming
    writes it (the same bytes) instead of saying there is nothing to do."""
    from tiny_training import write_tiny_data_file

    from minidark.cli import main

    data = write_tiny_data_file(tmp_path)
    cfg = write_tiny_cfg(tmp_path, max_batches=4, backup_every=2)
    assert main(["classifier", "train", data, cfg, "--seed", "3", "--no-progress"]) == 0
    folder = tmp_path / "backup"
    final = (folder / "tiny.weights").read_bytes()
    os.unlink(folder / "tiny.weights")
    os.replace(folder / "tiny.weights.state.npz", folder / "tiny.weights.state.npz.next")
    backup = str(folder / "tiny.backup")
    capsys.readouterr()
    assert main(["classifier", "train", data, cfg, backup, "--no-progress"]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert (folder / "tiny.weights").read_bytes() == final
    assert_no_leftovers(folder)
    (folder / ".tmp-abcd1234tiny_chart.png").write_bytes(b"a kill while drawing")
    assert main(["classifier", "train", data, cfg, backup, "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert_no_leftovers(folder)  # tidied all the same


def test_resuming_from_files_a_live_run_is_writing_is_refused(tmp_path):
    """A pending sidecar of a live run is not the leftover of a dead one: it stays."""
    from minidark.train.checkpoint import lock_folder, unlock_folder

    cfg = write_tiny_cfg(tmp_path, max_batches=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    pending = folder / "tiny.backup.state.npz.next"
    pending.write_bytes(b"being written by the live run")
    lock = lock_folder(str(folder), "tiny")  # the live run
    try:
        with pytest.raises(CheckpointError, match="another run is writing tiny's checkpoints"):
            tiny_trainer(cfg, tmp_path / "other", weights=str(folder / "tiny.backup"))
        assert pending.exists()
    finally:
        unlock_folder(lock)
    assert tiny_trainer(cfg, tmp_path / "other", weights=str(folder / "tiny.backup")).restored
    assert not pending.exists()


def test_every_checkpoint_resumes_to_the_same_run_history_included(tmp_path):
    """Resuming from any checkpoint (epoch files too, where an evaluation falls on
    the same iteration) gives the straight run's weights, loss and accuracy history."""
    cfg = write_tiny_cfg(tmp_path, max_batches=8, backup_every=2, valid_every=3)
    valid = tiny_data(6, seed=2)
    straight = tiny_trainer(cfg, tmp_path / "straight", valid=valid)
    kept = {}  # (name, weights bytes) -> (iteration, sidecar bytes): each checkpoint once

    def keep(trainer):
        for name in checkpoint_files(trainer.backup_dir):
            path = os.path.join(trainer.backup_dir, name)
            with open(path, "rb") as weights, open(sidecar_path(path), "rb") as sidecar:
                key = name, weights.read()
                kept.setdefault(key, (trainer.net.current_batch, sidecar.read()))

    straight.on_iteration = keep
    straight.run()
    final = (tmp_path / "straight" / "tiny.weights").read_bytes()
    assert ("tiny_1.weights", 3) in {(n, i) for (n, _), (i, _) in kept.items()}  # at an eval
    for (name, weights), (iteration, sidecar) in kept.items():
        start = f"{iteration}-{name}"
        folder = tmp_path / f"from-{start}"
        folder.mkdir()
        (folder / name).write_bytes(weights)
        (folder / (name + ".state.npz")).write_bytes(sidecar)
        resumed = tiny_trainer(cfg, folder, weights=str(folder / name), valid=valid, seed=99)
        assert resumed.restored
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # files of the same lineage
            resumed.run()
        assert (folder / "tiny.weights").read_bytes() == final, start
        assert resumed.valid_history == straight.valid_history, start
        assert resumed.history == straight.history, start


@pytest.mark.parametrize(
    "planted", ["tiny.backup", "tiny.backup.state.npz", "tiny.backup.state.npz.next"]
)
def test_a_folder_planted_where_a_checkpoint_goes_stops_with_one_line(tmp_path, planted):
    cfg = write_tiny_cfg(tmp_path, max_batches=4, backup_every=2)
    folder = tmp_path / "backup"
    (folder / planted / "inside").mkdir(parents=True)
    with pytest.raises(TrainingStopped) as stopped:
        tiny_trainer(cfg, folder).run()
    message = str(stopped.value)
    assert "\n" not in message and "Is a directory" in message, message
    assert (folder / planted / "inside").is_dir()


def test_a_full_disk_right_after_a_resume_names_the_checkpoint_resumed_from(tmp_path, monkeypatch):
    cfg = write_tiny_cfg(tmp_path, max_batches=2, backup_every=2)
    folder = tmp_path / "backup"
    tiny_trainer(cfg, folder).run()
    before = (folder / "tiny.backup").read_bytes()
    longer = write_tiny_cfg(tmp_path, max_batches=6, backup_every=2, name="longer.cfg")
    trainer = tiny_trainer(longer, folder, weights=str(folder / "tiny.backup"))

    def full(fd, data):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    real_write = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: full(fd, data) if len(data) > 100 else real_write(fd, data)
    )
    with pytest.warns(UserWarning), pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    monkeypatch.undo()
    assert str(stopped.value).endswith(
        f"File too large: training stopped; the last good checkpoint is {folder / 'tiny.backup'}"
    )
    assert (folder / "tiny.backup").read_bytes() == before
    assert tiny_trainer(longer, folder, weights=str(folder / "tiny.backup")).restored
