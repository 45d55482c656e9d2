"""MNIST from its four IDX files (gzipped or raw), downloaded when missing.

IDX: big-endian magic (0x0000 0x08 ndim), ndim uint32 sizes, then uint8 data.
Images are returned as float32 ``(n, 784)`` in [0, 1] (pixel / 255, darknet's
scaling), labels as int64 ``(n,)``.

Where the files are looked for: the folder a .data file names (``data/mnist/``
for ``cfg/mnist.data``), then ``$MINIDARK_DATA`` and ``$MINIDARK_DATA/mnist``.
When the four standard files are missing, :func:`ensure_mnist` downloads them
from public mirrors (``$MINIDARK_MNIST_MIRRORS``, comma-separated base URLs,
overrides the list) into ``$MINIDARK_DATA`` if set, else ``data/mnist/``
(the folder the .data file names when it is a ``data/mnist`` folder, else
``data/mnist`` under the current directory: never any other folder a
``train=`` line names), with a tqdm progress bar, and checks each against
the SHA-256 of its *decompressed* content (gzip headers differ between
mirrors; the bytes inside do not). Offline it gives up within
``$MINIDARK_DOWNLOAD_TIMEOUT`` seconds (30) in total and raises one
DataError saying where to put the files.

IDX files are read through :mod:`minidark.files` and refused, naming the
file, when corrupt, truncated, empty or implausibly large (see
:func:`read_idx`).
"""

import gzip
import hashlib
import math
import os
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np

from ..errors import DataError, printable
from ..files import IDX_LIMIT, open_regular

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path, limit=IDX_LIMIT):
    """Read an IDX file (``.gz`` or raw) into a uint8 array.

    The header is read first; its sizes must give between 1 and ``limit``
    values and the file exactly that many bytes, so a corrupt or hostile file
    (zero items, sizes whose product overflows, a truncated header, a gzip
    bomb) is refused with one line before anything large is read.
    """
    shown = printable(os.fspath(path))
    handle, _ = open_regular(path, "IDX file", None if _gzipped(path) else limit + 1024, DataError)
    try:
        with handle:
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if _gzipped(path) else handle
            head = _read_up_to(stream, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(
                    f"{shown}: not an IDX file of unsigned bytes (it must start "
                    f"with 00 00 08 and the number of dimensions)"
                )
            ndim = head[3]
            if not 1 <= ndim <= 4:
                raise DataError(f"{shown}: IDX header says {ndim} dimensions (1 to 4 expected)")
            sizes = _read_up_to(stream, 4 * ndim)
            if len(sizes) < 4 * ndim:
                raise DataError(
                    f"{shown}: IDX header truncated: {ndim} dimensions need "
                    f"{4 + 4 * ndim} bytes, the file has {4 + len(sizes)}"
                )
            shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            count = math.prod(shape)
            if shape[0] == 0:
                raise DataError(f"{shown}: IDX file holds no items (shape {shape})")
            if count == 0 or count > limit:
                raise DataError(
                    f"{shown}: IDX sizes {'x'.join(map(str, shape))} give {count} "
                    f"values, expected 1 to {limit}: the header is damaged"
                )
            data = _read_up_to(stream, count + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{shown}: cannot read IDX file: corrupt or truncated "
            f"{'gzip' if _gzipped(path) else 'file'} ({exc})"
        ) from None
    if len(data) != count:
        found = f"found {len(data)}" if len(data) < count else "found more"
        raise DataError(f"{shown}: expected {count} values for shape {shape}, {found}")
    return np.frombuffer(data, np.uint8).reshape(shape)


def _gzipped(path):
    return os.fspath(path).endswith(".gz")


def _read_up_to(stream, count):
    """Up to ``count`` bytes: fewer only at the end of the stream."""
    parts, left = [], count
    while left > 0:
        part = stream.read(min(left, 1 << 26))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def find_idx(directory, stem):
    """The path of ``stem`` (.gz or raw) in ``directory``, or None."""
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def load_mnist(directory, split="train"):
    """(images float32 (n, 784) in [0, 1], labels int64 (n,)) for a split."""
    images_stem, labels_stem = FILES[split]
    images_path = find_idx(directory, images_stem)
    labels_path = find_idx(directory, labels_stem)
    if images_path is None or labels_path is None:
        raise DataError(
            f"MNIST {split} files not found in {directory}: put "
            f"{images_stem}.gz and {labels_stem}.gz there"
        )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} "
            f"has {labels.shape[0]} labels"
        )
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    x /= 255.0
    return x, labels.astype(np.int64)


