"""``minidark rnn train|generate|valid`` and ``minidark data export-text``:
darknet's character-level recurrent workflow (examples/rnn.c).

    minidark rnn train CFG [WEIGHTS] --file TEXT [--backup DIR] [--max-batches N] [--seed N]
    minidark rnn generate CFG WEIGHTS [--seed TEXT] [--len N] [--temp T] [--rseed N]
    minidark rnn valid CFG WEIGHTS --file TEXT [--seed TEXT]
    minidark data export-text --python-stdlib OUT.txt [--max-bytes N]

The network reads bytes one-hot (``inputs=256``) and predicts the next byte
with a 256-way softmax. Training (minidark/data/text.py): each of the cfg's
``batch`` rows is a stream at its own offset, ``time_steps`` bytes per
batch, continuing across batches with the recurrent state carried; a
stream jumps to a random offset (and its state is zeroed) with chance 1/64
per batch. The loss is printed in bits per character (darknet's cost per
character / ln 2). Checkpoints in ``--backup`` (default ``backup/``),
``<base>`` the cfg name: ``<base>.backup`` every ``--backup-every`` batches
and on Ctrl-C, ``<base>_<batch>.weights`` every 10000, ``<base>_final.weights``
at the end; each with a ``.state.npz`` sidecar (momentum, recurrent state,
stream offsets, generator states, history, and the SHA-256 of its weights)
so that training resumed from it continues exactly as if never stopped.
``<base>.log`` gets darknet's line per batch, ``<base>_chart.png`` the loss.

Generation and validation rebuild the cfg with one stream and (generation)
one step per call, as darknet runs ``rnn.cfg`` beside ``rnn.train.cfg``;
the state carries from character to character. Sampling is darknet's: the
softmax at temperature T, probabilities below 1e-4 dropped, one draw from
what is left (``--rseed`` seeds it). ``--reset-state`` zeroes the state
after the seed text (generation starts from the seed's last byte alone).
Validation feeds the text to one stream in chunks of 64 bytes (the same
numbers as one byte per call) and prints ``N.NNN bits/char``.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time

import numpy as np

from ..errors import DataError
from .base import UsageError, add_command, positive_int

SIDECAR = ".state.npz"
VALID_STEPS = 64  # bytes per validation forward (the result does not depend on it)


# ------------------------------------------------------------------ network
def load_text_network(cfg, weights=None, *, batch=None, time_steps=None, seed=None, clear=False):
    """The cfg's network, optionally with ``batch`` streams of ``time_steps`` steps."""
    from ..cfg import Option, parse_network, read_sections
    from ..weights import load_weights

    sections = read_sections(cfg)
    head = sections[0] if sections else None
    if head is not None and head.type in ("net", "network"):
        for key, value in (
            ("batch", batch),
            ("time_steps", time_steps),
            ("subdivisions", 1 if batch is not None else None),
        ):
            if value is not None:
                head.options = [o for o in head.options if o.key != key]
                head.options.append(Option(key, str(value), head.line))
    net = parse_network(sections, file=os.fspath(cfg), seed=seed, verbose=False)
    if weights:
        load_weights(net, weights)
    if clear:
        net.seen = 0
    if net.inputs != 256 or net.outputs != 256:
        raise UsageError(
            f"{cfg}: a character network reads and predicts bytes: it needs "
            f"inputs=256 and 256 outputs, got {net.inputs} and {net.outputs}"
        )
    return net


def reset_streams(net, streams):
    """Zero the recurrent state of some streams (rows of every carried array)."""
    for layer in net.layers:
        for name in layer.carried:
            getattr(layer, name)[streams] = 0


# -------------------------------------------------------------- checkpoints
def training_arrays(net):
    """name -> array of everything a resumed run needs besides .weights: momentum
    (``*_updates``), Adam's moments, the carried recurrent state, of every layer
    and sublayer (minidark/train/checkpoint.py's list)."""
    from ..train.checkpoint import state_array, train_state_names

    return {
        f"L{layer.index}/{name}": state_array(layer, name)
        for layer in net.layers
        for name in train_state_names(layer)
    }


