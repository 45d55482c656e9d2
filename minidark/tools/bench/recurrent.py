"""Recurrent mode (``--rnn BATCHES``): a character LSTM trained side by side with
``torch.nn.LSTM`` -- the same initial weights, the same text streams, the same
per-batch learning rates and darknet's SGD -- then both validation bits per
character and both training characters per second.

The cfg must be ``[lstm]`` (no batch norm), ``[connected]`` with a linear
activation, ``[softmax]``: the twin is ``nn.LSTM(256, H)`` (weights mapped by
``lstm.torch_weights``), ``nn.Linear(H, 256)`` and ``F.cross_entropy`` (the mean
over all T*B characters). darknet's update on the mean loss is
``torch.optim.SGD(lr, momentum, weight_decay=decay)`` with decay on the
weights only (minidark/optim/sgd.py); both bias vectors of torch's LSTM are the
w- and u-sublayers' biases, each updated with the same gradient as here.

Data: the parent draws every batch once (``TextStreams``: B streams of T
steps, continuing across batches, a stream jumping with chance 1/64 and its
state zeroed) and writes the byte indices; both workers build the same one-hot
batches from them. Validation: the held-out text cut into B contiguous
streams, read T steps per forward from a zero state, the state carried;
bits/char = mean -log2 p(next byte) over every prediction, the same rows in
both engines.
"""

import datetime
import hashlib
import math
import os
import statistics
import tempfile
import time

import numpy as np

from ... import load_network
from ...data.text import TextStreams, python_stdlib_corpus, read_text
from ...errors import MinidarkError
from ...layers.lstm import torch_weights
from .accuracy import rate_at
from .common import ENGINE_NAMES, ENGINES
from .runner import machine_info, run_worker, torch_available

RNN_TARGET_BITS = 0.05  # validation bits/char within 0.05 of PyTorch's
RNN_TARGET_SPEED = 0.8  # training chars/s at least 0.8x PyTorch's
ORDER_STREAM = 0x726E  # keeps the streams' random draws apart from the weights'


def check_rnn_net(net, cfg):
    """The layers (lstm, linear connected, softmax) both engines run; raise otherwise."""
    types = [l.type for l in net.layers]
    if types != ["lstm", "connected", "softmax"]:
        raise MinidarkError(
            f"{cfg}: --rnn compares an [lstm], [connected], [softmax] network with "
            f"torch.nn.LSTM; this cfg has {', '.join(types)}"
        )
    lstm, head, soft = net.layers
    if lstm.batch_normalize or head.batch_normalize or head.activation != "linear":
        raise MinidarkError(
            f"{cfg}: --rnn needs the lstm and connected layers without batch_normalize "
            f"and the connected layer with activation=linear"
        )
    if net.inputs != 256 or head.outputs != 256 or soft.groups != 1 or soft.temperature != 1:
        raise MinidarkError(
            f"{cfg}: --rnn trains on bytes: 256 inputs, 256 outputs, a plain softmax"
        )
    if net.subdivisions != 1 or net.config.adam or net.policy == "random":
        raise MinidarkError(f"{cfg}: --rnn needs subdivisions=1, SGD and a deterministic policy")


