"""Data-parallel training over MPI (minidark/train/distributed.py).

The jobs run ``mpiexec -n 2`` on loopback in a subprocess
(tests/train/distributed_job.py, or the ``minidark`` command). Float32
tolerance: two ranks sum their gradients in another order than one process's
GEMM over the whole batch, so weights after 20 updates differ by a few ulps
(measured: at most 6e-8 on weights of magnitude 0.4); the tests allow
rtol 1e-5, atol 1e-6.
"""

import gzip
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minidark.train import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "distributed_job.py")

MLP = """[net]
batch={batch}
subdivisions={subdivisions}
height=8
width=8
channels=1
min_ratio=1
max_ratio=1
flip=0
learning_rate=0.1
momentum=0.9
decay=0.0005
max_batches={max_batches}
backup_every=10
valid_every=10

[connected]
output=32
activation=leaky

[dropout]
probability=.25

[connected]
output=10
activation=linear

[softmax]
"""

CONV_BN = """[net]
batch={batch}
subdivisions={subdivisions}
height=8
width=8
channels=1
min_ratio=1
max_ratio=1
flip=0
learning_rate=0.05
momentum=0.9
decay=0.0005
max_batches={max_batches}
backup_every=10

[convolutional]
filters=8
size=3
stride=1
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=10
activation=linear

[softmax]
"""


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), or skip: the mpi extra."""
    pytest.importorskip(
        "mpi4py", reason="needs the mpi extra (pip install '.[mpi]'): mpi4py and mpich"
    )
    path = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = path if os.path.exists(path) else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpi4py is installed but no mpiexec is on PATH: pip install mpich")
    return found


def clean_env():
    """This process's environment without an MPI launcher's variables (a test run
    under mpiexec must still start its single-process runs as single processes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI_", "PMIX"))}
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def write_cfg(folder, template, name, **values):
    path = os.path.join(folder, name)
    values = {"subdivisions": 1, "max_batches": 20, **values}
    with open(path, "w") as handle:
        handle.write(template.format(**values))
    return path


def run_job(cfg, backup, out, ranks=None, *extra, timeout=120):
    command = [sys.executable, JOB, cfg, backup, out, *extra]
    if ranks is not None:
        command = [mpiexec(), "-n", str(ranks), *command]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=clean_env())
    return done, time.monotonic() - started


def parameters(path, names=("weights", "biases", "scales")):
    arrays = np.load(path)
    return {k: arrays[k] for k in arrays.files if k.split("/")[-1] in names}


