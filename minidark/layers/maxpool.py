"""[maxpool] (alias [max]): max over k x k windows, per channel (maxpool_layer.c).

cfg keys (darknet defaults): ``stride`` (1), ``size`` (= stride), ``padding`` (size - 1).
Output size: ``out = (in + padding - size) / stride + 1``, channels unchanged;
window (oy, ox) covers rows ``oy*stride - padding/2 + dy`` (dy < size), likewise
columns. size=2 stride=2 gives ceil(in / 2) (28 -> 14 -> 7 -> 4).

Forward: cells outside the input count as -FLT_MAX; the window is scanned
rows then columns and a cell wins only if *strictly* greater than the
current maximum, so the first maximum wins ties (darknet). ``l.indexes``
(int32, like the output) holds each winner's flat index into the whole
input batch buffer (b, c, h, w), -1 for a window with no winner (entirely
outside the input, or only NaN / -inf there; darknet then writes out of
bounds in backward, minidark skips it). Backward: ``net.delta[indexes] += delta``.

Vectorised as a loop over the k*k window offsets only: each offset is one
strided view of the input over the outputs whose window cell is inside it.
``l.winner`` (uint8, or int32 for windows above 254 cells) keeps, per
output, 1 + the winning offset: ``winner = max(winner, (x > best) * (o + 1))``
is branch-free because offsets only grow. Backward: when windows do not
overlap (stride >= size) the indexes are unique, and a gather / add /
scatter (``take``, ``put``) does it; otherwise it adds ``delta * (winner ==
o + 1)`` per offset, so overlapping windows accumulate correctly without
``np.add.at``.
"""
import numpy as np

from ..layer import Layer
from ..registry import register_layer

LOWEST = np.finfo(np.float32).min     # darknet's -FLT_MAX


@register_layer("maxpool", "max")
def make_maxpool(options, params):
    params.require_image(options)
    stride = options.int("stride", 1)
    size = options.int("size", stride)
    padding = options.int("padding", size - 1)
    if stride < 1 or size < 1:
        raise options.error(f"size and stride must be >= 1, got size={size} stride={stride}",
                            "size" if size < 1 else "stride")
    if padding < 0:
        raise options.error(f"padding must be >= 0, got {padding}", "padding")
    h, w, c, batch = params.h, params.w, params.c, params.batch
    if min(h, w) + padding < size:
        raise options.error(f"size={size} is larger than the padded input {w}x{h} "
                            f"(padding {padding})", "size")
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    l = Layer(type="maxpool", batch=batch, h=h, w=w, c=c, size=size, stride=stride,
              pad=padding, out_h=out_h, out_w=out_w, out_c=c,
              inputs=h * w * c, outputs=out_h * out_w * c)
    l.output = np.zeros((batch, l.outputs), np.float32)
    l.delta = np.zeros((batch, l.outputs), np.float32)
    l.indexes = np.zeros((batch, l.outputs), np.int32)
    kind = np.uint8 if size * size < 255 else np.int32
    l.winner = np.zeros((batch, l.outputs), kind)
    l.mask = np.zeros((batch, l.outputs), kind)
    l.scratch = np.zeros((batch, l.outputs), np.float32)
    l.complete = True                  # every window had a winner in the last forward
    # per offset o = dy*size + dx: (output rows, input rows, output cols, input cols) slices
    offset = -(padding // 2)
    l.offsets = [_overlap(offset + dy, stride, out_h, h) + _overlap(offset + dx, stride, out_w, w)
                 for dy in range(size) for dx in range(size)]
    # flat index of each window's (dy, dx) = (0, 0) cell; + dy*w + dx gives the winner
    ys = (np.arange(out_h) * stride + offset)[:, None] * w + (np.arange(out_w) * stride + offset)
    cells = (np.arange(batch * c) * h * w)[:, None, None] + ys
    l.base = cells.reshape(batch, l.outputs).astype(np.int32)
    table = [dy * w + dx for dy in range(size) for dx in range(size)]
    l.table = np.array([0] + table, np.int32)        # winner 0 (none) is fixed below
    l.desc = f"{size}x{size}/{stride}"
    l.flops = size * size * l.outputs
    l.forward, l.backward = forward_maxpool, backward_maxpool
    return l


def _overlap(start, stride, outs, size):
    """Outputs o whose cell ``o*stride + start`` lies inside [0, size), and those cells."""
    first = max(0, -(start // stride))
    last = max(first, min(outs, (size - 1 - start) // stride + 1))
    if last == first:
        return slice(0, 0), slice(0, 0)
    lo = first * stride + start
    return slice(first, last), slice(lo, lo + (last - first - 1) * stride + 1, stride)


def _views(l, o, *arrays):
    oy, iy, ox, ix = l.offsets[o]
    return [a.reshape(l.batch, l.c, l.out_h, l.out_w)[:, :, oy, ox] for a in arrays], (iy, ix)


def forward_maxpool(l, net):
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    l.output.fill(LOWEST)
    l.winner.fill(0)
    for o in range(len(l.offsets)):
        (best, winner, mask, cell), (iy, ix) = _views(l, o, l.output, l.winner, l.mask, l.scratch)
        np.copyto(cell, x[:, :, iy, ix])       # one strided read, then contiguous ops
        np.greater(cell, best, out=mask)
        np.multiply(mask, o + 1, out=mask, casting="unsafe")
        np.maximum(winner, mask, out=winner)
        np.fmax(best, cell, out=best)          # NaN never wins, as in darknet's compare
    np.take(l.table, l.winner, out=l.indexes, mode="wrap")    # (no bounds check)
    l.indexes += l.base
    l.complete = bool(l.winner.all())
    if not l.complete:
        np.copyto(l.indexes, -1, where=l.winner == 0)


def backward_maxpool(l, net):
    if net.delta is None:
        return
    if l.stride >= l.size and l.complete:   # windows apart, indexes unique: gather-add-scatter
        flat, indexes, part = net.delta.reshape(-1), l.indexes.reshape(-1), l.scratch.reshape(-1)
        np.take(flat, indexes, out=part)
        part += l.delta.reshape(-1)
        flat.put(indexes, part)
        return
    dx = net.delta.reshape(l.batch, l.c, l.h, l.w)
    for o in range(len(l.offsets)):
        (winner, mask, part, delta), (iy, ix) = _views(l, o, l.winner, l.mask, l.scratch, l.delta)
        np.equal(winner, o + 1, out=mask)
        np.multiply(delta, mask, out=part)
        target = dx[:, :, iy, ix]
        target += part
