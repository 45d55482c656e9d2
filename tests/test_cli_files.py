"""The command line's contract: exit statuses (0 ok, 1 a failed check, 2 a user error,
130 interrupted, 141 closed pipe) documented in --help; files given in the wrong
places (DATA and CFG swapped, a .data file as CFG, weights as train.py's second
argument) named by kind; --plugin defined once and marked as running code;
--verbose lists the plugins that ran; bench without its extra; escaped messages."""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minidark
from minidark import cli, plugins
from minidark.cfg import convert_cfg
from minidark.commands.base import file_kind

ROOT = Path(__file__).resolve().parent.parent
MLP_CFG = str(ROOT / "cfg" / "mnist_mlp.cfg")
DATA = str(ROOT / "cfg" / "mnist.data")
DATA_YAML = str(ROOT / "cfg" / "mnist.data.yaml")

pytestmark = pytest.mark.usefixtures("isolated_registry")  # conftest.py: --plugin leaves nothing


def run_main(*argv, main=cli.main):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "mlp.weights"
    minidark.save_weights(minidark.load_network(MLP_CFG), str(path))
    return str(path)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "digit3.png"
    Image.new("L", (28, 28)).save(path)
    return str(path)


# ------------------------------------------------------------ which file is which
def test_file_kind_by_content(tmp_path, weights, image):
    yaml_cfg = tmp_path / "net.yaml"
    convert_cfg(MLP_CFG, str(yaml_cfg))
    renamed = tmp_path / "really_a_cfg.data"  # content beats the extension
    renamed.write_text("# comment\n\n[net]\ninputs=4\n")
    bom = tmp_path / "bom.data"
    bom.write_bytes(b"\xef\xbb\xbfclasses=2\ntrain=x.list\n")
    assert [
        file_kind(p)
        for p in (MLP_CFG, str(yaml_cfg), str(renamed), DATA, DATA_YAML, str(bom), weights, image)
    ] == ["cfg", "cfg", "cfg", "data", "data", "data", "weights", "image"]
    (tmp_path / "junk").write_bytes(b"\xff\xfe\x00\x01" * 8)
    (tmp_path / "text.txt").write_text("hello\n")
    assert [file_kind(str(tmp_path / n)) for n in ("junk", "text.txt", "missing")] == [
        "binary",
        None,
        None,
    ]
    os.mkfifo(tmp_path / "fifo")  # never blocks
    assert file_kind(str(tmp_path / "fifo")) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ("classifier", "train", MLP_CFG, DATA),
            f"minidark classifier train: DATA and CFG are swapped: {DATA} is a .data file and "
            f"{MLP_CFG} a network cfg (usage: minidark classifier train DATA CFG [WEIGHTS])",
        ),
        (
            ("classifier", "train", DATA, DATA),
            f"minidark classifier train: {DATA} is given as CFG but is a .data file",
        ),
        (
            ("classifier", "train", DATA, DATA_YAML),
            f"{DATA_YAML} is given as CFG but is a .data file",
        ),
        (
            ("classifier", "valid", DATA, MLP_CFG, MLP_CFG),
            f"minidark classifier valid: {MLP_CFG} is given as WEIGHTS but is a network cfg "
            f"(usage: minidark classifier valid DATA CFG WEIGHTS)",
        ),
        (
            ("classifier", "predict", DATA, MLP_CFG, "{weights}", DATA),
            f"{DATA} is given as IMAGE but is a .data file",
        ),
        (
            ("cfg", "summary", DATA),
            f"minidark cfg summary: {DATA} is given as CFG but is a .data file",
        ),
        (("gradcheck", DATA), f"minidark gradcheck: {DATA} is given as CFG but is a .data file"),
    ],
)
def test_files_in_the_wrong_place_are_named_by_kind(argv, message, weights):
    status, _, err = run_main(*[a.format(weights=weights) for a in argv])
    assert status == 2
    assert message in one_line(err)


def test_train_py_weights_as_second_argument(weights):
    status, _, err = run_main(MLP_CFG, weights, main=cli.train_main)
    assert status == 2
    line = one_line(err)
    assert f"{MLP_CFG} is given as DATA but is a network cfg" in line
    assert f"{weights} is given as CFG but is a weights file" in line
    assert f"name the .data file first: train.py DATA {MLP_CFG} {weights}" in line


