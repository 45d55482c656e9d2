"""The minidark command and train.py: train / valid / predict on a briefly trained
MLP, one-line errors with non-zero exits, --help everywhere, Ctrl-C, plugins."""

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from minidark import cli
from minidark.cfg import read_sections
from minidark.data.export import export_mnist

from conftest import MNIST  # the MNIST folder (data/mnist, $MINIDARK_DATA or ../shared)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MLP = """[net]
batch=64
height=28
width=28
channels=1
learning_rate=0.1
momentum=0.9
decay=0.0005
max_batches={max_batches}
backup_every={backup_every}
min_crop=28
max_crop=28
flip=0

[connected]
output=64
activation=relu

[connected]
output=10
activation=linear

[softmax]
"""


def run_main(*argv):
    """(status, stdout, stderr) of cli.main in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def run_process(*argv, env=None, cwd=ROOT, timeout=120):
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def write_data(folder, backup="backup", **keys):
    values = {
        "classes": "10",
        "train": os.path.join(MNIST, "train-images-idx3-ubyte.gz"),
        "valid": os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"),
        "names": os.path.join(ROOT, "data", "mnist.names"),
        "backup": os.path.join(folder, backup),
        "top": "2",
    }
    values.update(keys)
    path = os.path.join(folder, "mnist.data")
    with open(path, "w") as handle:
        handle.write("".join(f"{k}={v}\n" for k, v in values.items() if v is not None))
    return path


def write_cfg(folder, name="mlp.cfg", max_batches=80, backup_every=1000):
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write(MLP.format(max_batches=max_batches, backup_every=backup_every))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cli"))
    data, cfg = write_data(folder), write_cfg(folder)
    status, out, err = run_main("classifier", "train", data, cfg, "--seed", "1", "--no-progress")
    assert status == 0, err
    return folder, data, cfg, os.path.join(folder, "backup", "mlp.weights"), out, err


# ------------------------------------------------------------ train/valid/predict
@pytest.mark.mnist
def test_train_prints_test_accuracy_and_writes_checkpoints(trained):
    folder, _data, _cfg, weights, out, err = trained
    match = re.search(
        r"mlp: test accuracy top-1 (\d+\.\d+)%, top-2 (\d+\.\d+)% on 10000 "
        r"images",
        out,
    )
    assert match and float(match.group(1)) > 85, out
    assert "seed 1 (--seed 1 repeats this run)" in out
    assert "layer" in err and "connected" in err  # darknet's layer table
    assert os.path.exists(weights) and os.path.exists(weights + ".state.npz")
    assert os.path.exists(os.path.join(folder, "backup", "mlp_chart.png"))


@pytest.mark.mnist
def test_valid_prints_accuracy_and_confusion_table(trained):
    _folder, data, cfg, weights, _, _ = trained
    status, out, err = run_main("classifier", "valid", data, cfg, weights)
    assert status == 0, err
    match = re.search(r"top-1 (\d+\.\d+)%, top-2 (\d+\.\d+)% on 10000 images", out)
    assert match and float(match.group(1)) > 85
    rows = [line for line in out.splitlines() if line.startswith("digit")]
    assert len(rows) == 10
    counts = [int(v) for v in rows[7].split()[1:11]]  # digit7's row
    assert sum(counts) == 1028 and counts[7] == max(counts)
    status, out5, _ = run_main("classifier", "valid", data, cfg, weights, "--top", "5")
    assert status == 0 and "top-5" in out5


@pytest.mark.mnist
def test_predict_prints_top_k_labels(trained, tmp_path):
    _folder, data, cfg, weights, _, _ = trained
    export_mnist(tmp_path / "png", MNIST, limit=8, progress=False)
    images = sorted((tmp_path / "png" / "valid").iterdir())
    broken = tmp_path / "broken_digit1.png"
    broken.write_bytes(b"\x89PNG broken")
    status, out, err = run_main(
        "classifier", "predict", data, cfg, weights, *images, broken, "--top", "3"
    )
    assert status == 2  # one image failed: a user error
    assert "broken_digit1.png: cannot read image" in one_line(err)
    blocks = re.findall(
        r"^(\S+): predicted in [\d.]+ s\n((?:[ \d]\d\.\d\d%: digit\d\n){3})", out, re.M
    )
    assert len(blocks) == 8
    right = 0
    for path, lines in blocks:
        labels = re.findall(r"(\d+\.\d\d)%: (digit\d)", lines)
        probabilities = [float(p) for p, _ in labels]
        assert probabilities == sorted(probabilities, reverse=True)
        right += labels[0][1] in os.path.basename(path)
    assert right >= 6


