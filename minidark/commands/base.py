"""What every verb module shares: the command table, one-line usage errors,
argument types. A verb family (darknet's ``examples/*.c``) is one module in
this package that calls :func:`add_command` for each of its verbs;
``minidark/cli.py`` imports the modules and builds the parser.
"""

import argparse
import re
import struct

from ..errors import printable

# exit statuses (documented in the CLI's --help and the README)
SUCCESS, CHECK_FAILED, USER_ERROR, INTERRUPTED, PIPE_CLOSED = 0, 1, 2, 130, 141


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors instead of usage + message + exit."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class Command:
    def __init__(self, words, help, add_arguments, run):
        self.words = tuple(words.split()) if isinstance(words, str) else tuple(words)
        self.help, self.add_arguments, self.run = help, add_arguments, run


COMMANDS = []


def add_command(words, help, add_arguments, run):
    """Register a subcommand: ``words`` like "gradcheck" or "classifier train";
    ``add_arguments(parser)`` declares its arguments; ``run(args)`` returns
    the exit status (None = 0)."""
    COMMANDS.append(Command(words, help, add_arguments, run))


def load_plugins(specs):
    """Load layer plugins (files, modules, installed entry points) before running."""
    from ..plugins import load_plugins as load

    load(list(specs or []))


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------
# Which kind of file is this? (arguments given in the wrong order)
# ---------------------------------------------------------------------------
KIND_NAMES = {
    "data": "a .data file",
    "cfg": "a network cfg",
    "weights": "a weights file",
    "image": "an image",
    "binary": "a binary file",
}
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\0", b"MM\0*", b"RIFF")
DATA_KEY = re.compile(
    r"^\s*(classes|train|valid|labels|names|backup|top|test|tree|eval|"
    r"results|map|gpus)\s*[=:]",
    re.M,
)


def file_kind(path):
    """'cfg', 'data', 'weights', 'image', 'binary' or None (unknown, or unreadable:
    the loader then says why), from the first 4 KiB of the file."""
    from ..files import open_regular

    try:
        handle, _ = open_regular(path, "file")
        with handle:
            head = handle.read(4096)
    except Exception:
        return None
    if head.startswith(IMAGE_MAGIC):
        return "image"
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = (
            head[: exc.start].decode("utf-8-sig", "ignore") if exc.start > len(head) - 4 else None
        )
    if text is None or "\0" in text:
        if len(head) >= 16 and all(0 <= v < 1 << 16 for v in struct.unpack_from("<iii", head)):
            return "weights"
        return "binary"
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and line[0] not in "#;"]
    if not lines:
        return None
    if lines[0].startswith("[") or lines[0].startswith("- "):  # [net] or YAML's "- type: net"
        return "cfg"
    if DATA_KEY.search(text):
        return "data"
    return None


def check_file_kinds(usage, arguments):
    """Raise a UsageError when files are given in the wrong places.

    ``arguments``: ``[(role, path, kind)]`` in command-line order, e.g.
    ``("CFG", "cfg/mnist.data", "cfg")``; a path of unknown kind passes (its
    reader reports any problem). ``usage`` is the command's synopsis.
    """
    found = [(role, path, want, file_kind(path)) for role, path, want in arguments if path]
    wrong = [
        (role, path, want, kind)
        for role, path, want, kind in found
        if kind not in (None, "binary", want)
    ]  # a binary file: its reader says more
    if not wrong:
        return
    kinds = {role: kind for role, _, _, kind in found}
    paths = {role: printable(path) for role, path, _, _ in found}
    if kinds.get("DATA") == "cfg" and kinds.get("CFG") == "data":
        problem = (
            f"DATA and CFG are swapped: {paths['CFG']} is a .data file and "
            f"{paths['DATA']} a network cfg"
        )
    else:
        problem = "; ".join(
            f"{printable(path)} is given as {role} but is {KIND_NAMES[kind]}"
            for role, path, _, kind in wrong
        )
    words = usage.split()
    prog = " ".join(words[: next((i for i, w in enumerate(words) if not w.islower()), 1)])
    hint = ""
    if kinds.get("DATA") == "cfg" and kinds.get("CFG") == "weights":
        hint = (
            f"; to start from weights, name the .data file first: "
            f"{prog} DATA {paths['DATA']} {paths['CFG']}"
        )
    raise UsageError(f"{prog}: {problem} (usage: {usage}){hint}")
