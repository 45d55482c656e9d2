"""Datasets behind one interface: darknet image lists and MNIST IDX files.

A :class:`Dataset` holds every image decoded once, as uint8 ``(n, c, h, w)``
(a quarter of the float32 size), and int64 labels. :meth:`Dataset.batch`
gathers rows into a preallocated float32 buffer scaled to [0, 1]
(``pixel / 255``, darknet's scaling), so a training step never copies the
dataset.

**Image lists** (darknet's ``train=data/train.list``): a text file with one
image path per line (surrounding whitespace stripped, blank lines skipped).
A relative path is looked up from the current directory (darknet), then
from the list file's folder. Images are read with Pillow, converted to the
cfg's ``channels`` (1: grayscale ``L``, 3: ``RGB``, 4: ``RGBA``; darknet
always loads 3) and resized to ``width`` x ``height`` (bilinear) when their
size differs. The class is darknet's rule (``fill_truth``): the label whose
text occurs in the path *as written in the list*. Unlike darknet, a path
that contains no label or several labels is an error naming list, line and
labels (darknet trains on an all-zero or multi-hot truth). An unreadable
image is reported in one warning and skipped.

**MNIST IDX** (``train=data/mnist/train-images-idx3-ubyte.gz``): the file
name contains ``idx3-ubyte``; its labels are the file beside it with
``images-idx3`` replaced by ``labels-idx1``. ``.gz`` or raw, whichever
exists; the four standard files are downloaded when missing (see mnist.py).
"""

import collections
import os
import re
import warnings

import numpy as np

from ..errors import DataError, printable
from ..files import LIST_LIMIT, MiB, open_regular
from .datafile import DataWarning, read_stripped_lines
from .mnist import ensure_mnist, idx_stem, read_idx

IDX_IMAGES = re.compile(r"idx3-ubyte(\.gz)?$")
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
IMAGE_LIMIT = 256 * MiB  # one image file
_FITS_REPORTED = set()  # (h, w, network shape) of IDX data already warned about


class Dataset:
    """Images as uint8 ``(n, c, h, w)``, labels as int64 ``(n,)``."""

    def __init__(self, images, labels, source, paths=None):
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, np.int64)
        self.source = source
        self.paths = paths
        self._gather = None

    def __len__(self):
        return self.images.shape[0]

    @property
    def shape(self):
        """(c, h, w) of one image."""
        return self.images.shape[1:]

    @property
    def inputs(self):
        return int(np.prod(self.shape))

    def batch(self, indices, out=None):
        """Rows ``indices`` as float32 ``(k, c*h*w)`` in [0, 1], written into ``out``."""
        k = len(indices)
        if self._gather is None or self._gather.shape[0] < k:
            self._gather = np.empty((k,) + self.shape, np.uint8)
        gathered = self._gather[:k]
        np.take(self.images, indices, axis=0, out=gathered, mode="clip")  # unbuffered
        if out is None:
            out = np.empty((k, self.inputs), np.float32)
        np.divide(gathered.reshape(k, -1), np.float32(255), out=out[:k], casting="unsafe")
        return out[:k]

    def subset(self, count):
        """The first ``count`` images (for quick experiments and tests)."""
        paths = self.paths[:count] if self.paths is not None else None
        return Dataset(self.images[:count], self.labels[:count], self.source, paths)

    def __repr__(self):
        c, h, w = self.shape
        return f"<Dataset {self.source}: {len(self)} images {w}x{h}x{c}>"


def is_idx(path):
    return bool(IDX_IMAGES.search(os.path.basename(os.fspath(path))))


def load_dataset(path, shape=None, labels=None, classes=None, progress=True, labels_file=None):
    """A Dataset from an IDX images file or an image-list file.

    ``shape`` is the network's ``(c, h, w)`` (None: keep the data's own shape;
    image lists need it); ``labels`` are the tokens an image list's paths are
    matched against; ``classes`` bounds IDX labels.
    """
    path = os.fspath(path)
    if is_idx(path):
        return load_idx(path, shape, classes, progress)
    if shape is None:
        raise DataError(
            f"{path}: an image list needs the network's input image size: "
            f"set height, width and channels in [net]"
        )
    if not labels:
        raise DataError(
            f"{path}: an image list needs labels (labels= or names= in the "
            f".data file) to take each image's class from its path"
        )
    return load_image_list(path, shape, labels, progress, labels_file)


