"""im2col / col2im, vectorised with stride tricks, channels innermost.

A convolution is one GEMM over "columns": every output pixel gets a row
holding the k x k x C input values its window sees. minidark lays the rows
out *channels innermost* from a zero-padded NHWC copy of the input::

    xpad : (n, H + 2p, W + 2p, C)             NHWC, zero border of width p
    cols : (n * out_h * out_w, k * k * C)     row = (b, oy, ox), column = (ky, kx, c)

    cols[(b, oy, ox), (ky, kx, c)] = xpad[b, oy*s + ky, ox*s + kx, c]

Why this layout (issue 7): in NHWC the k*C values of one window row are
contiguous, so ``im2col`` copies runs of k*C floats (darknet's order,
``(c, ky, kx) x (oy, ox)`` from NCHW, copies runs of only out_w floats), and
both GEMM operands are plain contiguous 2-D arrays:
``out (rows, filters) = cols @ W.T`` with ``W`` reordered from darknet's
``[n][c][ky][kx]`` to ``[n][ky][kx][c]`` (a 100 KB copy per batch).

``im2col`` is one ``np.copyto`` from an ``as_strided`` window view (no
Python loop). ``col2im`` (the adjoint: scatter-*add* columns back to the
padded input) avoids ``np.add.at``: for each kernel row ``ky`` and each
residue ``r`` of ``ox`` modulo ``m = ceil(k / s)`` the windows
``ox = r, r + m, r + 2m, ...`` do not overlap, so their k x C blocks are
added with one strided ``np.add`` (k * m adds per call, each moving runs of
k*C floats). Both are checked against naive loops in tests/test_im2col.py.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided


def conv_output_size(size, k, stride, pad):
    """darknet's convolutional output size: (size + 2 pad - k) / stride + 1."""
    return (size + 2 * pad - k) // stride + 1


def to_padded_nhwc(x, pad, xpad):
    """Copy ``x`` (n, C, H, W) into the interior of ``xpad`` (n, H+2p, W+2p, C)
    and zero its border (``xpad`` may be shared scratch)."""
    n, _, h, w = x.shape
    if pad:
        xpad[:, :pad] = 0
        xpad[:, pad + h:] = 0
        xpad[:, pad:pad + h, :pad] = 0
        xpad[:, pad:pad + h, pad + w:] = 0
    np.copyto(xpad[:, pad:pad + h, pad:pad + w], x.transpose(0, 2, 3, 1))


def add_from_padded_nhwc(xpad, pad, x):
    """``x`` (n, C, H, W) += the interior of ``xpad`` (n, H+2p, W+2p, C)."""
    n, _, h, w = x.shape
    x += xpad[:, pad:pad + h, pad:pad + w].transpose(0, 3, 1, 2)


def window_view(xpad, k, stride, out_h, out_w):
    """Read-only view (n, out_h, out_w, k, k, C) of every window of ``xpad``."""
    sb, sh, sw, sc = xpad.strides
    n, c = xpad.shape[0], xpad.shape[3]
    return as_strided(xpad, (n, out_h, out_w, k, k, c),
                      (sb, sh * stride, sw * stride, sh, sw, sc), writeable=False)


def im2col(xpad, k, stride, out_h, out_w, cols):
    """Fill ``cols`` (n*out_h*out_w, k*k*C), contiguous, from ``xpad`` (n, Hp, Wp, C).

    ``xpad`` may be a channel slice of a larger NHWC buffer (grouped conv)."""
    n, c = xpad.shape[0], xpad.shape[3]
    np.copyto(cols.reshape(n, out_h, out_w, k, k, c), window_view(xpad, k, stride, out_h, out_w))


def col2im(cols, k, stride, out_h, out_w, xpad):
    """``xpad`` (n, Hp, Wp, C) += the columns scattered back (the adjoint of im2col).

    Accumulates: zero ``xpad`` first for a plain col2im."""
    n, c = xpad.shape[0], xpad.shape[3]
    blocks = cols.reshape(n, out_h, out_w, k, k, c)
    sb, sh, sw, sc = xpad.strides
    m = -(-k // stride)                  # windows m apart along x never overlap
    tiled = m * stride == k                  # consecutive windows abut
    for ky in range(k):
        rows = slice(ky, ky + (out_h - 1) * stride + 1, stride)
        for r in range(min(m, out_w)):
            count = len(range(r, out_w, m))
            if tiled:      # a plain slice, split into windows: cheaper than as_strided
                start = r * stride
                target = xpad[:, rows, start:start + count * k].reshape(n, out_h, count, k, c)
            else:
                target = as_strided(xpad[:, ky:, r * stride:], (n, out_h, count, k, c),
                                    (sb, sh * stride, sw * stride * m, sw, sc))
            np.add(target, blocks[:, :, r::m, ky], out=target)
