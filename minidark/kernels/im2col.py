"""im2col / col2im, vectorised with stride tricks, in two column layouts.

A convolution is one GEMM over "columns": every output pixel gets a column
(or row) holding the k x k x C input values its window sees. Two layouts,
each a transpose of the other, are provided; a convolutional layer picks
the one whose copies move the longer contiguous runs (in a plain numpy
LeNet, im2col/col2im took half the step; the layout decides how fast they
are):

*channels innermost* (``*_nhwc``), from a zero-padded NHWC copy of the input::

    xpad : (n, H + 2p, W + 2p, C)
    cols : (n * out_h * out_w, k * k * C)    row = (b, oy, ox), column = (ky, kx, c)
    cols[(b, oy, ox), (ky, kx, c)] = xpad[b, oy*s + ky, ox*s + kx, c]

  the k*C values of one window row are contiguous in NHWC, so im2col copies
  runs of k*C floats; ``out (rows, filters) = cols @ W.T`` with the weights
  reordered from darknet's ``[n][c][ky][kx]`` to ``[n][ky][kx][c]``. Best
  when k*C is large (LeNet's second conv: 5*32 = 160 vs out_w = 14).

*darknet's order* (``*_cnhw``), from a zero-padded CNHW copy::

    xpad : (C, n, H + 2p, W + 2p)
    cols : (C * k * k, n * out_h * out_w)    row = (c, ky, kx), column = (b, oy, ox)
    cols[(c, ky, kx), (b, oy, ox)] = xpad[c, b, oy*s + ky, ox*s + kx]

  runs of out_w floats (stride 1); ``out (filters, rows) = W @ cols`` with
  darknet's weights as they are. Best for few input channels (a first layer:
  LeNet's 5*1 = 5 vs out_w = 28).

``im2col_*`` is one ``np.copyto`` from an ``as_strided`` window view (no
Python loop). ``col2im_*`` (the adjoint: scatter-*add* columns back onto the
padded input) avoids ``np.add.at``: in CNHW order, one strided add per
kernel offset (ky, kx); in NHWC order, for each kernel row ``ky`` and each
residue ``r`` of ``ox`` modulo ``m = ceil(k / s)`` the windows ``ox = r,
r + m, ...`` do not overlap, so their k x C blocks go in with one add (k*m
adds moving runs of k*C floats). All are checked against naive loops in
tests/test_im2col.py.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided


def conv_output_size(size, k, stride, pad):
    """darknet's convolutional output size: (size + 2 pad - k) / stride + 1."""
    return (size + 2 * pad - k) // stride + 1


def to_padded_nhwc(x, pad, xpad, border=True):
    """Copy ``x`` (n, C, H, W) into the interior of ``xpad`` (n, H+2p, W+2p, C)
    and zero its border (``xpad`` may be shared scratch; ``border=False``: the
    caller knows it is still zero)."""
    h, w = x.shape[2:]
    if pad and border:
        xpad[:, :pad] = 0
        xpad[:, pad + h :] = 0
        xpad[:, pad : pad + h, :pad] = 0
        xpad[:, pad : pad + h, pad + w :] = 0
    np.copyto(xpad[:, pad : pad + h, pad : pad + w], x.transpose(0, 2, 3, 1))


def add_from_padded_nhwc(xpad, pad, x):
    """``x`` (n, C, H, W) += the interior of ``xpad`` (n, H+2p, W+2p, C)."""
    h, w = x.shape[2:]
    x += xpad[:, pad : pad + h, pad : pad + w].transpose(0, 3, 1, 2)


def window_view(xpad, k, stride, out_h, out_w):
    """Read-only view (n, out_h, out_w, k, k, C) of every window of ``xpad``."""
    sb, sh, sw, sc = xpad.strides
    n, c = xpad.shape[0], xpad.shape[3]
    return as_strided(
        xpad,
        (n, out_h, out_w, k, k, c),
        (sb, sh * stride, sw * stride, sh, sw, sc),
        writeable=False,
    )


