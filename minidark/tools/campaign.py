"""An adversarial campaign: hostile inputs against the ``minidark`` command line.

    python -m minidark.tools.campaign [--cases N] [--seed S] [--out DIR]
        [--kinds cfg,weights,data,sidecar,kill,paths] [--timeout S] [--memory GIB]

Each case writes its inputs into a folder of its own and runs one
``python -m minidark ...`` subprocess under a time limit and an address-space
limit (``RLIMIT_AS``), then classifies what happened:

=====================  ======================================================
ok                     exit 0
clean-error            exit != 0, the last stderr line is ``minidark...: ...``
                       or a usage line, no traceback anywhere
warned                 exit 0 on nonsense input, with a warning on stderr
traceback              a Python traceback on stderr
hang                   still running at the time limit (killed)
memory                 MemoryError, or killed by the memory limit
crash                  killed by a signal (segfault, abort)
unclear-error          exit != 0 without a recognisable last line
accepted-nonsense      exit 0, silently, on input that cannot be meant
rejected-valid         an error on input that is valid (a BOM, CRLF lines)
raw-control-chars      a control character from the input printed raw
gradcheck-fail         ``minidark gradcheck`` reports FAIL (a correct layer never does)
followed-symlink       training wrote through a link planted in its backup folder
code-execution         a YAML tag ran code
disk-flood             a dataset smaller than a batch filled the backup folder
checkpoint-damaged     a failed write (full disk) damaged the checkpoint resumed from
campaign-error         the campaign's own case generator failed (a bug of this tool)
kill-resume-identical  kill -9 during training, resume: same final bytes as an
                       uninterrupted run with the same seed
kill-resume-differs    ... different bytes (or temporary files left behind)
=====================  ======================================================

Kinds: ``cfg`` (cfg/*.cfg made small, then keys deleted, renamed, misspelt,
values made huge, negative, NaN, inf, 20-digit, keys added with values the math
cannot use, sections doubled, a BOM, binary junk; run through ``classifier
train``, ``cfg summary``, ``cfg convert`` and ``gradcheck``); ``weights``
(truncated, bit-flipped, implausible header and ``seen``, NaN, /dev/zero, FIFOs,
huge sparse files); ``data`` (IDX, gzip, names, .data files and image lists,
corrupted; a dataset smaller than one batch); ``sidecar`` (a checkpoint's
``.state.npz`` damaged; a full disk while resuming); ``kill`` (kill -9 of
``classifier train`` at random instants with a backup every iteration, then
resume, compared byte for byte); ``paths`` (FIFOs, /dev/zero, directories,
control characters, spaces, unicode, long names, files in the wrong argument
places, links planted in the backup folder, hostile YAML).

The counts per kind and outcome are printed; every failing case is copied
to ``--out`` (inputs, ``cmd.sh`` to rerun it, stdout, stderr). The exit
status is 1 when any case failed. Cases are reproducible from ``--seed``.
The data is tiny and synthetic (MNIST-shaped digits drawn from noise) so the
campaign needs no download; each case runs in about a second.
"""

import argparse
import collections
import gzip
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("cfg", "weights", "data", "sidecar", "kill", "paths")
WEIGHT = {"cfg": 40, "weights": 15, "data": 15, "sidecar": 10, "kill": 8, "paths": 12}
PASSING = {"ok", "clean-error", "warned", "kill-resume-identical"}
REPO = Path(__file__).resolve().parents[2]
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # \t \n \r left out
CLEAN_LAST_LINE = re.compile(r"^(minidark|train\.py)[\w .-]*: |^usage: ")

# [net] and layer keys for which a negative value, or zero, means nothing
NON_NEGATIVE = {
    "batch",
    "subdivisions",
    "width",
    "height",
    "channels",
    "max_batches",
    "learning_rate",
    "momentum",
    "decay",
    "burn_in",
    "valid_every",
    "backup_every",
    "steps",
    "scales",
    "min_crop",
    "max_crop",
    "size",
    "stride",
    "filters",
    "output",
    "groups",
    "padding",
    "temperature",
    "probability",
    "saturation",
    "exposure",
    "flip",
    "batch_normalize",
    "classes",
    "top",
}
POSITIVE = {
    "batch",
    "subdivisions",
    "width",
    "height",
    "channels",
    "learning_rate",
    "size",
    "stride",
    "filters",
    "output",
    "groups",
    "temperature",
    "min_crop",
    "max_crop",
    "classes",
    "top",
}
TINY_IS_ZERO = {"learning_rate", "temperature"}  # 1e-50 is 0 in float32


# ---------------------------------------------------------------------------- cases
@dataclass
class Case:
    kind: str
    index: int
    folder: Path
    argv: list = field(default_factory=list)  # after `python -m minidark`
    what: str = ""  # the mutation, in words
    timeout: float = 30.0
    nonsense: bool = False  # exit 0 is a failure (a warning may excuse it)
    warning_excuses: bool = True
    expect_ok: bool = False  # valid input: an error is a failure
    specials: list = field(default_factory=list)  # files cmd.sh must recreate
    post: object = None  # post(case) -> a failure outcome or None, checked after the run
    file_bytes: object = None  # RLIMIT_FSIZE: writes past it fail as on a full disk
    outcome: str = ""
    returncode: object = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


