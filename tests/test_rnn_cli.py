"""``minidark rnn train/generate/valid`` and ``data export-text``: darknet's
character streams, the offline corpus, checkpoints and exact resume, seeded
sampling, bits per character, and darknet's own rnn cfgs."""

import contextlib
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from minidark import cli
from minidark.commands.rnn import bits_per_char, load_text_network, sample
from minidark.data.text import TextStreams, python_stdlib_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """[net]
inputs=256
batch=3
time_steps=5
learning_rate=0.1
momentum=0.9
decay=0.0001
max_batches={max_batches}
adam={adam}

[{kind}]
output=8

[connected]
output=256
activation=linear

[softmax]
"""

TEXT = b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 20


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def tiny_cfg(tmp_path, kind="lstm", max_batches=6, name="tiny.cfg", adam=0):
    path = tmp_path / name
    path.write_text(TINY.format(kind=kind, max_batches=max_batches, adam=adam))
    return path


# ------------------------------------------------------------------ streams
def test_streams_are_step_major_one_hot_and_continue():
    text = bytes(range(10, 30))
    data = TextStreams(text, streams=3, steps=4, rng=np.random.default_rng(0), reset_chance=0)
    start = data.offsets.copy()
    x, y = np.zeros((12, 256), np.float32), np.zeros((12, 256), np.float32)
    data.fill(x, y)
    assert (x.sum(1) == 1).all() and (y.sum(1) == 1).all()
    for t in range(4):
        for b in range(3):
            row = t * 3 + b  # darknet's row = step * streams + stream
            assert x[row].argmax() == text[(start[b] + t) % 20]
            assert y[row].argmax() == text[(start[b] + t + 1) % 20]
    data.fill(x, y)  # the next batch continues each stream
    assert x[0].argmax() == text[(start[0] + 4) % 20]


def test_streams_jump_with_darknets_chance():
    data = TextStreams(bytes(1000), streams=64, steps=1, rng=np.random.default_rng(0))
    moved = sum(len(data.jump()) for _ in range(200))
    assert moved == pytest.approx(64 * 200 / 64, rel=0.25)


def test_python_stdlib_corpus_is_deterministic_and_disjoint(tmp_path):
    a = python_stdlib_corpus(tmp_path / "a" / "text.txt", max_bytes=50000)
    b = python_stdlib_corpus(tmp_path / "b" / "text.txt", max_bytes=50000)
    assert a[2] == 50000 and "valid" in os.path.basename(a[1]) and a[3] > 0
    train, valid = Path(a[0]).read_bytes(), Path(a[1]).read_bytes()
    assert train == Path(b[0]).read_bytes()
    assert valid[:2000] not in train
    status, _, _ = run(
        "data", "export-text", "--python-stdlib", tmp_path / "c.txt", "--max-bytes", 1000
    )
    assert status == 0 and os.path.getsize(tmp_path / "c.txt") == 1000
    assert os.path.isfile(tmp_path / "c_valid.txt")


# -------------------------------------------------------------------- train
def test_train_writes_checkpoints_log_chart_and_learns(tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT)
    cfg = tiny_cfg(tmp_path, max_batches=40)
    status, out, err = run(
        "rnn",
        "train",
        cfg,
        "--file",
        tmp_path / "t.txt",
        "--backup",
        tmp_path / "bk",
        "--seed",
        3,
        "--quiet",
        "--backup-every",
        10,
    )
    assert status == 0, err
    for name in (
        "tiny.backup",
        "tiny.backup.state.npz",
        "tiny_final.weights",
        "tiny.log",
        "tiny_chart.png",
    ):
        assert (tmp_path / "bk" / name).is_file(), name
    lines = (tmp_path / "bk" / "tiny.log").read_text().splitlines()
    assert len(lines) == 40 and lines[0].startswith("1: ")
    losses = [float(re.match(r"\d+: ([\d.]+),", line)[1]) for line in lines]
    assert losses[0] == pytest.approx(8.0, abs=0.3)  # 256-way uniform: 8 bits/char
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    assert "bits/char" in out


@pytest.mark.parametrize("adam", [0, 1])
def test_resume_is_exact(tmp_path, adam):
    (tmp_path / "t.txt").write_bytes(TEXT)
    common = ["--file", tmp_path / "t.txt", "--seed", 5, "--quiet"]
    straight = tiny_cfg(tmp_path, max_batches=8, name="net.cfg", adam=adam)
    assert run("rnn", "train", straight, *common, "--backup", tmp_path / "a")[0] == 0
    assert (
        run(
            "rnn",
            "train",
            straight,
            *common,
            "--backup",
            tmp_path / "b",
            "--max-batches",
            5,
            "--backup-every",
            5,
        )[0]
        == 0
    )
    status, _, err = run(
        "rnn", "train", straight, tmp_path / "b" / "net.backup", *common, "--backup", tmp_path / "b"
    )
    assert status == 0, err
    assert (tmp_path / "a" / "net_final.weights").read_bytes() == (
        tmp_path / "b" / "net_final.weights"
    ).read_bytes()