def assert_same_parameters(one, two):
    assert one.keys() == two.keys() and one
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ------------------------------------------------------------ without mpi4py
def test_a_single_process_never_imports_mpi(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # importing it would fail
    assert distributed.join() is None


def test_launched_by_mpiexec_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(distributed.MPIUnavailable, match=r"pip install 'minidark\[mpi\]'"):
        distributed.join()


@pytest.mark.parametrize("verb", [["rnn", "train", "y.cfg", "--file", "t.txt"]])
def test_verbs_that_train_in_one_process_refuse_mpiexec_in_one_line(tmp_path, verb):
    """N copies of rnn train would be N trainings over the same files:
    rank 0 says so, every rank exits 2, no file is touched (no mpi4py needed)."""
    outputs = []
    for rank in (0, 1):
        env = dict(clean_env(), PMI_RANK=str(rank), PMI_SIZE="2")
        done = subprocess.run(
            [sys.executable, "-m", "minidark", *verb],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 2
        outputs.append(done.stdout + done.stderr)
    assert f"{verb[0]} train does not run data-parallel under mpiexec" in outputs[0]
    assert outputs[1] == ""
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- sharded draws
class FakeGroup:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("size", [2, 3])
def test_each_rank_keeps_its_rows_of_the_one_process_draw(size):
    """Dropout's per-row mask: rank r gets rows r*b..(r+1)*b-1 of the draw one
    process with N*b rows makes, and every rank's generator ends in one state."""
    batch, width = 4, 5
    whole = np.empty((size * batch, width), np.float32)
    one = np.random.default_rng(9)
    one.random(out=whole, dtype=np.float32)
    following = int(one.integers(0, 1000))  # the one process's next draw
    states = []
    for rank in range(size):
        mine = distributed.RowShardedGenerator(
            np.random.default_rng(9), FakeGroup(rank, size), batch
        )
        rows = np.empty((batch, width), np.float32)
        mine.random(out=rows, dtype=np.float32)
        np.testing.assert_array_equal(rows, whole[rank * batch : (rank + 1) * batch])
        assert mine.integers(0, 1000) == following  # other draws pass through
        states.append(mine.bit_generator.state)
    assert all(state == one.bit_generator.state for state in states)


# ------------------------------------------------------------- equivalence
def test_two_ranks_of_64_train_the_mlp_as_one_process_of_128(tmp_path):
    """Dropout included: each rank keeps its rows of the one process's mask."""
    one = write_cfg(tmp_path, MLP, "one.cfg", batch=128)
    two = write_cfg(tmp_path, MLP, "two.cfg", batch=64)
    done, _ = run_job(one, str(tmp_path / "b1"), str(tmp_path / "one.npz"))
    assert done.returncode == 0, done.stderr
    done, _ = run_job(two, str(tmp_path / "b2"), str(tmp_path / "two.npz"), 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "seen 2560" in done.stdout  # 20 updates of 128 images, counted once
    assert done.stdout.count("status finished") == 1  # rank 0 alone speaks
    assert_same_parameters(parameters(tmp_path / "one.npz"), parameters(tmp_path / "two.npz"))
    # validation split over the ranks and summed: the same accuracy
    assert np.load(tmp_path / "one.npz")["top1"] == np.load(tmp_path / "two.npz")["top1"]


def test_batch_norm_is_per_rank_two_ranks_equal_two_subdivisions(tmp_path):
    """Each rank normalises its own rows (as darknet's GPUs): 2 ranks x 16 are one
    process with batch 32 in 2 subdivisions of 16, and not batch 32 in one."""
    split = write_cfg(tmp_path, CONV_BN, "split.cfg", batch=32, subdivisions=2)
    whole = write_cfg(tmp_path, CONV_BN, "whole.cfg", batch=32)
    two = write_cfg(tmp_path, CONV_BN, "two.cfg", batch=16)
    for cfg, name, ranks in ((split, "split", None), (whole, "whole", None), (two, "two", 2)):
        done, _ = run_job(cfg, str(tmp_path / name), str(tmp_path / f"{name}.npz"), ranks)
        assert done.returncode == 0, done.stdout + done.stderr
    two_ranks = parameters(tmp_path / "two.npz")
    assert_same_parameters(parameters(tmp_path / "split.npz"), two_ranks)
    whole_batch = parameters(tmp_path / "whole.npz")
    assert max(np.abs(whole_batch[k] - two_ranks[k]).max() for k in two_ranks) > 1e-4


@pytest.mark.parametrize(("first", "then"), [(2, None), (None, 2), (2, 2)])
def test_a_checkpoint_resumes_exactly_with_another_number_of_ranks(tmp_path, first, then):
    """The sidecar holds the global data order: 2 x 64 to iteration 10, then one
    process of 128 from its .backup (or the other way round), ends where 20
    uninterrupted updates of 128 end."""

    def cfg(ranks, max_batches):
        batch = 128 if ranks is None else 128 // ranks
        name = f"{ranks}-{max_batches}.cfg"
        return write_cfg(tmp_path, MLP, name, batch=batch, max_batches=max_batches)

    done, _ = run_job(cfg(None, 20), str(tmp_path / "b1"), str(tmp_path / "one.npz"))
    assert done.returncode == 0, done.stderr
    done, _ = run_job(cfg(first, 10), str(tmp_path / "b2"), str(tmp_path / "half.npz"), first)
    assert done.returncode == 0, done.stdout + done.stderr
    backup = str(tmp_path / "b2" / "job.backup")
    done, _ = run_job(
        cfg(then, 20),
        str(tmp_path / "b2"),
        str(tmp_path / "resumed.npz"),
        then,
        "--weights",
        backup,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_parameters(parameters(tmp_path / "one.npz"), parameters(tmp_path / "resumed.npz"))


# ------------------------------------------------------------------ faults
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("nan", "rank 1 of 2: error: loss is nan at iteration 16"),
        ("raise", "rank 1 of 2: error: RuntimeError: injected failure"),
        ("kill", "BAD TERMINATION"),  # mpiexec names the killed rank's pid
    ],
)
def test_a_failing_rank_stops_the_job_at_once_and_the_checkpoint_survives(tmp_path, kind, expected):
    cfg = write_cfg(tmp_path, MLP, "two.cfg", batch=64, max_batches=1000)
    backup = tmp_path / "b"
    done, seconds = run_job(
        cfg, str(backup), str(tmp_path / "x.npz"), 2, "--fault", f"{kind}:1:15", timeout=60
    )
    assert done.returncode != 0
    assert seconds < 20  # the job ends at once, not at max_batches or a timeout
    assert expected in done.stdout + done.stderr
    if kind != "kill":
        lines = [l for l in done.stderr.splitlines() if l.startswith("minidark: rank")]
        assert len(lines) == 1, done.stderr  # one line, from the failed rank
    # the iteration-10 backup is whole and resumes (in one process of 128)
    one = write_cfg(tmp_path, MLP, "one.cfg", batch=128, max_batches=12)
    resumed, _ = run_job(
        one, str(backup), str(tmp_path / "r.npz"), None, "--weights", str(backup / "job.backup")
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "seen 1536" in resumed.stdout


@pytest.mark.parametrize("first", [0, 1])
def test_ctrl_c_reaching_one_rank_first_stops_all_after_the_same_update(tmp_path, first):
    """mpiexec forwards Ctrl-C to every rank, each at its own instant: the rank it
    reaches first tells the others in the next exchange; one backup is saved."""
    cfg = write_cfg(tmp_path, MLP, "two.cfg", batch=64, max_batches=1000)
    backup = tmp_path / "b"
    done, _ = run_job(
        cfg, str(backup), str(tmp_path / "x.npz"), 2, "--fault", f"sigint:{first}:5", timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status interrupted seen 768" in done.stdout  # iterations 0..5 done
    assert done.stdout.count("interrupted at iteration 6") == 1
    assert np.load(tmp_path / "x.npz")["seen"] == 768


# -------------------------------------------------------------- the command
def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mpiexec_runs_classifier_train_and_resumes_with_another_n(tmp_path):
    runner = mpiexec()
    rng = np.random.default_rng(3)
    for split, n in (("train", 256), ("t10k", 64)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 100, (n, 8, 8))
        images[np.arange(n), labels % 8, labels // 8 * 3] = 255
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    data = tmp_path / "tiny.data"
    data.write_text(
        f"classes=10\ntrain={tmp_path}/train-images-idx3-ubyte.gz\n"
        f"valid={tmp_path}/t10k-images-idx3-ubyte.gz\nbackup={tmp_path}/backup\ntop=1\n"
    )
    cfg = write_cfg(tmp_path, MLP, "tiny.cfg", batch=32, max_batches=10)
    command = [sys.executable, "-m", "minidark", "classifier", "train", str(data), cfg]
    done = subprocess.run(
        [runner, "-n", "2", *command, "--seed", "4", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks, data parallel: rank 0 pid" in done.stdout
    assert "32 images per rank, 64 per update" in done.stdout
    assert "256 training images, 64 per iteration" in done.stdout  # the global batch
    assert done.stdout.count("test accuracy") == 1
    log = (tmp_path / "backup" / "tiny.log").read_text()
    assert log.count(" images\n") == 10  # one line per global update, from rank 0
    assert "640 images" in log  # 10 x 2 x 32
    # resume the finished run's backup with N=1: nothing left, the weights say so
    more = write_cfg(tmp_path, MLP, "tiny.cfg", batch=64, max_batches=12)
    done = subprocess.run(
        [*command[:-1], more, str(tmp_path / "backup" / "tiny.backup"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "iteration 10, seen 640; momentum, random state and data order restored" in done.stdout
    assert "trained 2 iterations" in done.stdout
