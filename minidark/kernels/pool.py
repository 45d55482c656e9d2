"""Max-pool kernels behind [maxpool] (minidark/layers/maxpool.py).

Notation: input ``x`` (B, C, h, w) NCHW, windows ``size`` x ``size`` every
``stride``, window (oy, ox) starting at ``(oy, ox) * stride + start`` with
``start = -(padding // 2)``; ``o = dy * size + dx`` numbers the window cells
in darknet's scan order (rows, then columns). ``l.winner`` holds ``1 + o`` of
each window's winner (0: no winner), and ``l.indexes = l.plane_starts + l.corners +
l.table[winner]`` (the flat index of the window's plane, of its cell (0, 0) in the
plane, and ``table[1 + o] = dy * w + dx``; broadcast, not stored per window).

Two forward scans, both exact (strict ``>`` in scan order: the first maximum
wins; NaN, -inf and -FLT_MAX never win):

* ``scan_offsets`` (any geometry): one strided view of the input per cell
  offset o, over the outputs whose cell o is inside the input; each view is
  copied once, then compared contiguously: ``winner = max(winner, (x > best)
  * (1 + o))`` is branch-free because offsets only grow.
* ``scan_tiles`` (windows that tile the input exactly: ``size == stride``,
  ``start == 0``, ``out * size == in``, e.g. LeNet's 2/2 pools): a chunk of
  images is split into ``size^2`` contiguous planes (one copy), then reduced
  plane by plane with ``maximum``; ``maximum`` lets NaN through, so a NaN (or
  a window with nothing above -FLT_MAX) shows in ``min(output)`` and the layer
  reruns ``scan_offsets``: the fast path only ever returns darknet's answer.

Inference (``forward_max``) needs no winner: the maximum is separable, so
a chunk of planes is reduced over the window rows (``size`` maxima of row-
shifted views of the input), then over the window columns (``size`` maxima
of column-shifted views of that), ``fmax`` throughout (NaN never wins) and
floored at -FLT_MAX when the minimum shows a NaN or -inf (a window of
NaN / -inf gives -FLT_MAX): the same output
as the scans, without their per-offset copies and winner bookkeeping.

Backward, ``net.delta[indexes] += delta``: with unique indexes (windows
apart, every window with a winner) a gather / add / scatter through int64
positions (``take`` and fancy assignment are ~2x faster with int64 than with
int32 indexes); otherwise one masked add per offset, so overlapping windows
accumulate without ``np.add.at``.
"""

import numpy as np

LOWEST = np.finfo(np.float32).min  # darknet's -FLT_MAX
CHUNK_BYTES = 1 << 19  # input bytes per chunk of scan_tiles (stays in L2)
MAX_CHUNK_BYTES = 1 << 20  # input bytes per chunk of forward_max (the row maxima stay in L2)
BAND_SCRATCH_FLOATS = MAX_CHUNK_BYTES // 8  # row maxima of one piece of tiled_band