def test_train_rejects_a_non_character_network(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\ninputs=10\nbatch=2\n[connected]\noutput=3\n[softmax]\n")
    (tmp_path / "t.txt").write_bytes(TEXT)
    status, _, err = run("rnn", "train", cfg, "--file", tmp_path / "t.txt", "--quiet")
    assert status == 2 and "inputs=256" in err


# ------------------------------------------------------- generate and valid
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rnn")
    (tmp / "t.txt").write_bytes(TEXT)
    cfg = tiny_cfg(tmp, kind="gru", max_batches=30)
    status, _, err = run(
        "rnn", "train", cfg, "--file", tmp / "t.txt", "--backup", tmp / "bk", "--seed", 1, "--quiet"
    )
    assert status == 0, err
    return cfg, tmp / "bk" / "tiny_final.weights", tmp


def test_generate_is_seeded_and_starts_with_the_seed(trained):
    cfg, weights, _ = trained
    first = run("rnn", "generate", cfg, weights, "--seed", "def ", "--len", 50, "--rseed", 7)
    again = run("rnn", "generate", cfg, weights, "--seed", "def ", "--len", 50, "--rseed", 7)
    other = run("rnn", "generate", cfg, weights, "--seed", "def ", "--len", 50, "--rseed", 8)
    assert first[0] == 0 and first[1] == again[1] and first[1] != other[1]
    assert first[1].startswith("def ") and len(first[1].encode("latin-1", "replace")) >= 54
    assert run("rnn", "generate", cfg, weights, "--len", 5, "--reset-state")[0] == 0
    assert run("rnn", "generate", cfg, weights, "--temp", 0)[0] != 0


def test_sampling_is_darknets():
    p = np.zeros(256, np.float32)
    p[[3, 7]] = 0.5 - 5e-5
    p[9] = 9e-5  # below 1e-4: never drawn
    rng = np.random.default_rng(0)
    draws = [sample(p, rng) for _ in range(2000)]
    assert set(draws) == {3, 7} and abs(draws.count(3) - 1000) < 120


def test_valid_bits_per_char_does_not_depend_on_the_chunk(trained):
    cfg, weights, tmp = trained
    text = TEXT[:300]
    one = load_text_network(cfg, weights, batch=1, time_steps=1)
    chunked = load_text_network(cfg, weights, batch=1, time_steps=64)
    a, n = bits_per_char(one, text, b"x")
    b, m = bits_per_char(chunked, text, b"x")
    assert n == m == len(text) - 1 and a == pytest.approx(b, rel=1e-5)
    (tmp / "v.txt").write_bytes(text)
    status, out, err = run("rnn", "valid", cfg, weights, "--file", tmp / "v.txt")
    assert status == 0, err
    value = float(re.match(r"([\d.]+) bits/char", out)[1])
    chunked.reset_state()  # the command starts fresh, after darknet's "\n\n"
    expected, _ = bits_per_char(chunked, text, b"\n\n")
    assert value == pytest.approx(expected, abs=6e-4) and value < 8


def test_valid_by_hand_on_a_fresh_network(tmp_path):
    """An untrained net with zero output weights predicts uniformly: 8 bits/char."""
    net = load_text_network(tiny_cfg(tmp_path), batch=1, time_steps=4)
    net.layers[1].weights[...] = 0
    bpc, count = bits_per_char(net, b"hello world")
    assert count == 10 and bpc == pytest.approx(8.0, abs=1e-5)
    assert math.isclose(2**bpc, 256, rel_tol=1e-4)


# --------------------------------------------------- darknet's own rnn cfgs
DARKNET_RNN = """[net]
subdivisions=1
inputs=256
batch = 1
momentum=0.9
decay=0.001
max_batches = 2000
time_steps=1
learning_rate=0.1
policy=steps
steps=1000,1500
scales=.1,.1

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[connected]
output=256
activation=leaky

[softmax]
"""


def test_darknets_rnn_cfg_builds_and_trains(tmp_path):
    cfg = tmp_path / "rnn.cfg"
    cfg.write_text(
        DARKNET_RNN.replace("batch = 1", "batch = 2").replace("time_steps=1", "time_steps=3")
    )
    (tmp_path / "t.txt").write_bytes(TEXT)
    status, _, err = run(
        "rnn",
        "train",
        cfg,
        "--file",
        tmp_path / "t.txt",
        "--quiet",
        "--max-batches",
        2,
        "--backup",
        tmp_path / "bk",
        "--seed",
        0,
    )
    assert status == 0, err
    assert "hidden" in err  # unused, as darknet reports it too
    with pytest.warns(UserWarning, match="hidden"):
        net = load_text_network(cfg, tmp_path / "bk" / "rnn_final.weights")
    assert [l.type for l in net.layers] == ["rnn", "rnn", "rnn", "connected", "softmax"]
    assert net.layers[0].params == 3 * 4 * 1024 + 256 * 1024 + 2 * 1024 * 1024
