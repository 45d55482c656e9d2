"""Accuracy mode (``--accuracy EPOCHS``): the same training run in both engines
-- the same initial weights, batch order and per-iteration learning rates --
and both test top-1 accuracies.
"""

import datetime
import hashlib
import os
import statistics
import tempfile

import numpy as np

from ... import load_network
from ...data.mnist import find_idx, read_idx
from ...errors import MinidarkError
from .common import ENGINE_NAMES, ENGINES
from .runner import find_mnist, machine_info, run_worker, torch_available

ORDER_STREAM = 0x6D64  # keeps the data order's random stream apart from the weights'
ACCURACY_TARGET_POINTS = 0.3  # the goal: within 0.3 points of PyTorch's top-1


def epoch_order(rows, epochs, batch_rows, seed):
    """Training row indices for ``epochs`` epochs back to back, a fresh random
    permutation of ``range(rows)`` each (as minidark's Trainer draws them),
    cut into whole iterations: an ``(iterations, batch_rows)`` int64 array,
    ``iterations = epochs * rows // batch_rows``. The same for both engines."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM]))
    order = np.concatenate([rng.permutation(rows) for _ in range(epochs)]).astype(np.int64)
    iterations = order.size // batch_rows
    return order[: iterations * batch_rows].reshape(iterations, batch_rows)


def rate_at(net, seen):
    """minidark's learning rate (``net.current_rate()``, the cfg's policy and
    burn-in) when ``net.seen == seen``; ``net.seen`` is left as it was."""
    saved = net.seen
    net.seen = seen
    try:
        return net.current_rate()
    finally:
        net.seen = saved


def check_accuracy_net(net, cfg):
    """Raise MinidarkError unless ``net`` can be trained on MNIST by both engines
    with the same learning rates."""
    classes = net.output_layer.outputs
    if net.inputs != 784 or classes != 10:
        raise MinidarkError(
            f"{cfg}: --accuracy trains on MNIST, which needs 784 inputs "
            f"(28x28x1) and 10 outputs; this cfg has {net.inputs} -> {classes}"
        )
    if net.policy == "random":
        raise MinidarkError(
            f"{cfg}: policy=random draws a new rate at every call, so the two "
            f"engines could not get the same rates; use another policy for "
            f"--accuracy"
        )


def _spy_rates(net, rates):
    """Make the first layer with parameters record ``args.learning_rate`` of
    every update; returns a function that undoes it."""
    layer = next((l for l in net.layers if l.update is not None), None)
    if layer is None:
        return lambda: None
    update = layer.update

    def spy(l, args):
        rates.append(args.learning_rate)
        update(l, args)

    layer.update = spy
    return lambda: setattr(layer, "update", update)


def train_minidark(net, images, labels, order, rates=None):
    """``net.train_step`` on ``images[rows]`` for each row set of ``order``
    (``batch * subdivisions`` rows: one update each; the rate is whatever
    minidark's policy gives). Returns the per-iteration mean losses;
    ``rates``, a list, receives the rate each update used."""
    rows = order.shape[1]
    x = np.empty((rows, net.inputs), np.float32)
    truth = np.zeros((rows, net.truths), np.float32)
    arange = np.arange(rows)
    undo = _spy_rates(net, rates) if rates is not None else (lambda: None)
    losses = []
    try:
        for indices in order:
            np.take(images, indices, axis=0, out=x)
            truth.fill(0)
            truth[arange, labels[indices] % net.truths] = 1
            losses.append(net.train_step(x, truth))
    finally:
        undo()
    return losses


def train_torch(twin, net, images, labels, order, rates=None, optimizer=None):
    """The same iterations in PyTorch: the rows of ``order`` in ``subdivisions``
    micro-batches of ``batch`` (gradients accumulated, loss divided by
    subdivisions, like minidark's train_step), then one SGD step whose
    groups' lr are minidark's policy rate for the seen count minidark's update
    has at that iteration (``net.seen`` + rows so far, this iteration's
    included) times each layer's scale. ``net`` only supplies the policy and
    ``seen``; it is not trained. ``optimizer``: ``twin.optimizer()`` made
    beforehand (its first construction imports ~1 s of torch modules).
    Returns the per-iteration mean losses."""
    import torch

    rows, batch = order.shape[1], net.batch
    if rows != net.batch * net.subdivisions:
        raise ValueError(
            f"order has {rows} rows per iteration; the net trains {net.batch} x {net.subdivisions}"
        )
    model, opt = twin.model, optimizer or twin.optimizer()
    model.train()
    buffer = np.empty((rows, images.shape[1]), np.float32)
    x = torch.from_numpy(buffer)
    targets = torch.from_numpy(labels.astype(np.int64) % twin.outputs)
    seen, losses = net.seen, []
    for indices in order:
        seen += rows
        rate = rate_at(net, seen)
        twin.set_learning_rate(opt, rate)
        if rates is not None:
            rates.append(rate)
        np.take(images, indices, axis=0, out=buffer)
        y = targets[torch.from_numpy(indices)]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, rows, batch):
            loss = twin.loss(model(x[start : start + batch]), y[start : start + batch])
            loss.backward()
            total += loss.item()
        opt.step()
        losses.append(total)
    return losses


def top1_minidark(net, images, labels):
    """Fraction of rows whose highest output is the label (``net.predict``)."""
    return float((net.predict(images).argmax(1) == labels).mean())


def top1_torch(twin, images, labels, batch):
    """The same in eval mode (dropout off), in chunks of ``batch``."""
    import torch

    model = twin.model
    model.eval()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    correct = 0
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            logits = model(x[start : start + batch])
            correct += int((logits.argmax(1) == y[start : start + batch]).sum())
    return correct / x.shape[0]


def _digest(arrays):
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _rate_changes(rates):
    """[[iteration (1-based), rate], ...] where the rate changes."""
    changes = []
    for i, rate in enumerate(rates):
        if not changes or rate != changes[-1][1]:
            changes.append([i + 1, rate])
    return changes


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def run_accuracy(cfgs, options, progress=None):
    """Train each cfg for ``options.accuracy`` epochs in both engines, per seed;
    return the result dictionary (see --json)."""
    say = progress or (lambda message: None)
    mnist = find_mnist()
    if mnist is None:
        raise MinidarkError(
            "--accuracy trains on MNIST: put its four IDX files (.gz or raw) "
            "in data/mnist, or in $MINIDARK_DATA/mnist"
        )
    available = int(read_idx(find_idx(mnist, "train-labels-idx1-ubyte")).shape[0])
    train_rows = options.train_rows or available
    if train_rows > available:
        raise MinidarkError(f"--train-rows {train_rows}: MNIST has {available} training rows")
    seeds = options.seed_list
    epochs = options.accuracy
    use_torch = not options.no_torch and torch_available()
    started = datetime.datetime.now().astimezone()
    meta = machine_info(options, use_torch, started)
    for key in ("steps", "warmup", "repeats", "train_batches", "eval_rows", "eval_passes"):
        meta.pop(key, None)
    meta.update(
        mode="accuracy",
        epochs=epochs,
        seeds=seeds,
        train_rows=train_rows,
        mnist=mnist,
        target_points=ACCURACY_TARGET_POINTS,
    )
    result = {"meta": meta, "results": []}
    with tempfile.TemporaryDirectory(prefix="minidark-bench-") as tmp:
        for index, cfg in enumerate(cfgs):
            net = load_network(cfg, seed=seeds[0])
            check_accuracy_net(net, cfg)
            rows = net.batch * net.subdivisions
            iterations = epochs * train_rows // rows
            if iterations < 1:
                raise MinidarkError(
                    f"{cfg}: {epochs} epoch(s) of {train_rows} rows is less "
                    f"than one iteration of {rows} rows"
                )
            entry = {
                "cfg": cfg,
                "batch": net.batch,
                "subdivisions": net.subdivisions,
                "rows_per_iteration": rows,
                "iterations": iterations,
                "params": int(net.params),
                "policy": net.policy,
                "runs": {engine: [] for engine in ENGINES},
                "torch_error": None,
            }
            if not use_torch:
                entry["torch_error"] = (
                    "disabled (--no-torch)"
                    if options.no_torch
                    else "PyTorch not installed: pip install -e '.[bench]'"
                )
            del net
            for seed in seeds:
                order_file = os.path.join(tmp, f"order{index}_{seed}.npy")
                np.save(order_file, epoch_order(train_rows, epochs, rows, seed))
                for engine in ENGINES:
                    if engine == "torch" and entry["torch_error"] is not None:
                        continue
                    say(f"{cfg} seed {seed}: {ENGINE_NAMES[engine]}, {iterations} iterations")
                    run = run_worker(
                        "accuracy",
                        engine,
                        options,
                        cfg=cfg,
                        data=order_file,
                        seed=seed,
                        extra=("--mnist", mnist, "--train-rows", train_rows),
                    )
                    if "error" in run:
                        entry["torch_error"] = run["error"]
                        continue
                    entry["runs"][engine].append(run)
            summarize_accuracy(entry)
            result["results"].append(entry)
    return result


def summarize_accuracy(entry):
    """Per engine: top-1 (percent) and times, mean/std/min/max over seeds; the
    per-seed differences in points; whether both engines got the same rates
    and initial weights. Runs keep their rate change points, not every rate."""
    runs = entry["runs"]
    for engine in ENGINES:
        entry[engine] = (
            None
            if not runs[engine]
            else {
                "top1_pct": _spread([100 * r["top1"] for r in runs[engine]]),
                "train_s": _spread([r["train_s"] for r in runs[engine]]),
                "eval_s": _spread([r["eval_s"] for r in runs[engine]]),
                "wall_s": _spread([r["wall_s"] for r in runs[engine]]),
                "last_epoch_loss": _spread([r["last_epoch_loss"] for r in runs[engine]]),
                "pools": runs[engine][0]["pools"],
            }
        )
    pairs = list(zip(runs["minidark"], runs["torch"], strict=False))  # torch may have failed
    entry["difference_points"] = _spread([100 * (a["top1"] - b["top1"]) for a, b in pairs])
    entry["same_rates"] = all(a["rates"] == b["rates"] for a, b in pairs) if pairs else None
    entry["same_initial_weights"] = (
        all(a["initial_weights"] == b["initial_weights"] for a, b in pairs) if pairs else None
    )
    entry["same_order"] = (
        all(
            a["order"] == b["order"] and a["iterations"] == b["iterations"] == entry["iterations"]
            for a, b in pairs
        )
        if pairs
        else None
    )
    first = (runs["minidark"] or runs["torch"] or [None])[0]
    entry["rate_schedule"] = _rate_changes(first["rates"]) if first else []
    for run in runs["minidark"] + runs["torch"]:
        run["rate_changes"] = _rate_changes(run.pop("rates"))
    diff = entry["difference_points"]
    entry["within_target"] = (
        abs(diff["mean"]) <= ACCURACY_TARGET_POINTS if diff is not None else None
    )
