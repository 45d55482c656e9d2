"""Errors a user can act on. Every message names where the problem is."""


class MinidarkError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(MinidarkError):
    """A cfg/YAML problem, located by file, line, section and key."""

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
        self.message = message
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class WeightsError(MinidarkError):
    """A .weights file that is truncated or does not fit the network."""


class DataError(MinidarkError):
    """Missing or malformed data (MNIST files, image lists, .data files)."""


class LayerNameClash(MinidarkError, ValueError):
    """A section name registered twice (by a built-in, a plugin or an entry point)."""