def training_batches(text, streams, steps, batches, seed):
    """(inputs, truths, resets): byte indices (batches, T, B) of every training batch
    and the streams zeroed after each (batches, B) bool, as ``rnn train`` draws them."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM]))
    data = TextStreams(text, streams, steps, rng)
    size = data.text.size
    inputs = np.empty((batches, steps, streams), np.uint8)
    truths = np.empty_like(inputs)
    resets = np.zeros((batches, streams), bool)
    for n in range(batches):
        at = (data.offsets[None, :] + data.ahead) % size  # what data.fill reads
        inputs[n], truths[n] = data.text[at], data.text[(at + 1) % size]
        data.offsets = (data.offsets + steps) % size
        resets[n, data.jump()] = True
    return inputs, truths, resets


def validation_batches(text, streams, steps):
    """(inputs, truths) (N, T, B): the text as B contiguous streams, T steps a batch."""
    data = np.frombuffer(bytes(text), np.uint8)
    chunk = data.size // streams
    batches = (chunk - 1) // steps
    if batches < 1:
        raise MinidarkError(
            f"the validation text ({data.size} bytes) is too short for {streams} streams "
            f"of {steps} steps"
        )
    cols = data[: streams * chunk].reshape(streams, chunk)
    used = batches * steps
    inputs = cols[:, :used].T.reshape(batches, steps, streams)
    truths = cols[:, 1 : used + 1].T.reshape(batches, steps, streams)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(truths)


def _digest(arrays):
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------ workers
def worker_rnn(args):
    """One engine's run (``--worker rnn``): train on ``args.data``/train.npz, then
    validate on valid.npz; returns the result dictionary."""
    net = load_network(args.cfg, seed=args.seed)
    check_rnn_net(net, args.cfg)
    with np.load(os.path.join(args.data, "train.npz")) as train:
        inputs, truths, resets = train["inputs"], train["truths"], train["resets"]
    with np.load(os.path.join(args.data, "valid.npz")) as valid:
        valid_inputs, valid_truths = valid["inputs"], valid["truths"]
    run = _minidark_rnn if args.engine == "minidark" else _torch_rnn
    result = run(net, inputs, truths, resets, valid_inputs, valid_truths)
    chars = inputs.size
    result.update(
        batches=int(inputs.shape[0]),
        chars=int(chars),
        chars_s=chars / result["train_s"],
        order=_digest([inputs, truths, resets]),
    )
    return result


def _minidark_rnn(net, inputs, truths, resets, valid_inputs, valid_truths):
    lstm, head = net.layers[0], net.layers[1]
    initial = _digest([*torch_weights(lstm).values(), head.weights, head.biases])
    rows = np.arange(net.batch)
    x = np.zeros((net.batch, 256), np.float32)
    y = np.zeros((net.batch, 256), np.float32)
    losses, rates = [], []
    started = time.perf_counter()
    for n in range(inputs.shape[0]):
        x.fill(0)
        y.fill(0)
        x[rows, inputs[n].reshape(-1)] = 1
        y[rows, truths[n].reshape(-1)] = 1
        rates.append(rate_at(net, net.seen + net.batch))
        losses.append(net.train_datum(x, y) / net.batch / math.log(2))
        for layer in net.layers:  # the streams that jumped start from a zero state
            for name in layer.carried:
                getattr(layer, name)[resets[n]] = 0
    train_s = time.perf_counter() - started
    net.reset_state()
    total, count = 0.0, 0
    started = time.perf_counter()
    for n in range(valid_inputs.shape[0]):
        x.fill(0)
        x[rows, valid_inputs[n].reshape(-1)] = 1
        p = net.forward(x)[rows, valid_truths[n].reshape(-1)].astype(np.float64)
        total -= np.log2(np.maximum(p, 1e-30)).sum()
        count += p.size
    return {
        "train_s": train_s,
        "valid_s": time.perf_counter() - started,
        "valid_bits_per_char": total / count,
        "valid_chars": count,
        "losses": losses,
        "rates": rates,
        "initial_weights": initial,
    }


def _torch_rnn(net, inputs, truths, resets, valid_inputs, valid_truths):
    import torch
    import torch.nn.functional as F
    from torch import nn

    lstm_layer, head_layer = net.layers[0], net.layers[1]
    steps, streams, hidden = lstm_layer.steps, lstm_layer.batch, lstm_layer.outputs
    lstm, head = nn.LSTM(256, hidden), nn.Linear(hidden, 256)
    mapped = torch_weights(lstm_layer)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in mapped.items()})
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(head_layer.weights))
        head.bias.copy_(torch.from_numpy(head_layer.biases))
    initial = _digest(
        [p.detach().numpy() for p in (*lstm.state_dict().values(), head.weight, head.bias)]
    )
    decayed = [lstm.weight_ih_l0, lstm.weight_hh_l0, head.weight]
    plain = [lstm.bias_ih_l0, lstm.bias_hh_l0, head.bias]
    opt = torch.optim.SGD(
        [{"params": decayed, "weight_decay": net.decay}, {"params": plain, "weight_decay": 0.0}],
        lr=net.current_rate(),
        momentum=net.momentum,
    )
    x = torch.zeros(steps, streams, 256)
    flat = x.view(-1, 256)
    rows = torch.arange(steps * streams)
    h = torch.zeros(1, streams, hidden)
    c = torch.zeros(1, streams, hidden)
    losses, rates, seen = [], [], net.seen
    started = time.perf_counter()
    for n in range(inputs.shape[0]):
        seen += steps * streams
        rate = rate_at(net, seen)
        rates.append(rate)
        for group in opt.param_groups:
            group["lr"] = rate
        x.zero_()
        flat[rows, torch.from_numpy(inputs[n].reshape(-1).astype(np.int64))] = 1
        target = torch.from_numpy(truths[n].reshape(-1).astype(np.int64))
        out, (h, c) = lstm(x, (h, c))
        loss = F.cross_entropy(head(out.reshape(-1, hidden)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item() / math.log(2))
        h, c = h.detach(), c.detach()
        reset = torch.from_numpy(resets[n])
        h[:, reset] = 0
        c[:, reset] = 0
    train_s = time.perf_counter() - started
    h.zero_()
    c.zero_()
    total, count = 0.0, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for n in range(valid_inputs.shape[0]):
            x.zero_()
            flat[rows, torch.from_numpy(valid_inputs[n].reshape(-1).astype(np.int64))] = 1
            out, (h, c) = lstm(x, (h, c))
            logp = F.log_softmax(head(out.reshape(-1, hidden)), dim=1)
            target = torch.from_numpy(valid_truths[n].reshape(-1).astype(np.int64))
            total -= float(logp[rows, target].double().sum()) / math.log(2)
            count += target.numel()
    return {
        "train_s": train_s,
        "valid_s": time.perf_counter() - started,
        "valid_bits_per_char": total / count,
        "valid_chars": count,
        "losses": losses,
        "rates": rates,
        "initial_weights": initial,
    }


# ------------------------------------------------------------------- parent
def _texts(options, folder):
    """(training text, validation text): ``--text`` and the ``*_valid`` file beside
    it, or the Python standard-library corpus written into ``folder``."""
    if options.text:
        stem, ext = os.path.splitext(options.text)
        valid = f"{stem}_valid{ext or '.txt'}"
        if not os.path.isfile(valid):
            raise MinidarkError(
                f"--text {options.text}: the held-out text goes beside it as {valid} "
                f"(minidark data export-text --python-stdlib writes both)"
            )
        return options.text, valid
    train, valid, _, _ = python_stdlib_corpus(os.path.join(folder, "stdlib.txt"))
    return train, valid


def run_rnn(cfgs, options, progress=None):
    """Per cfg: ``options.repeats`` interleaved (minidark, PyTorch) runs of
    ``options.rnn`` training batches each; the result dictionary (see --json)."""
    say = progress or (lambda message: None)
    use_torch = not options.no_torch and torch_available()
    meta = machine_info(options, use_torch, datetime.datetime.now().astimezone())
    for key in ("steps", "warmup", "train_batches", "eval_rows", "eval_passes"):
        meta.pop(key, None)
    meta.update(
        mode="rnn",
        batches=options.rnn,
        target_bits=RNN_TARGET_BITS,
        target_speed=RNN_TARGET_SPEED,
        valid_bytes=options.valid_bytes,
    )
    seeds = options.seed_list
    meta["seeds"] = seeds
    result = {"meta": meta, "results": []}
    with tempfile.TemporaryDirectory(prefix="minidark-bench-") as tmp:
        train_file, valid_file = _texts(options, tmp)
        meta.update(text=options.text or "the Python standard library corpus")
        text, valid_text = read_text(train_file), read_text(valid_file)[: options.valid_bytes]
        for index, cfg in enumerate(cfgs):
            net = load_network(cfg, seed=options.seed)
            check_rnn_net(net, cfg)
            lstm = net.layers[0]
            valid_inputs, valid_truths = validation_batches(valid_text, lstm.batch, lstm.steps)
            entry = {
                "cfg": cfg,
                "streams": lstm.batch,
                "time_steps": lstm.steps,
                "hidden": lstm.outputs,
                "params": int(net.params),
                "batches": options.rnn,
                "seeds": seeds,
                "train_bytes": len(text),
                "valid_chars": int(valid_truths.size),
                "runs": {engine: [] for engine in ENGINES},
                "torch_error": None if use_torch else "PyTorch not installed (or --no-torch)",
            }
            del net
            for seed in seeds:  # the initial weights and the streams' offsets and jumps
                data = os.path.join(tmp, f"cfg{index}_seed{seed}")
                os.makedirs(data)
                inputs, truths, resets = training_batches(
                    text, lstm.batch, lstm.steps, options.rnn, seed
                )
                np.savez(
                    os.path.join(data, "train.npz"), inputs=inputs, truths=truths, resets=resets
                )
                np.savez(os.path.join(data, "valid.npz"), inputs=valid_inputs, truths=valid_truths)
                for repeat in range(options.repeats):
                    for engine in ENGINES:
                        if engine == "torch" and entry["torch_error"] is not None:
                            continue
                        say(
                            f"seed {seed}, repeat {repeat + 1}/{options.repeats}: {cfg} "
                            f"{ENGINE_NAMES[engine]}"
                        )
                        run = run_worker("rnn", engine, options, cfg=cfg, data=data, seed=seed)
                        if "error" in run:
                            entry["torch_error"] = run["error"]
                            continue
                        run["seed"] = seed
                        entry["runs"][engine].append(run)
            summarize_rnn(entry)
            result["results"].append(entry)
    return result


def summarize_rnn(entry):
    """Medians per engine; per interleaved pair the chars/s ratio and the bits/char
    difference; whether both engines had the same weights, data and rates."""
    runs = entry["runs"]
    for engine in ENGINES:
        done = runs[engine]
        entry[engine] = (
            None
            if not done
            else {
                "chars_s": statistics.median(r["chars_s"] for r in done),
                "chars_s_runs": [r["chars_s"] for r in done],
                "valid_bits_per_char": statistics.fmean(r["valid_bits_per_char"] for r in done),
                "last_train_bits_per_char": statistics.fmean(
                    statistics.fmean(r["losses"][-50:]) for r in done
                ),
                "pools": done[0]["pools"],
            }
        )
    pairs = list(zip(runs["minidark"], runs["torch"], strict=False))
    entry["speed_ratios"] = [a["chars_s"] / b["chars_s"] for a, b in pairs]
    entry["bits_differences"] = [
        a["valid_bits_per_char"] - b["valid_bits_per_char"] for a, b in pairs
    ]
    entry["speed_ratio"] = statistics.median(entry["speed_ratios"]) if pairs else None
    entry["bits_difference"] = statistics.fmean(entry["bits_differences"]) if pairs else None
    entry["same_initial_weights"] = (
        all(a["initial_weights"] == b["initial_weights"] for a, b in pairs) if pairs else None
    )
    entry["same_order"] = all(a["order"] == b["order"] for a, b in pairs) if pairs else None
    entry["same_rates"] = all(a["rates"] == b["rates"] for a, b in pairs) if pairs else None
    for run in runs["minidark"] + runs["torch"]:
        run.pop("rates")
        run["losses"] = run["losses"][-50:]
    entry["within_target"] = (
        None
        if not pairs
        else abs(entry["bits_difference"]) <= RNN_TARGET_BITS
        and entry["speed_ratio"] >= RNN_TARGET_SPEED
    )


def format_rnn_table(result):
    """The human-readable report."""
    from .output import kernel_note

    meta = result["meta"]
    lines = [
        f"minidark bench --rnn {meta['batches']}  {meta['date']}  {meta['cpu']} "
        f"({meta['cpu_count']} cores)",
        f"threads {meta['threads']}; each run a fresh process; engines interleaved "
        f"(minidark, PyTorch) x {meta['repeats']}",
        f"text: {meta['text']}",
    ]
    first = next((e for e in result["results"] if e["minidark"]), None)
    if first is not None:
        pools = first["minidark"]["pools"] + [
            p for p in (first["torch"] or {}).get("pools", []) if p.startswith("torch")
        ]
        lines.append(f"numpy {meta['numpy']}, {'; '.join(pools)}")
    lines += kernel_note(meta)
    for entry in result["results"]:
        md, pt = entry["minidark"], entry["torch"]
        lines += [
            "",
            f"{entry['cfg']}: LSTM {entry['hidden']}, {entry['streams']} streams x "
            f"{entry['time_steps']} steps, {entry['batches']} batches; validation (mean over "
            f"seeds) "
            f"{entry['valid_chars']} characters",
            f"{'':10} {'valid bits/char':>16} {'train bits/char':>16} {'train chars/s':>14}",
        ]
        for name, s in (("minidark", md), ("PyTorch", pt)):
            if s is not None:
                lines.append(
                    f"{name:10} {s['valid_bits_per_char']:16.3f} "
                    f"{s['last_train_bits_per_char']:16.3f} {s['chars_s']:14.0f}"
                )
        if entry["torch_error"]:
            lines.append(f"PyTorch: {entry['torch_error']}")
        if md and pt:
            lines += [
                f"bits/char minidark - PyTorch: {entry['bits_difference']:+.3f} (mean of "
                f"pairs, seeds {', '.join(map(str, entry['seeds']))}: "
                f"{', '.join(f'{d:+.3f}' for d in entry['bits_differences'])}; "
                f"target within {RNN_TARGET_BITS})",
                f"chars/s minidark / PyTorch: {entry['speed_ratio']:.2f} (median of pairs "
                f"{', '.join(f'{r:.2f}' for r in entry['speed_ratios'])}; target >= "
                f"{RNN_TARGET_SPEED})",
                f"same initial weights {entry['same_initial_weights']}, same batches "
                f"{entry['same_order']}, same rates {entry['same_rates']}",
            ]
    lines += [
        "",
        "On a shared machine only the ratios of interleaved runs mean anything; "
        "absolute chars/s vary with the load.",
    ]
    return "\n".join(lines)
