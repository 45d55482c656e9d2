"""Layer buffers that stay out of memory until something writes them.

A network allocates every buffer in its layers' make functions, including
many an inference run never touches: training's deltas, weight gradients and
batch-norm caches, max-pool winners. ``np.zeros`` is calloc, whose fresh
pages the OS maps only on first write, unless malloc serves the block from
freed heap memory (glibc raises its mmap threshold, up to 32 MB, after
freeing a large block), which calloc must clear; ``np.zeros_like`` always
writes. Either way such buffers were resident: darknet19 at 224x224, batch 8,
held 320 MB of zeros after loading. ``zeros`` maps large buffers anonymously,
so they cost address space, not memory, until used.
"""

import math
import mmap

import numpy as np

MAPPED_BYTES = 1 << 18  # smaller buffers: np.zeros
HUGE_PAGE_BYTES = 4 << 20  # from this size, ask for huge pages, as numpy does for its own


def zeros(shape, dtype=np.float32):
    """A zero-filled array of ``shape``; pages of a large one are mapped on first write."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes < MAPPED_BYTES:
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= HUGE_PAGE_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        pages.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(pages, dtype, count).reshape(shape)


DRAW_CHUNK = 1 << 18  # values drawn in float64 at a time (2 MB)


def drawn(draw, shape, transform):
    """float32 ``transform(draw(count))`` of ``shape``: a generator's float64 draws
    (``draw(count)``, e.g. ``rng.standard_normal``) scaled, then rounded, a piece
    at a time. The pieces continue one stream, so the values are those of one
    call; but no float64 copy of the whole array is made (38 MB for one of
    darknet19's 1024-filter layers, freed into the heap where it stayed)."""
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    for start in range(0, flat.size, DRAW_CHUNK):
        stop = min(start + DRAW_CHUNK, flat.size)
        flat[start:stop] = transform(draw(stop - start))
    return out


def release(array):
    """Give the pages of a buffer made by ``zeros`` back to the system: it reads
    as zeros again and costs no memory until written. Nothing for any other array
    (a small buffer, a float64 copy in a gradient check)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    pages = array.base.obj if isinstance(array.base, memoryview) else None
    if isinstance(pages, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        pages.madvise(mmap.MADV_DONTNEED)