def save_checkpoint(net, path, run, offsets):
    """``path`` (.weights) and its sidecar: ``run`` (JSON), the stream offsets, the
    momentum and recurrent state, the weights' SHA-256. Sidecar first: a weights
    file is never newer than its sidecar's digest without being detected."""
    from ..weights import atomic_write, weights_bytes

    data = weights_bytes(net)
    state = dict(
        training_arrays(net),
        offsets=offsets,
        run=np.array(json.dumps(run)),
        weights_sha256=np.array(hashlib.sha256(data).hexdigest()),
    )
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    atomic_write(path + SIDECAR, buffer.getvalue())
    atomic_write(path, data)


def load_checkpoint(net, path):
    """The saved run (dict) if ``path`` has a sidecar for exactly its bytes, else None."""
    sidecar = os.fspath(path) + SIDECAR
    if not os.path.isfile(sidecar):
        return None
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    with np.load(sidecar, allow_pickle=False) as state:
        if str(state["weights_sha256"]) != digest:
            raise DataError(
                f"{sidecar} belongs to other weights than {path}: remove it to "
                f"resume from the weights alone"
            )
        for name, target in training_arrays(net).items():
            if name not in state or state[name].shape != target.shape:
                raise DataError(f"{sidecar} does not fit this cfg ({name})")
            target[...] = state[name]
        run = json.loads(str(state["run"]))
        run["offsets"] = state["offsets"]
    return run


