"""cfg / YAML text -> [Section]: darknet's grammar and the typed, range-checked readers.

Grammar (darknet's ``read_cfg``): ``[type]`` opens a section; ``key=value``
lines belong to the last section; lines starting with ``#`` or ``;`` are
comments; all whitespace (spaces, tabs, and -- unlike darknet -- ``\\r``) is
removed anywhere in a line; the first ``=`` splits key from value; the first
duplicate of a key wins. A UTF-8 byte-order mark is skipped.

Deliberate deviations from darknet (which segfaults, aborts or guesses): a
line without ``=``, an empty key or value, an option before any section and
a non-numeric number are a ``ConfigError`` naming file, line, section and
key. Numbers are checked where darknet would silently wrap or lose them: an
integer must fit darknet's ``int`` (|n| < 2^31), a float must be finite and
within float32's range (darknet reads ``float``), a boolean is 0 or 1. A
reader may add a range (``min``/``max`` inclusive, ``above``/``below``
exclusive); a value outside it is an error quoting the value and the range.

Each Section records every key its readers asked for (found or not); after
``make`` these are the keys the section type knows, so an unused key one
typo away from one of them is an error with "did you mean" (an unused key
farther away stays a warning: cfgs from other darknet forks carry extra keys).

The YAML form is a list of mappings, one per section, with the section name
under ``type``; list values may be YAML lists::

    - type: net
      batch: 128
      steps: [100, 200]
    - type: connected
      output: 10
    - cost:            # nested form, for a section with its own `type` key
        type: masked

Writing YAML keeps every option in order, duplicates included, so
cfg -> YAML -> cfg gives the same sections and the same first-wins values.
"""

import itertools
import math
import os
import stat
import warnings

import numpy as np

from ..errors import ConfigError, printable

REQUIRED = object()  # default marking a key without a darknet default
INT_LIMIT = 2**31  # darknet reads integers into a C int: |n| < 2^31
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_CFG_BYTES = 16 << 20  # darknet's largest stock cfgs are ~20 KB
SHOWN_VALUE = 40  # characters of a value quoted in a warning
MAX_SECTIONS = 50_000  # darknet's largest stock cfgs have a few hundred; each costs a make
MAX_OPTIONS = 1_000_000  # YAML aliases can repeat a mapping without growing the file


class ConfigWarning(UserWarning):
    """darknet's "Unused field" message, with line numbers; also keys read but not implemented."""


class Option:
    __slots__ = ("key", "line", "used", "value")

    def __init__(self, key, value, line):
        self.key, self.value, self.line, self.used = key, value, line, False