def overlap(start, stride, outs, size):
    """Outputs o whose cell ``o*stride + start`` lies inside [0, size), and those cells."""
    first = max(0, -(start // stride))
    last = max(first, min(outs, (size - 1 - start) // stride + 1))
    if last == first:
        return slice(0, 0), slice(0, 0)
    lo = first * stride + start
    return slice(first, last), slice(lo, lo + (last - first - 1) * stride + 1, stride)


def plan(l):
    """Window geometry of a maxpool layer (sizes already set): per-offset slices,
    the windows' corner indexes, the winner -> index table, and the tiled fast
    path's chunking."""
    k, s, h, w = l.size, l.stride, l.h, l.w
    start = -(l.pad // 2)
    # per offset o = dy*size + dx: (output rows, input rows, output cols, input cols)
    l.offsets = [
        overlap(start + dy, s, l.out_h, h) + overlap(start + dx, s, l.out_w, w)
        for dy in range(k)
        for dx in range(k)
    ]
    ys = (np.arange(l.out_h) * s + start)[:, None] * w + (np.arange(l.out_w) * s + start)
    l.corners = ys.reshape(-1).astype(np.int32)
    l.plane_starts = (np.arange(l.batch * l.c) * h * w).astype(np.int32)[:, None]
    l.table = np.array([0] + [dy * w + dx for dy in range(k) for dx in range(k)], np.int32)
    l.tiled = k == s and start == 0 and l.out_h * k == h and l.out_w * k == w
    l.chunk = max(1, min(l.batch, CHUNK_BYTES // (4 * l.inputs))) if l.tiled else 0
    l.workspace_size = l.chunk * l.inputs  # the planes of one chunk
    # forward_max: the row maxima of a chunk of planes (never at once with scan_tiles)
    l.workspace_size = max(l.workspace_size, max_chunk(l) * l.out_h * w)


def max_chunk(l):
    """Planes (image channels) per chunk of forward_max."""
    return max(1, min(l.batch * l.c, MAX_CHUNK_BYTES // (4 * l.h * l.w)))


def max_of_views(target, pairs):
    """target = fmax of the views ``source`` over the parts ``part`` of target
    they cover, for (part, source) in pairs; target starts at -FLT_MAX where
    no view covers all of it."""
    whole = [i for i, (part, _) in enumerate(pairs) if part.shape == target.shape]
    if len(whole) >= 2:  # two views that cover all: the first pass needs no fill
        np.fmax(pairs[whole[0]][1], pairs[whole[1]][1], out=target)
        whole = whole[:2]
    elif whole:
        np.copyto(target, pairs[whole[0]][1])
    else:
        target.fill(LOWEST)
    for i, (part, source) in enumerate(pairs):
        if i not in whole:
            np.fmax(part, source, out=part)


def forward_max(l, x, workspace):
    """l.output alone (inference, no winners): the window maxima of x (B, C, h, w),
    over rows then columns (module docstring), a chunk of planes at a time."""
    k, s, start = l.size, l.stride, -(l.pad // 2)
    rows = [overlap(start + d, s, l.out_h, l.h) for d in range(k)]  # (outputs, inputs)
    cols = [overlap(start + d, s, l.out_w, l.w) for d in range(k)]
    planes, step = l.batch * l.c, max_chunk(l)
    x = x.reshape(planes, l.h, l.w)
    out = l.output.reshape(planes, l.out_h, l.out_w)
    for p0 in reversed(range(0, planes, step)):  # the last written first: likeliest in cache
        p1 = min(p0 + step, planes)
        row_max = workspace[: (p1 - p0) * l.out_h * l.w].reshape(p1 - p0, l.out_h, l.w)
        window_maxima(x[p0:p1], out[p0:p1], row_max, rows, cols)


def window_maxima(x, target, row_max, rows, cols):
    """target (P, oh, ow) = the window maxima of x (P, ih, w): fmax over the row
    offsets' (output, input) slices ``rows`` into row_max (P, oh, w), then over
    the column offsets' ``cols``; floored at -FLT_MAX (NaN or -inf, as darknet)."""
    max_of_views(row_max, [(row_max[:, o], x[:, i]) for o, i in rows])
    max_of_views(target, [(target[:, :, o], row_max[:, :, i]) for o, i in cols])
    if not target.min() > LOWEST:  # (min is ~6x faster than fmax with a scalar)
        np.fmax(target, LOWEST, out=target)


def tiled_band(l, x, target, scratch):
    """target (P, r, out_w) = the maxima of the windows (``l.tiled``) of a band of
    whole window rows x (P, size r, w): forward_max's operations on part of the
    input, in pieces of planes and rows whose row maxima fit ``scratch``. A
    convolution followed by this layer calls it on each part of its output while
    the part is in cache (kernels/conv.py ``pool_part``)."""
    k, planes, r = l.size, target.shape[0], target.shape[1]
    rows_step = max(1, min(r, scratch.size // l.w))
    planes_step = max(1, min(planes, scratch.size // (rows_step * l.w)))
    cols = [overlap(d, k, l.out_w, l.w) for d in range(k)]
    for p0 in range(0, planes, planes_step):
        p1 = min(p0 + planes_step, planes)
        for r0 in range(0, r, rows_step):
            r1 = min(r0 + rows_step, r)
            rows = [overlap(d, k, r1 - r0, k * (r1 - r0)) for d in range(k)]
            row_max = scratch[: (p1 - p0) * (r1 - r0) * l.w].reshape(p1 - p0, r1 - r0, l.w)
            part = x[p0:p1, k * r0 : k * r1]
            window_maxima(part, target[p0:p1, r0:r1], row_max, rows, cols)


def offset_views(l, o, *arrays):
    """Views (B, C, rows, cols) of per-output arrays over the outputs whose cell o
    is inside the input, and that cell's (rows, cols) slices of the input."""
    oy, iy, ox, ix = l.offsets[o]
    return [a.reshape(l.batch, l.c, l.out_h, l.out_w)[:, :, oy, ox] for a in arrays], (iy, ix)


def scan_offsets(l, x):
    """Exact forward for any geometry: l.output (maxima) and l.winner (1 + offset, 0 none)."""
    l.output.fill(LOWEST)
    l.winner.fill(0)
    for o in range(len(l.offsets)):
        (best, winner, mask, cell), (iy, ix) = offset_views(
            l, o, l.output, l.winner, l.mask, l.scratch
        )
        np.copyto(cell, x[:, :, iy, ix])  # one strided read, then contiguous ops
        np.greater(cell, best, out=mask)
        np.multiply(mask, o + 1, out=mask, casting="unsafe")
        np.maximum(winner, mask, out=winner)
        np.fmax(best, cell, out=best)  # NaN never wins, as in darknet's compare
    return bool(l.winner.all())


def scan_tiles(l, x, workspace):
    """Forward when the windows tile the input (``l.tiled``); False if the result
    may differ from darknet's (a NaN, or a window with nothing above -FLT_MAX):
    then l.output / l.winner are garbage and the caller reruns scan_offsets."""
    k, kk, shape = l.size, l.size * l.size, (l.c, l.out_h, l.out_w)
    cells = x.reshape(l.batch, l.c, l.out_h, k, l.out_w, k)
    output = l.output.reshape(l.batch, *shape)
    winner, mask = (a.reshape(l.batch, *shape) for a in (l.winner, l.mask))
    for b0 in range(0, l.batch, l.chunk):
        b1 = min(b0 + l.chunk, l.batch)
        n = b1 - b0
        planes = workspace[: n * l.inputs].reshape(k, k, n, *shape)
        np.copyto(planes, cells[b0:b1].transpose(3, 5, 0, 1, 2, 4))  # (dy, dx, b, c, oy, ox)
        planes = planes.reshape(kk, n, *shape)
        best, win, greater = output[b0:b1], winner[b0:b1], mask[b0:b1]
        if kk == 1:
            np.copyto(best, planes[0])
            win.fill(1)
            continue
        np.greater(planes[1], planes[0], out=win)
        np.add(win, 1, out=win)
        np.maximum(planes[0], planes[1], out=best)
        for o in range(2, kk):
            np.greater(planes[o], best, out=greater)
            np.multiply(greater, o + 1, out=greater, casting="unsafe")
            np.maximum(win, greater, out=win)
            np.maximum(best, planes[o], out=best)
    return bool(l.output.min() > LOWEST)  # False on NaN too


def set_indexes(l, complete):
    """l.indexes from l.winner: flat input index of each winner, -1 for none."""
    indexes = l.indexes.reshape(l.batch * l.c, l.out_h * l.out_w)  # (planes, windows)
    np.take(l.table, l.winner.reshape(indexes.shape), out=indexes, mode="wrap")  # (no bounds check)
    indexes += l.corners
    indexes += l.plane_starts
    if not complete:
        np.copyto(l.indexes, -1, where=l.winner == 0)


def scatter_unique(l, dx):
    """dx (flat) [indexes] += delta, for unique indexes (no window overlaps, all won)."""
    flat, part = dx.reshape(-1), l.scratch.reshape(-1)
    positions = l.positions.reshape(-1)
    np.copyto(positions, l.indexes.reshape(-1))
    np.take(flat, positions, out=part, mode="clip")
    part += l.delta.reshape(-1)
    flat[positions] = part


def scatter_offsets(l, dx):
    """dx (B, C, h, w) += delta at each winner, one masked add per offset
    (overlapping windows accumulate)."""
    for o in range(len(l.offsets)):
        (winner, mask, part, delta), (iy, ix) = offset_views(
            l, o, l.winner, l.mask, l.scratch, l.delta
        )
        np.equal(winner, o + 1, out=mask)
        np.multiply(delta, mask, out=part)
        target = dx[:, :, iy, ix]
        target += part