# --------------------------------------------------------------------- train
def train_arguments(parser):
    parser.add_argument("cfg", metavar="CFG")
    parser.add_argument(
        "weights",
        metavar="WEIGHTS",
        nargs="?",
        default=None,
        help="start from these weights (with their .state.npz: resume exactly)",
    )
    parser.add_argument("--file", required=True, metavar="TEXT", help="the training text")
    parser.add_argument(
        "--backup", default="backup", metavar="DIR", help="checkpoint folder (default: backup)"
    )
    parser.add_argument(
        "--max-batches",
        type=positive_int,
        metavar="N",
        help="stop after N batches (default: the cfg's max_batches)",
    )
    parser.add_argument(
        "--backup-every",
        type=positive_int,
        default=100,
        metavar="N",
        help="write <base>.backup every N batches (default 100, as darknet)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed initialisation and stream offsets (default: random)",
    )
    parser.add_argument("--clear", action="store_true", help="start seen at 0")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args):
    from ..data.text import TextStreams, read_text
    from ..train.distributed import single_process_only
    from ..train.trainer import cfg_base

    single_process_only("rnn train")
    text = read_text(args.file)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    net = load_text_network(args.cfg, seed=seed)
    run = None
    if args.weights:
        from ..weights import load_weights

        load_weights(net, args.weights)
        if args.clear:
            net.seen = 0
        else:
            run = load_checkpoint(net, args.weights)
    steps = net.time_steps
    streams = net.batch // steps
    rng = np.random.default_rng(seed)
    data = TextStreams(text, streams, steps, rng)
    history = {"iteration": [], "loss": [], "avg": []}
    if run is not None:
        rng.bit_generator.state = run["rng"]
        net.rng.bit_generator.state = run["net_rng"]
        data.offsets = np.asarray(run["offsets"], np.int64)
        net.t, history = run["t"], run["history"]
    max_batches = args.max_batches or net.max_batches
    base = cfg_base(args.cfg)
    os.makedirs(args.backup, exist_ok=True)
    prefix = os.path.join(args.backup, base)
    x = np.zeros((net.batch, 256), np.float32)
    y = np.zeros((net.batch, 256), np.float32)

    def checkpoint(path):
        state = dict(
            rng=rng.bit_generator.state,
            net_rng=net.rng.bit_generator.state,
            t=net.t,
            history=history,
            seed=seed,
        )
        save_checkpoint(net, path, state, data.offsets)

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(
            total=max_batches,
            initial=min(net.current_batch, max_batches),
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    avg = history["avg"][-1] if history["avg"] else None
    started, chars = time.time(), 0
    with open(prefix + ".log", "a", encoding="utf-8", buffering=1) as log:  # a line per batch
        try:
            while net.current_batch < max_batches:
                tick = time.time()
                data.fill(x, y)
                loss = net.train_datum(x, y) / net.batch / math.log(2)  # bits per character
                if not math.isfinite(loss):
                    raise DataError(
                        f"batch {net.current_batch}: the loss is {loss}; lower the learning rate"
                    )
                avg = loss if avg is None else 0.9 * avg + 0.1 * loss
                reset_streams(net, data.jump())
                i, chars = net.current_batch, chars + net.batch
                for key, value in (("iteration", i), ("loss", loss), ("avg", avg)):
                    history[key].append(value)
                log.write(
                    f"{i}: {loss:f}, {avg:f} avg bits/char, {net.current_rate():g} rate, "
                    f"{time.time() - tick:f} seconds, {i * net.batch / len(text):f} epochs\n"
                )
                if bar is not None:
                    bar.set_postfix_str(
                        f"{loss:.3f} bits/char, avg {avg:.3f}, "
                        f"{chars / (time.time() - started):.0f} chars/s"
                    )
                    bar.update(1)
                if i % args.backup_every == 0:
                    checkpoint(prefix + ".backup")
                    _chart(prefix + "_chart.png", history, base)
                if i % 10000 == 0:
                    checkpoint(f"{prefix}_{i}.weights")
        except KeyboardInterrupt:
            checkpoint(prefix + ".backup")
            print(f"interrupted: saved {prefix}.backup", file=sys.stderr)
            return 130
        finally:
            if bar is not None:
                bar.close()
    checkpoint(prefix + "_final.weights")
    _chart(prefix + "_chart.png", history, base)
    if avg is not None:
        print(
            f"{net.current_batch} batches, {avg:.3f} bits/char (average); "
            f"saved {prefix}_final.weights"
        )
    return 0


def _chart(path, history, base):
    from ..train.chart import draw_chart

    with contextlib.suppress(OSError):  # a chart is a convenience, never a failure
        draw_chart(path, history, title=f"{base}: loss in bits per character")


# ------------------------------------------------------------------ generate
def generate_arguments(parser):
    parser.add_argument("cfg", metavar="CFG")
    parser.add_argument("weights", metavar="WEIGHTS")
    parser.add_argument(
        "--seed",
        default="\n\n",
        metavar="TEXT",
        help="text fed first (default: two newlines, as darknet)",
    )
    parser.add_argument(
        "--len",
        type=int,
        default=1000,
        metavar="N",
        dest="length",
        help="characters to generate (default 1000)",
    )
    parser.add_argument(
        "--temp",
        type=float,
        default=0.7,
        metavar="T",
        help="softmax temperature (default .7, as darknet)",
    )
    parser.add_argument(
        "--rseed", type=int, default=0, metavar="N", help="seed of the sampling (default 0)"
    )
    parser.add_argument(
        "--reset-state", action="store_true", help="zero the state after the seed text"
    )


def sample(probabilities, rng):
    """darknet's sample_array after dropping probabilities below 1e-4."""
    p = np.where(probabilities < 1e-4, 0.0, probabilities.astype(np.float64))
    cumulative = np.cumsum(p / p.sum())
    return int(min(np.searchsorted(cumulative, rng.random(), side="left"), p.size - 1))


def generate(net, seed, length, temperature, rng, reset_state=False):
    """Bytes: the seed, then ``length`` sampled bytes."""
    if temperature <= 0:
        raise UsageError(f"--temp must be > 0, got {temperature}")
    for layer in net.layers:
        if layer.type == "softmax":
            layer.temperature = temperature
    seed = seed.encode("utf-8") if isinstance(seed, str) else bytes(seed)
    x = np.zeros((1, 256), np.float32)
    out = bytearray(seed)
    for c in seed[:-1]:
        x[0, c] = 1
        net.forward(x)
        x[0, c] = 0
    if reset_state:
        net.reset_state()
    c = seed[-1] if seed else 0
    for _ in range(length):
        x[0, c] = 1
        probabilities = net.forward(x).reshape(-1)
        x[0, c] = 0
        c = sample(probabilities, rng)
        out.append(c)
    return bytes(out)


def run_generate(args):
    if args.length < 0:
        raise UsageError(f"--len must be >= 0, got {args.length}")
    net = load_text_network(args.cfg, args.weights, batch=1, time_steps=1)
    text = generate(
        net, args.seed, args.length, args.temp, np.random.default_rng(args.rseed), args.reset_state
    )
    stream = getattr(sys.stdout, "buffer", None)
    if stream is not None:
        stream.write(text + b"\n")
    else:  # a text-only stdout: bytes as latin-1
        sys.stdout.write((text + b"\n").decode("latin-1"))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------- valid
def valid_arguments(parser):
    parser.add_argument("cfg", metavar="CFG")
    parser.add_argument("weights", metavar="WEIGHTS")
    parser.add_argument("--file", required=True, metavar="TEXT", help="held-out text")
    parser.add_argument(
        "--seed",
        default="\n\n",
        metavar="TEXT",
        help="text fed first, not scored (default: two newlines, as darknet)",
    )


def bits_per_char(net, text, seed=b""):
    """Mean -log2 p(next byte) over the text, one stream, state carried."""
    steps = net.time_steps
    data = np.frombuffer(bytes(seed) + bytes(text), np.uint8)
    inputs, targets = data[:-1], data[1:]
    x = np.zeros((steps, 256), np.float32)
    total, count = 0.0, 0
    for start in range(0, inputs.size, steps):
        chunk = inputs[start : start + steps]
        x.fill(0)
        x[np.arange(chunk.size), chunk] = 1
        probabilities = net.forward(x)
        rows = np.arange(max(len(seed) - start, 0), chunk.size)  # predictions of the text
        if not rows.size:  # after its first byte
            continue
        p = probabilities[rows, targets[start + rows]].astype(np.float64)
        total -= np.log2(np.maximum(p, 1e-30)).sum()
        count += rows.size
    return total / max(count, 1), count


def run_valid(args):
    from ..data.text import read_text

    text = read_text(args.file)
    net = load_text_network(args.cfg, args.weights, batch=1, time_steps=VALID_STEPS)
    bpc, count = bits_per_char(net, text, args.seed.encode("utf-8"))
    print(f"{bpc:.3f} bits/char ({count} characters, perplexity {2**bpc:.3f})")
    return 0


# --------------------------------------------------------------- export-text
def export_arguments(parser):
    parser.add_argument(
        "out",
        metavar="OUT.txt",
        help="the training text to write; the validation text goes beside it as OUT_valid.txt",
    )
    parser.add_argument(
        "--python-stdlib",
        action="store_true",
        required=True,
        help="the Python standard library's source (a fixed module list)",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        metavar="N",
        help="at most N bytes of training text (validation: N/10)",
    )


def run_export(args):
    from ..data.text import python_stdlib_corpus

    train, valid, n_train, n_valid = python_stdlib_corpus(args.out, args.max_bytes)
    print(
        f"wrote {n_train} bytes to {train} and {n_valid} to {valid} (Python "
        f"{sys.version_info.major}.{sys.version_info.minor} standard library)"
    )
    return 0


add_command(
    "rnn train", "train a character-level recurrent network on a text", train_arguments, run_train
)
add_command(
    "rnn generate", "sample text from a trained character network", generate_arguments, run_generate
)
add_command(
    "rnn valid",
    "bits per character of a trained network on held-out text",
    valid_arguments,
    run_valid,
)
add_command(
    "data export-text",
    "write a text corpus (the Python standard library's source)",
    export_arguments,
    run_export,
)