# ----------------------------------------------------------------------------
# Finding and downloading the four standard files
# ----------------------------------------------------------------------------
SHA256 = {  # of the decompressed IDX content
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
ALL_FILES = tuple(SHA256)
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DEFAULT_TIMEOUT = 30.0


def idx_stem(path):
    """'train-images-idx3-ubyte' for '.../train-images-idx3-ubyte.gz' (or the raw name)."""
    name = os.path.basename(os.fspath(path))
    return name[:-3] if name.endswith(".gz") else name


def search_folders(folder=None):
    """Where MNIST files are looked for, in order: ``folder``, ``$MINIDARK_DATA``
    (and its ``mnist/``), then where a download would put them."""
    folders = [folder] if folder else []
    env = os.environ.get("MINIDARK_DATA")
    if env:
        folders += [env, os.path.join(env, "mnist")]
    target = download_folder(folder)
    return folders + ([target] if target not in folders else [])


def locate_idx(stem, folder=None):
    """The path of IDX file ``stem`` (.gz or raw) in the search folders, or None."""
    for directory in search_folders(folder):
        found = find_idx(directory, stem)
        if found:
            return found
    return None


def missing_message(folder=None, reason=None):
    target = folder or os.path.join("data", "mnist")
    why = f" ({reason})" if reason else ""
    return (
        f"MNIST is missing and could not be downloaded{why}: put the four files "
        f"{', '.join(s + '.gz' for s in ALL_FILES)} (gzipped or not) "
        f"in {printable(target)}/ "
        f"or in the folder named by $MINIDARK_DATA"
    )


def download_folder(folder=None):
    """Where missing MNIST files are downloaded: ``$MINIDARK_DATA`` if set, else
    ``folder`` only when it is a ``data/mnist`` folder, else ``data/mnist``
    under the current directory (a ``train=`` line naming /etc or ~ must not
    make minidark write there)."""
    if os.environ.get("MINIDARK_DATA"):
        return os.environ["MINIDARK_DATA"]
    if folder:
        parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
        if parts[-2:] == ["data", "mnist"]:
            return folder
    return os.path.join("data", "mnist")


def ensure_mnist(stems, folder=None, progress=True):
    """Paths of the IDX files ``stems``, downloading the missing standard ones.

    Looks in ``folder`` then ``$MINIDARK_DATA``; downloads into
    :func:`download_folder`. Returns {stem: path}.
    """
    found = {stem: locate_idx(stem, folder) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if not missing:
        return found
    unknown = [stem for stem in missing if stem not in SHA256]
    if unknown:
        places = " or ".join(search_folders(folder) or ["."])
        raise DataError(f"IDX file {unknown[0]}(.gz) not found in {places}")
    target = download_folder(folder)
    timeout = float(os.environ.get("MINIDARK_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT))
    mirrors = [
        m.strip() for m in os.environ.get("MINIDARK_MNIST_MIRRORS", "").split(",") if m.strip()
    ] or list(MIRRORS)
    deadline = time.monotonic() + timeout
    for stem in missing:
        found[stem] = download_idx(stem, target, mirrors, deadline, progress, folder)
        deadline = time.monotonic() + timeout  # online: the next file gets a fresh budget
    return found


def download_idx(stem, target, mirrors, deadline, progress=True, folder=None):
    """Download ``stem``.gz from the first mirror that answers; verify; return its path."""
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + stem + ".gz"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            errors.append("timed out")
            break
        try:
            data = _fetch(url, remaining, progress, stem)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"{url}: {_short(exc)}")
            continue
        try:
            content = gzip.decompress(data)
        except (OSError, EOFError):
            content = data  # a mirror serving the raw file
        digest = hashlib.sha256(content).hexdigest()
        if digest != SHA256[stem]:
            errors.append(
                f"{url}: SHA-256 {digest[:12]}... does not match the pinned {SHA256[stem][:12]}..."
            )
            continue
        from ..weights import atomic_write

        path = os.path.join(target, stem + ".gz")
        try:
            atomic_write(path, gzip.compress(content) if content is data else data)
        except OSError as exc:
            raise DataError(
                f"cannot write {path}: {exc.strerror}; {missing_message(folder)}"
            ) from None
        return path
    raise DataError(missing_message(folder, errors[-1] if errors else "no mirrors"))


def _short(exc):
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return str(reason)


def _fetch(url, timeout, progress, stem):
    """GET ``url``; the connection must open within ``timeout`` seconds.

    The connect (DNS included, which urllib cannot time out) runs in a worker
    thread so an offline machine gives up on time; once the server answers,
    reads only time out when stalled.
    """
    result, opened = {}, threading.Event()

    def worker():
        try:
            response = urllib.request.urlopen(url, timeout=max(1.0, min(timeout, 15.0)))
            result["response"] = response
        except BaseException as exc:  # reported to the caller
            result["error"] = exc
        opened.set()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    if not opened.wait(timeout):
        raise OSError(f"no answer within {timeout:.0f} s")
    if "error" in result:
        raise result["error"]
    response = result["response"]
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        from tqdm import tqdm

        chunks = []
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"downloading {stem}.gz",
            disable=not progress,
            leave=False,
        ) as bar:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise OSError(f"download truncated at {len(data)} of {total} bytes")
    return data
