"""MNIST from its four IDX files (gzipped or raw).

IDX: big-endian magic (0x0000 0x08 ndim), ndim uint32 sizes, then uint8 data.
Images are returned as float32 ``(n, 784)`` in [0, 1] (pixel / 255, darknet's
scaling), labels as int64 ``(n,)``.
"""
import gzip
import os

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