@pytest.mark.mnist
def test_resume_says_already_trained(trained):
    _folder, data, cfg, weights, _, _ = trained
    status, out, _err = run_main("classifier", "train", data, cfg, weights, "--no-progress")
    assert status == 0
    assert "already trained to max_batches=80" in out and "--clear" in out


@pytest.mark.mnist
def test_train_on_exported_image_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the exported .data says backup=backup/
    data = export_mnist(tmp_path / "png", MNIST, limit=256, progress=False)
    cfg = write_cfg(str(tmp_path), max_batches=8)
    status, out, err = run_main("classifier", "train", data, cfg, "--no-progress", "--seed", "2")
    assert status == 0, err
    assert "test accuracy top-1" in out and "on 256 images" in out
    assert (tmp_path / "backup" / "mlp.weights").exists()


# ------------------------------------------------------------------ error paths
def test_bad_arguments_give_one_line_and_status_2():
    for argv, expected in [
        ((), "choose a command"),
        (("classifier",), "choose a command: train, valid, predict"),
        (("classifier", "train"), "required: DATA, CFG"),
        (("classifier", "train", "a", "b", "--seed", "x"), "invalid int"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("classifier", "train", "a", "b", "--nope"), "unrecognized"),
        (
            ("classifier", "valid", "a", "b", "c", "--top", "0"),
            "argument --top: must be >= 1, got 0",
        ),
    ]:
        status, _out, err = run_main(*argv)
        assert status == 2, argv
        assert expected in one_line(err), (argv, err)


def test_user_errors_give_one_line_and_status_2(tmp_path):
    cfg = write_cfg(str(tmp_path))
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("[net]\nbatch=1\ninputs=4\n\n[conected]\noutput=2\n")
    wrong_classes = write_data(str(tmp_path), classes="7", names=None)
    cases = [
        (("classifier", "train", tmp_path / "no.data", cfg), "no.data: cannot read"),
        (("classifier", "train", wrong_classes, tmp_path / "no.cfg"), "no.cfg"),
        (("classifier", "train", wrong_classes, bad_cfg), "bad.cfg:5"),
        (("classifier", "train", wrong_classes, cfg), "classes=7 but the network"),
        (("classifier", "valid", wrong_classes, cfg, tmp_path / "no.weights"), "no.weights"),
        (("cfg", "summary", bad_cfg), "unknown section type [conected]"),
    ]
    for argv, expected in cases:
        status, out, err = run_main(*argv)
        assert status == 2, (argv, out, err)
        line = one_line(err)
        assert line.startswith("minidark: error: ") and expected in line, (argv, line)