class Section:
    """One ``[type]`` block with typed, range-checked, usage-tracked option readers.

    A make function reads its options through these readers; whatever it
    does not read is reported as unused, darknet's "Unused field".
    ``queried`` holds every key a reader asked for: the keys this section
    type knows.
    """

    def __init__(self, type, line=None, file=None, options=None):
        self.type, self.line, self.file = type, line, file
        self.options = list(options or [])
        self.queried = set()

    # -- lookup ------------------------------------------------------------
    def _find(self, key):
        self.queried.add(key)
        for opt in self.options:
            if opt.key == key:
                opt.used = True
                return opt
        return None

    def has(self, key):
        self.queried.add(key)
        return any(opt.key == key for opt in self.options)

    def error(self, message, key=None):
        """A ConfigError located at ``key`` (or at the section header)."""
        opt = next((o for o in self.options if o.key == key), None) if key else None
        line = opt.line if opt is not None else self.line
        return ConfigError(message, file=self.file, line=line, section=self.type, key=key)

    def _read(self, key, default, convert, kind):
        opt = self._find(key)
        if opt is None:
            if default is REQUIRED:
                raise self.error(f"required key '{key}' is missing", key)
            return default
        try:
            return convert(opt.value)
        except (ValueError, OverflowError) as exc:
            detail = f": {exc.args[0]}" if isinstance(exc, _Reason) else ""
            raise ConfigError(
                f"expected {kind}, got '{_cut(opt.value)}'{detail}",
                file=self.file,
                line=opt.line,
                section=self.type,
                key=key,
            ) from None

    def _ranged(self, key, value, min=None, max=None, above=None, below=None, note=""):
        """``value`` if it lies in the range, else a ConfigError quoting both."""
        for item in value if isinstance(value, list) else [value]:
            problem = _out_of_range(item, min, max, above, below)
            if problem:
                raise self.error(f"{key} {problem}{note}, got {_cut(str(item))}", key)
        return value

    # -- typed readers -------------------------------------------------------
    def int(self, key, default=REQUIRED, *, min=None, max=None, note=""):
        """An integer within darknet's int range (and ``min`` <= n <= ``max``);
        ``note`` follows the range in an error (e.g. " (0: never)")."""
        value = self._read(key, default, _to_int, "an integer")
        return value if value is default else self._ranged(key, value, min, max, note=note)

    def float(self, key, default=REQUIRED, *, min=None, max=None, above=None, below=None):
        """A finite float32-representable number within the given range.

        With ``above=0`` the value must also stay nonzero in float32 (1e-50 does not).
        """
        value = self._read(key, default, _to_float, "a number")
        if value is default:
            return value
        self._ranged(key, value, min, max, above, below)
        if above == 0 and np.float32(value) == 0:
            raise self.error(f"{key} must be > 0, got {value!r}, which is 0 in float32", key)
        return value

    def str(self, key, default=REQUIRED):
        return self._read(key, default, str, "a string")

    def bool(self, key, default=False):
        """0 or 1 (darknet reads an int and tests it; only 0 and 1 are meant)."""
        return bool(self._read(key, int(default), _to_bool, "0 or 1"))

    def ints(self, key, default=REQUIRED, *, min=None, max=None, increasing=False):
        """A comma-separated list of integers; ``increasing``: each >= the one before."""
        value = self._read(
            key,
            default,
            lambda v: [_to_int(x) for x in _split(v)],
            "a comma-separated list of integers",
        )
        if value is default:
            return value
        self._ranged(key, value, min, max)
        if increasing:
            for i, (a, b) in enumerate(itertools.pairwise(value)):
                if b < a:
                    raise self.error(
                        f"{key} must not decrease: entry {i + 2} ({b}) is "
                        f"below entry {i + 1} ({a})",
                        key,
                    )
        return value

    def floats(self, key, default=REQUIRED, *, min=None, max=None, above=None, below=None):
        value = self._read(
            key,
            default,
            lambda v: [_to_float(x) for x in _split(v)],
            "a comma-separated list of numbers",
        )
        return value if value is default else self._ranged(key, value, min, max, above, below)

    def activation(self, key="activation", default="linear"):
        from ..kernels.activations import ACTIVATIONS

        name = self.str(key, default)
        if name not in ACTIVATIONS:
            raise self.error(
                f"unknown activation '{_cut(name)}'; known: {', '.join(sorted(ACTIVATIONS))}", key
            )
        return name

    def unused(self):
        return [opt for opt in self.options if not opt.used]

    def __repr__(self):
        return f"<Section [{self.type}] line {self.line}: {len(self.options)} options>"


class _Reason(ValueError):
    """A conversion failure whose message is worth showing after the value."""


def _out_of_range(value, low, high, above, below):
    if low is not None and value < low:
        return f"must be >= {low}"
    if high is not None and value > high:
        return f"must be <= {high}"
    if above is not None and not value > above:
        return f"must be > {above}"
    if below is not None and not value < below:
        return f"must be < {below}"
    return None


def _cut(text, limit=SHOWN_VALUE):
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _split(value):
    items = value.split(",")
    if any(item == "" for item in items):
        raise ValueError(value)
    return items


def _plain(value):
    # Python's int()/float() also take '1_000' and non-ASCII digits; darknet's
    # atoi/atof would read those differently, so they are not numbers here.
    if not value.isascii() or "_" in value:
        raise ValueError(value)
    return value


def _to_int(value):
    digits = value.lstrip("+-").lstrip("0")
    if len(digits) > 12 and digits.isdigit():  # out of range; int() of 10^6 digits is slow
        raise _Reason("beyond darknet's int range (-2^31 <= n < 2^31)")
    result = int(_plain(value), 10)
    if not -INT_LIMIT <= result < INT_LIMIT:
        raise _Reason("beyond darknet's int range (-2^31 <= n < 2^31)")
    return result


def _to_bool(value):
    result = _to_int(value)
    if result not in (0, 1):
        raise ValueError(value)
    return result


def _to_float(value):
    result = float(_plain(value))
    if not math.isfinite(result):  # NaN and inf are never meaningful cfg values
        raise _Reason("the value must be finite")
    if abs(result) > FLOAT32_MAX:
        raise _Reason("beyond float32's range (darknet reads floats as float)")
    return result


# --------------------------------------------------------------------------
# Unknown, misspelt and unimplemented keys
# --------------------------------------------------------------------------
# Keys minidark reads (as darknet does) but does not act on, per section type,
# with what happens instead. Given a nonzero value, each is a warning (an
# error with strict). Remove a key here when it is implemented.
NOT_IMPLEMENTED = {
    "net": {
        "center": "training crops are random, not centred",
        "clip": "gradients are not clipped",
    },
    "convolutional": {
        "binary": "weights stay full precision",
        "xnor": "inputs and weights stay full precision",
    },
}


