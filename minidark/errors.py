"""Errors a user can act on. Every message names where the problem is."""


class MinidarkError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


def printable(text):
    """``text`` with control and other invisible characters escaped (``\\x1b``,
    ``\\u202e``), so a hostile cfg or path cannot rewrite the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in str(text))


class ConfigError(MinidarkError):
    """A cfg/YAML problem, located by file, line, section and key.

    The message is printable: control characters from the cfg or its path
    are escaped."""

    def __init__(self, message, file=None, line=None, section=None, key=None):
        self.file, self.line, self.section, self.key = file, line, section, key
        where = []
        if file is not None:
            where.append(f"{file}:{line}" if line is not None else str(file))
        elif line is not None:
            where.append(f"line {line}")
        if section is not None:
            where.append(f"[{section}]")
        if key is not None:
            where.append(f"key '{key}'")
        self.where = printable(" ".join(where))
        self.message = printable(message)
        super().__init__(f"{self.where}: {self.message}" if where else self.message)


class WeightsError(MinidarkError):
    """A .weights file that is truncated or does not fit the network."""


class DataError(MinidarkError):
    """Missing or malformed data (MNIST files, image lists, .data files)."""


class LayerNameClash(MinidarkError, ValueError):
    """A section name registered twice (by a built-in, a plugin or an entry point)."""
