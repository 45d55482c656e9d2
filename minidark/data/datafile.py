"""darknet ``.data`` files (and their YAML form): what to train on and where to save.

darknet grammar (``read_data_cfg``): one ``key=value`` per line, ``#`` or
``;`` starts a comment line, blank lines are skipped, the first duplicate of
a key wins. Keys read by ``minidark classifier``::

    classes = 10                       number of classes (darknet default 2; minidark
                                       takes the names file's length when omitted)
    train   = data/mnist/train-images-idx3-ubyte.gz   or a text file of image paths
    valid   = data/mnist/t10k-images-idx3-ubyte.gz    (optional for training)
    labels  = data/mnist.names         one label per line; the class of an image in
    names   = data/mnist.names         a list is the label occurring in its path.
                                       ``names`` is what predict/valid print; each
                                       falls back to the other, as in darknet
    backup  = backup/                  where checkpoints, log, metrics and chart go
    top     = 2                        k of the top-k accuracy (darknet default 1)
    tree    = data/9k.tree             a hierarchy (darknet's tree file, for a [softmax]
                                       with tree=): training truth sets every ancestor
                                       of the label and masks the groups without one
                                       (darknet's fill_hierarchy); ``hierarchy`` is
                                       read as the same key

The YAML form (``.yaml``/``.yml``) is a mapping with the same keys.

Relative paths are resolved in this order, first existing wins: the current
directory (darknet's rule), the ``.data`` file's folder, that folder's
parent (darknet's layout: ``cfg/x.data`` naming ``data/...`` relative to
the project root). A path that exists nowhere resolves where its first
folder exists, in the same order (``data/mnist/...`` lands in the
project's ``data/`` when run from elsewhere: where a missing MNIST is
downloaded to), else against the current directory.

Deliberate deviations from darknet: only leading/trailing whitespace is
stripped (darknet removes every space, breaking paths with spaces); a line
without ``=``, a non-numeric ``classes``/``top``, or an empty names file is
an error naming file, line and key; unknown keys are warned about (errors
with ``strict``); ``backup`` defaults to ``backup/`` (darknet: ``/backup/``,
the file-system root). A names file may repeat an entry, as darknet's
``9k.names`` and ``imagenet.shortnames.list`` do (different classes with the
same printed name); an image path that matches a repeated *label* gets
its first entry (darknet's valid), said in one warning when the names are
read. Files are read through
:mod:`minidark.files` (a FIFO, a device, a directory or a huge file is
refused before reading).
"""

import os
import warnings

from ..errors import DataError, printable
from ..files import TEXT_LIMIT, read_text

KNOWN = (
    "classes",
    "tree",
    "hierarchy",
    "train",
    "valid",
    "labels",
    "names",
    "backup",
    "top",
    "eval",
    "results",
    "map",
)  # the last three: minidark detector valid/map
# darknet keys minidark does not use
IGNORED = ("test", "tag", "leaves", "gpus")


def data_error(message):
    """A DataError whose message has the control characters of values and paths escaped."""
    return DataError(printable(message))


class DataWarning(UserWarning):
    """A .data file key that minidark does not use."""


def where(file, line=None, key=None):
    """'file:line: key 'k'' prefix for a message."""
    text = f"{file}:{line}" if line is not None else str(file)
    return printable(f"{text}: key '{key}'" if key else text)