class Fixture:
    """The valid inputs every case starts from, written once into ``root``."""

    def __init__(self, root, seed):
        self.root = Path(root)
        self.seed = seed
        self.empty = self.root / "empty"  # $MINIDARK_DATA: holds nothing
        self.empty.mkdir(parents=True)
        self.port = _closed_port()
        self._data()
        self._cfgs()
        self._weights()

    # tiny MNIST-shaped data: 64 training and 32 validation images
    def _data(self):
        rng = np.random.default_rng(self.seed)
        data = self.root / "data"
        data.mkdir()
        for split, n in (("tiny", 64), ("tinyval", 32)):
            labels = (np.arange(n) % 10).astype(np.uint8)
            images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
            for i, label in enumerate(labels):  # a bright bar per class: learnable
                images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
            write_idx(data / f"{split}-images-idx3-ubyte.gz", images)
            write_idx(data / f"{split}-labels-idx1-ubyte.gz", labels)
        self.names = data / "digits.names"
        self.names.write_text("".join(f"digit{i}\n" for i in range(10)))
        self.train = data / "tiny-images-idx3-ubyte.gz"
        self.valid = data / "tinyval-images-idx3-ubyte.gz"
        self.images = []  # PNGs for image lists and predict
        from PIL import Image

        png = data / "png"
        png.mkdir()
        for i in range(20):
            path = png / f"img_{i:03d}_digit{i % 10}.png"
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(path)
            self.images.append(path)
        self.image_list = data / "images.list"
        self.image_list.write_text("".join(f"{p}\n" for p in self.images))

    def data_text(self, backup="backup", **override):
        keys = {
            "classes": "10",
            "train": str(self.train),
            "valid": str(self.valid),
            "names": str(self.names),
            "backup": backup,
            "top": "2",
        }
        keys.update(override)
        return "".join(f"{k}={v}\n" for k, v in keys.items() if v is not None)

    # the stock cfgs, made small: a few iterations of batch 2
    def _cfgs(self):
        self.cfgs = {}
        for path in sorted((REPO / "cfg").glob("*.cfg")):
            self.cfgs[path.stem] = shrink_cfg(path.read_text(encoding="utf-8"))
        self.mlp = MLP_CFG
        self.known_keys = collections.defaultdict(set)
        for text in [*self.cfgs.values(), self.mlp]:
            for section, key, _value, _line in cfg_keys(text.splitlines()):
                self.known_keys[section].add(key)
        self.all_keys = set().union(*self.known_keys.values())

    def _weights(self):
        """A valid .weights per small cfg, and a backup + sidecar of a short run."""
        import minidark

        self.weights = {}
        self.classifiers = []  # cfgs that train on the tiny data: 784 inputs, 10 outputs
        folder = self.root / "weights"
        folder.mkdir()
        for name, text in [("mlp", self.mlp), *self.cfgs.items()]:
            cfg = folder / f"{name}.cfg"
            cfg.write_text(text)
            net = minidark.load_network(str(cfg), seed=self.seed)
            minidark.save_weights(net, str(folder / f"{name}.weights"))
            self.weights[name] = (cfg, folder / f"{name}.weights")
            if net.inputs == 784 and net.outputs == 10:
                self.classifiers.append(name)
        from ..cfg import convert_cfg

        convert_cfg(str(folder / "mlp.cfg"), str(folder / "mlp.yaml"))
        import yaml  # block style, `type` first: "- type: net\n  batch: 2\n..."

        network = yaml.safe_load((folder / "mlp.yaml").read_text())
        self.mlp_yaml = yaml.safe_dump(network, sort_keys=False, default_flow_style=False)
        # a checkpoint with its sidecar: 4 iterations, a backup every one
        self.checkpoint = {}
        for tag, seed in (("own", self.seed), ("foreign", self.seed + 1)):
            run = self.root / f"run-{tag}"
            run.mkdir()
            (run / "mlp.cfg").write_text(set_net_keys(self.mlp, max_batches=4, backup_every=1))
            (run / "tiny.data").write_text(self.data_text(str(run / "backup")))
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "minidark",
                    "classifier",
                    "train",
                    "tiny.data",
                    "mlp.cfg",
                    "--no-progress",
                    "--seed",
                    str(seed),
                ],
                cwd=run,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            backup = run / "backup" / "mlp.backup"
            if result.returncode != 0 or not backup.exists():
                raise RuntimeError(
                    f"campaign setup: the short training run failed:\n{result.stderr}"
                )
            self.checkpoint[tag] = (backup, Path(str(backup) + ".state.npz"))

    def env(self):
        env = dict(
            os.environ,
            OPENBLAS_NUM_THREADS="1",
            MINIDARK_DATA=str(self.empty),
            MINIDARK_MNIST_MIRRORS=f"http://127.0.0.1:{self.port}/",
            MINIDARK_DOWNLOAD_TIMEOUT="2",
            PYTHONDONTWRITEBYTECODE="1",
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env


MLP_CFG = """[net]
batch=2
subdivisions=1
height=28
width=28
channels=1
learning_rate=0.1
momentum=0.9
decay=0.0005
max_batches=3
min_crop=28
max_crop=28
flip=0

[connected]
output=32
activation=relu

[connected]
output=10
activation=linear

[softmax]
groups=1
"""


def shrink_cfg(text):
    """A stock cfg made fast: batch 2, three iterations, no validation or backups."""
    return set_net_keys(
        text, batch=2, subdivisions=1, max_batches=3, valid_every=2, backup_every=1000
    )


def set_net_keys(text, **values):
    """``text`` with the [net] keys set (replaced in place, or added after [net])."""
    lines = text.splitlines()
    out, in_net = [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            in_net = stripped.lower() in ("[net]", "[network]")
            out.append(line)
            if in_net:
                out.extend(f"{k}={v}" for k, v in values.items())
            continue
        key = stripped.split("=", 1)[0].strip()
        if in_net and "=" in stripped and key in values:
            continue  # replaced by the line above
        out.append(line)
    return "\n".join(out) + "\n"


def cfg_keys(lines):
    """(section type, key, value, line index) of every ``key=value`` line."""
    section = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip().lower()
        elif "=" in stripped and not stripped.startswith(("#", ";")) and section:
            key, value = stripped.split("=", 1)
            yield section, key.strip(), value.strip(), i


def write_idx(path, array):
    """An IDX file of unsigned bytes (gzipped when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


def _closed_port():
    """A local port nothing listens on: every download attempt fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_number(text):
    try:
        float(text.split(",")[0])
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------- cfg mutations
VALUES = [  # (value, tag)
    ("nan", "nan"),
    ("inf", "inf"),
    ("-inf", "inf"),
    ("NaN", "nan"),
    ("99999999999999999999", "beyond-int64"),
    ("-99999999999999999999", "beyond-int64"),
    ("1e20", "beyond-int64"),
    ("1000000", "huge"),
    ("100000000", "huge"),
    ("1000000000000", "huge"),
    ("-1", "negative"),
    ("-1000000", "negative"),
    ("0", "zero"),
    ("1e-50", "tiny"),
    ("1e308", "beyond-int64"),
    ("2.5", "fraction"),
    ("", "empty"),
    ("abc", "junk"),
    ("1,2,3", "list"),
    ("0x10", "hex"),
]


# Keys added to a section with a value the math cannot use: (section, lines, level),
# level 2: must be an error; 1: a warning is enough (a key parsed but not implemented).
INSERTS = [
    ("net", ["learning_rate=0"], 2),
    ("net", ["learning_rate=-0.1"], 2),
    ("net", ["learning_rate=inf"], 2),
    ("net", ["momentum=1.5"], 2),
    ("net", ["momentum=-0.5"], 2),
    ("net", ["decay=-0.1"], 2),
    ("net", ["max_batches=-1"], 2),
    ("net", ["valid_every=-1"], 2),
    ("net", ["backup_every=-1"], 2),
    ("net", ["policy=steps", "steps=3,1", "scales=.1,.1"], 2),
    ("net", ["min_crop=0"], 2),
    ("net", ["policy=poly", "power=-1"], 2),
    ("net", ["max_crop=99999999999999999999"], 2),
    ("net", ["flip=-1"], 2),
    ("net", ["flip=1e20"], 2),
    ("net", ["adam=1"], 1),
    ("net", ["burn_in=-5"], 2),
    ("net", ["subdivisions=0"], 2),
    ("net", ["subdivisions=3"], 2),
    ("net", ["batch=0"], 2),
    ("net", ["learnin_rate=0.5"], 2),
    ("net", ["height=32", "width=32"], 0),
    ("net", ["channels=3"], 0),
    ("net", ["height=4096", "width=4096", "channels=3"], 0),
    ("net", ["width=1000000"], 0),
    ("convolutional", ["stride=99999999999999999999"], 2),
    ("convolutional", ["stride=0"], 2),
    ("convolutional", ["filters=10000000"], 0),
    ("convolutional", ["size=0"], 2),
    ("convolutional", ["padding=1000000"], 0),
    ("convolutional", ["groups=0"], 2),
    ("convolutional", ["groups=7"], 2),
    ("convolutional", ["activation=relux"], 2),
    ("convolutional", ["activaton=relu"], 2),
    ("convolutional", ["batch_normalize=-1"], 2),
    ("maxpool", ["size=100000000000000000000"], 2),
    ("maxpool", ["size=1000000"], 0),
    ("maxpool", ["padding=50"], 2),
    ("maxpool", ["stride=0"], 2),
    ("connected", ["output=1000000000"], 0),
    ("connected", ["output=0"], 2),
    ("connected", ["activation=nonexistent"], 2),
    ("softmax", ["temperature=1e-50"], 2),
    ("softmax", ["temperature=0"], 2),
    ("softmax", ["groups=0"], 2),
    ("softmax", ["groups=3"], 2),
    ("dropout", ["probability=1.5"], 2),
    ("dropout", ["probability=-0.5"], 2),
]


def value_is_nonsense(key, tag, old):
    """Whether ``key`` set to a value of kind ``tag`` (see VALUES) can mean nothing."""
    return (
        tag in ("nan", "inf", "beyond-int64")
        or (tag == "negative" and key in NON_NEGATIVE)
        or (tag == "zero" and key in POSITIVE)
        or (tag == "huge" and key == "momentum")
        or (tag == "tiny" and key in TINY_IS_ZERO)
        or (tag in ("junk", "list", "empty") and _is_number(old) and "," not in old)
    )


def typo(key, rng, known):
    """``key`` one edit away (deleted, doubled, swapped or replaced letter), not a known key."""
    for _ in range(20):
        i = rng.randrange(len(key))
        op = rng.choice(("delete", "double", "swap", "replace"))
        if op == "delete" and len(key) > 3:
            new = key[:i] + key[i + 1 :]
        elif op == "double":
            new = key[:i] + key[i] + key[i:]
        elif op == "swap" and i + 1 < len(key) and key[i] != key[i + 1]:
            new = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
        else:
            new = key[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + key[i + 1 :]
        if new != key and new not in known:
            return new
    return key + "x"


def mutate_cfg(text, rng, fixture, training):
    """(bytes, description, nonsense, expect_ok) of one or two mutations of ``text``;
    nonsense is 0 (meaningful input), 1 (a warning is enough) or 2 (must be an error)."""
    lines = text.splitlines()
    what, nonsense, valid = [], 0, True
    prefix, suffix = b"", b""
    for _ in range(1 if rng.random() < 0.7 else 2):
        keyed = list(cfg_keys(lines))
        op = rng.choice(
            ["value"] * 6
            + ["insert"] * 5
            + [
                "delete",
                "rename",
                "typo",
                "typo",
                "dup-section",
                "dup-net",
                "drop-header",
                "unknown-section",
                "bom",
                "junk",
                "truncate",
                "dup-key",
                "crlf",
                "long-line",
                "no-equals",
                "latin1",
                "swap-sections",
            ]
        )
        valid = valid and op in ("bom", "crlf")
        if op == "value" and keyed:
            section, key, old, i = rng.choice(keyed)
            value, tag = rng.choice([v for v in VALUES if v[0] != old])
            if training and key == "max_batches" and tag in ("huge", "beyond-int64"):
                value, tag = "-1", "negative"  # a long run is not a hang
            lines[i] = f"{key}={value}"
            what.append(f"[{section}] {key}={value!r} (was {old})")
            nonsense = max(nonsense, 2 * value_is_nonsense(key, tag, old))
        elif op == "insert":
            sections = {}
            for i, line in enumerate(lines):
                stripped = line.strip().lower()
                if stripped.startswith("[") and stripped.endswith("]"):
                    kind = stripped[1:-1].strip()
                    sections.setdefault("net" if kind == "network" else kind, i)
            choices = [entry for entry in INSERTS if entry[0] in sections]
            if not choices:  # an earlier mutation removed every section header
                continue
            section, new_lines, level = rng.choice(choices)
            at = sections[section] + 1
            lines[at:at] = new_lines
            what.append(f"[{section}] += {', '.join(new_lines)}")
            nonsense = max(nonsense, level)
        elif op == "delete" and keyed:
            section, key, _old, i = rng.choice(keyed)
            del lines[i]
            what.append(f"[{section}] {key} deleted")
        elif op == "rename" and keyed:
            section, key, old, i = rng.choice(keyed)
            new = rng.choice(["foo", "zzz_unknown", "x" * 300, "weird-key"])
            lines[i] = f"{new}={old}"
            what.append(f"[{section}] {key} renamed to {new[:20]!r}")
        elif op == "typo" and keyed:
            section, key, old, i = rng.choice(keyed)
            new = typo(key, rng, fixture.all_keys)
            lines[i] = f"{new}={old}"
            what.append(f"[{section}] {key} misspelt {new}")
            nonsense = 2
        elif op in ("dup-section", "dup-net", "swap-sections"):
            starts = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
            if len(starts) < 2:
                continue
            bounds = list(zip(starts, [*starts[1:], len(lines)], strict=True))
            if op == "dup-net":
                a, b = bounds[0]
                lines[b:b] = lines[a:b]
                what.append("[net] doubled")
                nonsense = 2
            elif op == "dup-section":
                a, b = rng.choice(bounds[1:])
                lines[b:b] = lines[a:b]
                what.append(f"section {lines[a].strip()} at line {a + 1} doubled")
            else:
                (a, b), (c, d) = (
                    sorted(rng.sample(bounds[1:], 2)) if len(bounds) > 2 else (bounds[0], bounds[1])
                )
                lines = lines[:a] + lines[c:d] + lines[b:c] + lines[a:b] + lines[d:]
                what.append(f"sections at lines {a + 1} and {c + 1} swapped")
        elif op == "drop-header":
            starts = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
            if not starts:
                continue
            i = rng.choice(starts[1:] or starts)
            what.append(f"header {lines[i].strip()} at line {i + 1} deleted")
            del lines[i]
        elif op == "unknown-section":
            i = rng.randrange(min(1, len(lines)), len(lines) + 1)
            lines[i:i] = ["[frobnicate]", "size=3"]
            what.append(f"unknown section [frobnicate] at line {i + 1}")
            nonsense = 2
        elif op == "bom":
            prefix = b"\xef\xbb\xbf"
            what.append("UTF-8 BOM")
        elif op == "junk":
            i = rng.randrange(len(lines) + 1)
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            lines[i:i] = [junk.decode("latin-1")]
            what.append(f"binary junk {junk[:12]!r} at line {i + 1}")
        elif op == "truncate":
            body = "\n".join(lines)
            if not body:
                continue
            cut = rng.randrange(len(body))
            lines = body[:cut].splitlines()
            what.append(f"truncated at byte {cut}")
        elif op == "dup-key" and keyed:
            section, key, old, i = rng.choice(keyed)
            lines.insert(i + 1, f"{key}={rng.choice(['1', '3', '0'])}")
            what.append(f"[{section}] {key} given twice")
        elif op == "crlf":
            what.append("CRLF line ends")
            suffix = b"\r"
        elif op == "long-line":
            i = rng.randrange(len(lines) + 1)
            lines.insert(i, "# " + "x" * 200000)
            what.append("a 200,000-character comment line")
        elif op == "no-equals":
            i = rng.randrange(min(1, len(lines)), len(lines) + 1)
            lines.insert(i, "filters 16")
            what.append(f"'filters 16' (no '=') at line {i + 1}")
        elif op == "latin1":
            i = rng.randrange(len(lines) + 1)
            lines.insert(i, "# caf\xe9")
            what.append("a latin-1 byte (0xe9) in a comment")
    body = (("\r\n" if suffix else "\n").join(lines) + "\n").encode("utf-8", "surrogateescape")
    if any("latin-1 byte" in w or "binary junk" in w for w in what):
        body = ("\n".join(lines) + "\n").encode("latin-1", "replace")
    return prefix + body, "; ".join(what) or "unchanged", nonsense, valid and bool(what)


def cfg_case(case, rng, fx):
    name = rng.choice(sorted(fx.cfgs))
    verbs = ["train", "summary", "convert", "gradcheck"]
    verb = rng.choices(verbs, [45 if name in fx.classifiers else 0, 35, 10, 10])[0]
    training = verb == "train"
    text, case.what, level, case.expect_ok = mutate_cfg(fx.cfgs[name], rng, fx, training)
    case.nonsense, case.warning_excuses = level > 0, level == 1
    cfg = case.folder / f"{name}.cfg"
    cfg.write_bytes(text)
    case.what = f"{name}.cfg: {case.what}"
    if training:
        (case.folder / "tiny.data").write_text(fx.data_text())
        case.argv = ["classifier", "train", "tiny.data", cfg.name, "--no-progress", "--seed", "1"]
    elif verb == "convert":  # a change of syntax: values are the builder's business
        case.argv = ["cfg", "convert", cfg.name, "out.yaml"]
        case.nonsense = False
    elif verb == "gradcheck":
        case.argv = ["gradcheck", cfg.name, "--max-checks", "4"]
    else:
        case.argv = ["cfg", "summary", cfg.name]


# --------------------------------------------------------------- weights mutations
def weights_case(case, rng, fx):
    name = rng.choice(fx.classifiers)
    cfg, good = fx.weights[name]
    data = good.read_bytes()
    major, minor = struct.unpack("<ii", data[:8])
    header = 20 if major * 10 + minor >= 2 else 16  # darknet: seen is 8 bytes from 0.2 on
    op = rng.choice(
        [
            "truncate",
            "bits",
            "header-bits",
            "version",
            "seen",
            "nan",
            "inf",
            "trailing",
            "random",
            "empty",
            "other-cfg",
            "huge-sparse",
            "dev-zero",
            "fifo",
            "directory",
        ]
    )
    weights = case.folder / "net.weights"
    if op == "truncate":
        cut = rng.randrange(len(data))
        weights.write_bytes(data[:cut])
        case.what = f"truncated at byte {cut} of {len(data)}"
    elif op in ("bits", "header-bits"):
        buf = bytearray(data)
        span = header if op == "header-bits" else len(buf)
        flips = [rng.randrange(span) for _ in range(rng.randrange(1, 6))]
        for i in flips:
            buf[i] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(buf))
        case.what = f"bits flipped at bytes {flips}"
    elif op == "version":
        major, minor, revision = rng.choice(
            [(2**31 - 1, 0, 0), (-1, -1, -1), (0, 99999, 7), (1000, 2, 0)]
        )
        weights.write_bytes(struct.pack("<iii", major, minor, revision) + data[12:])
        case.what = f"header version {major}.{minor}.{revision}"
        case.nonsense, case.warning_excuses = True, False
    elif op == "seen":
        seen = rng.choice([2**63, 2**64 - 1, 2**63 + 5])
        weights.write_bytes(data[:12] + struct.pack("<Q", seen) + data[header:])
        case.what = f"seen = {seen}"
        case.nonsense, case.warning_excuses = True, False
    elif op in ("nan", "inf"):
        floats = np.frombuffer(data[header:], np.float32).copy()
        picks = rng.sample(range(floats.size), min(floats.size, rng.choice([1, 10, floats.size])))
        floats[picks] = np.nan if op == "nan" else np.inf
        weights.write_bytes(data[:header] + floats.tobytes())
        case.what = f"{len(picks)} of {floats.size} floats set to {op}"
        case.nonsense = True
    elif op == "trailing":
        weights.write_bytes(data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        case.what = "junk bytes after the last array"
    elif op == "random":
        weights.write_bytes(bytes(rng.randrange(256) for _ in range(len(data))))
        case.what = "random bytes of the right length"
    elif op == "empty":
        weights.write_bytes(b"")
        case.what = "empty file"
    elif op == "other-cfg":
        other = rng.choice([n for n in fx.weights if n != name])
        shutil.copy(fx.weights[other][1], weights)
        case.what = f"the weights of {other}"
    elif op == "huge-sparse":
        with open(weights, "wb") as handle:
            handle.write(data[:header])
            handle.truncate(64 << 30)
        case.specials.append(("sparse", weights.name, 64 << 30, data[:header]))
        case.what = "a 64 GiB sparse file with a valid header"
    elif op == "dev-zero":
        weights.symlink_to("/dev/zero")
        case.specials.append(("link", weights.name, "/dev/zero"))
        case.what = "a link to /dev/zero"
    elif op == "fifo":
        os.mkfifo(weights)
        case.specials.append(("fifo", weights.name))
        case.what = "a FIFO"
    else:
        weights.mkdir()
        case.what = "a directory"
    case.what = f"{name} weights: {case.what}"
    shutil.copy(cfg, case.folder / "net.cfg")
    (case.folder / "tiny.data").write_text(fx.data_text())
    verb = rng.choice(["valid", "train", "predict"])
    case.argv = ["classifier", verb, "tiny.data", "net.cfg", weights.name]
    if verb == "train":
        case.argv += ["--no-progress", "--seed", "1"]
    elif verb == "predict":
        case.argv.append(str(fx.images[0]))


# ------------------------------------------------------------------ data mutations
def corrupt_idx(rng, fx, folder):
    """(images path, description, nonsense) of a damaged copy of the training IDX pair."""
    images = np.frombuffer(gzip.decompress(fx.train.read_bytes())[16:], np.uint8)
    labels = gzip.decompress(Path(str(fx.train).replace("images-idx3", "labels-idx1")).read_bytes())
    path = folder / "bad-images-idx3-ubyte.gz"
    label_path = folder / "bad-labels-idx1-ubyte.gz"
    label_path.write_bytes(gzip.compress(labels))
    head = bytes([0, 0, 8, 3])
    op = rng.choice(
        [
            "truncated-header",
            "truncated-data",
            "zero-images",
            "huge-dims",
            "overflow-dims",
            "bad-magic",
            "float-type",
            "ndim-0",
            "corrupt-gzip",
            "not-gzip",
            "label-mismatch",
            "label-too-big",
            "no-labels",
            "empty",
        ]
    )
    nonsense = False
    raw = head + struct.pack(">III", 64, 28, 28) + images.tobytes()
    if op == "truncated-header":
        raw = raw[: rng.randrange(1, 16)]
    elif op == "truncated-data":
        raw = raw[: 16 + rng.randrange(images.size)]
    elif op == "zero-images":
        raw = head + struct.pack(">III", 0, 28, 28)
        label_path.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 0)))
        nonsense = True
    elif op == "huge-dims":
        raw = head + struct.pack(">III", 64, 65535, 65535) + images.tobytes()
    elif op == "overflow-dims":
        raw = head + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**32 - 1) + images.tobytes()
    elif op == "bad-magic":
        raw = b"\x12\x34" + raw[2:]
    elif op == "float-type":
        raw = bytes([0, 0, 0x0D, 3]) + raw[4:]
    elif op == "ndim-0":
        raw = bytes([0, 0, 8, 0]) + images.tobytes()
    elif op == "label-mismatch":
        label_path.write_bytes(gzip.compress(labels[: 8 + 30]))
    elif op == "label-too-big":
        bad = bytearray(labels)
        bad[8 + rng.randrange(64)] = rng.choice([10, 200, 255])
        label_path.write_bytes(gzip.compress(bytes(bad)))
        nonsense = True
    elif op == "no-labels":
        label_path.unlink()
    elif op == "empty":
        raw = b""
    blob = gzip.compress(raw)
    if op == "corrupt-gzip":
        buf = bytearray(blob)
        for _ in range(rng.randrange(1, 5)):
            buf[rng.randrange(10, len(buf))] ^= 0xFF
        blob = bytes(buf)
    elif op == "not-gzip":
        blob = raw
    path.write_bytes(blob)
    return path, f"IDX images and labels: {op}", nonsense


