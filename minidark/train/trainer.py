"""The training loop of ``minidark classifier train`` (darknet's train_classifier).

Each iteration trains ``batch`` images (``batch/subdivisions`` per
mini-batch, one update per iteration) through ``net.train_step``; the loop
runs while ``seen / batch < max_batches`` (forever when ``max_batches=0``,
as in darknet). Images are drawn from a fresh random permutation of the
training set each epoch (darknet draws with replacement), gathered from the
preallocated uint8 dataset into one float32 buffer and augmented as the
cfg asks (minidark/data/augment.py). Every label must name one of the
network's classes (checked once, before training: a truth row without a
class would train towards nothing).

Per iteration: a tqdm bar (iteration, loss, running average, rate, img/s)
and darknet's line ``batch, epoch: loss, avg avg, rate rate, s seconds,
seen images`` appended to ``<backup>/<base>.log`` (and printed with
``verbose``). ``avg = .9 avg + .1 loss``, seeded by the first loss.

Checkpoints, darknet's classifier names, in the .data file's ``backup``
folder (``<base>`` = cfg file name without extension)::

    <base>.backup           every backup_every batches ([net], 1000), and on Ctrl-C
    <base>_<epoch>.weights  when seen / N passes an integer, at most once per
                            backup_every batches (1000 when it is 0; the first
                            always)
    <base>.weights          at the end

Each is a darknet .weights file plus a ``.state.npz`` sidecar (momentum,
random generators, data order and position, history), written as one unit
(minidark/train/checkpoint.py): after a kill at any instant every
checkpoint name holds its previous or its new state, whole, and resuming
from the newest complete one gives the same bytes as an uninterrupted run.
A sidecar that is damaged or belongs to other weights or data is an error
that says what to do (``--no-exact-resume``: the weights alone, as darknet);
a file without a sidecar (a darknet file) starts momentum and data order
fresh. Resuming from a checkpoint at max_batches whose final
``<base>.weights`` never landed (a kill while finishing) writes it. Before
training: the folder is created and locked, files left by an interrupted
write are removed, and warnings name a dataset smaller than one update and
checkpoints of an earlier run that this one would overwrite.

Evaluation (top-1 and top-k) runs on the valid set at the end and every
``valid_every`` batches, before that iteration's checkpoints (so they hold
its result); results are printed and appended as JSON lines to
``<base>_metrics.jsonl``; ``<base>_chart.png`` plots the run. The log and
metrics files are never appended through a symbolic link (metrics.py).

Stops: Ctrl-C finishes the current iteration, saves ``<base>.backup`` and
returns (a second Ctrl-C aborts at once). A NaN or infinite loss stops with
an error naming the iteration and what was checked (the input batch, the
truth, where the first non-finite output appeared, the rate and the cfg
values behind it); nothing is saved after it. A checkpoint or log that
cannot be written (disk full, permissions) stops with one line; the last
complete checkpoint stays intact.
"""

import json
import math
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from ..errors import DataError, printable
from ..kernels.tree import fill_hierarchy
from ..optim import policy
from ..weights import weights_bytes
from .checkpoint import (
    NO_EXACT,
    CheckpointError,
    check_state,
    checkpoint_base,
    checkpoint_names,
    clean_folder,
    lock_folder,
    read_sidecar,
    resolve_sidecar,
    sha256_of,
    sidecar_bytes,
    sidecar_path,
    size_limit,
    state_array,
    train_state_names,
    unlock_folder,
    unusable,
    write_checkpoint,
)
from .metrics import Log, TrainingStopped, append_record, check_appendable

DEFAULT_BACKUP_EVERY = 1000  # [net] backup_every's default

__all__ = [
    "Trainer",
    "TrainingStopped",
    "cfg_base",
    "evaluate",
    "final_missing",
    "format_accuracy",
    "sidecar_path",
    "tidy",
    "topk_indices",
    "train_state_names",
]


