"""Winograd convolution F(m x m, 3 x 3) for 3x3 stride-1 ungrouped layers (Lavin & Gray).

Dims legend: B images of a piece, C input channels, N filters, m output tile
(2 or 4), a = m + 2 input tile, th x tw tiles (ceil(out_h / m) x ceil(out_w / m)),
T = B th tw. A 3x3 convolution of an a x a input tile ``d`` with a filter ``g``
gives an m x m output tile as

    y = At [ (G g Gt) . (Bt d B) ] A          (. : elementwise)

so, per tile position (i, j) of the a x a transformed domain, the sum over
input channels is one GEMM:  M[ij] (N, T) = U[ij] (N, C) @ V[ij] (C, T) with
U = G g Gt (the weight transform, one (a^2, 9) @ (9, N C) GEMM) and
V = Bt d B (the input transform). a^2 GEMMs of N C T multiply-adds replace
im2col's 9 m^2 per tile: 2.25x fewer for F(2,3), 4x for F(4,3).

F(2,3)'s input transform runs on strided views of the zero-padded NCHW input,
rows then columns (``Bt`` is sparse, so each output is a sum of two shifted
views), writing V in the (a^2, C, T) order the GEMMs read; F(4,3)'s gathers
the a x a tiles (one strided copy per tile position, from a channel-major
padded copy, so that tiles and input share their (C, B) order) and multiplies
them by kron(Bt, Bt) in one GEMM (``TRANSFORM_GEMM``); the output transform is
one (m^2, a^2) @ (a^2, N T) GEMM, scattered to the m x m phases of the output.

Backward is the exact adjoint of those linear maps (not a second convolution):

    Wy (a^2, N, T) = At-adjoint of dy's tiles      dU (a^2, N, C) = Wy @ V.T
    dg = Gt-adjoint of dU (one GEMM)               dV (a^2, C, T) = U.T @ Wy
    dx += Bt-adjoint of dV, tiles overlap-added back onto the padded input.

float32 error against a float64 convolution (tests/kernels/test_winograd.py,
N(0,1) input, 256 channels, He-scaled filters; largest error over largest
output): im2col 3.3e-7, F(2,3) 6.8e-7 (its transforms add at most 4 numbers
of like size), F(4,3) 1.2e-5 (coefficients up to 8 and 1/24: 35x im2col's).
Both are offered to each layer's measured plan (minidark/kernels/conv.py):
F(4,3) does 44% fewer multiplications than F(2,3) but needs its input
transform as a GEMM on gathered tiles (elementwise, its coefficients 2, 4, 5
cost a temporary per term) and is 17x less accurate, still within the
reference vectors' 1e-4 of the largest value.

Scratch (net.workspace slots, sized in ``sizes``): a padded copy of the
piece's input and its gradient, the row-transformed input, V, and M (or the
transformed delta); past them, backward's dU (``gradient_floats``). An image
whose scratch exceeds ``COLUMN_BYTES`` is processed in bands of tile rows, one
image at a time.
"""

import functools
import math

import numpy as np

from .activations import activate

TRANSFORM_GEMM = {2: False, 4: True}  # per tile: input transform as a GEMM on gathered tiles
ONE_IMAGE_TILES = 196  # tiles of one image from which a piece holds one image
STREAM_BLOCK_BYTES = 4 << 20  # streamed U: the filters' U made at a time (stays in cache)


def matrices(m):
    """(At (m, a), G (a, 3), Bt (a, a)) of F(m, 3), float64."""
    if m == 2:
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    elif m == 4:
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
    else:
        raise ValueError(f"Winograd tile must be 2 or 4, got {m}")
    return np.array(at, np.float64), np.array(g, np.float64), np.array(bt, np.float64)


@functools.cache
def kron_matrices(m, dtype):
    """(At x At, G x G, Bt x Bt) in ``dtype``, read-only: each 2-D transform
    ``X d Xt`` of an a x a tile as one matrix on the flattened tile, made once
    (a training step calls the transforms hundreds of times)."""
    made = tuple(np.kron(x, x).astype(dtype) for x in matrices(m))
    for matrix in made:
        matrix.flags.writeable = False
    return made