def data_case(case, rng, fx):
    folder = case.folder
    target = rng.choice(
        ["idx", "idx", "names", "data-file", "data-file", "image-list", "smaller-than-batch"]
    )
    override, nonsense, excuses = {}, False, False
    validate = rng.random() < 0.3  # `classifier valid` reads only valid=
    split = "valid" if validate else rng.choice(["train", "valid"])
    if target == "smaller-than-batch":
        smaller_than_batch(case, rng, fx)
        return
    if target == "idx":
        path, case.what, nonsense = corrupt_idx(rng, fx, folder)
        case.what = f"{split}= {case.what}"
        override[split] = path.name
    elif target == "names":
        names = folder / "bad.names"
        op = rng.choice(
            [
                "empty",
                "binary",
                "fewer",
                "blank-lines",
                "huge-line",
                "duplicates",
                "bom",
                "fifo",
                "directory",
            ]
        )
        if op == "empty":
            names.write_text("")
        elif op == "binary":
            names.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
        elif op == "fewer":
            names.write_text("digit0\ndigit1\ndigit2\n")
            nonsense = True
        elif op == "blank-lines":
            names.write_text("digit0\n\n\ndigit1\n" + "".join(f"digit{i}\n" for i in range(2, 10)))
        elif op == "huge-line":
            names.write_text("d" * 2_000_000 + "\n" + "".join(f"digit{i}\n" for i in range(1, 10)))
        elif op == "duplicates":
            names.write_text("digit0\n" * 10)
        elif op == "bom":
            names.write_bytes(b"\xef\xbb\xbf" + fx.names.read_bytes())
            case.expect_ok = True
        elif op == "fifo":
            os.mkfifo(names)
            case.specials.append(("fifo", names.name))
        else:
            names.mkdir()
        override["names"] = names.name
        case.what = f"names file: {op}"
    elif target == "data-file":
        op = rng.choice(
            [
                "classes",
                "classes",
                "top",
                "missing-train",
                "train-missing-file",
                "train-directory",
                "train-dev-zero",
                "valid-is-labels",
                "names-missing",
                "backup-is-file",
                "backup-under-file",
                "dup-key",
                "unknown-key",
                "bom",
                "junk",
                "empty",
                "no-equals",
            ]
        )
        text = None
        if op in ("classes", "top"):
            value, tag = rng.choice(
                [
                    ("0", "zero"),
                    ("-1", "negative"),
                    ("1e20", "beyond"),
                    ("nan", "nan"),
                    ("abc", "junk"),
                    ("99999999999999999999", "beyond"),
                    ("3", "fewer"),
                ]
            )
            override[op] = value
            nonsense = tag != "fewer" or op == "classes"
            case.what = f".data {op}={value}"
        elif op == "missing-train":
            override["train"] = None
            case.what = ".data without train="
        elif op == "train-missing-file":
            override["train"] = "no-such-images-idx3-ubyte.gz"
            case.what = ".data train= a missing file"
        elif op == "train-directory":
            override["train"] = "."
            case.what = ".data train= a directory"
        elif op == "train-dev-zero":
            override["train"] = "/dev/zero"
            case.what = ".data train=/dev/zero"
        elif op == "valid-is-labels":
            override["valid"] = str(fx.train).replace("images-idx3", "labels-idx1")
            case.what = ".data valid= a labels file"
        elif op == "names-missing":
            override["names"] = "missing.names"
            case.what = ".data names= a missing file"
        elif op == "backup-is-file":
            (folder / "afile").write_text("x")
            override["backup"] = "afile"
            case.what = ".data backup= a regular file"
        elif op == "backup-under-file":
            (folder / "afile").write_text("x")
            override["backup"] = "afile/sub"
            case.what = ".data backup= a folder under a regular file"
        else:
            text = fx.data_text()
            if op == "dup-key":
                text += "classes=3\n"
            elif op == "unknown-key":
                text += "frobnicate=1\n"
                case.expect_ok = True
            elif op == "bom":
                text = "\ufeff" + text
                case.expect_ok = True
            elif op == "junk":
                text = text[:40] + "\x00\x01\xff\x1b[2J" + text[40:]
            elif op == "empty":
                text = ""
            else:
                text += "top 3\n"
            case.what = f".data file: {op}"
        if text is not None:
            (folder / "tiny.data").write_text(text, encoding="utf-8", errors="surrogateescape")
    else:
        listing = folder / "bad.list"
        op = rng.choice(
            [
                "missing-files",
                "not-images",
                "empty",
                "no-label",
                "zero-byte-png",
                "huge-png",
                "directory-entry",
                "dev-zero-entry",
                "fifo-entry",
                "some-missing",
            ]
        )
        good = [str(p) for p in fx.images[:8]]
        entries = list(good)
        if op == "missing-files":
            entries = [f"gone_{i}_digit1.png" for i in range(5)]
        elif op == "not-images":
            for i in range(4):
                (folder / f"text_{i}_digit2.png").write_text("not a png")
            entries = [f"text_{i}_digit2.png" for i in range(4)]
        elif op == "empty":
            entries = []
        elif op == "no-label":
            shutil.copy(fx.images[0], folder / "img_nolabel.png")
            entries = ["img_nolabel.png"] * 4
        elif op == "zero-byte-png":
            (folder / "zero_digit3.png").write_bytes(b"")
            entries = ["zero_digit3.png", *good]
        elif op == "huge-png":
            (folder / "huge_digit4.png").write_bytes(huge_png_header())
            entries = ["huge_digit4.png", *good]
        elif op == "directory-entry":
            (folder / "dir_digit5.png").mkdir()
            entries = ["dir_digit5.png", *good]
        elif op == "dev-zero-entry":
            (folder / "zero_digit6.png").symlink_to("/dev/zero")
            case.specials.append(("link", "zero_digit6.png", "/dev/zero"))
            entries = ["zero_digit6.png", *good]
        elif op == "fifo-entry":
            os.mkfifo(folder / "fifo_digit7.png")
            case.specials.append(("fifo", "fifo_digit7.png"))
            entries = ["fifo_digit7.png", *good]
        else:
            entries = [*good, "gone_digit8.png"]
        listing.write_text("".join(f"{e}\n" for e in entries))
        override[split] = listing.name
        case.what = f"{split}= image list: {op}"
    if not (folder / "tiny.data").exists():
        (folder / "tiny.data").write_text(fx.data_text(**override))
    cfg, weights = fx.weights["mlp"]
    shutil.copy(cfg, folder / "mlp.cfg")
    case.nonsense, case.warning_excuses = nonsense, excuses
    if validate:
        shutil.copy(weights, folder / "mlp.weights")
        case.argv = ["classifier", "valid", "tiny.data", "mlp.cfg", "mlp.weights"]
    else:
        case.argv = ["classifier", "train", "tiny.data", "mlp.cfg", "--no-progress", "--seed", "1"]


