"""The training loop of ``minidark classifier train`` (darknet's train_classifier).

Each iteration trains ``batch`` images (``batch/subdivisions`` per
mini-batch, one update per iteration) through ``net.train_step``; the loop
runs while ``seen / batch < max_batches`` (forever when ``max_batches=0``,
as in darknet). Images are drawn from a fresh random permutation of the
training set each epoch (darknet draws with replacement), gathered from the
preallocated uint8 dataset into one float32 buffer and augmented as the
cfg asks (minidark/data/augment.py).

Per iteration: a tqdm bar (iteration, loss, running average, rate, img/s)
and darknet's line ``batch, epoch: loss, avg avg, rate rate, s seconds,
seen images`` appended to ``<backup>/<base>.log`` (and printed with
``verbose``). ``avg = .9 avg + .1 loss``, seeded by the first loss.

Checkpoints, darknet's classifier names, in the .data file's ``backup``
folder (``<base>`` = cfg file name without extension)::

    <base>.backup           every backup_every batches ([net], 1000), and on Ctrl-C
    <base>_<epoch>.weights  when seen / N passes an integer
    <base>.weights          at the end

each written atomically (temp file, fsync, rename) with a sidecar
``<file>.state.npz`` holding what darknet's .weights cannot: every layer's
``*_updates`` momentum buffers (and any arrays a layer lists in
``train_state``), ``t``, both random generators (data order and
augmentation; dropout and the random policy), the epoch's permutation and
the position in it, and the loss/accuracy history. The sidecar records the
SHA-256 of its weights file and is ignored, with a warning, if they
disagree. Resuming from a checkpoint with its sidecar continues exactly
where the uninterrupted run would be; from a plain darknet file, momentum
and data order start fresh (darknet's behaviour).

Evaluation (top-1 and top-k) runs on the valid set at the end and every
``valid_every`` batches; results are printed and appended as JSON lines to
``<base>_metrics.jsonl``; ``<base>_chart.png`` plots the run.

Stops: Ctrl-C finishes the current iteration, saves ``<base>.backup`` and
returns (a second Ctrl-C aborts at once). A NaN or infinite loss stops with
an error naming the iteration; nothing is saved after it, so the last
backup stays the last good state.
"""
import hashlib
import io
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from ..optim import policy
from ..errors import MinidarkError, WeightsError
from ..weights import atomic_write, weights_bytes

STATE_VERSION = 1


class TrainingStopped(MinidarkError):
    """Training cannot go on (a NaN or infinite loss)."""


def sidecar_path(path):
    return os.fspath(path) + ".state.npz"


def cfg_base(cfg):
    """darknet's basecfg: the cfg file name without folder and extension."""
    name = os.path.basename(os.fspath(cfg))
    for ext in (".cfg", ".yaml", ".yml"):
        if name.endswith(ext):
            return name[:-len(ext)]
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
        result["confusion"] = np.bincount(dataset.labels * classes + predicted,
                                          minlength=classes * classes).reshape(classes, classes)
    return result


def format_accuracy(result):
    text = f"top-1 {100 * result['top1']:.2f}%"
    if result["k"] > 1:
        text += f", top-{result['k']} {100 * result['topk']:.2f}%"
    return text + f" on {result['n']} images"