class DataConfig:
    """A parsed .data file. ``lines`` maps each key to its line number."""

    def __init__(self, path, values, lines):
        self.path = os.fspath(path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.values, self.lines = values, lines
        self.classes = self._int("classes", None, minimum=1)
        self.top = self._int("top", 1, minimum=1)
        self.train = self.resolve(values["train"]) if "train" in values else None
        self.valid = self.resolve(values["valid"]) if "valid" in values else None
        self.backup = self.resolve(values.get("backup", "backup/"))
        tree_key = "tree" if "tree" in values else ("hierarchy" if "hierarchy" in values else None)
        self.tree = self.resolve(values[tree_key]) if tree_key else None  # a tree file path
        # labels: the tokens matched in image paths; names: what is printed.
        label_key = "labels" if "labels" in values else ("names" if "names" in values else None)
        name_key = "names" if "names" in values else label_key
        self.labels_file = self.resolve(values[label_key]) if label_key else None
        self.names_file = self.resolve(values[name_key]) if name_key else None
        self.labels = read_names(self.labels_file, self._where(label_key)) if label_key else None
        self.names = (
            self.labels
            if name_key == label_key
            else read_names(self.names_file, self._where(name_key))
        )
        for key, entries in ((label_key, self.labels), (name_key, self.names)):
            if entries is None:
                continue
            if self.classes is None:
                self.classes = len(entries)
            elif len(entries) != self.classes:
                raise data_error(
                    f"{self._where(key)}: {values[key]} has {len(entries)} "
                    f"entries but classes={self.classes}"
                )
        if self.classes is not None and self.top > self.classes:
            raise data_error(
                f"{self._where('top')}: top-{self.top} of {self.classes} classes: top must be "
                f"at most classes"
            )

    def _where(self, key):
        return where(self.path, self.lines.get(key), key)

    def _int(self, key, default, minimum):
        if key not in self.values:
            return default
        text = self.values[key]
        try:
            value = int(text, 10)
        except ValueError:
            raise data_error(f"{self._where(key)}: expected an integer, got '{text}'") from None
        if value < minimum:
            raise data_error(f"{self._where(key)}: must be >= {minimum}, got {value}")
        return value

    def require(self, key):
        """The resolved path of ``train``/``valid``, or an error saying it is missing."""
        value = getattr(self, key)
        if value is None:
            raise data_error(
                f"{self.path}: key '{key}' is missing: add a line "
                f"'{key}=<list of image paths or MNIST IDX file>'"
            )
        return value

    def resolve(self, path):
        return resolve_path(path, self.folder)

    def __repr__(self):
        return f"<DataConfig {self.path}: classes={self.classes} train={self.train}>"


def resolve_path(path, folder=None):
    """Resolve a relative path: cwd, then ``folder``, then ``folder``'s parent.

    A path that exists nowhere goes where its first folder exists (so
    ``data/mnist/x.gz`` lands in the project's ``data/`` from anywhere), else
    against the current directory.
    """
    path = os.path.expanduser(os.fspath(path))
    if os.path.isabs(path):
        return path
    bases = [""] + ([folder, os.path.dirname(folder)] if folder else [])
    candidates = [os.path.join(base, path) if base else path for base in bases]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    top = path.replace(os.sep, "/").split("/")[0]
    if top != path and top not in ("", ".", ".."):
        for base, candidate in zip(bases, candidates, strict=True):
            if os.path.isdir(os.path.join(base, top) if base else top):
                return candidate
    return path


def read_stripped_lines(path, what, origin=None, limit=TEXT_LIMIT):
    """[(line number, stripped text)] of a text file, blank lines skipped.

    ``what`` names the file ("names file"); ``origin`` (e.g. "x.data:3: key
    'names'") prefixes any error.
    """
    try:
        text = read_text(path, what, limit, DataError)
    except DataError as exc:
        raise data_error(f"{origin}: {exc}" if origin else str(exc)) from None
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def read_names(path, origin=None):
    """Labels, one per line, stripped; blank lines skipped; repeats kept (darknet's
    9k.names and imagenet.shortnames.list have them), with one warning saying that
    an image matching a repeated label gets its first entry."""
    names = [name for _, name in read_stripped_lines(path, "names file", origin)]
    if not names:
        where = f"{origin}: " if origin else ""
        raise data_error(f"{where}{printable(path)} has no labels")
    first, repeats = {}, []
    for index, name in enumerate(names):
        if name in first:
            repeats.append(f"'{name}' (entries {first[name] + 1} and {index + 1})")
        first.setdefault(name, index)
    if repeats:
        shown = ", ".join(repeats[:3]) + (
            f" and {len(repeats) - 3} more" if len(repeats) > 3 else ""
        )
        warnings.warn(
            printable(
                f"{path}: {len(repeats)} repeated label(s): {shown}; an image whose path "
                f"contains one gets its first entry (darknet's rule)"
            ),
            DataWarning,
            stacklevel=2,
        )
    return names


def parse_data_text(text, file="<string>"):
    """(values, lines) from darknet .data text."""
    values, lines = {}, {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise data_error(
                printable(f"{file}:{number}: malformed line '{line}': expected key=value")
            )
        if not value:
            raise data_error(f"{where(file, number, key)}: empty value")
        if key in values:
            warnings.warn(
                f"{file}:{number}: key '{key}' repeats line {lines[key]}; "
                f"the first one is used (darknet's rule)",
                DataWarning,
                stacklevel=2,
            )
            continue
        values[key], lines[key] = value, number
    return values, lines


def parse_data_yaml(text, file="<string>"):
    """(values, lines) from the YAML form: a mapping of the same keys."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise data_error(f"{file}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise data_error(
            f"{file}:{root.start_mark.line + 1}: expected a mapping of "
            f"key: value (classes, train, valid, names, backup, top)"
        )
    values, lines = {}, {}
    for key_node, value_node in root.value:
        number = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(value_node, yaml.ScalarNode):
            raise data_error(f"{file}:{number}: expected 'key: value' with a plain value")
        key, value = key_node.value.strip(), value_node.value.strip()
        if not value or value_node.tag.endswith(":null"):
            raise data_error(f"{where(file, number, key)}: empty value")
        if key in values:
            raise data_error(f"{where(file, number, key)}: repeats line {lines[key]}")
        values[key], lines[key] = value, number
    return values, lines


def read_data_file(path, strict=False):
    """Parse a .data (or .yaml/.yml) file into a DataConfig."""
    path = os.fspath(path)
    text = read_text(path, "data file", TEXT_LIMIT, DataError)
    parse = parse_data_yaml if path.endswith((".yaml", ".yml")) else parse_data_text
    values, lines = parse(text, file=path)
    for key in values:
        if key in KNOWN:
            continue
        what = (
            "is a darknet key minidark does not use"
            if key in IGNORED
            else f"is not a data-file key (known: {', '.join(KNOWN)})"
        )
        message = f"{where(path, lines[key], key)}: {what}"
        if strict:
            raise data_error(message)
        warnings.warn(message, DataWarning, stacklevel=2)
    return DataConfig(path, values, lines)
