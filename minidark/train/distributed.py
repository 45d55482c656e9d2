"""Data-parallel training over MPI: N processes, mathematically one big batch.

``mpiexec -n N minidark classifier train DATA CFG [WEIGHTS]`` (or ``detector
train``) starts N copies of the command (ranks 0 … N-1). Each holds the whole
network and the whole data set; per iteration (one update):

1. Every rank draws the same *global* batch of ``N·b`` indices from the
   trainer's generator (b = the cfg's ``batch``, per process, as darknet's
   per-GPU batch): the images and order of a single process whose cfg says
   ``batch=N·b``. Rank r trains rows ``r·b … (r+1)·b - 1``.
2. Before backward, ranks other than 0 zero their ``*_updates`` buffers (they
   hold ``momentum x previous`` on every rank alike), so after backward the
   buffers hold ``S + g_0`` on rank 0 and ``g_r`` elsewhere.
3. After the last backward of the update (``net.before_update``) they are
   summed with ``Allreduce`` in a few large float32 buckets: every rank then
   holds ``S + Σ_r g_r``, exactly what one process would hold after a batch of
   ``N·b`` images. ``net.replicas = N`` makes the update divide by ``N·b``
   (``images_per_update``), so learning-rate scaling, decay, momentum and Adam
   are the single process's. Batch-norm running statistics ride in the same
   buckets and are averaged (see below).
4. One more tiny Allreduce exchanges every rank's loss and its Ctrl-C flag:
   the logged loss is the global mean, a NaN on any rank stops all of them at
   the same iteration, and a Ctrl-C stops all of them after the same one.

Batch norm: each rank normalises its own ``b`` rows (per-rank statistics, as
darknet's multi-GPU training): N ranks x b equal one process with
``batch=N·b, subdivisions=N``, not ``subdivisions=1``. The running mean is the
average of the ranks' (the exact running mean of the global batch); the
running variance the average of the ranks' variances (the within-shard part).

Detection (DistributedDetectionTrainer, minidark/train/detection_trainer.py)
adds three things: the multi-scale size is drawn from the trainer's
generator, which every rank advances alike, so all ranks resize together;
image k of the update is augmented with a generator seeded by the
iteration's one shared draw and k, so two ranks of b distort their images as
one process of ``batch=2b`` does; evaluation is shared: each rank predicts a
contiguous run of whole batches of the valid images and rank 0 gathers the
detections and computes mAP (the same numbers as one process). The per-head
statistics in the log are rank 0's rows.

Rank 0 owns every file and every line: the progress bar, the log, metrics,
chart and checkpoints; the other ranks' stdout and stderr are silenced except
for their own fatal error. ``seen`` counts the images of all ranks; the
sidecar holds the global data order and position, so a checkpoint resumes
with any N (same ``N·b``: exactly the same run).

Faults: an exception on any rank (a NaN loss, an unreadable file, a bug)
prints one line ``minidark: rank r of N: error: ...`` and calls
``MPI_Abort``, which ends every rank at once; a rank killed by a signal
makes ``mpiexec`` end the others and name its pid (rank 0 printed the
rank → pid table at start). Checkpoints are written atomically by rank 0
only, so the last complete one stays intact.

Outside ``mpiexec`` (or with ``-n 1``) nothing here runs and mpi4py is not
imported.
"""

import contextlib
import os
import socket
import sys
import time
import traceback

import numpy as np

from ..errors import MinidarkError, printable
from .trainer import Trainer, evaluate

# Environment variables by which MPI launchers (MPICH/Intel hydra, Open MPI,
# PMIx, Slurm's srun --mpi) tell a process it is one rank of a job.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
BUCKET_BYTES = 8 << 20  # a few large Allreduce calls, not one per array
REPORT_GRACE = 2.0  # seconds a rank that did not fail first waits before reporting
# MPI_Abort tears the launcher's stdio forwarding down with the job: what a rank
# wrote just before may be lost unless the forwarder gets a moment to pass it on.
ABORT_FLUSH = 0.5
AVERAGED = ("rolling_mean", "rolling_variance")  # batch-norm statistics: mean over ranks


class MPIUnavailable(MinidarkError):
    """Launched by mpiexec, but mpi4py cannot be imported."""


class NotDataParallel(MinidarkError):
    """A verb that trains in one process only was started by mpiexec with N > 1."""


class RankFailed(MinidarkError):
    """A failure every rank raises together; ``reporter`` is the rank that reports it."""

    def __init__(self, message, reporter):
        super().__init__(message)
        self.reporter = reporter


