"""Character streams for recurrent networks (darknet's examples/rnn.c get_rnn_data).

A text is a byte string; each of the B rows of a batch is a *stream* reading
it at its own offset, continuing where it stopped in the previous batch
(wrapping at the end). One batch of T time steps fills, step-major (row t*B
+ b, the network's input order)::

    x[t*B + b] = one_hot(text[o_b + t])        (256 inputs: one per byte value)
    y[t*B + b] = one_hot(text[o_b + t + 1])    (the truth: the next byte)

then o_b += T. Offsets start uniformly at random; after each batch every
stream jumps to a new random offset with probability 1/64 (darknet's
``rand() % 64 == 0``) and the caller zeroes that stream's recurrent state
(darknet's ``reset_network_state``). Unlike darknet (whose reader stops at
a 0 byte and rejects it), every byte value 0..255 is a character.

``python_stdlib_corpus`` writes the project's offline corpus: the source of
a fixed list of Python standard-library modules, concatenated in order, and
a disjoint validation text from other modules.
"""

import importlib.util
import os

import numpy as np

from ..errors import DataError

CHARACTERS = 256
RESET_CHANCE = 1 / 64

# modules present in every CPython 3.9-3.13; the corpus depends on the Python version
TRAIN_MODULES = (
    "argparse",
    "ast",
    "collections",
    "configparser",
    "contextlib",
    "dataclasses",
    "datetime",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "inspect",
    "ipaddress",
    "json.decoder",
    "json.encoder",
    "logging",
    "optparse",
    "pathlib",
    "pickle",
    "pprint",
    "random",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "tarfile",
    "textwrap",
    "threading",
    "tokenize",
    "typing",
    "uuid",
    "zipfile",
)
VALID_MODULES = ("bisect", "calendar", "csv", "heapq", "locale", "mailbox")


def read_text(path):
    """The bytes of a text file; an empty or one-byte file is an error."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read text file: {exc.strerror}") from None
    if len(data) < 2:
        raise DataError(
            f"{path}: a text needs at least 2 bytes (a character and the next), got {len(data)}"
        )
    return data


class TextStreams:
    """``streams`` readers of ``text`` filling one-hot batches of ``steps`` steps."""

    def __init__(self, text, streams, steps, rng, reset_chance=RESET_CHANCE):
        self.text = np.frombuffer(bytes(text), np.uint8)
        if self.text.size < 2:
            raise DataError(f"a text needs at least 2 bytes, got {self.text.size}")
        self.streams, self.steps, self.rng = streams, steps, rng
        self.reset_chance = reset_chance
        self.offsets = rng.integers(0, self.text.size, streams)
        self.rows = np.arange(steps * streams)
        self.ahead = np.arange(steps)[:, None]

    def fill(self, x, y):
        """Write the next batch into ``x`` and ``y`` ((T*B, 256) each) and advance."""
        size = self.text.size
        at = (self.offsets[None, :] + self.ahead) % size  # (T, B)
        x.fill(0)
        y.fill(0)
        x[self.rows, self.text[at].reshape(-1)] = 1
        y[self.rows, self.text[(at + 1) % size].reshape(-1)] = 1
        self.offsets = (self.offsets + self.steps) % size

    def jump(self):
        """Move some streams to new random offsets; returns their indices (reset their state)."""
        moved = np.flatnonzero(self.rng.random(self.streams) < self.reset_chance)
        self.offsets[moved] = self.rng.integers(0, self.text.size, moved.size)
        return moved


def module_source(name):
    """The bytes of a standard-library module's source file."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise DataError(f"the Python standard library has no source for module '{name}'")
    with open(spec.origin, "rb") as handle:
        return handle.read()


def python_stdlib_corpus(out, max_bytes=None):
    """Write the training corpus to ``out`` and the validation text beside it
    (``<stem>_valid<ext>``); returns (train path, valid path, train bytes, valid bytes)."""

    def gather(modules, limit):
        parts, total = [], 0
        for name in modules:
            data = module_source(name)
            parts.append(data)
            total += len(data)
            if limit is not None and total >= limit:
                break
        data = b"".join(parts)
        return data if limit is None else data[:limit]

    out = os.fspath(out)
    stem, ext = os.path.splitext(out)
    valid = f"{stem}_valid{ext or '.txt'}"
    train_data = gather(TRAIN_MODULES, max_bytes)
    valid_data = gather(VALID_MODULES, None if max_bytes is None else max(max_bytes // 10, 2))
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    for path, data in ((out, train_data), (valid, valid_data)):
        with open(path, "wb") as handle:
            handle.write(data)
    return out, valid, len(train_data), len(valid_data)