def test_right_kinds_and_unknown_files_pass_the_check(monkeypatch, weights, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "run_train", lambda args: calls.append(args) or 0)
    assert cli.train_main([DATA, MLP_CFG, weights]) == 0
    other = tmp_path / "notes.txt"  # unknown: its reader decides
    other.write_text("hello\n")
    assert cli.train_main([str(other), MLP_CFG]) == 0 and len(calls) == 2


# ------------------------------------------------------------------ exit statuses
def test_help_documents_exit_statuses_and_trusted_plugins():
    for argv in ((), ("classifier", "train"), ("gradcheck",), ("cfg", "summary")):
        status, out, _ = run_main(*argv, "--help")
        assert status == 0
        text = " ".join(out.split())
        assert "exit status:" in text
        for code, meaning in (
            ("0", "success"),
            ("1", "a check ran and failed"),
            ("2", "user error"),
            ("130", "interrupted"),
        ):
            assert f"{code} {meaning}" in text, (argv, code)
        if argv:
            assert "This RUNS its code" in text and "load trusted code only" in text
    status, out, _ = run_main("--help", main=cli.train_main)
    assert status == 0 and "exit status:" in out and "--plugin" in out


def test_plugin_option_has_one_definition():
    """--plugin is added by plugins.add_plugin_argument only (cli, train.py, bench worker)."""
    import re

    option = re.compile(r"add_argument\(\s*['\"]--plugin['\"]")
    defining = [
        p for p in (ROOT / "minidark").rglob("*.py") if option.search(p.read_text(encoding="utf-8"))
    ]
    assert [p.relative_to(ROOT).as_posix() for p in defining] == ["minidark/plugins.py"]
    status, out, _ = run_main("bench", "--help")
    assert status == 0 and out.count("--plugin SPEC") == 2  # usage line + option


def test_user_error_is_2_and_failed_check_is_1(tmp_path):
    status, _, err = run_main("cfg", "summary", tmp_path / "none.cfg")
    assert status == 2 and one_line(err).startswith("minidark: error: ")
    status, _, err = run_main("classifier", "train", "--seed", "x", "a", "b")
    assert status == 2 and "invalid int" in one_line(err)
    prelu = ROOT / "examples"
    status, out, _ = run_main(
        "gradcheck",
        prelu / "prelu_mnist.cfg",
        "--plugin",
        prelu / "prelu_broken.py",
        "--layer",
        "1",
    )
    assert status == 1 and "FAIL" in out


def test_closed_output_pipe_is_141_without_a_traceback():
    code = (
        "import sys; from minidark import cli\n"
        "sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1, closefd=False)\n"
        "sys.exit(cli.main(['cfg', 'summary', 'cfg/mnist_lenet.cfg']))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        proc.stdout.close()  # the reader (| head) has gone
        err = proc.stderr.read().decode()
    assert proc.returncode == 141 and err == ""


def test_control_characters_are_escaped_in_messages(tmp_path):
    status, _, err = run_main("cfg", "summary", tmp_path / "evil\x1b]0;owned\x07.cfg")
    assert status == 2
    line = one_line(err)
    assert "\x1b" not in err and "\x07" not in err and "evil\\x1b]0;owned\\x07.cfg" in line


# ------------------------------------------------------------------ plugins
def test_verbose_lists_the_plugins_that_ran(tmp_path, monkeypatch):
    info = tmp_path / "shown_layers-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shown-layers\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[minidark.layers]\ntp_shown = tp_shown_module\n")
    (tmp_path / "tp_shown_module.py").write_text("VALUE = 1\n")
    plugin = tmp_path / "tp_file_plugin.py"
    plugin.write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.DISABLE_ENV)
    status, _, err = run_main(
        "classifier", "valid", tmp_path / "no.data", MLP_CFG, "w", "--plugin", plugin, "--verbose"
    )
    assert status == 2
    listed = [line for line in err.splitlines() if "plugins loaded" in line]
    assert len(listed) == 1, err
    assert "entry point 'tp_shown = tp_shown_module'" in listed[0]
    assert "distribution 'shown-layers 2.0'" in listed[0]
    assert f"plugin file {plugin}" in listed[0]
    monkeypatch.setattr(plugins, "_state", plugins._State())
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    status, _, err = run_main(
        "classifier", "valid", tmp_path / "no.data", MLP_CFG, "w", "--verbose"
    )
    assert "minidark: no plugins loaded" in err
    status, _, err = run_main("classifier", "valid", tmp_path / "no.data", MLP_CFG, "w")
    assert "plugins loaded" not in err  # only with --verbose