def smaller_than_batch(case, rng, fx):
    """A dataset of fewer images than one batch: every iteration is an epoch boundary,
    yet the backup folder must not fill with per-epoch checkpoints, and a warning
    must name both numbers."""
    images = rng.randrange(1, 8)
    pixels = np.random.default_rng(images).integers(0, 255, (images, 28, 28), dtype=np.uint8)
    write_idx(case.folder / "few-images-idx3-ubyte.gz", pixels)
    write_idx(case.folder / "few-labels-idx1-ubyte.gz", np.arange(images) % 10)
    (case.folder / "tiny.data").write_text(fx.data_text(train="few-images-idx3-ubyte.gz"))
    (case.folder / "mlp.cfg").write_text(set_net_keys(fx.mlp, batch=8, max_batches=60))
    case.what = f"{images} training images, batch 8, 60 iterations"
    case.argv = ["classifier", "train", "tiny.data", "mlp.cfg", "--no-progress", "--seed", "1"]
    case.nonsense, case.warning_excuses = True, True

    def post(case):
        backup = case.folder / "backup"
        files = len(list(backup.iterdir())) if backup.is_dir() else 0
        if files > 12:
            case.what += f"; {files} files in backup/"
            return "disk-flood"
        return None

    case.post = post


def huge_png_header():
    """A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's shape)."""
    import zlib

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------- sidecar mutations
def sidecar_case(case, rng, fx):
    backup, sidecar = fx.checkpoint["own"]
    folder = case.folder
    shutil.copy(backup, folder / "mlp.backup")
    target = folder / "mlp.backup.state.npz"
    good = sidecar.read_bytes()
    arrays = dict(np.load(io.BytesIO(good)))
    op = rng.choice(
        [
            "random",
            "truncated",
            "empty",
            "drop-key",
            "wrong-shape",
            "int-range",
            "bad-json",
            "digest",
            "foreign",
            "directory",
            "fifo",
            "dev-zero",
            "order-range",
            "order-duplicates",
            "pending-junk",
            "not-zip",
            "disk-full",
            "disk-full",
        ]
    )
    case.nonsense, case.warning_excuses = True, False
    what = op
    if op == "random":
        target.write_bytes(bytes(rng.randrange(256) for _ in range(len(good))))
    elif op == "truncated":
        cut = rng.randrange(len(good))
        target.write_bytes(good[:cut])
        what = f"truncated at byte {cut} of {len(good)}"
    elif op == "empty":
        target.write_bytes(b"")
    elif op == "not-zip":
        target.write_text(json.dumps({"seen": 8}))
    elif op == "drop-key":
        key = rng.choice(sorted(arrays))
        del arrays[key]
        save_npz(target, arrays)
        what = f"key {key!r} removed"
    elif op == "wrong-shape":
        key = rng.choice(sorted(k for k in arrays if arrays[k].ndim > 0 and arrays[k].size))
        arrays[key] = np.zeros((3, 1), np.float32)
        save_npz(target, arrays)
        what = f"key {key!r} replaced by a (3, 1) array"
    elif op == "int-range":
        key = rng.choice(
            [
                k
                for k in ("seen", "t", "epoch", "position", "dataset_size", "last_epoch_checkpoint")
                if k in arrays
            ]
        )
        value = rng.choice([-1, -(2**40), 2**40, 2**62])
        arrays[key] = np.array(value, np.int64)
        save_npz(target, arrays)
        what = f"{key} = {value}"
    elif op == "bad-json":
        key = rng.choice([k for k in ("trainer_rng", "net_rng") if k in arrays])
        arrays[key] = np.array(rng.choice(["{", "null", "[1, 2]", '{"bit_generator": "X"}']))
        save_npz(target, arrays)
        what = f"{key} = {str(arrays[key])!r}"
    elif op == "digest":
        key = "weights_sha256"
        arrays[key] = np.array("0" * 64)
        save_npz(target, arrays)
        what = "weights_sha256 of other bytes"
    elif op == "foreign":
        shutil.copy(fx.checkpoint["foreign"][1], target)
        what = "the sidecar of another run"
    elif op == "directory":
        target.mkdir()
    elif op == "fifo":
        os.mkfifo(target)
        case.specials.append(("fifo", target.name))
    elif op == "dev-zero":
        target.symlink_to("/dev/zero")
        case.specials.append(("link", target.name, "/dev/zero"))
    elif op in ("order-range", "order-duplicates"):
        order = arrays["order"].copy()
        if order.size:
            if op == "order-range":
                order[rng.randrange(order.size)] = 10**6
            else:
                order[:] = order[0]
        arrays["order"] = order
        save_npz(target, arrays)
    elif op == "disk-full":  # resume from backup/mlp.backup, which each backup rewrites
        (folder / "backup").mkdir()
        os.replace(folder / "mlp.backup", folder / "backup" / "mlp.backup")
        shutil.copy(sidecar, folder / "backup" / "mlp.backup.state.npz")
        size = len(backup.read_bytes())
        case.file_bytes = rng.choice([0, 4096, size // 2, size + 64, 2 * size])
        what = f"disk full: no file may grow past {case.file_bytes} bytes"
        case.nonsense = False
        names = ("backup/mlp.backup", "backup/mlp.backup.state.npz")
        before = {n: (folder / n).read_bytes() for n in names}

        def post(case):  # the checkpoint resumed from must survive a failed write
            damaged = [n for n, b in before.items() if (folder / n).read_bytes() != b]
            if case.returncode != 0 and damaged:
                case.what += f"; the previous checkpoint was damaged: {damaged}"
                return "checkpoint-damaged"
            return None

        case.post = post
    elif op == "pending-junk":
        shutil.copy(sidecar, target)
        (folder / "mlp.backup.state.npz.next").write_bytes(b"PK\x03\x04 half a zip")
        what = "a junk .next sidecar beside a good one"
        case.nonsense = False
    case.what = f"sidecar: {what}"
    (folder / "mlp.cfg").write_text(set_net_keys(fx.mlp, max_batches=6, backup_every=1))
    (folder / "tiny.data").write_text(fx.data_text())
    resume = "backup/mlp.backup" if op == "disk-full" else "mlp.backup"
    case.argv = ["classifier", "train", "tiny.data", "mlp.cfg", resume, "--no-progress"]
    case.argv += ["--seed", str(fx.seed)]


def save_npz(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


# ------------------------------------------------------------------ hostile paths
HOSTILE_NAMES = [
    "with space.cfg",
    "üñíçødé-日本.cfg",
    "tab\there.cfg",
    "new\nline.cfg",
    "esc\x1b[31mred.cfg",
    "bell\x07.cfg",
    "-dash.cfg",
    "quote'\"$(x).cfg",
    "back\\slash.cfg",
    "x" * 240 + ".cfg",  # long, but within 255 bytes as ".weights" too
]


def paths_case(case, rng, fx):
    folder = case.folder
    cfg, weights = fx.weights["mlp"]
    op = rng.choice(
        [
            "name",
            "name",
            "name",
            "fifo",
            "dev-zero",
            "directory",
            "missing",
            "too-long",
            "dangling-link",
            "link-loop",
            "backup-control",
            "train-control",
            "image-control",
            "swapped",
            "swapped",
            "planted-links",
            "yaml",
            "yaml",
        ]
    )
    name = rng.choice(HOSTILE_NAMES)
    data = folder / "tiny.data"
    data.write_text(fx.data_text())
    role = rng.choice(["cfg", "data", "weights"])
    paths = {"cfg": folder / "net.cfg", "data": data, "weights": folder / "net.weights"}
    shutil.copy(cfg, paths["cfg"])
    shutil.copy(weights, paths["weights"])
    if op in ("swapped", "planted-links", "yaml"):
        {"swapped": swapped_arguments, "planted-links": planted_links, "yaml": hostile_yaml}[op](
            case, rng, fx, paths
        )
        return
    if op == "name":
        hostile = folder / (name if role == "cfg" else name.replace(".cfg", f".{role}"))
        os.replace(paths[role], hostile)
        paths[role] = hostile
        case.what = f"{role} named {hostile.name!r}"
        case.expect_ok = not hostile.name.startswith("-")
    elif op in (
        "fifo",
        "dev-zero",
        "directory",
        "missing",
        "too-long",
        "dangling-link",
        "link-loop",
    ):
        special = folder / f"special.{role}"
        if op == "fifo":
            os.mkfifo(special)
            case.specials.append(("fifo", special.name))
        elif op == "dev-zero":
            special.symlink_to("/dev/zero")
            case.specials.append(("link", special.name, "/dev/zero"))
        elif op == "directory":
            special.mkdir()
        elif op == "too-long":
            special = folder / ("y" * 300 + f".{role}")
        elif op == "dangling-link":
            special.symlink_to("nowhere")
            case.specials.append(("link", special.name, "nowhere"))
        elif op == "link-loop":
            special.symlink_to(special.name)
            case.specials.append(("link", special.name, special.name))
        paths[role] = special
        case.what = f"{role} is {op}"
    elif op == "backup-control":
        data.write_text(fx.data_text(backup=f"back\x1b[2Jup\x07{rng.randrange(100)}"))
        case.what = ".data backup= a folder name with ESC and BEL"
        role = "data"
    elif op == "train-control":
        data.write_text(fx.data_text(train="tr\x1b]0;title\x07ain-images-idx3.gz"))
        case.what = ".data train= a missing file named with control characters"
        role = "data"
    else:
        image = folder / "pic\x1b[31m\x08.png"
        image.write_bytes(b"not a png")
        case.what = "predict an image named with control characters, not a PNG"
        case.argv = [
            "classifier",
            "predict",
            paths["data"].name,
            paths["cfg"].name,
            paths["weights"].name,
            image.name,
        ]
        return
    verbs = {
        "cfg": ["cfg summary", "train", "valid"],
        "data": ["train", "valid"],
        "weights": ["valid", "train"],
    }[role]
    verb = rng.choice(verbs)
    names = {role: path.name for role, path in paths.items()}  # the case folder is the cwd
    if verb == "cfg summary":
        case.argv = ["cfg", "summary", names["cfg"]]
    elif verb == "train":
        case.argv = [
            "classifier",
            "train",
            names["data"],
            names["cfg"],
            "--no-progress",
            "--seed",
            "1",
        ]
        if role == "weights":
            case.argv.insert(4, names["weights"])
    else:
        case.argv = ["classifier", "valid", names["data"], names["cfg"], names["weights"]]


def swapped_arguments(case, rng, fx, paths):
    """Files given in the wrong places: each must be named for what it is."""
    data, cfg, weights = (paths[k].name for k in ("data", "cfg", "weights"))
    case.argv, case.what = rng.choice(
        [
            (["classifier", "train", cfg, data], "train CFG DATA (swapped)"),
            (["classifier", "train", data, data], "train DATA DATA"),
            (["classifier", "train", data, weights], "train DATA WEIGHTS (no cfg)"),
            (["classifier", "valid", data, weights, cfg], "valid DATA WEIGHTS CFG"),
            (["classifier", "valid", data, cfg, cfg], "valid DATA CFG CFG"),
            (["classifier", "predict", data, cfg, weights, cfg], "predict a cfg as the image"),
            (["cfg", "summary", data], "cfg summary DATA"),
            (["cfg", "summary", weights], "cfg summary WEIGHTS"),
            (["gradcheck", weights], "gradcheck WEIGHTS"),
        ]
    )
    if case.argv[1] == "train":
        case.argv += ["--no-progress", "--seed", "1"]
    case.nonsense, case.warning_excuses = True, False


def planted_links(case, rng, fx, paths):
    """Links planted in the backup folder where training appends its log and metrics."""
    backup = case.folder / "backup"
    backup.mkdir()
    victims = []
    for name in ("net.log", "net_metrics.jsonl", "net_chart.png"):
        victim = case.folder / f"victim-{name}"
        victim.write_text("untouched\n")
        (backup / name).symlink_to(os.path.join("..", victim.name))
        case.specials.append(("link", f"backup/{name}", os.path.join("..", victim.name)))
        victims.append(victim)
    case.what = "backup/net.log, net_metrics.jsonl, net_chart.png are links to files outside"
    case.argv = ["classifier", "train", "tiny.data", "net.cfg", "--no-progress", "--seed", "1"]

    def post(case):
        changed = [v.name for v in victims if v.read_text(errors="replace") != "untouched\n"]
        if changed:
            case.what += f"; written through the links: {changed}"
            return "followed-symlink"
        return None

    case.post = post


BILLION_LAUGHS = """a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def hostile_yaml(case, rng, fx, paths):
    """A YAML network with a code-running tag, an alias bomb, or a wrong structure."""
    marker = case.folder / "PWNED"
    good = fx.mlp_yaml
    op = rng.choice(
        [
            "python-tag",
            "bomb-value",
            "bomb-document",
            "not-a-list",
            "scalar",
            "deep",
            "anchor-loop",
            "tab-indent",
            "huge-int",
        ]
    )
    if op == "python-tag":
        text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    elif op == "bomb-value":  # unknown [net] keys whose values expand to 9**9 items
        anchors = "".join(f"  bomb_{line[0]}: {line[3:]}\n" for line in BILLION_LAUGHS.splitlines())
        text = good.replace("- type: net\n", "- type: net\n" + anchors, 1)
        if text == good:
            raise RuntimeError("campaign: the fixture's YAML has no '- type: net' line")
    elif op == "bomb-document":
        text = BILLION_LAUGHS
    elif op == "not-a-list":
        text = "network: {type: net}\n"
    elif op == "scalar":
        text = "42\n"
    elif op == "deep":
        text = "[" * 5000 + "]" * 5000 + "\n"
    elif op == "anchor-loop":
        text = "- &a [*a]\n"
    elif op == "tab-indent":
        text = good.replace("  batch", "\tbatch", 1)
    else:
        text = good.replace("output: 10", "output: " + "9" * 4000, 1)
    cfg = case.folder / "net.yaml"
    cfg.write_text(text)
    case.what = f"YAML network: {op}"
    case.argv = rng.choice(
        [
            ["cfg", "summary", cfg.name],
            ["cfg", "convert", cfg.name, "out.cfg"],
            ["classifier", "train", "tiny.data", cfg.name, "--no-progress", "--seed", "1"],
        ]
    )
    case.nonsense, case.warning_excuses = op != "tab-indent", False

    def post(case):
        return "code-execution" if marker.exists() else None

    case.post = post


# ------------------------------------------------------------------------ running
def limit_memory(limit_bytes, file_bytes=None):
    """The child's limits: address space, and (a full disk, as the child sees it) the
    size of any file it writes: past it a write fails with EFBIG (Python ignores
    SIGXFSZ)."""

    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        if file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        os.setsid()  # a group of its own: a timeout kills it all

    return preexec


def run_command(argv, cwd, env, timeout, memory, file_bytes=None):
    """(returncode or None on timeout, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "minidark", *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit_memory(memory, file_bytes),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    text = lambda b: b.decode("utf-8", "backslashreplace")  # noqa: E731
    return code, text(out), text(err), time.monotonic() - start


def classify(code, stderr):
    if code is None:
        return "hang"
    if "MemoryError" in stderr or code == -signal.SIGKILL:
        return "memory"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if code < 0:
        return "crash"
    if code == 0:
        return "ok"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and CLEAN_LAST_LINE.match(lines[-1]):
        return "clean-error"
    return "unclear-error"


def judge(case):
    outcome = classify(case.returncode, case.stderr)
    if case.argv[:1] == ["gradcheck"] and outcome == "unclear-error" and case.returncode == 1:
        return "gradcheck-fail"  # a check that ran and failed: a correct layer never does
    raw = CONTROL.search(case.stderr) or CONTROL.search(case.stdout)
    if raw and outcome in ("ok", "clean-error"):
        return "raw-control-chars"
    if outcome == "ok" and case.nonsense:
        warned = re.search(r"warning", case.stderr, re.IGNORECASE)
        return "warned" if warned and case.warning_excuses else "accepted-nonsense"
    if case.expect_ok and outcome == "clean-error":
        return "rejected-valid"
    return outcome


def run_case(case, fx, args):
    code, out, err, seconds = run_command(
        case.argv,
        case.folder,
        fx.env(),
        case.timeout * args.timeout_scale,
        args.memory_bytes,
        case.file_bytes,
    )
    case.returncode, case.stdout, case.stderr, case.seconds = code, out, err, seconds
    case.outcome = judge(case)
    if case.post is not None and case.outcome in PASSING:
        case.outcome = case.post(case) or case.outcome


# ----------------------------------------------------------------- kill and resume
KILL_CFG_KEYS = {"batch": 8, "max_batches": 30, "backup_every": 1, "valid_every": 10}


class KillReference:
    """The uninterrupted run, once per campaign: its final weights and its duration."""

    def __init__(self, fx, args):
        self.folder = fx.root / "kill-reference"
        self.folder.mkdir()
        write_kill_inputs(self.folder, fx)
        code, _out, err, self.seconds = run_command(
            kill_argv(fx), self.folder, fx.env(), 600, args.memory_bytes
        )
        weights = self.folder / "backup" / "kill.weights"
        if code != 0 or not weights.exists():
            raise RuntimeError(f"campaign: the uninterrupted reference run failed:\n{err}")
        self.weights = weights.read_bytes()


def write_kill_inputs(folder, fx):
    (folder / "kill.cfg").write_text(set_net_keys(fx.mlp, **KILL_CFG_KEYS))
    (folder / "tiny.data").write_text(fx.data_text("backup"))


def kill_argv(fx, weights=None):
    return [
        "classifier",
        "train",
        "tiny.data",
        "kill.cfg",
        *([weights] if weights else []),
        "--no-progress",
        "--seed",
        str(fx.seed),
    ]


def kill_case(case, rng, fx, args, reference):
    """Kill -9 at random instants (one to three runs), resume to the end, compare bytes."""
    write_kill_inputs(case.folder, fx)
    backup = case.folder / "backup" / "kill.backup"
    kills, log = rng.choice([1, 1, 2, 3]), []
    env = fx.env()
    for attempt in range(kills + 1):
        resume = str(backup) if backup.exists() else None
        argv = kill_argv(fx, resume)
        if attempt == kills:  # the last run goes to the end
            code, out, err, _ = run_command(
                argv, case.folder, env, 120 * args.timeout_scale, args.memory_bytes
            )
            case.argv, case.returncode, case.stdout, case.stderr = argv, code, out, err
            log.append(f"final run from {'backup' if resume else 'scratch'}: exit {code}")
            break
        delay = rng.uniform(0.05, reference.seconds * 1.1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "minidark", *argv],
            cwd=case.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=limit_memory(args.memory_bytes),
        )
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        log.append(
            f"run {attempt + 1} from {'backup' if resume else 'scratch'}: "
            f"{'finished before' if finished else 'killed at'} {delay:.2f} s"
        )
        if finished and proc.returncode != 0:
            case.argv, case.returncode = argv, proc.returncode
            case.stdout, case.stderr = out.decode(errors="replace"), err.decode(errors="replace")
            break
    case.what = "; ".join(log)
    outcome = classify(case.returncode, case.stderr)
    if outcome != "ok":
        case.outcome = outcome
        return
    final = case.folder / "backup" / "kill.weights"
    leftovers = [
        p.name
        for p in (case.folder / "backup").iterdir()
        if p.name.startswith(".tmp-") or p.name.endswith(".next")
    ]
    same = final.exists() and final.read_bytes() == reference.weights
    if not same:
        case.what += "; final weights differ from the uninterrupted run"
    if leftovers:
        case.what += f"; left behind: {leftovers}"
    case.outcome = "kill-resume-identical" if same and not leftovers else "kill-resume-differs"


# ------------------------------------------------------------------------- report
def save_failure(case, out):
    """Copy the case's inputs and output to ``out/<outcome>/<kind>-<index>``."""
    target = Path(out) / case.outcome / f"{case.kind}-{case.index:04d}"
    if target.exists() or target.is_symlink():
        shutil.rmtree(target)
    special = {s[1] for s in case.specials}

    def ignore(folder, names):
        skip = []
        for name in names:
            path = Path(folder) / name
            regular = path.is_file() or path.is_dir()
            if (
                name in special
                or path.is_symlink()
                or not regular
                or (path.is_file() and path.stat().st_size > 64 << 20)
            ):
                skip.append(name)
        return skip

    shutil.copytree(case.folder, target, ignore=ignore, symlinks=True)
    setup = []
    for spec in case.specials:
        if spec[0] == "fifo":
            setup.append(f"mkfifo {shlex.quote(spec[1])}")
        elif spec[0] == "link":
            setup.append(f"ln -sfn {shlex.quote(spec[2])} {shlex.quote(spec[1])}")
        elif spec[0] == "sparse":
            header = spec[3].hex()
            setup.append(
                f"python3 -c \"import sys; f=open(sys.argv[1],'wb'); "
                f"f.write(bytes.fromhex('{header}')); f.truncate({spec[2]})\" "
                f"{shlex.quote(spec[1])}"
            )
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "minidark", *case.argv])
    (target / "cmd.sh").write_text(
        "#!/bin/sh\n# "
        + case.what.replace("\n", "\\n")
        + '\ncd "$(dirname "$0")"\n'
        + "".join(
            f"[ -e {shlex.quote(s[1])} ] || {line}\n"
            for s, line in zip(case.specials, setup, strict=True)
        )
        + f"MINIDARK_DATA=/nonexistent MINIDARK_MNIST_MIRRORS=http://127.0.0.1:9/ {command}\n"
    )
    (target / "stdout.txt").write_text(case.stdout, errors="backslashreplace")
    (target / "stderr.txt").write_text(case.stderr, errors="backslashreplace")
    (target / "case.json").write_text(
        json.dumps(
            {
                "kind": case.kind,
                "index": case.index,
                "what": case.what,
                "argv": case.argv,
                "outcome": case.outcome,
                "returncode": case.returncode,
                "seconds": round(case.seconds, 2),
            },
            indent=1,
            ensure_ascii=True,
        )
    )
    return target


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def format_table(cases):
    outcomes = sorted({c.outcome for c in cases}, key=lambda o: (o not in PASSING, o))
    kinds = [k for k in KINDS if any(c.kind == k for c in cases)]
    counts = collections.Counter((c.kind, c.outcome) for c in cases)
    width = max(len(o) for o in outcomes) + 2
    rows = ["outcome".ljust(width) + "".join(f"{k:>9}" for k in kinds) + f"{'total':>9}"]
    for outcome in outcomes:
        cells = [counts[(k, outcome)] for k in kinds]
        mark = "" if outcome in PASSING else "  <- failure"
        rows.append(
            outcome.ljust(width) + "".join(f"{n:>9}" for n in cells) + f"{sum(cells):>9}{mark}"
        )
    totals = [sum(counts[(k, o)] for o in outcomes) for k in kinds]
    rows.append("total".ljust(width) + "".join(f"{n:>9}" for n in totals) + f"{sum(totals):>9}")
    return "\n".join(rows)


def pick_kinds(n, kinds, rng):
    weights = [WEIGHT[k] for k in kinds]
    return [rng.choices(kinds, weights)[0] for _ in range(n)]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m minidark.tools.campaign",
        description="Run hostile inputs against the minidark CLI and classify the outcomes.",
    )
    parser.add_argument("--cases", type=int, default=100, help="how many cases (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    parser.add_argument(
        "--out", default="campaign-out", help="folder for the failing cases (default campaign-out)"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        dest="timeout_scale",
        help="multiply every case's time limit (30 s) by this",
    )
    parser.add_argument(
        "--memory", type=float, default=4.0, help="address-space limit per case in GiB (default 4)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quiet", action="store_true", help="no line per failing case")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--kinds: unknown {unknown}; choose from {','.join(KINDS)}")
    if args.cases < 1:
        parser.error("--cases must be >= 1")
    args.kinds = kinds
    args.memory_bytes = int(args.memory * (1 << 30))
    return args


