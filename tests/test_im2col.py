"""im2col / col2im in both layouts (channels innermost NHWC, darknet's CNHW) against naive loops."""

import numpy as np
import pytest

from minidark.kernels.im2col import (
    add_from_padded_cnhw,
    add_from_padded_nhwc,
    col2im,
    col2im_cnhw,
    conv_output_size,
    im2col,
    im2col_cnhw,
    to_padded_cnhw,
    to_padded_nhwc,
)

CASES = [  # (n, c, h, w, k, stride, pad)
    (2, 3, 7, 7, 3, 2, 0),
    (2, 3, 7, 7, 3, 2, 1),
    (1, 2, 7, 5, 3, 1, 1),
    (2, 1, 8, 8, 5, 1, 2),
    (1, 4, 6, 6, 1, 1, 0),
    (1, 2, 7, 7, 1, 2, 0),
    (2, 2, 9, 8, 4, 3, 1),
    (1, 3, 5, 5, 2, 4, 2),
    (1, 1, 3, 3, 3, 1, 0),
    (1, 2, 6, 7, 5, 2, 2),
]


def naive_im2col(x, k, s, p):
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    cols = np.zeros((n, oh, ow, k, k, c))
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                for ky in range(k):
                    for kx in range(k):
                        y, xx = oy * s + ky - p, ox * s + kx - p
                        if 0 <= y < h and 0 <= xx < w:
                            cols[b, oy, ox, ky, kx] = x[b, :, y, xx]
    return cols.reshape(n * oh * ow, k * k * c)


def naive_col2im(cols, shape, k, s, p):
    n, c, h, w = shape
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    blocks = cols.reshape(n, oh, ow, k, k, c)
    x = np.zeros(shape)
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                for ky in range(k):
                    for kx in range(k):
                        y, xx = oy * s + ky - p, ox * s + kx - p
                        if 0 <= y < h and 0 <= xx < w:
                            x[b, :, y, xx] += blocks[b, oy, ox, ky, kx]
    return x


def padded(x, p):
    n, c, h, w = x.shape
    xpad = np.full((n, h + 2 * p, w + 2 * p, c), 7.0, x.dtype)  # stale scratch
    to_padded_nhwc(x, p, xpad)
    return xpad


@pytest.mark.parametrize("n,c,h,w,k,s,p", CASES)
def test_im2col_matches_naive(n, c, h, w, k, s, p):
    x = np.random.default_rng(0).normal(size=(n, c, h, w)).astype(np.float32)
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    cols = np.empty((n * oh * ow, k * k * c), np.float32)
    im2col(padded(x, p), k, s, oh, ow, cols)
    np.testing.assert_array_equal(cols, naive_im2col(x, k, s, p))


@pytest.mark.parametrize("n,c,h,w,k,s,p", CASES)
def test_col2im_matches_naive_and_accumulates(n, c, h, w, k, s, p):
    rng = np.random.default_rng(1)
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    cols = rng.normal(size=(n * oh * ow, k * k * c))
    xpad = np.zeros((n, h + 2 * p, w + 2 * p, c))
    col2im(cols, k, s, oh, ow, xpad)
    dx = np.ones((n, c, h, w))  # accumulates into existing values
    add_from_padded_nhwc(xpad, p, dx)
    np.testing.assert_allclose(dx, 1 + naive_col2im(cols, (n, c, h, w), k, s, p), atol=1e-12)


def test_col2im_is_adjoint_of_im2col():
    """<im2col(x), C> == <x, col2im(C)> on the interior (the defining property)."""
    rng = np.random.default_rng(2)
    n, c, h, w, k, s, p = 2, 3, 7, 7, 3, 2, 1
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    x = rng.normal(size=(n, c, h, w))
    cols = np.empty((n * oh * ow, k * k * c))
    im2col(padded(x, p), k, s, oh, ow, cols)
    other = rng.normal(size=cols.shape)
    back = np.zeros((n, h + 2 * p, w + 2 * p, c))
    col2im(other, k, s, oh, ow, back)
    dx = np.zeros_like(x)
    add_from_padded_nhwc(back, p, dx)
    assert np.isclose(np.sum(cols * other), np.sum(x * dx))


def test_channel_slice_for_groups():
    """im2col/col2im on a channel slice of a padded buffer touch only that slice."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 5, 5))
    xpad = padded(x, 1)
    cols = np.empty((2 * 5 * 5, 9 * 2))
    im2col(xpad[..., 2:4], 3, 1, 5, 5, cols)
    np.testing.assert_array_equal(cols, naive_im2col(x[:, 2:4], 3, 1, 1))
    grad = np.zeros_like(xpad)
    col2im(cols, 3, 1, 5, 5, grad[..., 2:4])
    assert not grad[..., :2].any()
    dx = np.zeros_like(x)
    add_from_padded_nhwc(grad, 1, dx)
    np.testing.assert_allclose(dx[:, 2:4], naive_col2im(cols, (2, 2, 5, 5), 3, 1, 1))


def to_cnhw_order(cols_nhwc, n, oh, ow, k, c):
    """Naive (rows (b,oy,ox), cols (ky,kx,c)) -> darknet order (rows (c,ky,kx), cols (b,oy,ox))."""
    return cols_nhwc.reshape(n * oh * ow, k, k, c).transpose(3, 1, 2, 0).reshape(c * k * k, -1)


@pytest.mark.parametrize("n,c,h,w,k,s,p", CASES)
def test_cnhw_layout_matches_naive(n, c, h, w, k, s, p):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, c, h, w))
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    xpad = np.full((c, n, h + 2 * p, w + 2 * p), 7.0)  # stale scratch
    to_padded_cnhw(x, p, xpad)
    cols = np.empty((c * k * k, n * oh * ow))
    im2col_cnhw(xpad, k, s, oh, ow, cols)
    np.testing.assert_array_equal(cols, to_cnhw_order(naive_im2col(x, k, s, p), n, oh, ow, k, c))
    other = rng.normal(size=(n * oh * ow, k * k * c))  # naive (NHWC) order
    back = np.zeros_like(xpad)
    col2im_cnhw(to_cnhw_order(other, n, oh, ow, k, c), k, s, oh, ow, back)
    dx = np.ones_like(x)
    add_from_padded_cnhw(back, p, dx)
    np.testing.assert_allclose(dx, 1 + naive_col2im(other, x.shape, k, s, p), atol=1e-12)


@pytest.mark.parametrize("layout", ["nhwc", "cnhw"])
def test_to_padded_border_flag(layout):
    """border=True zeroes the border of stale scratch; border=False writes only the
    interior (the caller knows the border is still zero)."""
    to_padded = to_padded_nhwc if layout == "nhwc" else to_padded_cnhw
    x = np.random.default_rng(5).normal(size=(2, 3, 4, 5))
    shape = (2, 6, 7, 3) if layout == "nhwc" else (3, 2, 6, 7)
    inner = np.s_[:, 1:5, 1:6] if layout == "nhwc" else np.s_[:, :, 1:5, 1:6]
    for border in (True, False):
        xpad = np.full(shape, 7.0)
        to_padded(x, 1, xpad, border)
        outside = np.ones(shape, bool)
        outside[inner] = False
        assert (xpad[outside] == (0 if border else 7)).all()
        assert (xpad[inner] != 7).all() and xpad[inner].sum() == pytest.approx(x.sum())
