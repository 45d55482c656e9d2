"""[maxpool] (alias [max]): max over k x k windows, per channel (maxpool_layer.c).

cfg keys (darknet defaults): ``stride`` (1), ``size`` (= stride, at most 128),
``padding`` (size - 1, at most 2 (size - 1): more would leave windows without
an input cell, whose -FLT_MAX output darknet passes on).
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

Inference (``net.train`` false) keeps no indexes: ``forward_max`` takes
the window maxima as maxima of shifted views (rows, then columns), the same
output; a backward after an inference forward first reruns the scan for
its indexes (``l.indexed``).

A tiled pool right after a [convolutional] layer is filled by that layer in
inference, part by part while each part of its output is still in cache
(``tiled_band``, the same operations on part of the input); the pool's own
pass then has nothing to do (``l.prepooled``).

Kernels in ``minidark/kernels/pool.py``: an exact scan over the k*k window offsets
for any geometry, and a faster one when the windows tile the input
(size == stride, no offset, sizes divisible: LeNet's 2/2 pools), which
falls back to the first on NaN or a window without winner. ``l.winner``
(uint8, or int32 for windows above 254 cells) keeps 1 + each winner's
offset. Backward: a gather / add / scatter when the indexes are unique
(stride >= size, every window won), else a masked add per offset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.buffers import zeros
from ..kernels.pool import (
    BAND_SCRATCH_FLOATS,
    forward_max,
    plan,
    scan_offsets,
    scan_tiles,
    scatter_offsets,
    scatter_unique,
    set_indexes,
)
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


MAX_SIZE = 128  # largest window side: 16,384 offsets


@register_layer("maxpool", "max")
def make_maxpool(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    stride = options.int("stride", 1)
    size = options.int("size", stride)
    padding = options.int("padding", size - 1)
    if stride < 1 or size < 1:
        raise options.error(
            f"size and stride must be >= 1, got size={size} stride={stride}",
            "size" if size < 1 else "stride",
        )
    if padding < 0:
        raise options.error(f"padding must be >= 0, got {padding}", "padding")
    h, w, c, batch = params.h, params.w, params.c, params.batch
    if size > MAX_SIZE:  # the kernels visit each of the size^2 window offsets in turn
        raise options.error(
            f"size={size} is above {MAX_SIZE}: minidark scans a window one "
            f"offset at a time (size^2 steps per pass)",
            "size",
        )
    if padding > 2 * (size - 1):  # the first or last window would hold no input cell
        raise options.error(
            f"padding={padding} leaves windows with no input cell (their "
            f"maximum would be -FLT_MAX); with size={size} it must be <= "
            f"{2 * (size - 1)}",
            "padding",
        )
    if min(h, w) + padding < size:
        raise options.error(
            f"size={size} is larger than the padded input {w}x{h} (padding {padding})", "size"
        )
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    params.reserve(
        options,
        7 * batch * out_h * out_w * c,
        "size",
        f"(output {out_w}x{out_h}x{c}, batch {batch})",
    )
    l = Layer(
        type="maxpool",
        batch=batch,
        h=h,
        w=w,
        c=c,
        size=size,
        stride=stride,
        pad=padding,
        out_h=out_h,
        out_w=out_w,
        out_c=c,
        inputs=h * w * c,
        outputs=out_h * out_w * c,
    )
    l.output = zeros((batch, l.outputs))
    l.delta = zeros((batch, l.outputs))
    l.indexes = zeros((batch, l.outputs), np.int32)
    kind = np.uint8 if size * size < 255 else np.int32
    l.winner = zeros((batch, l.outputs), kind)
    l.mask = zeros((batch, l.outputs), kind)
    l.scratch = zeros((batch, l.outputs))
    if stride >= size:  # windows apart: int64 indexes for the scatter
        l.positions = zeros((batch, l.outputs), np.int64)
    l.complete = True  # every window had a winner in the last forward
    plan(l)  # offsets, corners, table, tiled, chunk, workspace_size
    previous = params.net.layers[-1] if params.net.layers else None
    if l.tiled and previous is not None and previous.type == "convolutional":
        previous.pool_after = l  # in inference it pools each part of its output as it goes
        l.pool_scratch = np.zeros(max(w, BAND_SCRATCH_FLOATS), np.float32)
    l.desc = f"{size}x{size}/{stride}"
    l.flops = size * size * l.outputs
    l.forward, l.backward = forward_maxpool, backward_maxpool
    return l


def forward_maxpool(l: Layer, net: Network) -> None:
    l.indexed = net.train
    if not net.train:  # no backward follows: the maxima alone
        if l.prepooled:  # written by the convolution before, from cache (kernels/conv.py)
            l.prepooled = False
            return
        forward_max(l, net.input, net.workspace)
        return
    scan(l, net)


def scan(l: Layer, net: Network) -> None:
    """l.output, l.winner and l.indexes of net.input (darknet's forward)."""
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    l.complete = l.tiled and scan_tiles(l, x, net.workspace)
    if not l.complete:  # any geometry, NaN, or a window without winner
        l.complete = scan_offsets(l, x)
    set_indexes(l, l.complete)


def backward_maxpool(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    if not l.indexed:  # the last forward was inference: the winners of the same input
        scan(l, net)
        l.indexed = True
    if l.stride >= l.size and l.complete:  # windows apart, indexes unique
        scatter_unique(l, net.delta)
    else:
        scatter_offsets(l, net.delta.reshape(l.batch, l.c, l.h, l.w))