def main(argv=None):
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="minidark-campaign-"))
    started = time.monotonic()
    fixture = Path(args.out).resolve() / "fixture"  # kept: saved cases name its files
    shutil.rmtree(fixture, ignore_errors=True)
    try:
        fx = Fixture(fixture, args.seed)
        rng = random.Random(args.seed)
        kinds = pick_kinds(args.cases, args.kinds, rng)
        reference = KillReference(fx, args) if "kill" in kinds else None
        makers = {
            "cfg": cfg_case,
            "weights": weights_case,
            "data": data_case,
            "sidecar": sidecar_case,
            "paths": paths_case,
        }
        cases = []
        for index, kind in enumerate(kinds):
            case_rng = random.Random(f"{args.seed}-{index}")
            folder = work / "cases" / f"{kind}-{index:04d}"
            folder.mkdir(parents=True)
            case = Case(kind, index, folder)
            try:
                if kind == "kill":
                    kill_case(case, case_rng, fx, args, reference)
                else:
                    makers[kind](case, case_rng, fx)
                    run_case(case, fx, args)
            except Exception:  # a bug of the campaign itself: count it, go on
                case.outcome, case.stderr = "campaign-error", traceback.format_exc()
                case.what = case.what or "the case generator failed"
            cases.append(case)
            if case.outcome not in PASSING:
                saved = save_failure(case, args.out)
                if not args.quiet:
                    print(
                        f"{case.outcome:>18}  {kind}-{index:04d}  {case.what[:110]!r}\n"
                        f"{'':>18}  {last_line(case.stderr)!r}\n{'':>18}  -> {saved}",
                        flush=True,
                    )
        print(
            f"\n{len(cases)} cases in {time.monotonic() - started:.0f} s "
            f"(seed {args.seed}, kinds {','.join(args.kinds)})\n"
        )
        print(format_table(cases))
        failed = [c for c in cases if c.outcome not in PASSING]
        if failed:
            print(
                f"\n{len(failed)} failing cases written to {args.out}/<outcome>/<kind>-<n>/ "
                "(cmd.sh reruns one)"
            )
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