def test_offline_without_mnist_is_one_clear_message(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = write_data(
        str(tmp_path),
        train=str(tmp_path / "m" / "train-images-idx3-ubyte.gz"),
        valid=str(tmp_path / "m" / "t10k-images-idx3-ubyte.gz"),
    )
    cfg = write_cfg(str(tmp_path))
    start = time.monotonic()
    result = run_process(
        "-m",
        "minidark",
        "classifier",
        "train",
        data,
        cfg,
        "--no-progress",
        env={
            "MINIDARK_DATA": str(tmp_path / "empty"),
            "MINIDARK_MNIST_MIRRORS": f"http://127.0.0.1:{port}/",
        },
    )
    assert time.monotonic() - start < 30
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "MNIST is missing" in line and "$MINIDARK_DATA" in line
    assert str(tmp_path / "m") in line


def test_help_on_every_command():
    status, out, _ = run_main("--help")
    assert status == 0 and "classifier" in out and "export-mnist" not in out
    for command in cli.COMMANDS:
        status, out, _err = run_main(*command.words, "--help")
        assert status == 0 and out.startswith("usage: minidark " + " ".join(command.words))
        assert "--plugin" in out
    for group in ("classifier", "cfg", "data"):
        status, out, _ = run_main(group, "--help")
        assert status == 0 and "usage" in out


# --------------------------------------------------------------- cfg utilities
def test_cfg_summary_and_convert(tmp_path):
    status, out, _ = run_main("cfg", "summary", os.path.join(ROOT, "cfg", "mnist_mlp.cfg"))
    assert status == 0 and "407,050 parameters" in out and "BFLOPs" in out
    source = os.path.join(ROOT, "cfg", "mnist_mlp.cfg")
    status, out, _ = run_main("cfg", "convert", source, tmp_path / "mlp.yaml")
    assert status == 0 and "wrote" in out
    status, _, _ = run_main("cfg", "convert", tmp_path / "mlp.yaml", tmp_path / "back.cfg")
    assert status == 0
    a, b = read_sections(source), read_sections(str(tmp_path / "back.cfg"))
    assert [(s.type, [(o.key, o.value) for o in s.options]) for s in a] == [
        (s.type, [(o.key, o.value) for o in s.options]) for s in b
    ]


def test_plugin_option_loads_layers(tmp_path):
    plugin = tmp_path / "twice.py"
    plugin.write_text("""
import numpy as np
from minidark import Layer, register_layer

@register_layer("cli_test_twice")
def make_twice(options, params):
    l = Layer(type="cli_test_twice", batch=params.batch, inputs=params.inputs,
              outputs=params.inputs, out_h=1, out_w=1, out_c=params.inputs)
    l.output = np.zeros((params.batch, params.inputs), np.float32)
    l.delta = np.zeros_like(l.output)
    l.forward = lambda l, net: np.multiply(net.input, 2, out=l.output)
    l.backward = lambda l, net: None
    return l
""")
    cfg = tmp_path / "p.cfg"
    cfg.write_text("[net]\ninputs=4\n\n[cli_test_twice]\n")
    result = run_process("-m", "minidark", "cfg", "summary", cfg, "--plugin", plugin)
    assert result.returncode == 0, result.stderr
    assert "cli_test_twice" in result.stdout
    result = run_process("-m", "minidark", "cfg", "summary", cfg)
    assert result.returncode == 2 and "cli_test_twice" in one_line(result.stderr)


# --------------------------------------------------------------------- train.py
def test_train_py_forms(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "run_train", lambda args: calls.append(args) or 0)
    monkeypatch.chdir(tmp_path)  # defaults come from the project
    assert cli.train_main([]) == 0
    default = (
        "mnist_lenet.cfg"
        if os.path.exists(os.path.join(ROOT, "cfg", "mnist_lenet.cfg"))
        else "mnist_mlp.cfg"
    )
    assert calls[-1].cfg == os.path.join(ROOT, "cfg", default)
    assert calls[-1].data == os.path.join(ROOT, "cfg", "mnist.data")
    assert calls[-1].weights is None
    assert cli.train_main(["my.cfg", "--seed", "4"]) == 0
    assert (calls[-1].cfg, calls[-1].seed) == ("my.cfg", 4)
    assert calls[-1].data == os.path.join(ROOT, "cfg", "mnist.data")
    assert cli.train_main(["d.data", "n.cfg", "w.weights", "--clear", "--verbose"]) == 0
    args = calls[-1]
    assert (args.data, args.cfg, args.weights, args.clear, args.verbose) == (
        "d.data",
        "n.cfg",
        "w.weights",
        True,
        True,
    )


@pytest.mark.mnist
def test_train_py_runs_and_rejects_extra_files(tmp_path):
    data, cfg = write_data(str(tmp_path)), write_cfg(str(tmp_path), max_batches=5)
    result = run_process(os.path.join(ROOT, "train.py"), data, cfg, "--no-progress", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "mlp: test accuracy top-1" in result.stdout
    result = run_process(os.path.join(ROOT, "train.py"), "a", "b", "c", "d")
    assert result.returncode == 2
    assert "expected CFG or DATA CFG [WEIGHTS]" in one_line(result.stderr)


@pytest.mark.mnist
def test_ctrl_c_saves_a_backup_and_exits_cleanly(tmp_path):
    data = write_data(str(tmp_path))
    cfg = write_cfg(str(tmp_path), max_batches=1000000, backup_every=1000000)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minidark",
            "classifier",
            "train",
            data,
            cfg,
            "--no-progress",
            "--seed",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "backup" / "mlp.log"
    try:
        # wait on the process itself: one that already exited fails at once
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and log.read_text().count("\n") > 20:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited with {proc.returncode} before the interrupt:\n{err}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave a 1,000,000-iteration run behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"interrupted at iteration \d+; saved .*mlp.backup", out)
    backup = tmp_path / "backup" / "mlp.backup"
    assert backup.exists() and (tmp_path / "backup" / "mlp.backup.state.npz").exists()
    import minidark

    net = minidark.load_network(cfg)
    assert minidark.load_weights(net, str(backup)) >= 20 * 64
