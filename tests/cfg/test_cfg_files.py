"""cfg files: a BOM is read, a doubled [net] is named, files that are not
plain text of a sane size are refused before reading, and control
characters from a cfg or its path never reach the terminal raw."""

import os
import threading
import warnings

import pytest

import minidark
from minidark.cfg import read_sections
from minidark.cfg.grammar import MAX_CFG_BYTES
from minidark.errors import ConfigError, printable

MLP = "[net]\ninputs=4\n[connected]\noutput=3\n[softmax]\n"


def write(tmp_path, data, name="net.cfg"):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def test_utf8_bom_is_skipped(tmp_path):
    for name in ("bom.cfg", "bom.yaml"):
        text = MLP if name.endswith(".cfg") else "- type: net\n  inputs: 4\n- type: softmax\n"
        net = minidark.load_network(write(tmp_path, b"\xef\xbb\xbf" + text.encode(), name))
        assert net.inputs == 4


def test_crlf_and_cr_line_endings(tmp_path):
    assert minidark.load_network(write(tmp_path, MLP.replace("\n", "\r\n"))).inputs == 4
    sections = read_sections(write(tmp_path, MLP.replace("\n", "\r"), "cr.cfg"))
    assert [s.type for s in sections] == ["net", "connected", "softmax"]


def test_doubled_net_is_named_as_such(tmp_path):
    path = write(tmp_path, "[net]\n[net]\ninputs=4\n[softmax]\n")
    with pytest.raises(ConfigError, match=r"a second \[net\] \(the first is at line 1\)") as info:
        minidark.load_network(path)
    assert info.value.line == 2


def test_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        minidark.load_network(str(tmp_path))


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "pipe.cfg")
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            minidark.load_network(fifo)
        except ConfigError as error:
            result["error"] = str(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in result["error"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_is_refused():
    with pytest.raises(ConfigError, match="not a regular file"):
        minidark.load_network("/dev/zero")


def test_huge_file_is_refused_by_size(tmp_path):
    path = tmp_path / "huge.cfg"
    with open(path, "wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_CFG_BYTES + 1)
    with pytest.raises(ConfigError, match="bytes; at most"):
        minidark.load_network(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read cfg file: No such file"):
        minidark.load_network(str(tmp_path / "nope.cfg"))


@pytest.mark.parametrize(
    "text",
    [
        "[net]\ninputs=4\n[soft\x1b[31mmax]\n",  # a section name
        "[net]\ninputs=4\nbat\x1bch=2\n[softmax]\ngroups=\x07\n",  # a key and a value
        "[net]\ninputs=4\n[softmax]\ngroups=3\u202e\n",  # right-to-left override
    ],
)
def test_control_characters_are_escaped_in_messages(tmp_path, text):
    path = write(tmp_path, text, "a\x1b]0;title\x07.cfg")
    with pytest.raises(ConfigError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minidark.load_network(path)
    message = str(info.value)
    assert message.isprintable(), repr(message)
    assert "\\x1b" in message  # from the path, visibly


def test_printable():
    assert printable("a\tb\x1b[0m\u202ec") == "a\\tb\\x1b[0m\\u202ec"
    assert printable("caf\u00e9 \u0661") == "caf\u00e9 \u0661"  # printable non-ASCII stays


def test_too_many_sections_or_aliased_options_are_refused(tmp_path, monkeypatch):
    from minidark.cfg import grammar

    monkeypatch.setattr(grammar, "MAX_SECTIONS", 100)
    monkeypatch.setattr(grammar, "MAX_OPTIONS", 10_000)
    path = write(tmp_path, "[net]\ninputs=4\n" + "[logistic]\n" * 100)
    with pytest.raises(ConfigError, match="more than 100 sections"):
        read_sections(path)
    # one mapping of 100 options, aliased far more often than the file's size suggests
    keys = "\n".join(f"  k{i}: 1" for i in range(100))
    text = f"- &a\n  type: logistic\n{keys}\n" + "- *a\n" * 99
    with pytest.raises(ConfigError, match="more than 10,000 options"):
        read_sections(write(tmp_path, text, "aliases.yaml"))