class Trainer:
    """Trains ``net`` on ``train_set``; see the module docstring."""

    def __init__(self, net, train_set, valid_set=None, *, backup_dir="backup", base="net",
                 top=1, seed=None, progress=True, verbose=False, out=None, header=""):
        self.net, self.train_set, self.valid_set = net, train_set, valid_set
        self.backup_dir, self.base, self.top = os.fspath(backup_dir), base, top
        self.progress, self.verbose, self.header = progress, verbose, header
        self.out = out or sys.stdout
        self.rng = np.random.default_rng(None if seed is None else [seed, 1])
        self.n = len(train_set)
        self.rows = net.batch * net.subdivisions            # images per iteration
        self.order, self.position = None, self.n
        self.epoch = net.seen // self.n
        self.avg_loss = None
        self.history = {"iteration": [], "loss": [], "avg": []}
        self.valid_history = {"iteration": [], "top1": [], "topk": []}
        self.last_result = None           # the latest evaluation, reused at the end
        self.stop_requested = False
        self.restored = False
        self.bar = None
        self.last_backup = None
        self.on_iteration = None                            # hook(trainer), for tests
        self.augment = None
        if net.w and net.h and net.c and train_set.shape == (net.c, net.h, net.w):
            from ..data.augment import Augmenter
            augment = Augmenter(net, train_set.shape)
            self.augment = augment if augment.active else None
        self._display_rng = np.random.default_rng(0)        # for printing a 'random' rate
        self._indices = np.empty(self.rows, np.int64)
        self._x = np.empty((self.rows, train_set.inputs), np.float32)
        self._truth = np.zeros((self.rows, net.truths), np.float32)
        self._arange = np.arange(self.rows)

    # --------------------------------------------------------------- data order
    def next_indices(self):
        """The next ``rows`` indices, continuing into a new permutation at epoch ends."""
        out, filled = self._indices, 0
        while filled < self.rows:
            if self.position >= self.n:
                self.order, self.position = self.rng.permutation(self.n), 0
            take = min(self.rows - filled, self.n - self.position)
            out[filled:filled + take] = self.order[self.position:self.position + take]
            self.position += take
            filled += take
        return out

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Train until max_batches; returns a summary dict (``status`` says how it ended)."""
        net = self.net
        start_batch = net.current_batch
        if net.max_batches and start_batch >= net.max_batches:
            self.say(f"{self.base}: already trained to max_batches={net.max_batches} "
                     f"(seen {net.seen} images = {start_batch} batches): nothing to do; "
                     f"raise max_batches in the cfg, or pass --clear to start again from "
                     f"these weights")
            return {"status": "done-already", "iterations": 0, "seen": net.seen}
        os.makedirs(self.backup_dir, exist_ok=True)
        self.say(f"{self.base}: learning rate {net.learning_rate:g}, momentum "
                 f"{net.momentum:g}, decay {net.decay:g}; {self.n} training images, "
                 f"{self.rows} per iteration; augmentation: "
                 f"{self.augment.describe() if self.augment else 'off'}")
        log_path = os.path.join(self.backup_dir, f"{self.base}.log")
        started = time.perf_counter()
        iterations = 0
        from tqdm import tqdm
        previous_handler = self._install_sigint()
        try:
            with open(log_path, "a", encoding="utf-8", buffering=1) as log, \
                    tqdm(total=net.max_batches or None, initial=start_batch, unit="it",
                         disable=not self.progress, dynamic_ncols=True,
                         file=sys.stderr) as self.bar:
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

    def _iteration(self, log):
        net, tick = self.net, time.perf_counter()
        indices = self.next_indices()
        x = self.train_set.batch(indices, out=self._x)
        labels = self.train_set.labels[indices]
        self._truth.fill(0)
        self._truth[self._arange, labels] = 1
        if self.augment is not None:
            self.augment(x, self.rng)
        loss = net.train_step(x, self._truth)
        seconds = time.perf_counter() - tick
        batch = net.current_batch
        if not math.isfinite(loss):
            log.write(f"{batch}, {net.seen / self.n:.3f}: {loss:f} (stopped)\n")
            self._chart()
            raise TrainingStopped(
                f"loss is {loss} at iteration {batch} (seen {net.seen}): training stopped "
                f"and nothing was saved after it; {self._kept()}; lower learning_rate or "
                f"add burn_in in [net]")
        self.avg_loss = loss if self.avg_loss is None else .9 * self.avg_loss + .1 * loss
        rate = policy.current_rate(net, self._display_rng)
        self.history["iteration"].append(batch)
        self.history["loss"].append(loss)
        self.history["avg"].append(self.avg_loss)
        line = (f"{batch}, {net.seen / self.n:.3f}: {loss:f}, {self.avg_loss:f} avg, "
                f"{rate:f} rate, {seconds:f} seconds, {net.seen} images")
        log.write(line + "\n")
        if self.verbose:
            self.say(line)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix_str(f"loss {loss:.4f}, avg {self.avg_loss:.4f}, lr {rate:.3g},"
                                     f" {self.rows / max(seconds, 1e-9):,.0f} img/s",
                                     refresh=False)
            self.bar.update(1)
        if net.seen // self.n > self.epoch:
            self.epoch = net.seen // self.n
            self.checkpoint(f"{self.base}_{self.epoch}.weights")
        if net.valid_every and batch % net.valid_every == 0 and self.valid_set is not None:
            self.validate()
        if net.backup_every and batch % net.backup_every == 0:
            self.backup()

    def _kept(self):
        return (f"the last good backup is {self.last_backup}" if self.last_backup
                else "no backup had been written yet")

    def backup(self):
        self.last_backup = self.checkpoint(f"{self.base}.backup")
        self._chart()

    def _finish(self, iterations, started):
        path = self.checkpoint(f"{self.base}.weights")
        result = None
        if self.valid_set is not None:  # reuse a valid_every evaluation of this very iteration
            done = self.valid_history["iteration"]
            result = (self.last_result if self.last_result is not None and done
                      and done[-1] == self.net.current_batch else self.validate())
        self._chart()
        seconds = time.perf_counter() - started
        summary = {"status": "finished", "iterations": iterations, "seen": self.net.seen,
                   "weights": path, "seconds": seconds, "accuracy": result}
        self.say(f"{self.base}: trained {iterations} iterations in {seconds:.1f} s; "
                 f"saved {path}")
        return summary

    def _interrupted(self, iterations, started):
        self.backup()
        self.say(f"{self.base}: interrupted at iteration {self.net.current_batch}; saved "
                 f"{self.last_backup}; train again with it as WEIGHTS to resume")
        return {"status": "interrupted", "iterations": iterations, "seen": self.net.seen,
                "weights": self.last_backup, "seconds": time.perf_counter() - started}

    # -------------------------------------------------------------- evaluation
    def validate(self):
        """Evaluate on the valid set; print it and append it to the metrics file."""
        net = self.net
        result = evaluate(net, self.valid_set, self.top)
        batch = net.current_batch
        self.valid_history["iteration"].append(batch)
        self.valid_history["top1"].append(result["top1"])
        self.valid_history["topk"].append(result["topk"])
        record = {"iteration": batch, "seen": net.seen, "epoch": round(net.seen / self.n, 4),
                  "loss": self.history["loss"][-1] if self.history["loss"] else None,
                  "avg_loss": self.avg_loss, "top1": result["top1"], "k": result["k"],
                  "topk": result["topk"], "images": result["n"],
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(os.path.join(self.backup_dir, f"{self.base}_metrics.jsonl"), "a",
                  encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.say(f"{self.base}: iteration {batch}: valid {format_accuracy(result)}")
        self.last_result = result
        return result

    def _chart(self):
        from .chart import draw_chart
        try:
            draw_chart(os.path.join(self.backup_dir, f"{self.base}_chart.png"), self.history,
                       self.valid_history, title=f"{self.base}", k=self.top)
        except OSError as exc:   # a chart is never worth losing a run
            self.say(f"warning: cannot write the chart: {exc}")

    # ----------------------------------------------------------- checkpoints
    def checkpoint(self, name):
        """Save weights + sidecar atomically as ``backup_dir/name``; return the path."""
        path = os.path.join(self.backup_dir, name)
        for layer in self.net.layers:
            for array in layer.saved:
                if not np.isfinite(getattr(layer, array)).all():
                    raise TrainingStopped(
                        f"layer {layer.index} [{layer.type}] {array} became NaN or infinite "
                        f"at iteration {self.net.current_batch}: {name} was not written; "
                        f"{self._kept()}; lower learning_rate or add burn_in in [net]")
        data = weights_bytes(self.net)
        atomic_write(path, data)
        atomic_write(sidecar_path(path), self.state_bytes(hashlib.sha256(data).hexdigest()))
        return path

    def state_bytes(self, weights_sha256):
        net = self.net
        arrays = {
            "version": np.array(STATE_VERSION),
            "weights_sha256": np.array(weights_sha256),
            "seen": np.array(net.seen, np.int64), "t": np.array(net.t, np.int64),
            "dataset_size": np.array(self.n, np.int64),
            "epoch": np.array(self.epoch, np.int64),
            "position": np.array(self.position, np.int64),
            "order": (self.order.astype(np.int32 if self.n < 2**31 else np.int64)
                      if self.order is not None else np.zeros(0, np.int64)),
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
                arrays[f"layer{layer.index}/{name}"] = getattr(layer, name)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def restore(self, weights_path):
        """Restore the sidecar of ``weights_path`` (already loaded into the net).

        Returns a one-line description of what was restored; ``self.restored``
        tells whether the training state was.
        """
        net, path = self.net, sidecar_path(weights_path)
        if not os.path.exists(path):
            return (f"no {os.path.basename(path)} beside it: momentum and data order "
                    f"start fresh (as darknet does)")
        try:
            with open(weights_path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            with np.load(path, allow_pickle=False) as state:
                state = {key: state[key] for key in state.files}
        except (OSError, ValueError, EOFError) as exc:
            raise WeightsError(f"{path}: cannot read training state: {exc}") from None
        problem = None
        if int(state.get("version", -1)) != STATE_VERSION:
            problem = "it has another format version"
        elif str(state["weights_sha256"]) != digest:
            problem = f"it belongs to another version of {os.path.basename(weights_path)}"
        elif int(state["dataset_size"]) != self.n:
            problem = (f"it was saved for {int(state['dataset_size'])} training images, "
                       f"this data has {self.n}")
        else:
            for layer in net.layers:
                for name in train_state_names(layer):
                    key = f"layer{layer.index}/{name}"
                    if key not in state or state[key].shape != getattr(layer, name).shape:
                        problem = f"it does not fit layer {layer.index} [{layer.type}] {name}"
        if problem:
            import warnings
            warnings.warn(f"{path}: ignored because {problem}; momentum and data order "
                          f"start fresh", UserWarning, stacklevel=2)
            return "momentum and data order start fresh"
        for layer in net.layers:
            for name in train_state_names(layer):
                getattr(layer, name)[...] = state[f"layer{layer.index}/{name}"]
        net.t = int(state["t"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = state["order"].astype(np.int64) if state["order"].size else None
        if self.order is None:
            self.position = self.n
        self.rng.bit_generator.state = json.loads(str(state["trainer_rng"]))
        net.rng.bit_generator.state = json.loads(str(state["net_rng"]))
        avg = float(state["avg_loss"])
        self.avg_loss = None if math.isnan(avg) else avg
        self.history = {key: list(state[f"history/{key}"]) for key in self.history}
        self.history["iteration"] = [int(i) for i in self.history["iteration"]]
        self.valid_history = {key: list(state[f"valid/{key}"]) for key in self.valid_history}
        self.restored = True
        return (f"momentum, random state and data order restored from "
                f"{os.path.basename(path)}")

    # --------------------------------------------------------------- plumbing
    def say(self, message):
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
            self.say("stopping after this iteration to save a backup "
                     "(Ctrl-C again to quit without saving)")
        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(previous):
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def train_state_names(layer):
    """Arrays of ``layer`` that training state needs beyond .weights: ``*_updates``
    (momentum) and whatever the layer lists in ``train_state``."""
    names = [name for name, value in vars(layer).items()
             if name.endswith("_updates") and isinstance(value, np.ndarray)]
    names += [name for name in getattr(layer, "train_state", ()) if name not in names]
    return sorted(names)