# ---------------------------------------------------------------------------- IDX
def load_idx(path, shape=None, classes=None, progress=True):
    stem = idx_stem(path)
    label_stem = stem.replace("images-idx3", "labels-idx1")
    if label_stem == stem:
        raise DataError(
            f"{path}: cannot name its labels file: an IDX images file name "
            f"must contain 'images-idx3' (its labels: 'labels-idx1')"
        )
    found = ensure_mnist([stem, label_stem], os.path.dirname(path), progress)
    images, labels = read_idx(found[stem]), read_idx(found[label_stem])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{found[stem]} ({images.shape}) and {found[label_stem]} "
            f"({labels.shape}) are not n images and n labels"
        )
    if classes is not None and labels.size and int(labels.max()) >= classes:
        raise DataError(f"{found[label_stem]}: label {int(labels.max())} but classes={classes}")
    images = images[:, None]  # (n, 1, h, w)
    if shape is not None and tuple(shape) != images.shape[1:]:
        images = _fit(images, tuple(shape), found[stem])
    return Dataset(images, labels, found[stem])


def _fit(images, shape, source):
    """Convert (n, 1, h, w) grayscale to the network's (c, h, w) as Pillow would,
    saying so once (a 32x32 or 3-channel cfg on MNIST is seldom meant)."""
    from PIL import Image

    c, h, w = shape
    if c not in MODES:
        raise DataError(
            f"{printable(source)}: cannot give {c}-channel images (channels must be 1, 3 or 4)"
        )
    n, _, height, width = images.shape
    if (height, width, shape) not in _FITS_REPORTED:  # once per process: train and valid
        _FITS_REPORTED.add((height, width, shape))
        done = _changes(c, (height, width) != (h, w), w, h)
        warnings.warn(
            f"{source}: images are {width}x{height}x1, the network takes "
            f"{w}x{h}x{c}: every image is {done} at load (darknet resizes its "
            f"inputs too)",
            DataWarning,
            stacklevel=3,
        )
    if (height, width) == (h, w):  # channels only: L -> RGB(A) is a copy
        out = np.empty((n, c, h, w), np.uint8)
        out[:, :3] = images
        if c == 4:
            out[:, 3] = 255
        return out
    out = np.empty((n, c, h, w), np.uint8)
    for i, image in enumerate(images):  # Pillow resizes one image at a time
        out[i] = _to_array(Image.fromarray(image[0], "L"), c, h, w)
    return out


def _changes(c, resized, w, h):
    """'converted to RGB and resized (bilinear) to 32x32', for the warning."""
    parts = ([f"converted to {MODES[c]}"] if c != 1 else []) + (
        [f"resized (bilinear) to {w}x{h}"] if resized else []
    )
    return " and ".join(parts)


# ---------------------------------------------------------------------- image lists
def label_from_path(path, labels):
    """darknet's rule: the index of the one label whose text occurs in ``path``;
    a label listed several times gives its first entry (darknet's valid).

    Raises ValueError (with the matches) when none or several labels match.
    """
    matches = [i for i, label in enumerate(labels) if label in path]
    if len(matches) != 1 and not (matches and len({labels[i] for i in matches}) == 1):
        raise ValueError(matches)
    return matches[0]


def label_error(where, path, labels, matches, labels_file=None):
    source = f" of {labels_file}" if labels_file else ""
    if not matches:
        found = f"contains none of the {len(labels)} labels{source}"
    else:
        found = (
            f"contains {len(matches)} labels{source} "
            f"({', '.join(repr(labels[i]) for i in matches)})"
        )
    return DataError(
        printable(
            f"{where}: '{path}' {found}; the class of an image is the one label that occurs in "
            f"its path (darknet's rule), so rename the file or choose labels that cannot "
            f"overlap"
        )
    )