def launched_by_mpi(environ=os.environ):
    return any(name in environ for name in LAUNCHER_VARIABLES)


def launched_rank_and_size(environ=os.environ):
    """(rank, size) as the launcher's variables give them, without MPI: (0, 1) alone."""
    for rank_key, size_key in (
        ("PMI_RANK", "PMI_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMIX_RANK", "OMPI_COMM_WORLD_SIZE"),
    ):
        if rank_key in environ and size_key in environ:
            try:
                return int(environ[rank_key]), int(environ[size_key])
            except ValueError:
                break
    return 0, 1


def single_process_only(verb):
    """For a verb that cannot train data-parallel: under ``mpiexec -n N`` (N > 1)
    rank 0 says so in one line and every rank exits with status 2, before any
    rank touches a file (N copies would each train and overwrite the others')."""
    rank, size = launched_rank_and_size()
    if size > 1:
        if rank != 0:
            raise SystemExit(2)
        raise NotDataParallel(
            f"{verb} does not run data-parallel under mpiexec ({size} ranks would be "
            f"{size} separate trainings writing the same files): run it without mpiexec; "
            f"classifier train and detector train are the verbs that train on several "
            f"processes"
        )


def join():
    """The Group of this job's ranks, or None for a single process (no
    ``mpiexec``, or ``-n 1``): nothing distributed happens then."""
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(
            f"started by an MPI launcher but mpi4py cannot be imported ({exc}): "
            f"pip install 'minidark[mpi]', or run without mpiexec"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None
    return Group(comm, MPI)


class Group:
    """The ranks of one data-parallel job (an MPI communicator)."""

    def __init__(self, comm, mpi):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.stderr = sys.stderr  # the real one: silence() replaces sys.stderr

    @property
    def root(self):
        return self.rank == 0

    def silence(self):
        """Ranks other than 0 print nothing (rank 0 tells the story); their own
        fatal error still reaches the terminal through ``self.stderr``."""
        if not self.root:
            null = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
            sys.stdout = sys.stderr = null

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (a seed drawn at random, for one)."""
        return self.comm.bcast(value, root=0)

    def describe(self, net=None):
        """``N ranks, data parallel: rank 0 pid P on HOST, ...`` (mpiexec names a
        dead rank by its pid), and the batch per rank and per update."""
        where = self.comm.allgather((os.getpid(), socket.gethostname()))
        ranks = ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(where))
        text = f"{self.size} ranks, data parallel: {ranks}"
        if net is not None:
            total = net.images_per_update
            text += f"; {total // self.size} images per rank, {total} per update"
            if isinstance(net.before_update, Replicas):
                replicas = net.before_update
                text += (
                    f"; {4 * replicas.floats / 1e6:.3g} MB of gradients summed in "
                    f"{len(replicas.buckets)} Allreduce call(s) per update"
                )
        return text

    @contextlib.contextmanager
    def guard(self):
        """Run a rank's work: any exception ends the whole job at once with one
        line naming this rank and the cause (MPI_Abort), never a hang in a
        collective that the failed rank will not join."""
        try:
            yield
        except SystemExit as exc:
            if exc.code in (0, None):
                raise
            self.abort(
                f"exited with status {exc.code}", exc.code if isinstance(exc.code, int) else 1
            )
        except KeyboardInterrupt:
            self.abort("interrupted (Ctrl-C twice): nothing saved", 130)
        except MinidarkError as exc:
            self.abort(printable(exc), 2, getattr(exc, "reporter", 0))
        except BaseException as exc:  # a bug: its traceback, then the same one line
            traceback.print_exc(file=self.stderr)
            self.abort(f"{type(exc).__name__}: {printable(exc)}", 1, self.rank)

    def abort(self, message, status, reporter=None):
        # An error every rank meets (a bad cfg) is said once, by the reporter
        # (rank 0 by default): its MPI_Abort ends the others during their grace.
        if reporter is not None and reporter != self.rank:
            time.sleep(REPORT_GRACE)
        print(
            f"minidark: rank {self.rank} of {self.size}: error: {message}",
            file=self.stderr,
            flush=True,
        )
        time.sleep(ABORT_FLUSH)
        self.comm.Abort(status)


def _update_arrays(layer):
    """(``*_updates`` arrays, batch-norm statistics) of a layer and its sublayers."""
    summed, averaged = [], []
    for name, value in sorted(vars(layer).items()):
        if isinstance(value, np.ndarray) and value.dtype == np.float32:
            if name.endswith("_updates"):
                summed.append(value)
            elif name in AVERAGED:
                averaged.append(value)
    for sub in (layer.sublayers or {}).values():
        more_summed, more_averaged = _update_arrays(sub)
        summed += more_summed
        averaged += more_averaged
    return summed, averaged


class Replicas:
    """Sums the ranks' ``*_updates`` (and averages batch-norm statistics) in a
    few float32 buckets; installed as ``net.before_update``."""

    def __init__(self, net, group, bucket_bytes=BUCKET_BYTES):
        self.net, self.group = net, group
        self.summed, self.averaged, self.buckets = [], [], []
        for layer in net.layers:
            summed, averaged = _update_arrays(layer)
            self.summed += summed
            self.averaged += averaged
        arrays = [(a, False) for a in self.summed] + [(a, True) for a in self.averaged]
        current, size = [], 0
        for array, average in arrays:
            if current and (size + array.size) * 4 > bucket_bytes:
                self.buckets.append(self._bucket(current, size))
                current, size = [], 0
            current.append((array, average))
            size += array.size
        if current:
            self.buckets.append(self._bucket(current, size))

    @staticmethod
    def _bucket(arrays, size):
        return np.empty(size, np.float32), arrays

    @property
    def floats(self):
        return sum(buffer.size for buffer, _ in self.buckets)

    def begin_update(self):
        """Ranks other than 0 drop their copy of ``momentum x previous``: the sum
        then counts it once (rank 0's)."""
        if not self.group.root:
            for array in self.summed:
                array.fill(0)

    def __call__(self, net):
        comm, mpi, scale = self.group.comm, self.group.MPI, np.float32(1 / self.group.size)
        for buffer, arrays in self.buckets:
            start = 0
            for array, _ in arrays:
                buffer[start : start + array.size] = array.ravel()
                start += array.size
            comm.Allreduce(mpi.IN_PLACE, buffer, op=mpi.SUM)
            start = 0
            for array, average in arrays:
                part = buffer[start : start + array.size].reshape(array.shape)
                if average:
                    np.multiply(part, scale, out=array)
                else:
                    array[...] = part
                start += array.size


class RowShardedGenerator:
    """``net.rng`` of one rank: a per-row draw (``random(out=a)`` with ``a`` of
    ``batch`` rows, as dropout's mask) is the single process's draw for the
    global ``N·batch`` rows, of which this rank keeps its own; every other draw
    (crop offsets, the random policy) and the generator's state pass through,
    so ranks stay in step and dropout matches one process with batch N·b."""

    def __init__(self, generator, group, batch):
        self.generator, self.group, self.batch = generator, group, batch
        self._buffers = {}

    def random(self, size=None, dtype=np.float64, out=None):
        if out is None or out.ndim == 0 or out.shape[0] != self.batch:
            return self.generator.random(size, dtype=dtype, out=out)
        shape = (self.group.size * self.batch,) + out.shape[1:]
        key = (shape, np.dtype(dtype).str)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = np.empty(shape, dtype)
        self.generator.random(dtype=dtype, out=buffer)
        rank = self.group.rank
        out[...] = buffer[rank * self.batch : (rank + 1) * self.batch]
        return out

    def __getattr__(self, name):
        return getattr(self.generator, name)


def attach(net, group):
    """Make ``net`` one replica of ``group``: updates divide by N·b and sum
    every rank's gradients first; every rank starts from rank 0's parameters;
    per-row random draws are sharded as the rows are (RowShardedGenerator)."""
    net.replicas = group.size
    if not isinstance(net.rng, RowShardedGenerator):
        net.rng = RowShardedGenerator(net.rng, group, net.batch)
    replicas = Replicas(net, group)
    net.before_update = replicas
    for layer in net.layers:
        for name in layer.saved:
            array = getattr(layer, name)
            group.comm.Bcast(array, root=0)
    return replicas


class _NoLog:
    """The log of a rank that writes no file."""

    def write(self, text):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class DistributedTrainer(Trainer):
    """The classifier Trainer as one rank of a data-parallel job (module docstring)."""

    def __init__(self, net, train_set, valid_set=None, *, group, **options):
        self.group = group
        self.replicas = net.before_update
        if not isinstance(self.replicas, Replicas):
            self.replicas = attach(net, group)
        if not group.root:
            options["progress"] = False
            options["verbose"] = False
        super().__init__(net, train_set, valid_set, **options)
        self._global_indices = np.empty(self.rows * group.size, np.int64)
        self._status = np.zeros(2 * group.size, np.float64)

    # A Ctrl-C reaches the ranks at different instants: each one's request only
    # travels in the next status exchange, and all stop after that same update.
    @property
    def stop_requested(self):
        return self._stop_agreed

    @stop_requested.setter
    def stop_requested(self, value):
        self._stop_local = bool(value)
        if not value:
            self._stop_agreed = False

    # ----------------------------------------------------------------- data
    def next_indices(self):
        """This rank's rows ``r·b … (r+1)·b - 1`` of the global batch of ``N·b``,
        drawn as a single process with ``batch=N·b`` draws them."""
        out, filled, total = self._global_indices, 0, self._global_indices.size
        while filled < total:
            if self.position >= self.n:
                self.order, self.position = self.rng.permutation(self.n), 0
            take = min(total - filled, self.n - self.position)
            out[filled : filled + take] = self.order[self.position : self.position + take]
            self.position += take
            filled += take
        rank = self.group.rank
        self._indices[...] = out[rank * self.rows : (rank + 1) * self.rows]
        return self._indices

    def load_batch(self, indices):
        """As the classifier's, but augmentation draws from a generator of this
        rank's own (seeded by one shared draw, so every rank's trainer
        generator stays in step and no two ranks share a distortion)."""
        x = self.train_set.batch(indices, out=self._x)
        labels = self.train_set.labels[indices]
        self._truth.fill(0)
        self._truth[self._arange, labels] = 1
        if self.augment is not None:
            shared = int(self.rng.integers(2**62))
            self.augment(x, np.random.default_rng([shared, self.group.rank]))
        return x, self._truth

    # ----------------------------------------------------------------- train
    def train_batch(self, x, truth):
        """One update of the global batch; the mean loss over every rank's images."""
        group = self.group
        self.replicas.begin_update()
        loss = self.net.train_step(x, truth)
        status, rank, size = self._status, group.rank, group.size
        status.fill(0)
        status[rank] = loss
        status[size + rank] = float(self._stop_local)
        group.comm.Allreduce(group.MPI.IN_PLACE, status, op=group.MPI.SUM)
        losses = status[:size]
        if not np.isfinite(losses).all():
            first = int(np.flatnonzero(~np.isfinite(losses))[0])
            if first == rank:
                raise RankFailed(self._nan_report(loss, x), first)
            raise RankFailed(f"rank {first} reported a loss of {losses[first]}", first)
        self._stop_agreed = bool(status[size:].any())
        return float(losses.mean())

    def evaluate_valid(self):
        """Each rank evaluates its contiguous share of the valid set; counts summed."""
        valid, group = self.valid_set, self.group
        n = len(valid)
        low, high = n * group.rank // group.size, n * (group.rank + 1) // group.size
        counts = np.zeros(2, np.float64)
        result = {"n": n, "top1": 0.0, "topk": 0.0, "k": max(1, int(self.top))}
        if high > low:
            share = type(valid)(valid.images[low:high], valid.labels[low:high], valid.source)
            mine = evaluate(self.net, share, self.top)
            counts[:] = round(mine["top1"] * mine["n"]), round(mine["topk"] * mine["n"])
            result["k"] = mine["k"]
        group.comm.Allreduce(group.MPI.IN_PLACE, counts, op=group.MPI.SUM)
        result["top1"], result["topk"] = counts[0] / n, counts[1] / n
        return result

    def restore(self, weights_path, exact=True):
        """Rank 0 first (it may settle an interrupted write), then the others."""
        if self.group.root:
            text = super().restore(weights_path, exact)
        self.group.comm.Barrier()
        if not self.group.root:
            text = super().restore(weights_path, exact)
        return text

    # ------------------------------------------------------------------ I/O: rank 0
    def _prepare_folder(self):
        lock = super()._prepare_folder() if self.group.root else None
        self.group.comm.Barrier()  # the folder exists and is tidy for everyone
        return lock

    def open_log(self, path):
        return super().open_log(path) if self.group.root else _NoLog()

    def append_metrics(self, record):
        if self.group.root:
            super().append_metrics(record)

    def checkpoint(self, name):
        if self.group.root:
            return super().checkpoint(name)
        self.last_checkpoint = os.path.join(self.backup_dir, name)
        return self.last_checkpoint

    def _chart(self):
        if self.group.root:
            super()._chart()

    def say(self, message):
        if self.group.root:
            super().say(message)