def tiles(l, m):
    """(th, tw): tile rows and columns covering the output."""
    return -(-l.out_h // m), -(-l.out_w // m)


def sizes(l, m, batch, chunk_bytes, column_bytes):
    """(images per piece, tile rows per piece, {slot: floats}) within
    ``column_bytes`` (the convolution's caps, passed by its plan)."""
    a, c, n = m + 2, l.c, l.n
    th, tw = tiles(l, m)
    wp = m * tw + 2

    def need(images, rows):
        tiles_ = images * rows * tw
        return {
            "wpad": images * c * (m * th + 2) * wp,  # the whole padded images
            "wdxpad": images * c * (m * th + 2) * wp,
            "wrows": max(a * images * c * rows * wp, a * a * c * tiles_),  # rows or tiles
            "wv": a * a * c * tiles_,
            "wm": a * a * n * tiles_,
            "wdy": m * m * n * tiles_,
        }

    one = need(1, th)
    per_image = sum(one.values())
    if 4 * per_image <= column_bytes:
        # one image per piece once its tiles fill a GEMM: with several, the
        # transforms move data across the image axis (measured ~2-3x slower)
        images = 1 if th * tw >= ONE_IMAGE_TILES else batch
        images = int(max(1, min(images, 2 * chunk_bytes // (4 * (one["wv"] + one["wm"])))))
        return images, th, need(images, th)
    fixed = one["wpad"] + one["wdxpad"]
    per_row = (per_image - fixed) / th
    rows = int(max(1, min(th, (column_bytes // 4 - fixed) // max(per_row, 1))))
    return 1, rows, need(1, rows)


def weight_transform(weights, m, out):
    """out (a^2, N, C) = G w Gt for every filter and channel: one GEMM."""
    n, c = weights.shape[:2]
    kron = kron_matrices(m, weights.dtype)[1]  # (a^2, 9): U[ij] = sum_rs G[i,r] G[j,s] w[r,s]
    np.matmul(kron, weights.reshape(n * c, 9).T, out=out.reshape(len(kron), n * c))


def weight_gradient(du, m, out):
    """out (N, C, 3, 3) += the adjoint of weight_transform applied to du (a^2, N, C)."""
    kron = kron_matrices(m, du.dtype)[1]
    n, c = du.shape[1:]
    out += (kron.T @ du.reshape(len(kron), n * c)).T.reshape(n, c, 3, 3)


def _span(start, count, m):
    """Slice of ``count`` positions start, start + m, ..."""
    return slice(start, start + m * (count - 1) + 1, m)


def _combine(out, terms):
    """out = sum of coefficient * array over ``terms`` (zero coefficients left out)."""
    terms = [(c, x) for c, x in terms if c != 0]
    if len(terms) == 2 and terms[0][0] in (1, -1) and terms[1][0] in (1, -1):
        (c0, x0), (c1, x1) = terms  # F(2,3)'s every case: one pass, not two
        if c0 == c1:
            np.add(x0, x1, out=out)
            if c0 == -1:
                np.negative(out, out=out)
        else:
            np.subtract(x0, x1, out=out) if c0 == 1 else np.subtract(x1, x0, out=out)
        return
    first, x = terms[0]
    if first == 1:
        np.copyto(out, x)
    elif first == -1:
        np.negative(x, out=out)
    else:
        np.multiply(x, first, out=out)
    for c, x in terms[1:]:
        _accumulate(out, c, x)


def _accumulate(target, c, x):
    """target += c x, without a product for c = +-1 (nothing for c = 0)."""
    if c == 1:
        target += x
    elif c == -1:
        target -= x
    elif c:
        target += c * x


def input_transform(slab, m, th, tw, rows, v):
    """v (a, a, C, B, th, tw) = Bt d B for every a x a tile of ``slab`` (B, C, m th + 2, ...).

    ``rows`` (a, B, C, th, width): the row transform, scratch."""
    _, _, bt = matrices(m)
    a = m + 2
    for i in range(a):
        _combine(rows[i], [(bt[i, r], slab[:, :, _span(r, th, m)]) for r in range(a)])
    for i in range(a):
        for j in range(a):
            target = v[i, j].transpose(1, 0, 2, 3)
            _combine(target, [(bt[j, s], rows[i][..., _span(s, tw, m)]) for s in range(a)])


def gather_tiles(slab, m, th, tw, tiles_):
    """tiles_ (a, a, C, B, th, tw) = every a x a tile of the channel-major ``slab``
    (C, B, m th + 2, ...), one strided copy per (r, s), in the same (C, B) order."""
    a = m + 2
    for r in range(a):
        for s in range(a):
            np.copyto(tiles_[r, s], slab[:, :, _span(r, th, m), _span(s, tw, m)])


def input_transform_gemm(slab, m, th, tw, tiles_, v):
    """input_transform as one (a^2, a^2) @ (a^2, C T) GEMM on the gathered tiles of
    a channel-major ``slab`` (C, B, ...): for F(4,3), whose Bt has coefficients
    2, 4, 5, this beats elementwise passes."""
    gather_tiles(slab, m, th, tw, tiles_)
    kron = kron_matrices(m, slab.dtype)[2]
    np.matmul(kron, tiles_.reshape(len(kron), -1), out=v.reshape(len(kron), -1))


def input_adjoint_gemm(dv, m, th, tw, tiles_, dslab):
    """dslab (C, B, ...) += the adjoint of input_transform_gemm applied to dv: one
    GEMM, then the tiles overlap-added back (one strided add per (r, s))."""
    a = m + 2
    kron = kron_matrices(m, dv.dtype)[2]
    np.matmul(kron.T, dv.reshape(len(kron), -1), out=tiles_.reshape(len(kron), -1))
    for r in range(a):
        for s in range(a):
            dslab[:, :, _span(r, th, m), _span(s, tw, m)] += tiles_[r, s]


def input_adjoint(dv, m, th, tw, rows, dslab):
    """dslab (B, C, m th + 2, ...) += the adjoint of input_transform applied to dv."""
    _, _, bt = matrices(m)
    a = m + 2
    rows.fill(0)
    for i in range(a):
        for s in range(a):
            target = rows[i][..., _span(s, tw, m)]
            for j in range(a):
                _accumulate(target, bt[j, s], dv[i, j].transpose(1, 0, 2, 3))
    for r in range(a):
        target = dslab[:, :, _span(r, th, m)]
        for i in range(a):
            _accumulate(target, bt[i, r], rows[i])


def output_transform(mm, m, y, out, finish=None):
    """out (B, N, rows, cols) = At M A of every tile; ``mm`` (a^2, N, B, th, tw),
    ``y`` (m, m, N, B, th, tw) scratch. ``finish`` (biases, activation): applied on
    the way, the biases to M's entry (1, 1), which At's all-ones column 1 spreads
    to every output of the tile (a quarter of a pass), the activation to y."""
    a2 = mm.shape[0]
    if finish is not None:
        mm[m + 3] += finish[0][:, None, None, None]  # (1, 1) = 1 * a + 1
    kron = kron_matrices(m, mm.dtype)[0]  # (m^2, a^2)
    np.matmul(kron, mm.reshape(a2, -1), out=y.reshape(m * m, -1))
    if finish is not None:
        activate(y, finish[1])
    for i in range(m):
        for j in range(m):
            target = out[:, :, i::m, j::m]
            np.copyto(
                target, y[i, j, :, :, : target.shape[2], : target.shape[3]].transpose(1, 0, 2, 3)
            )


def delta_transform(dy, m, th, tw, tiles_, wy):
    """wy (a^2, N, T) = the adjoint of output_transform applied to dy (B, N, rows, cols).

    ``tiles_`` (m, m, N, B, th, tw): dy's tiles, zero past the output's edge."""
    for i in range(m):
        for j in range(m):
            source = dy[:, :, i::m, j::m]
            target = tiles_[i, j]
            h, w = source.shape[2:]
            if h < th or w < tw:
                target.fill(0)
            np.copyto(target[:, :, :h, :w], source.transpose(1, 0, 2, 3))
    kron = kron_matrices(m, dy.dtype)[0]
    np.matmul(kron.T, tiles_.reshape(m * m, -1), out=wy.reshape(len(kron.T), -1))


def pieces(l, m, images, rows):
    """(b0, b1, ty0, ty1, first): images [b0, b1) and tile rows [ty0, ty1) of each piece;
    ``first``: the piece starts a new set of images (pad them)."""
    th = tiles(l, m)[0]
    for b0 in range(0, l.batch, images):
        for ty0 in range(0, th, rows):
            yield b0, min(b0 + images, l.batch), ty0, min(ty0 + rows, th), ty0 == 0


def pad_images(l, m, x, xpad):
    """xpad (B, C, m th + 2, m tw + 2) = x padded by l.pad, zero beyond the input;
    channel-major, (C, B, ...), when the tile's transform is a GEMM (padded_shape)."""
    p, h, w = l.pad, l.h, l.w
    xpad.fill(0)
    np.copyto(xpad[:, :, p : p + h, p : p + w], x.transpose(1, 0, 2, 3) if TRANSFORM_GEMM[m] else x)


def padded_shape(m, images, c, hp, wp):
    """The padded slab's shape: (C, B, hp, wp) for the GEMM transform, whose gathered
    tiles are (C, B, th, tw) (an NCHW slab would transpose C and B in every one of
    its a^2 copies and overlap-adds: ~2x slower on small images), else (B, C, hp, wp)."""
    return (c, images, hp, wp) if TRANSFORM_GEMM[m] else (images, c, hp, wp)


SLOTS = ("wpad", "wdxpad", "wrows", "wv", "wm", "wdy")


def gradient_floats(l, m):
    """Floats of backward's dU (a^2, N, C), summed over the pieces, and of one
    position's part of it (N, C). They live in net.workspace after the slots,
    not on the layer: layers run one at a time, so one network-wide buffer the
    size of the largest layer's dU serves them all (cifar.cfg: 37 MB instead
    of 4x every F(4,3) layer's weights, ~120 MB)."""
    return ((m + 2) ** 2 + 1) * l.n * l.c


def workspace(l, m):
    """Floats of net.workspace F(m, 3) needs (its slots start at 0: never used
    together with the columns' slots), from the plan's ``l.winograd_plans``,
    and past them backward's dU (not in the plan, whose pieces it must not
    change)."""
    return sum(l.winograd_plans[m][2].values()) + gradient_floats(l, m)


def _slot(l, net, m, name, shape):
    scratch = l.winograd_plans[m][2]
    start = sum(scratch[other] for other in SLOTS[: SLOTS.index(name)])
    return net.workspace[start : start + math.prod(shape)].reshape(shape)


def _gradient_slots(l, net, m):
    """(dU (a^2, N, C), one position's part (N, C)): views of net.workspace past the slots."""
    start, n, c = sum(l.winograd_plans[m][2].values()), l.n, l.c
    du = net.workspace[start : start + (m + 2) ** 2 * n * c].reshape(-1, n, c)
    part = net.workspace[start + du.size : start + du.size + n * c].reshape(n, c)
    return du, part


def _piece_transform(l, net, m, x, ty0, ty1, first):
    """V of one piece (images ``x``, tile rows ty0..ty1), padding the images into
    the workspace at a piece's ``first`` tile row; returns (V, the row scratch)."""
    a, c = m + 2, l.c
    th, tw = tiles(l, m)
    b, rows, wp = x.shape[0], ty1 - ty0, m * tw + 2
    xpad = _slot(l, net, m, "wpad", padded_shape(m, b, c, m * th + 2, wp))
    if first:
        pad_images(l, m, x, xpad)
    slab = xpad[:, :, m * ty0 : m * ty1 + 2]
    v = _slot(l, net, m, "wv", (a, a, c, b, rows, tw))
    if TRANSFORM_GEMM[m]:
        scratch = _slot(l, net, m, "wrows", (a, a, c, b, rows, tw))
        input_transform_gemm(slab, m, rows, tw, scratch, v)
    else:
        scratch = _slot(l, net, m, "wrows", (a, b, c, rows, wp))
        input_transform(slab, m, rows, tw, scratch, v)
    return v, scratch


def forward(l, net, weights_u, m, out, finish=None, images_done=None, stream=None):
    """out (B, N, out_h, out_w) = conv(net.input, W), U = weight_transform(W) given;
    or, ``weights_u`` None and ``stream`` = (W, scale or None), U made on the way
    (``streamed_products``). ``finish`` (biases, activation): added and applied
    (output_transform); ``images_done(b0, b1)``: called once images [b0, b1) are
    complete."""
    a, c, n = m + 2, l.c, l.n
    th, tw = tiles(l, m)
    x = net.input.reshape(l.batch, c, l.h, l.w)
    for b0, b1, ty0, ty1, first in pieces(l, m, *l.winograd_plans[m][:2]):
        b, rows = b1 - b0, ty1 - ty0
        v, _ = _piece_transform(l, net, m, x[b0:b1], ty0, ty1, first)
        mm = _slot(l, net, m, "wm", (a * a, n, b * rows * tw))
        if weights_u is None:
            streamed_products(l, net, m, *stream, v.reshape(a * a, c, -1), mm)
        else:
            np.matmul(weights_u, v.reshape(a * a, c, -1), out=mm)
        target = out[b0:b1, :, m * ty0 : min(m * ty1, l.out_h)]
        y = _slot(l, net, m, "wdy", (m, m, n, b, rows, tw))
        output_transform(mm.reshape(a * a, n, b, rows, tw), m, y, target, finish)
        if images_done is not None and ty1 == th:
            images_done(b0, b1)


def one_piece(l, m):
    """Whether F(m, 3) takes the whole batch in one piece (its U read once a pass)."""
    images, rows, _ = l.winograd_plans[m]
    return images >= l.batch and rows >= tiles(l, m)[0]


def stream_filters(l, m):
    """Filters per block of streamed_products: their U within STREAM_BLOCK_BYTES."""
    return int(max(1, min(l.n, STREAM_BLOCK_BYTES // (4 * (m + 2) ** 2 * l.c))))


def streamed_products(l, net, m, weights, scale, v, mm):
    """mm (a^2, N, T) = U @ v with U = weight_transform(W) made a block of filters
    at a time into the workspace (where backward's dU goes: forward never needs
    it), used while in cache, and forgotten: inference of a layer whose U is too
    large to keep (4x the weights for F(4,3)). ``scale`` (N,), if given,
    multiplies each filter's products: batch norm's fold, ``(s W) * x = s (W * x)``,
    without a folded copy of W. The transform costs about half of the layer's
    GEMMs again on darknet19's 7x7 layers at batch 8 (docs/benchmark.md)."""
    a, c, n = m + 2, l.c, l.n
    block = stream_filters(l, m)
    start = sum(l.winograd_plans[m][2].values())
    for n0 in range(0, n, block):
        n1 = min(n0 + block, n)
        u = net.workspace[start : start + a * a * (n1 - n0) * c].reshape(a * a, n1 - n0, c)
        weight_transform(weights[n0:n1], m, u)
        np.matmul(u, v, out=mm[:, n0:n1])
        if scale is not None:
            mm[:, n0:n1] *= scale[n0:n1, None]


def backward(l, net, weights_u, m, delta, grad, dx):
    """grad (N, C, 3, 3) += dW and, when ``dx`` (B, C, h, w) is given, dx += the input gradient."""
    a, c, n = m + 2, l.c, l.n
    th, tw = tiles(l, m)
    hp, wp = m * th + 2, m * tw + 2
    p = l.pad
    x = net.input.reshape(l.batch, c, l.h, l.w)
    du, part = _gradient_slots(l, net, m)
    du.fill(0)
    for b0, b1, ty0, ty1, first in pieces(l, m, *l.winograd_plans[m][:2]):
        b, rows = b1 - b0, ty1 - ty0
        dxpad = _slot(l, net, m, "wdxpad", padded_shape(m, b, c, hp, wp))
        if first and dx is not None:
            dxpad.fill(0)
        v, rows_scratch = _piece_transform(l, net, m, x[b0:b1], ty0, ty1, first)
        wy = _slot(l, net, m, "wm", (a * a, n, b * rows * tw))
        dy = delta[b0:b1, :, m * ty0 : min(m * ty1, l.out_h)]
        delta_transform(dy, m, rows, tw, _slot(l, net, m, "wdy", (m, m, n, b, rows, tw)), wy)
        vv = v.reshape(a * a, c, -1)
        for ij in range(a * a):  # a piece's dU, one position at a time: added while in cache
            np.matmul(wy[ij], vv[ij].T, out=part)
            du[ij] += part
        if dx is not None:
            np.matmul(weights_u.transpose(0, 2, 1), wy, out=vv)  # dV over V
            adjoint = input_adjoint_gemm if TRANSFORM_GEMM[m] else input_adjoint
            adjoint(v, m, rows, tw, rows_scratch, dxpad[:, :, m * ty0 : m * ty1 + 2])
            if ty1 == th:
                inner = dxpad[:, :, p : p + l.h, p : p + l.w]
                dx[b0:b1] += inner.transpose(1, 0, 2, 3) if TRANSFORM_GEMM[m] else inner
    weight_gradient(du, m, grad)