def read_list(path):
    """[(line number, entry)] of an image list; blanks skipped."""
    entries = read_stripped_lines(path, "image list", limit=LIST_LIMIT)
    if not entries:
        raise DataError(f"{path}: image list is empty")
    return entries


def load_image_list(path, shape, labels, progress=True, labels_file=None):
    """Decode every image of a list into a Dataset (unreadable images skipped)."""
    c, h, w = shape
    if c not in MODES:
        raise DataError(
            f"{path}: images can be loaded with 1, 3 or 4 channels, the network wants {c}"
        )
    entries = read_list(path)
    folder = os.path.dirname(os.path.abspath(path))
    classes = []
    for number, entry in entries:
        try:
            classes.append(label_from_path(entry, labels))
        except ValueError as exc:
            raise label_error(f"{path}:{number}", entry, labels, exc.args[0], labels_file) from None
    images = np.empty((len(entries), c, h, w), np.uint8)
    kept, skipped, paths = [], [], []
    changed = collections.Counter()
    from tqdm import tqdm

    bar = tqdm(
        entries,
        desc=f"loading {os.path.basename(path)}",
        unit="img",
        disable=not progress or len(entries) < 2000,
        leave=False,
    )
    for row, (number, entry) in enumerate(bar):
        file = (
            entry if os.path.isabs(entry) or os.path.exists(entry) else os.path.join(folder, entry)
        )
        try:
            images[len(kept)] = load_image(file, c, h, w, changed)
        except DataError as exc:
            skipped.append(f"line {number}: {exc}")
            continue
        kept.append(row)
        paths.append(entry)
    if skipped:
        shown = "; ".join(skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        warnings.warn(
            f"{path}: skipped {len(skipped)} unreadable image(s): {shown}",
            DataWarning,
            stacklevel=2,
        )
    if not kept:
        raise DataError(f"{printable(path)}: none of its {len(entries)} images could be read")
    if changed:
        parts = [
            f"{changed[mode]} {mode} converted to {MODES[c]}"
            for mode in sorted(changed)
            if mode != "resized"
        ]
        if changed["resized"]:
            parts.append(f"{changed['resized']} resized (bilinear) to {w}x{h}")
        warnings.warn(
            f"{path}: the network takes {w}x{h}x{c} images: of {len(kept)}, "
            f"{', '.join(parts)} at load (darknet resizes its inputs too)",
            DataWarning,
            stacklevel=2,
        )
    labels_array = np.asarray(classes, np.int64)[kept]
    return Dataset(images[: len(kept)], labels_array, path, paths)


def load_image(path, c, h, w, changed=None):
    """One image file as uint8 ``(c, h, w)``: Pillow, convert, resize (bilinear).

    ``changed`` (a Counter) counts conversions by source mode and resizes."""
    from PIL import Image

    if not os.path.lexists(path):
        raise DataError(f"{printable(path)}: no such file")
    handle, _ = open_regular(path, "image", IMAGE_LIMIT, DataError)
    try:
        with handle, Image.open(handle) as image:
            return _to_array(image, c, h, w, changed)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{printable(path)}: cannot read image: {exc}") from None


def _to_array(image, c, h, w, changed=None):
    if image.mode != MODES[c]:
        if changed is not None:
            changed[image.mode] += 1
        image = image.convert(MODES[c])
    if image.size != (w, h):
        if changed is not None:
            changed["resized"] += 1
        image = image.resize((w, h), _bilinear())
    array = np.asarray(image, np.uint8)
    return array[None] if c == 1 else array.transpose(2, 0, 1)


def _bilinear():
    from PIL import Image

    return getattr(Image, "Resampling", Image).BILINEAR


def image_to_input(path, shape):
    """One image file as a float32 row for ``net.predict`` (errors name the file)."""
    c, h, w = shape
    array = load_image(path, c, h, w)
    return array.reshape(1, -1).astype(np.float32) / np.float32(255)