def edit_distance(a, b):
    """Optimal string alignment distance (a transposition counts as one edit)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def near_miss(key, known):
    """The known key ``key`` is most likely a typo of, or None.

    One edit for keys of 3+ characters, two for 10+: close enough that the
    unknown key is almost surely meant as the known one.
    """
    if len(key) < 3:
        return None
    allowed = 2 if len(key) >= 10 else 1
    best = min(sorted(known), key=lambda k: edit_distance(key, k), default=None)
    if best is not None and edit_distance(key, best) <= allowed:
        return best
    return None


def check_keys(section, strict, kind=None, known=()):
    """Misspelt keys (an error), unimplemented keys and unused keys (warnings,
    errors with strict) of a section whose make has run.

    ``kind`` is the section's canonical type (for an alias such as [conv]);
    ``known`` adds keys the type knows beyond those read this time (the
    [net] keys of other policies).
    """
    kind = kind or section.type
    known = section.queried | set(known)
    for opt in section.options:
        reason = NOT_IMPLEMENTED.get(kind, {}).get(opt.key)
        if reason and not _is_zero(opt.value):
            opt.used = True
            message = f"'{opt.key} = {_cut(opt.value)}' is read but not implemented: {reason}"
            if strict:
                raise section.error(message, opt.key)
            warnings.warn(
                printable(f"{_where(section, opt)}: {message}"), ConfigWarning, stacklevel=3
            )
    unused = section.unused()
    for opt in unused:
        if opt.key in known:
            continue  # a duplicate, or a key this configuration does not read
        meant = near_miss(opt.key, known)
        if meant is not None:
            raise section.error(f"unknown key '{_cut(opt.key)}' (did you mean '{meant}'?)", opt.key)
    if not unused:
        return
    fields = ", ".join(f"'{_cut(o.key)} = {_cut(o.value)}' (line {o.line})" for o in unused)
    if strict:
        first = unused[0]
        raise section.error(f"unused field(s) {fields}", first.key)
    warnings.warn(
        printable(f"{_where(section)}: unused field(s) {fields}"), ConfigWarning, stacklevel=3
    )


def _is_zero(value):
    try:
        return float(value) == 0
    except ValueError:
        return False


def _where(section, opt=None):
    line = opt.line if opt is not None else section.line
    return ConfigError(
        "",
        file=section.file,
        line=line,
        section=section.type,
        key=opt.key if opt is not None else None,
    ).where


# --------------------------------------------------------------------------
# Reading and writing sections
# --------------------------------------------------------------------------
def read_cfg_text(text, file="<string>"):
    """Parse darknet cfg text into a list of Sections."""
    sections = []
    text = text.removeprefix("\ufeff")
    # split on newlines only (files are read with universal newlines): str.splitlines
    # would also split at form feeds, U+0085, U+2028..., shifting line numbers and
    # cutting comments in two
    for number, raw in enumerate(text.split("\n"), start=1):
        line = "".join(raw.split())  # darknet's strip(): whitespace goes everywhere
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(
                    f"malformed section header '{_cut(raw.strip())}'", file=file, line=number
                )
            if len(sections) == MAX_SECTIONS:
                raise ConfigError(f"more than {MAX_SECTIONS:,} sections", file=file, line=number)
            sections.append(Section(line[1:-1], line=number, file=file))
            continue
        key, sep, value = line.partition("=")
        current = sections[-1].type if sections else None
        if not sections:
            raise ConfigError(
                f"option '{_cut(raw.strip())}' appears before any [section]",
                file=file,
                line=number,
                key=key or None,
            )
        if not sep:
            raise ConfigError(
                f"malformed line '{_cut(raw.strip())}': expected key=value",
                file=file,
                line=number,
                section=current,
            )
        if not key:
            raise ConfigError(
                f"malformed line '{_cut(raw.strip())}': empty key",
                file=file,
                line=number,
                section=current,
            )
        if not value:
            raise ConfigError("empty value", file=file, line=number, section=current, key=key)
        sections[-1].options.append(Option(key, value, number))
    return sections


def read_yaml_text(text, file="<string>"):
    """Parse the YAML form (a list of mappings with ``type``) into Sections."""
    import yaml

    try:
        root = yaml.compose(text.removeprefix("\ufeff"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}",
            file=file,
            line=mark.line + 1 if mark else None,
        ) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise ConfigError("expected a list of sections", file=file, line=root.start_mark.line + 1)
    sections, count = [], 0
    for node in root.value:
        line = node.start_mark.line + 1
        if len(sections) == MAX_SECTIONS:
            raise ConfigError(f"more than {MAX_SECTIONS:,} sections", file=file, line=line)
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError("each section must be a mapping with a 'type'", file=file, line=line)
        body = node.value[0][1] if len(node.value) == 1 else None
        nested = isinstance(body, yaml.MappingNode) or (
            isinstance(body, yaml.ScalarNode) and body.tag.endswith(":null")
        )
        if nested:  # - cost: {type: sse}: the key is the section, `type` an option
            section = _yaml_scalar(node.value[0][0], file, line, None)
            pairs = body.value if isinstance(body, yaml.MappingNode) else []
        else:
            section, pairs = None, node.value
        options = []
        count += len(pairs)
        if count > MAX_OPTIONS:
            raise ConfigError(
                f"more than {MAX_OPTIONS:,} options (YAML aliases?)", file=file, line=line
            )
        for key_node, value_node in pairs:
            key_line = key_node.start_mark.line + 1
            key = _yaml_scalar(key_node, file, key_line, None)
            value = _yaml_value(value_node, file, key_line, key)
            if key == "type" and not nested and section is None:
                section = value
            else:
                options.append(Option(key, value, key_line))
        if section is None:
            raise ConfigError("section has no 'type'", file=file, line=line)
        sections.append(Section(section, line=line, file=file, options=options))
    return sections


def _yaml_scalar(node, file, line, key):
    import yaml

    if not isinstance(node, yaml.ScalarNode) or node.value == "":
        raise ConfigError("expected a plain value", file=file, line=line, key=key)
    value = node.value
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "bool":
        return "1" if node.value.lower() in ("true", "yes", "on") else "0"
    if tag == "null":
        raise ConfigError("empty value", file=file, line=line, key=key)
    return "".join(value.split())


def _yaml_value(node, file, line, key):
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return ",".join(_yaml_scalar(item, file, line, key) for item in node.value)
    return _yaml_scalar(node, file, line, key)


def read_text_file(path, what="cfg file", limit=MAX_CFG_BYTES):
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    Refused by type and size before reading: a directory, a FIFO, a device
    (``/dev/zero``) or a huge file would hang or exhaust memory. The file is
    opened without blocking (a FIFO with no writer) and checked on the open
    descriptor, so it cannot be swapped in between.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=path) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} is a directory", file=path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} is not a regular file (a FIFO, device or socket)", file=path)
        if info.st_size > limit:
            raise ConfigError(
                f"{what} is {info.st_size:,} bytes; at most {limit:,} are read", file=path
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=path) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} grew beyond {limit:,} bytes while being read", file=path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text", file=path) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines


def read_sections(path):
    """Sections from a ``.cfg`` or ``.yaml``/``.yml`` file."""
    path = os.fspath(path)
    text = read_text_file(path)
    if path.endswith((".yaml", ".yml")):
        return read_yaml_text(text, file=path)
    return read_cfg_text(text, file=path)


def sections_to_cfg(sections):
    blocks = []
    for section in sections:
        lines = [f"[{section.type}]"] + [f"{o.key}={o.value}" for o in section.options]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _yaml_item(value):
    # Emit numbers as numbers only where they read back as the same text.
    try:
        if str(int(value, 10)) == value:
            return int(value)
    except ValueError:
        pass
    try:
        if repr(float(value)) == value:
            return float(value)
    except ValueError:
        pass
    return value


class _Pairs(list):
    """A YAML mapping as (key, value) pairs: keeps order and duplicate keys."""


def _yaml_option(value):
    items = value.split(",")
    if len(items) > 1 and all(items):  # an empty item ('100,') stays one string
        return [_yaml_item(i) for i in items]
    return _yaml_item(value)


def sections_to_yaml(sections):
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(
        _Pairs, lambda dumper, pairs: dumper.represent_mapping("tag:yaml.org,2002:map", pairs)
    )
    docs = []
    for section in sections:
        options = _Pairs((opt.key, _yaml_option(opt.value)) for opt in section.options)
        if any(opt.key == "type" for opt in section.options):  # [cost] type=sse
            docs.append(_Pairs([(section.type, options)]))
        else:
            docs.append(_Pairs([("type", section.type)] + options))
    return yaml.dump(
        docs, Dumper=Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True
    )


def convert_cfg(source, destination):
    """Convert between .cfg and .yaml by the destination's extension."""
    sections = read_sections(source)
    destination = os.fspath(destination)
    text = (
        sections_to_yaml(sections)
        if destination.endswith((".yaml", ".yml"))
        else sections_to_cfg(sections)
    )
    try:
        with open(destination, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", file=destination) from None