def im2col_nhwc(xpad, k, stride, out_h, out_w, cols):
    """Fill ``cols`` (n*out_h*out_w, k*k*C), contiguous, from ``xpad`` (n, Hp, Wp, C).

    ``xpad`` may be a channel slice of a larger NHWC buffer (grouped conv)."""
    n, c = xpad.shape[0], xpad.shape[3]
    np.copyto(cols.reshape(n, out_h, out_w, k, k, c), window_view(xpad, k, stride, out_h, out_w))


def col2im_nhwc(cols, k, stride, out_h, out_w, xpad):
    """``xpad`` (n, Hp, Wp, C) += the columns scattered back (the adjoint of im2col).

    Accumulates: zero ``xpad`` first for a plain col2im."""
    n, c = xpad.shape[0], xpad.shape[3]
    blocks = cols.reshape(n, out_h, out_w, k, k, c)
    sb, sh, sw, sc = xpad.strides
    m = -(-k // stride)  # windows m apart along x never overlap
    tiled = m * stride == k  # consecutive windows abut
    for ky in range(k):
        rows = slice(ky, ky + (out_h - 1) * stride + 1, stride)
        for r in range(min(m, out_w)):
            count = len(range(r, out_w, m))
            if tiled:  # a plain slice, split into windows: cheaper than as_strided
                start = r * stride
                target = xpad[:, rows, start : start + count * k].reshape(n, out_h, count, k, c)
            else:
                target = as_strided(
                    xpad[:, ky:, r * stride :],
                    (n, out_h, count, k, c),
                    (sb, sh * stride, sw * stride * m, sw, sc),
                )
            np.add(target, blocks[:, :, r::m, ky], out=target)


im2col, col2im = im2col_nhwc, col2im_nhwc  # the default layout's short names


def to_padded_cnhw(x, pad, xpad, border=True):
    """Copy ``x`` (n, C, H, W) into the interior of ``xpad`` (C, n, H+2p, W+2p)
    and zero its border (unless ``border=False``)."""
    h, w = x.shape[2:]
    if pad and border:
        xpad[:, :, :pad] = 0
        xpad[:, :, pad + h :] = 0
        xpad[:, :, pad : pad + h, :pad] = 0
        xpad[:, :, pad : pad + h, pad + w :] = 0
    np.copyto(xpad[:, :, pad : pad + h, pad : pad + w], x.transpose(1, 0, 2, 3))


def add_from_padded_cnhw(xpad, pad, x):
    """``x`` (n, C, H, W) += the interior of ``xpad`` (C, n, H+2p, W+2p)."""
    h, w = x.shape[2:]
    x += xpad[:, :, pad : pad + h, pad : pad + w].transpose(1, 0, 2, 3)


def im2col_cnhw(xpad, k, stride, out_h, out_w, cols):
    """Fill ``cols`` (C*k*k, n*out_h*out_w), contiguous, from ``xpad`` (C, n, Hp, Wp)."""
    c, n = xpad.shape[:2]
    sc, sb, sh, sw = xpad.strides
    view = as_strided(
        xpad,
        (c, k, k, n, out_h, out_w),
        (sc, sh, sw, sb, sh * stride, sw * stride),
        writeable=False,
    )
    np.copyto(cols.reshape(c, k, k, n, out_h, out_w), view)


def col2im_cnhw(cols, k, stride, out_h, out_w, xpad):
    """``xpad`` (C, n, Hp, Wp) += the columns scattered back (adjoint of im2col_cnhw)."""
    c, n = xpad.shape[:2]
    blocks = cols.reshape(c, k, k, n, out_h, out_w)
    for ky in range(k):
        for kx in range(k):
            target = xpad[
                :,
                :,
                ky : ky + (out_h - 1) * stride + 1 : stride,
                kx : kx + (out_w - 1) * stride + 1 : stride,
            ]
            np.add(target, blocks[:, ky, kx], out=target)