# ------------------------------------------------------------------ bench
def test_bench_without_its_extra_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "threadpoolctl" else real(name, *a),
    )
    for extra in ((), ("--no-torch",)):
        status, out, err = run_main("bench", MLP_CFG, *extra)
        assert status == 2
        assert "pip install -e '.[bench]'" in one_line(err) and out == ""


def test_status_lines_escape_control_characters(capsys):
    from minidark.commands.classifier import say

    say("net: from bell\x07.weights\x1b[2J: iteration 0")
    out = capsys.readouterr().out
    assert out == "net: from bell\\x07.weights\\x1b[2J: iteration 0\n"


def test_top_k_beyond_the_classes_is_refused(tmp_path, weights, image):
    from minidark.data.datafile import read_data_file
    from minidark.errors import DataError

    data = tmp_path / "x.data"
    data.write_text(f"classes=10\nnames={ROOT / 'data' / 'mnist.names'}\ntop=11\n")
    with pytest.raises(DataError, match=r"x.data:3: key 'top': top-11 of 10 classes"):
        read_data_file(str(data))
    for command in ("valid", "predict"):
        extra = [image] if command == "predict" else []
        status, _, err = run_main(
            "classifier", command, DATA, MLP_CFG, weights, *extra, "--top", "11"
        )
        assert status == 2
        assert "--top 11: the network" in one_line(err) and "has only 10 classes" in err


def test_fifos_as_convert_destination_or_plugin_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    status, _, err = run_main("cfg", "convert", MLP_CFG, fifo)  # would wait for a reader
    assert status == 2 and f"{fifo}: DST exists and is not a regular file" in one_line(err)
    status, _, err = run_main("cfg", "summary", MLP_CFG, "--plugin", fifo)
    assert status == 2 and f"plugin '{fifo}': not a regular file" in one_line(err)
    status, _, err = run_main("cfg", "summary", MLP_CFG, "--plugin", tmp_path / "none.py")
    assert status == 2 and "none.py': no such file" in one_line(err)


def test_names_with_control_characters_are_printed_escaped():
    import numpy as np

    from minidark.commands.classifier import confusion_table

    table = confusion_table(np.array([[3, 1], [0, 2]]), ["cat\x1b[2J", "dog"])
    assert "\x1b" not in table and "cat\\x1b[2J" in table


def test_convert_refuses_a_cfg_that_does_not_build(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\ninputs=4\n\n[connected]\noutput=" + "9" * 40 + "\n")
    status, _, err = run_main("cfg", "convert", bad, tmp_path / "out.yaml")
    assert status == 2 and "bad.cfg:5 [connected] key 'output'" in one_line(err)
    assert not (tmp_path / "out.yaml").exists()
    status, out, _ = run_main("cfg", "convert", bad, tmp_path / "out.yaml", "--no-check")
    assert "wrote" in out
    assert status == 0 and (tmp_path / "out.yaml").exists()


@pytest.mark.parametrize(
    "error, message",
    [
        (MemoryError(), "minidark: error: out of memory: the network or data is larger"),
        (
            PermissionError(13, "Permission denied", "/x/\x1bsecret"),
            "minidark: error: /x/\\x1bsecret: Permission denied",
        ),
    ],
)
def test_memory_and_file_errors_no_reader_caught_are_one_line(monkeypatch, error, message):
    command = next(c for c in cli.COMMANDS if c.words == ("cfg", "summary"))

    def fail(args):
        raise error

    monkeypatch.setattr(command, "run", fail)
    status, _, err = run_main("cfg", "summary", MLP_CFG)
    assert status == 2 and one_line(err).startswith(message)