def cfg_base(cfg):
    """darknet's basecfg: the cfg file name without folder and extension."""
    name = os.path.basename(os.fspath(cfg))
    for ext in (".cfg", ".yaml", ".yml"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def topk_indices(probs, k):
    """Indices of the k largest values per row; ties go to the lower index (darknet)."""
    k = min(k, probs.shape[1])
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def evaluate(net, dataset, top=1, confusion=False, classes=None, chunk=2048):
    """Top-1/top-k accuracy of ``net`` on ``dataset`` (and a confusion matrix).

    Returns {"n", "top1", "topk", "k", "confusion" (rows: truth, columns: top-1)}.
    """
    n = len(dataset)
    k = max(1, int(top))
    chunk = max(chunk, net.batch)
    buffer = np.empty((min(chunk, n), dataset.inputs), np.float32)
    hits1 = hitsk = 0
    predicted = np.empty(n, np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        probs = net.predict(dataset.batch(rows, out=buffer))
        best = topk_indices(probs, k)
        truth = dataset.labels[rows]
        predicted[rows] = best[:, 0]
        hits1 += int((best[:, 0] == truth).sum())
        hitsk += int((best == truth[:, None]).any(axis=1).sum())
    result = {"n": n, "top1": hits1 / n, "topk": hitsk / n, "k": k}
    if confusion:
        classes = classes or net.outputs
        result["confusion"] = np.bincount(
            dataset.labels * classes + predicted, minlength=classes * classes
        ).reshape(classes, classes)
    return result


def format_accuracy(result):
    text = f"top-1 {100 * result['top1']:.2f}%"
    if result["k"] > 1:
        text += f", top-{result['k']} {100 * result['topk']:.2f}%"
    return text + f" on {result['n']} images"


class Trainer:
    """Trains ``net`` on ``train_set``; see the module docstring. ``start`` is the
    weights file the net was loaded from (None: fresh weights)."""

    def __init__(
        self,
        net,
        train_set,
        valid_set=None,
        *,
        backup_dir="backup",
        base="net",
        top=1,
        seed=None,
        progress=True,
        verbose=False,
        out=None,
        header="",
        start=None,
    ):
        self.net, self.train_set, self.valid_set = net, train_set, valid_set
        self.backup_dir, self.base, self.top = os.fspath(backup_dir), base, top
        self.progress, self.verbose, self.header = progress, verbose, header
        self.start = None if start is None else os.fspath(start)
        self.out = out or sys.stdout
        self.rng = np.random.default_rng(None if seed is None else [seed, 1])
        self.n = len(train_set)
        self.rows = net.batch * net.subdivisions  # images per iteration
        self.order, self.position = None, self.n
        self.epoch = net.seen // self.n
        self.last_epoch_checkpoint = 0  # iteration of the last _<epoch> file
        self.avg_loss = None
        self.history = {"iteration": [], "loss": [], "avg": []}
        self.valid_history = {"iteration": [], "top1": [], "topk": []}
        self.last_result = None  # the latest evaluation, reused at the end
        self.stop_requested = False
        self.restored = False
        self.bar = None
        self.last_backup = None
        self.last_checkpoint = None  # the newest complete checkpoint this run wrote
        self.on_iteration = None  # hook(trainer), for tests
        self.augment = None
        self.hierarchy = None  # a kernels.tree.Tree: truth filled as darknet's fill_hierarchy
        self._display_rng = np.random.default_rng(0)  # for printing a 'random' rate
        self._indices = np.empty(self.rows, np.int64)
        self.setup_data()

    # ------------------------------------------------- the batch source (classifier)
    # A trainer for another kind of data overrides setup_data, load_batch,
    # truth_problem, head_lines and validate.
    truth_checked = "every truth row holds one class"

    def setup_data(self):
        """Check the labels, set up augmentation and the batch buffers."""
        net, train_set = self.net, self.train_set
        check_labels(train_set, net)
        if net.w and net.h and net.c and train_set.shape == (net.c, net.h, net.w):
            from ..data.augment import Augmenter

            augment = Augmenter(net, train_set.shape)
            self.augment = augment if augment.active else None
        self._x = np.empty((self.rows, train_set.inputs), np.float32)
        self._truth = np.zeros((self.rows, net.truths), np.float32)
        self._arange = np.arange(self.rows)

    def load_batch(self, indices):
        """(inputs, truth) of the images ``indices``, augmented."""
        x = self.train_set.batch(indices, out=self._x)
        labels = self.train_set.labels[indices]
        self._truth.fill(0)
        self._truth[self._arange, labels] = 1
        if self.hierarchy is not None:  # .data tree=: darknet's fill_hierarchy
            self._truth[...] = fill_hierarchy(self._truth, self.hierarchy)
        if self.augment is not None:
            self.augment(x, self.rng)
        return x, self._truth

    def truth_problem(self):
        """Why the current truth cannot train, or None (for the NaN report)."""
        if self.hierarchy is None and not (self._truth.sum(axis=1) == 1).all():
            return f"a truth row holds no single class: check the labels of {self.train_set.source}"
        return None

    # Hooks a data-parallel trainer overrides (minidark/train/distributed.py).
    def train_batch(self, x, truth):
        """One update on (x, truth); the mean loss per image."""
        return self.net.train_step(x, truth)

    def evaluate_valid(self):
        return evaluate(self.net, self.valid_set, self.top)

    def open_log(self, path):
        return Log(path)

    def append_metrics(self, record):
        append_record(os.path.join(self.backup_dir, f"{self.base}_metrics.jsonl"), record)

    def head_lines(self):
        """Lines logged before an iteration's line (a detector's per-head statistics)."""
        return []

    def bar_suffix(self):
        """Text appended to the progress bar's figures (a detector's head statistics)."""
        return ""

    # --------------------------------------------------------------- data order
    def next_indices(self):
        """The next ``rows`` indices, continuing into a new permutation at epoch ends."""
        out, filled = self._indices, 0
        while filled < self.rows:
            if self.position >= self.n:
                self.order, self.position = self.rng.permutation(self.n), 0
            take = min(self.rows - filled, self.n - self.position)
            out[filled : filled + take] = self.order[self.position : self.position + take]
            self.position += take
            filled += take
        return out

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Train until max_batches; returns a summary dict (``status`` says how it ended)."""
        net = self.net
        start_batch = net.current_batch
        if (
            net.max_batches
            and start_batch >= net.max_batches
            and not (self.restored and final_missing(self.start, self.backup_dir, self.base))
        ):
            tidy(self.backup_dir, self.base)
            self.say(
                f"{self.base}: already trained to max_batches={net.max_batches} "
                f"(seen {net.seen} images = {start_batch} batches): nothing to do; "
                f"raise max_batches in the cfg, or pass --clear to start again from "
                f"these weights"
            )
            return {"status": "done-already", "iterations": 0, "seen": net.seen}
        lock = self._prepare_folder()
        self.say(
            f"{self.base}: learning rate {net.learning_rate:g}, momentum "
            f"{net.momentum:g}, decay {net.decay:g}; {self.n} training images, "
            f"{net.images_per_update} per iteration; augmentation: "
            f"{self.augment.describe() if self.augment else 'off'}"
        )
        log_path = os.path.join(self.backup_dir, f"{self.base}.log")
        started = time.perf_counter()
        iterations = 0
        from tqdm import tqdm

        previous_handler = self._install_sigint()
        try:
            with (
                self.open_log(log_path) as log,
                tqdm(
                    total=net.max_batches or None,
                    initial=start_batch,
                    unit="it",
                    disable=not self.progress,
                    dynamic_ncols=True,
                    file=sys.stderr,
                ) as self.bar,
            ):
                log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {self.header}\n")
                # overflow on the way to a NaN loss is reported by the guard, not numpy
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    while not net.max_batches or net.current_batch < net.max_batches:
                        if self.stop_requested:
                            return self._interrupted(iterations, started)
                        self._iteration(log)
                        iterations += 1
                        if self.on_iteration is not None:
                            self.on_iteration(self)
                self.bar.close()
                return self._finish(iterations, started)
        finally:
            self.bar = None
            self._restore_sigint(previous_handler)
            unlock_folder(lock)

    def _prepare_folder(self):
        """Create and lock the backup folder, then _check_folder; returns the lock."""
        folder = self.backup_dir
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise TrainingStopped(
                f"the backup folder {folder} is a file, not a folder: set "
                f"backup= in the .data file to a folder"
            )
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise TrainingStopped(
                f"cannot create the backup folder {folder}: {exc.strerror}; "
                f"set backup= in the .data file to a folder you can write"
            ) from None
        try:
            lock = lock_folder(folder, self.base)
        except CheckpointError as exc:
            raise TrainingStopped(str(exc)) from None
        try:
            self._check_folder()
        except BaseException:
            unlock_folder(lock)
            raise
        return lock

    def _check_folder(self):
        """Under the lock: clear what a killed run left, refuse a planted metrics
        file, warn about a tiny dataset and about files of an earlier run."""
        folder, net = self.backup_dir, self.net
        try:
            removed = clean_folder(folder, self.base)
        except OSError as exc:
            raise TrainingStopped(
                f"cannot tidy the backup folder {folder}: {exc.strerror}"
            ) from None
        if removed:
            self.say(
                f"{self.base}: removed {len(removed)} file(s) an interrupted write left in "
                f"{folder}: {', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}"
            )
        if self.n < self.rows:
            warnings.warn(
                f"{self.train_set.source}: {self.n} training images, fewer than the "
                f"{self.rows} of one update (batch={self.rows}, subdivisions="
                f"{net.subdivisions} in [net]): every update repeats images and every "
                f"iteration ends an epoch; <base>_<epoch>.weights are written at most once "
                f"per {self.epoch_spacing} iterations (backup_every)",
                UserWarning,
                stacklevel=3,
            )
        if self.valid_set is not None:  # appended only at the first evaluation: check now
            check_appendable(os.path.join(folder, f"{self.base}_metrics.jsonl"))
        overwritten = self._earlier_outputs()
        if overwritten:
            names = ", ".join(overwritten[:3]) + (
                f" and {len(overwritten) - 3} more" if len(overwritten) > 3 else ""
            )
            warnings.warn(
                f"{folder} holds {names} from an earlier run, which this run did not start "
                f"from and will overwrite: this run writes its checkpoints, log and chart to "
                f"{folder}; copy those files away first, or set backup= in the .data file "
                f"to another folder",
                UserWarning,
                stacklevel=3,
            )

    def _earlier_outputs(self):
        """Checkpoints in the folder that this run would overwrite and did not start
        from: the finished <base>.weights always; any when training starts afresh."""
        fresh, pattern, found = self.net.seen == 0, checkpoint_names(self.base), []
        for name in sorted(os.listdir(self.backup_dir)):
            match = pattern.fullmatch(name)
            if not match or match.group(2) or not (fresh or name == f"{self.base}.weights"):
                continue
            path = os.path.join(self.backup_dir, name)
            if not os.path.isfile(path):
                continue
            try:
                if self.start and os.path.samefile(path, self.start):
                    continue
            except OSError:
                pass
            found.append(name)
        return found

    def _iteration(self, log):
        net, tick = self.net, time.perf_counter()
        x, truth = self.load_batch(self.next_indices())
        loss = self.train_batch(x, truth)
        seconds = time.perf_counter() - tick
        batch = net.current_batch
        if not math.isfinite(loss):
            log.write(f"{batch}, {net.seen / self.n:.3f}: {loss:f} (stopped)\n")
            self._chart()
            raise TrainingStopped(self._nan_report(loss, x))
        self.avg_loss = loss if self.avg_loss is None else 0.9 * self.avg_loss + 0.1 * loss
        rate = policy.current_rate(net, self._display_rng)
        self.history["iteration"].append(batch)
        self.history["loss"].append(loss)
        self.history["avg"].append(self.avg_loss)
        line = (
            f"{batch}, {net.seen / self.n:.3f}: {loss:f}, {self.avg_loss:f} avg, "
            f"{rate:f} rate, {seconds:f} seconds, {net.seen} images"
        )
        for extra in self.head_lines():
            log.write(extra + "\n")
            if self.verbose:
                self.say(extra)
        log.write(line + "\n")
        if self.verbose:
            self.say(line)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix_str(
                f"loss {loss:.4f}, avg {self.avg_loss:.4f}, lr {rate:.3g},"
                f" {net.images_per_update / max(seconds, 1e-9):,.0f} img/s{self.bar_suffix()}",
                refresh=False,
            )
            self.bar.update(1)
        # evaluation first: every checkpoint of this iteration holds its result
        if net.valid_every and batch % net.valid_every == 0 and self.valid_set is not None:
            self.validate()
        if net.seen // self.n > self.epoch:
            self.epoch = net.seen // self.n
            # tiny datasets end an epoch every iteration: not a checkpoint each time
            if (
                not self.last_epoch_checkpoint
                or batch - self.last_epoch_checkpoint >= self.epoch_spacing
            ):
                self.last_epoch_checkpoint = batch
                self.checkpoint(f"{self.base}_{self.epoch}.weights")
        if net.backup_every and batch % net.backup_every == 0:
            self.backup()

    @property
    def epoch_spacing(self):
        """The fewest iterations between two <base>_<epoch>.weights: backup_every
        (its default when backups are off, so epochs never set the pace alone)."""
        return self.net.backup_every or DEFAULT_BACKUP_EVERY

    def _nan_report(self, loss, x):
        """Why the loss became non-finite, as far as can be told: what was checked."""
        net = self.net
        head = (
            f"loss is {loss} at iteration {net.current_batch} (seen {net.seen}): training "
            f"stopped and nothing was saved after it; {self._kept()}"
        )
        bad_inputs = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad_inputs:
            return (
                f"{head}. The input batch holds {bad_inputs} NaN or infinite values: the "
                f"data ({self.train_set.source}) or its augmentation produced them"
            )
        checked = ["the input batch is finite"]
        problem = self.truth_problem()
        if problem:
            return f"{head}. Checked: {checked[0]}; but {problem}"
        checked.append(self.truth_checked)
        for layer in net.layers:
            bad = [name for name in layer.saved if not np.isfinite(getattr(layer, name)).all()]
            if layer.output is not None and not np.isfinite(layer.output).all():
                checked.append(
                    f"the first non-finite output is layer {layer.index} "
                    f"[{layer.type}]" + (f" (its {', '.join(bad)} too)" if bad else "")
                )
                break
        rate = policy.current_rate(net, self._display_rng)
        values = (
            f"rate {rate:g} (learning_rate {net.learning_rate:g}, policy {net.policy}), "
            f"momentum {net.momentum:g}, decay {net.decay:g}"
        )
        unusable_cfg = [
            text
            for text, bad in (
                (
                    f"learning_rate={net.learning_rate:g}",
                    not (net.learning_rate > 0 and math.isfinite(net.learning_rate)),
                ),
                (f"momentum={net.momentum:g}", not 0 <= net.momentum < 1),
                (f"decay={net.decay:g}", not 0 <= net.decay < math.inf),
            )
            if bad
        ]
        if unusable_cfg:
            return (
                f"{head}. Checked: {'; '.join(checked)}. The cfg's "
                f"{', '.join(unusable_cfg)} cannot train: fix it in [net]"
            )
        return (
            f"{head}. Checked: {'; '.join(checked)}; {values}: the updates diverged, so "
            f"lower learning_rate or add burn_in in [net]"
        )

    def _kept(self):
        if self.last_checkpoint:
            return f"the last good checkpoint is {self.last_checkpoint}"
        return "no checkpoint had been written yet"

    def backup(self):
        self.last_backup = self.checkpoint(f"{self.base}.backup")
        self._chart()

    def _finish(self, iterations, started):
        path = self.checkpoint(f"{self.base}.weights")
        result = None
        if self.valid_set is not None:  # reuse a valid_every evaluation of this very iteration
            done = self.valid_history["iteration"]
            result = (
                self.last_result
                if self.last_result is not None and done and done[-1] == self.net.current_batch
                else self.validate()
            )
        self._chart()
        seconds = time.perf_counter() - started
        summary = {
            "status": "finished",
            "iterations": iterations,
            "seen": self.net.seen,
            "weights": path,
            "seconds": seconds,
            "accuracy": result,
        }
        self.say(f"{self.base}: trained {iterations} iterations in {seconds:.1f} s; saved {path}")
        return summary

    def _interrupted(self, iterations, started):
        self.backup()
        self.say(
            f"{self.base}: interrupted at iteration {self.net.current_batch}; saved "
            f"{self.last_backup}; train again with it as WEIGHTS to resume"
        )
        return {
            "status": "interrupted",
            "iterations": iterations,
            "seen": self.net.seen,
            "weights": self.last_backup,
            "seconds": time.perf_counter() - started,
        }

    # -------------------------------------------------------------- evaluation
    def validate(self):
        """Evaluate on the valid set; print it and append it to the metrics file."""
        net = self.net
        result = self.evaluate_valid()
        batch = net.current_batch
        curves, fields, text = self.describe_result(result)
        self.valid_history["iteration"].append(batch)
        self.valid_history["top1"].append(curves[0])
        self.valid_history["topk"].append(curves[1])
        record = {
            "iteration": batch,
            "seen": net.seen,
            "epoch": round(net.seen / self.n, 4),
            "loss": self.history["loss"][-1] if self.history["loss"] else None,
            "avg_loss": self.avg_loss,
            **fields,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.append_metrics(record)
        self.say(f"{self.base}: iteration {batch}: valid {text}")
        self.last_result = result
        return result

    def describe_result(self, result):
        """An evaluation as (the chart's two accuracy curves' values, the metrics
        record's fields, the line's text)."""
        fields = {"top1": result["top1"], "k": result["k"], "topk": result["topk"]}
        fields["images"] = result["n"]
        return (result["top1"], result["topk"]), fields, format_accuracy(result)

    def _chart(self):
        from .chart import draw_chart

        try:
            draw_chart(
                os.path.join(self.backup_dir, f"{self.base}_chart.png"),
                self.history,
                self.valid_history,
                title=f"{self.base}",
                k=self.top,
            )
        except OSError as exc:  # a chart is never worth losing a run
            self.say(f"warning: cannot write the chart: {exc}")

    # ----------------------------------------------------------- checkpoints
    def checkpoint(self, name):
        """Save weights + sidecar as one unit as ``backup_dir/name``; return the path."""
        path = os.path.join(self.backup_dir, name)
        for layer in self.net.layers:
            for array in layer.saved:
                if not np.isfinite(getattr(layer, array)).all():
                    raise TrainingStopped(
                        f"layer {layer.index} [{layer.type}] {array} became NaN or infinite "
                        f"at iteration {self.net.current_batch}: {name} was not written; "
                        f"{self._kept()}; lower learning_rate or add burn_in in [net]"
                    )
        data = weights_bytes(self.net)
        try:
            write_checkpoint(path, data, sidecar_bytes(self.state_arrays(), data))
        except CheckpointError as exc:
            raise TrainingStopped(f"{exc}: training stopped; {self._kept()}") from None
        self.last_checkpoint = path
        return path

    def state_arrays(self):
        """The training state a sidecar holds (checkpoint.py adds version and digest)."""
        net = self.net
        arrays = {
            "seen": np.array(net.seen, np.int64),
            "t": np.array(net.t, np.int64),
            "dataset_size": np.array(self.n, np.int64),
            "epoch": np.array(self.epoch, np.int64),
            "position": np.array(self.position, np.int64),
            "last_epoch_checkpoint": np.array(self.last_epoch_checkpoint, np.int64),
            "order": (
                self.order.astype(np.int32 if self.n < 2**31 else np.int64)
                if self.order is not None
                else np.zeros(0, np.int64)
            ),
            "trainer_rng": np.array(json.dumps(self.rng.bit_generator.state)),
            "net_rng": np.array(json.dumps(net.rng.bit_generator.state)),
            "avg_loss": np.array(np.nan if self.avg_loss is None else self.avg_loss),
        }
        for key, values in self.history.items():
            arrays[f"history/{key}"] = np.asarray(values, np.float64)
        for key, values in self.valid_history.items():
            arrays[f"valid/{key}"] = np.asarray(values, np.float64)
        for layer in net.layers:
            for name in train_state_names(layer):
                arrays[f"layer{layer.index}/{name}"] = state_array(layer, name)
        return arrays

    def restore(self, weights_path, exact=True):
        """Restore the sidecar of ``weights_path`` (already loaded into the net).

        Returns a one-line description of what was restored; ``self.restored``
        tells whether the training state was. A sidecar that cannot be used
        raises CheckpointError saying what to do, unless ``exact`` is False
        (then it is ignored: momentum and data order start fresh).
        """
        net, weights_path = self.net, os.fspath(weights_path)
        self.start = weights_path
        folder = os.path.dirname(weights_path) or "."
        base = checkpoint_base(weights_path, self.base)
        try:
            path = resolve_sidecar(weights_path, base)
        except OSError as exc:
            raise CheckpointError(
                f"{sidecar_path(weights_path)}: cannot settle an interrupted write: {exc.strerror}"
            ) from None
        if path is None:
            return (
                f"no {os.path.basename(sidecar_path(weights_path))} beside it: momentum "
                f"and data order start fresh (as darknet does)"
            )
        if not exact:
            return (
                f"{NO_EXACT}: {os.path.basename(path)} not used; momentum and data order "
                f"start fresh"
            )
        try:
            state = read_sidecar(path, size_limit(net, self.n))
            version = check_state(state, net, self.n, sha256_of(weights_path))
        except CheckpointError as exc:
            raise unusable(path, str(exc), folder, base, exclude=weights_path) from None
        except OSError as exc:
            raise unusable(path, exc.strerror or str(exc)) from None
        for layer in net.layers:
            for name in train_state_names(layer):
                state_array(layer, name)[...] = state[f"layer{layer.index}/{name}"]
        net.t = int(state["t"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = state["order"].astype(np.int64) if state["order"].size else None
        if self.order is None:
            self.position = self.n
        if version >= 2:
            self.last_epoch_checkpoint = int(state["last_epoch_checkpoint"])
        self.rng.bit_generator.state = json.loads(str(state["trainer_rng"]))
        net.rng.bit_generator.state = json.loads(str(state["net_rng"]))
        avg = float(state["avg_loss"])
        self.avg_loss = None if math.isnan(avg) else avg
        self.history = {key: list(state[f"history/{key}"]) for key in self.history}
        self.history["iteration"] = [int(i) for i in self.history["iteration"]]
        self.valid_history = {key: list(state[f"valid/{key}"]) for key in self.valid_history}
        self.restored = True
        self.last_checkpoint = weights_path  # until this run writes a newer one
        return f"momentum, random state and data order restored from {os.path.basename(path)}"

    # --------------------------------------------------------------- plumbing
    def say(self, message):
        message = printable(message)  # paths (backup=, weights) may hold control characters
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message, file=self.out)
        else:
            print(message, file=self.out, flush=True)

    def request_stop(self):
        """Stop after the current iteration, saving a backup (what Ctrl-C does)."""
        self.stop_requested = True

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.say(
                "stopping after this iteration to save a backup "
                "(Ctrl-C again to quit without saving)"
            )

        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(previous):
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def tidy(backup_dir, base):
    """Clear what a killed run of ``base`` left in ``backup_dir`` when there is
    nothing else to do (best effort: a busy or unwritable folder is left alone)."""
    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return
    try:
        lock = lock_folder(backup_dir, base)
    except CheckpointError:
        return
    try:
        clean_folder(backup_dir, base)
    except OSError:
        pass
    finally:
        unlock_folder(lock)


def final_missing(weights_path, backup_dir, base):
    """True when ``weights_path`` is a checkpoint (it has a sidecar) at the end of
    a run that was killed while writing its final ``<base>.weights``: resuming
    from it then writes that file instead of saying there is nothing to do."""
    if weights_path is None:
        return False
    final = os.path.join(os.fspath(backup_dir), f"{base}.weights")
    try:
        if resolve_sidecar(weights_path, checkpoint_base(weights_path, base)) is None:
            return False
        if not os.path.exists(final) or sha256_of(final) != sha256_of(weights_path):
            return True
        resolve_sidecar(final, base)
    except OSError:
        return True
    return not os.path.exists(sidecar_path(final))


def check_labels(dataset, net):
    """Every label must be one of the network's classes: a label outside them
    gives a truth row without a class (or, negative, the wrong class)."""
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no training images")
    labels, classes = dataset.labels, net.truths
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        where = dataset.paths[first] if dataset.paths is not None else f"image {first}"
        raise DataError(
            f"{dataset.source}: {int(bad.sum())} of {len(labels)} images have no "
            f"class among the network's {classes} (0..{classes - 1}), e.g. "
            f"{where} with label {int(labels[first])}: their truth would be all "
            f"zero; fix the labels, or the output size of {net.cfg_file}"
        )
