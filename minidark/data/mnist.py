"""MNIST from its four IDX files (gzipped or raw), downloaded when missing.

IDX: big-endian magic (0x0000 0x08 ndim), ndim uint32 sizes, then uint8 data.
Images are returned as float32 ``(n, 784)`` in [0, 1] (pixel / 255, darknet's
scaling), labels as int64 ``(n,)``.

Where the files are looked for: the folder a .data file names (``data/mnist/``
for ``cfg/mnist.data``), then ``$MINIDARK_DATA`` and ``$MINIDARK_DATA/mnist``.
When the four standard files are missing, :func:`ensure_mnist` downloads them
from public mirrors (``$MINIDARK_MNIST_MIRRORS``, comma-separated base URLs,
overrides the list) into ``$MINIDARK_DATA`` if set, else that folder, with a
tqdm progress bar, and checks each against the SHA-256 of its *decompressed*
content (gzip headers differ between mirrors; the bytes inside do not).
Offline it gives up within ``$MINIDARK_DOWNLOAD_TIMEOUT`` seconds (30) in
total and raises one DataError saying where to put the files.
"""
import gzip
import hashlib
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from ..errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path):
    """Read an IDX file (``.gz`` or raw) into a uint8 array."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, "
                        f"found {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


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
        raise DataError(f"MNIST {split} files not found in {directory}: put "
                        f"{images_stem}.gz and {labels_stem}.gz there")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} "
                        f"has {labels.shape[0]} labels")
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
    """Where MNIST files are looked for, in order."""
    folders = [folder] if folder else []
    env = os.environ.get("MINIDARK_DATA")
    if env:
        folders += [env, os.path.join(env, "mnist")]
    return folders


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
    return (f"MNIST is missing and could not be downloaded{why}: put the four files "
            f"{', '.join(s + '.gz' for s in ALL_FILES)} (gzipped or not) in {target}/ "
            f"or in the folder named by $MINIDARK_DATA")


def ensure_mnist(stems, folder=None, progress=True):
    """Paths of the IDX files ``stems``, downloading the missing standard ones.

    Looks in ``folder`` then ``$MINIDARK_DATA``; downloads into
    ``$MINIDARK_DATA`` (if set) or ``folder``. Returns {stem: path}.
    """
    found = {stem: locate_idx(stem, folder) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if not missing:
        return found
    unknown = [stem for stem in missing if stem not in SHA256]
    if unknown:
        places = " or ".join(search_folders(folder) or ["."])
        raise DataError(f"IDX file {unknown[0]}(.gz) not found in {places}")
    target = os.environ.get("MINIDARK_DATA") or folder or os.path.join("data", "mnist")
    timeout = float(os.environ.get("MINIDARK_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT))
    mirrors = [m.strip() for m in os.environ.get("MINIDARK_MNIST_MIRRORS", "").split(",")
               if m.strip()] or list(MIRRORS)
    deadline = time.monotonic() + timeout
    for stem in missing:
        found[stem] = download_idx(stem, target, mirrors, deadline, progress, folder)
        deadline = time.monotonic() + timeout   # online: the next file gets a fresh budget
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
            content = data   # a mirror serving the raw file
        digest = hashlib.sha256(content).hexdigest()
        if digest != SHA256[stem]:
            errors.append(f"{url}: SHA-256 {digest[:12]}... does not match the pinned "
                          f"{SHA256[stem][:12]}...")
            continue
        from ..weights import atomic_write
        path = os.path.join(target, stem + ".gz")
        try:
            atomic_write(path, gzip.compress(content) if content is data else data)
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror}; "
                            f"{missing_message(folder)}") from None
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
        except BaseException as exc:   # reported to the caller
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
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {stem}.gz",
                  disable=not progress, leave=False) as bar:
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
