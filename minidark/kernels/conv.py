"""Convolution kernels behind [convolutional] (minidark/layers/convolutional.py).

Dims legend: B batch, C input channels, N filters, g groups, k size, s stride,
p padding, M = rows of a chunk = images * out_h * out_w, K = k*k*C/g. The
batch is processed in chunks of ``l.chunk`` images so that a chunk's columns
stay in cache; scratch lives in ``net.workspace`` as named per-chunk slots
(``l.slots``: offset of each, ``l.workspace_size`` floats in all).

Paths, picked per layer by ``plan`` (column layouts: minidark/im2col.py):

* ``l.pointwise`` (1x1, no padding, one group): no columns at all, one GEMM
  per image on the NCHW buffers: ``out_b (N, rows) = W (N, C) @ x_b (C, rows)``
  (stride s: x's every s-th row and column, gathered per chunk); backward
  ``dW = sum_b dy_b @ x_b.T``, ``dx_b += W.T @ dy_b``.
* ``l.winograd`` (3x3, stride 1, one group): Winograd F(m x m, 3 x 3), m =
  ``l.winograd`` = 2 or 4, on NCHW (minidark/kernels/winograd.py), forward and
  both gradients. ``plan`` leaves it undecided (None); the first forward
  decides for the layer's life. In inference it times F(2,3), F(4,3) and the
  columns (best of three each) and keeps the fastest (0: the columns), as
  measured on the machine that runs it; the first backward of a Winograd
  layer likewise times Winograd's backward against the columns'. Inference
  keeps no U above ``KEPT_U_BYTES``: such a tile, if it takes the batch in
  one piece, is timed and run streamed (``l.winograd_streamed``: U made a
  block of filters at a time in each pass). A layer
  whose first pass trains follows ``training_tile``, a rule on its shape:
  a timing could differ between two runs, and so would their float32 sums,
  and a resumed run must repeat an uninterrupted one byte for byte.
* NHWC columns (the default): ``cols (M, K) = im2col(x)``, ``y (M, N/g) =
  cols @ W_g.T`` with the weights reordered to (N, ky, kx, c) in ``l.ordered``;
  backward ``dW_g = dy_g.T @ cols``, ``net.delta += col2im(dy_g @ W_g)``.
* ``l.direct``: 1x1 stride-1 ungrouped: the NHWC input itself is the columns.
* ``l.cnhw``: darknet's CNHW order, ``cols (K, M)``, darknet's weights as
  they are; picked when its contiguous runs (out_w, stride 1) beat NHWC's
  (k*C/g): a first layer with few channels. One GEMM per image (batched by
  np.matmul): ``out_b (N/g, out_h out_w) = W_g @ cols_b`` lands in the NCHW
  output directly, ``dW_g = sum_b delta_b @ cols_b.T`` reads the delta as it
  is; ``net.delta += col2im(W_g.T @ dy_g)``.
* ``l.transposed`` (NHWC, stride 1, one group, p <= k-1), backward when
  there is an input gradient: both gradients come from one im2col, of the
  delta padded by ``q = k-1-p``, taken at every input pixel::

      D (B h w, k k N) = im2col(delta padded by q)     D[(b,y,x),(a,e,n)] = dy[b, y+a-q, x+e-q, n]
      dx (B h w, C)    = D @ F,   F[(a,e,n), c] = W[n, c, k-1-a, k-1-e]      (flipped kernel)
      G (C, k k N)     = x (C, B h w) @ D,   dW[n, c, ky, kx] = G[c, (k-1-ky, k-1-kx, n)]

  (substitute y = oy + ky - p in the definitions). The input is used as it
  is, channel-major: no padded copy and no im2col of it in backward, whose
  copies cost more than the input gradient's wider columns save.

Inference batch norm arrives folded (``fold``): ``W' = scale W`` with
``scale = scales / (sqrt(rolling_variance) + eps)`` and biases ``shift =
biases - rolling_mean scale`` (darknet's fuse_batchnorm), so a conv+BN+
activation layer is one GEMM plus one epilogue while y is in cache. Each path
folds the scale into the form of W it reads, in one pass from W
(``folded_into``: the reordered filters, CNHW's [W | biases], Winograd's U a
block of filters at a time; only 1x1 layers keep a folded copy of W, which
they read), and remakes it only when W or the fold changed since the last
pass (``derived``: one comparison; none in a frozen network, whose W is
read-only).

The columns are recomputed in backward instead of being kept from forward
(80 MB for LeNet's second conv): from cache that costs less than reading
them back from memory.

An image whose columns alone exceed ``COLUMN_BYTES`` (a 4096x4096 input:
gigabytes) is processed in bands of ``l.band`` output rows, one image at a
time, on the NHWC path: band ``[r0, r1)`` reads padded input rows
``[r0 s, (r1 - 1) s + k)``, and its columns, y and input gradient cover only
those rows (``forward_banded`` / ``backward_banded``), so the workspace is one
padded image plus a band, whatever the image size. Winograd's scratch is
capped the same way, in bands of tile rows (``winograd.sizes``).
"""

import math
import time

import numpy as np

from . import winograd as wino
from .activations import activate, gradient
from .buffers import release, zeros
from .im2col import (
    add_from_padded_cnhw,
    add_from_padded_nhwc,
    col2im_cnhw,
    col2im_nhwc,
    im2col_cnhw,
    im2col_nhwc,
    to_padded_cnhw,
    to_padded_nhwc,
)
from .pool import tiled_band

CHUNK_BYTES = 4 << 20  # target size of one chunk's columns
COLUMN_BYTES = 64 << 20  # largest columns of one image; beyond, bands of output rows
BAND_BYTES = 3 << 20  # inference, CNHW: columns of one band of output rows (measured: 2-4 MB)
INFERENCE_BANDS = True  # inference, CNHW: one band of rows at a time (False: per chunk)
LAYOUT = "auto"  # column layout: "auto" (per layer), "nhwc" or "cnhw" (tests)
WINOGRAD = "auto"  # 3x3 stride 1: "auto" (measured per layer), "on" or "off"
WINOGRAD_TILE = 2  # the tile m of F(m x m, 3 x 3) that WINOGRAD = "on" forces
WINOGRAD_TILES = (2, 4)  # the tiles "auto" times against the columns (inference)
PLAN_RUNS = 3  # timed runs of each path per layer (best of): two flipped on a busy machine
KEPT_U_BYTES = COLUMN_BYTES  # inference: a larger U is made per pass, streamed (measure)
PLAN_TIE = 0.05  # a path this much slower than the fastest that keeps ...
PLAN_TIE_BYTES = 16 << 20  # ... at least this much less memory is taken instead
# training's shape rule (training_tile), in GEMM multiply-adds per output and channel:
WINOGRAD_TRAIN_COLUMNS_COST = 560  # the columns' copies (im2col, col2im, layouts)
WINOGRAD_TRAIN_TRANSFORM_COST = 680  # F(4,3)'s transforms, per output computed
WINOGRAD_TRAIN_TILES = 25  # images of fewer 4x4 tiles than this ...
WINOGRAD_TRAIN_SMALL_CHANNELS = 64  # ... also need c n / (c + n) >= this
SLOTS = ("xpad", "dxpad", "y", "cols", "dypad", "grads")


def plan(l):
    """Pick the layer's path (module docstring) and size its buffers and workspace."""
    k, s, n, c, g = l.size, l.stride, l.n, l.c, l.groups
    cg, ng, kk, rows = c // g, n // g, k * k * (c // g), l.out_h * l.out_w
    l.pointwise = k == 1 and l.pad == 0 and g == 1 and LAYOUT == "auto"
    l.winograd = None if k == 3 and s == 1 and g == 1 and LAYOUT == "auto" else 0
    if WINOGRAD != "auto" and l.winograd is None:
        l.winograd = WINOGRAD_TILE if WINOGRAD == "on" else 0
    # None: measured at the first backward of a Winograd layer
    l.winograd_backward = None if l.winograd is None else bool(l.winograd)
    l.folded = zeros(l.weights.shape) if l.batch_normalize else None
    l.direct = k == 1 and s == 1 and g == 1 and LAYOUT != "cnhw"  # 1x1: NHWC = columns
    l.cnhw = LAYOUT == "cnhw" or (LAYOUT == "auto" and s == 1 and k * cg < l.out_w and not l.direct)
    l.transposed = not l.cnhw and not l.direct and s == 1 and g == 1 and l.pad <= k - 1
    image_columns = 0 if l.direct else max(rows * kk, l.h * l.w * k * k * n if l.transposed else 0)
    l.band = 0
    if 4 * image_columns > COLUMN_BYTES:  # one image is too big: bands of rows, NHWC
        l.cnhw = l.transposed = False
        l.band = int(min(l.out_h, max(1, COLUMN_BYTES // (4 * l.out_w * max(kk, n)))))
    l.ordered = None if l.cnhw else zeros((n, k, k, cg))  # W as (n, ky, kx, c)
    l.ordered_grad = zeros((n, cg, k, k) if l.cnhw else (n, k, k, cg))
    l.chunk_grad = zeros((ng, kk))  # one chunk's, one group's
    if l.transposed:  # F (k, k, n, c), and G (c, k, k, n) of one chunk and summed
        l.flipped = zeros((k, k, n, c))
        l.flipped_grad = zeros((c, k, k, n))
        l.chunk_flipped_grad = zeros((c, k * k * n))
    # floats per image of each slot, in forward and in backward; a chunk of images
    # keeps its columns in cache. Forward takes larger chunks (fewer, longer GEMMs;
    # measured in docs/benchmark.md), with its output within CHUNK_BYTES (a first
    # layer was slower beyond 4 MB)
    q = k - 1 - l.pad
    padded = (l.h + 2 * l.pad) * (l.w + 2 * l.pad) * c
    columns = 0 if l.direct else max(rows * kk, l.h * l.w * k * k * n if l.transposed else 0)
    backward = [
        padded,
        padded,
        rows * n,
        columns,
        (l.out_h + 2 * q) * (l.out_w + 2 * q) * n if l.transposed else 0,
        ng * kk if l.cnhw else 0,
    ]  # CNHW dW: one GEMM per image
    forward = [padded, 0, 0 if l.cnhw else rows * n, 0 if l.direct else rows * kk, 0, 0]
    l.chunk = int(max(1, min(l.batch, CHUNK_BYTES // (4 * max(columns, rows * n)))))
    l.forward_chunk = int(
        max(
            1,
            min(
                l.batch, 2 * CHUNK_BYTES // (4 * max(forward[3], 1)), CHUNK_BYTES // (4 * rows * n)
            ),
        )
    )
    sizes = [max(f * l.forward_chunk, b * l.chunk) for f, b in zip(forward, backward, strict=True)]
    if l.band:  # one image at a time; y and the columns of one band
        l.chunk = l.forward_chunk = 1
        band_rows = l.band * l.out_w
        sizes = [padded, padded, band_rows * n, band_rows * kk, 0, 0]
    if l.cnhw:  # biases broadcast over the pixels; inference bands: [W | biases], ones
        l.bias_plane = zeros((n, rows))
        l.bias_weights = zeros((n, kk + 1))
        sizes[3] = max(sizes[3], (kk + 1) * cnhw_band_rows(l) * l.out_w)
    if l.pointwise:  # strided input, input gradient and per-image dW of a chunk
        l.chunk = l.forward_chunk = int(
            max(1, min(l.batch, CHUNK_BYTES // (4 * max(c * rows + n * c, 1))))
        )
        sizes = [l.chunk * c * rows, l.chunk * c * rows, 0, 0, 0, l.chunk * n * c]
    l.slots = dict(
        zip(SLOTS, (int(a) for a in np.cumsum([0] + sizes)), strict=False)
    )  # starts; the last cumsum is the end
    l.workspace_size = int(sum(sizes))
    l.winograd_weights = None
    l.weights_seen, l.prepared = None, set()  # derived weights remade at the first forward
    tiles = WINOGRAD_TILES if l.winograd is None else (l.winograd,) if l.winograd else ()
    l.winograd_plans = {
        tile: wino.sizes(l, tile, l.batch, CHUNK_BYTES, COLUMN_BYTES) for tile in tiles
    }
    for tile in tiles:  # Winograd's slots start at 0, over the columns' (never both at once)
        l.workspace_size = max(l.workspace_size, wino.workspace(l, tile))


def slot(l, net, name, shape):
    """A view of net.workspace: the named slot (see plan), shaped for this chunk."""
    start = l.slots[name]
    return net.workspace[start : start + math.prod(shape)].reshape(shape)


def scratch(l, net, images):
    """This chunk's padded input, its gradient, y (or dy) and columns; y is
    (rows, n) in NHWC order, (n, rows) in CNHW order."""
    hp, wp, rows = l.h + 2 * l.pad, l.w + 2 * l.pad, images * l.out_h * l.out_w
    kk = l.size**2 * l.c // l.groups
    if l.cnhw:
        padded = (l.c, images, hp, wp)
        return (
            slot(l, net, "xpad", padded),
            slot(l, net, "dxpad", padded),
            slot(l, net, "y", (l.n, rows)),
            slot(l, net, "cols", (kk, rows)),
        )
    xpad = slot(l, net, "xpad", (images, hp, wp, l.c))
    cols = xpad.reshape(rows, l.c) if l.direct else slot(l, net, "cols", (rows, kk))
    return (
        xpad,
        slot(l, net, "dxpad", (images, hp, wp, l.c)),
        slot(l, net, "y", (rows, l.n)),
        cols,
    )


def chunks(l, size):
    """(first, end, border) of each chunk of ``size`` images; ``border`` (the
    first chunk only): zero the padded slots' borders. Later chunks find them
    still zero: the slots are stacks of padded planes, whatever the image count."""
    for start in range(0, l.batch, size):
        yield start, min(start + size, l.batch), start == 0


def in_layout(l, array):
    """A chunk of NCHW rows (images, n, out_h*out_w) viewed in the order of y."""
    return array.transpose(1, 0, 2) if l.cnhw else array.transpose(0, 2, 1)


def forward(l, net, finish, fold=None):
    """l.output = W * input; with ``finish``, + biases and the activation, applied
    chunk by chunk while y is in cache. ``fold`` = (scale, shift): inference batch
    norm folded into the filters, ``W' = scale W``, biases ``shift`` (darknet's
    fuse_batchnorm), so BN costs no pass over the output."""
    weights, biases = l.weights, l.biases
    if not net.frozen:  # (frozen: W and the fold are read-only, what was made stays)
        derived(l, fold)
    scale = None  # each path folds it into the form of W it reads (folded_into)
    if fold is not None:
        scale, biases = fold
    pool = l.pool_after
    if pool is not None:  # set again below when this pass fills the pool's output
        pool.prepooled = False
    l.pooling = pool is not None and bool(finish) and not net.train
    if l.winograd is None:  # first pass: decide the layer's path for its life
        if net.train:
            l.winograd = training_tile(l)
            l.winograd_backward = bool(l.winograd)
        else:
            l.winograd = measure(l, net, finish, weights, biases, scale)
    if l.pointwise:
        forward_pointwise(l, net, finish, weights, biases, scale)
    elif l.winograd:
        forward_winograd(l, net, finish, weights, biases, scale)
    elif l.band:
        l.pooling = False  # an image too big for cache: the pool reads it itself
        forward_banded(l, net, finish, weights, biases, scale)
    else:
        forward_columns(l, net, finish, weights, biases, scale)
    if l.pooling:
        pool.prepooled = True


def folded_into(out, weights, scale):
    """out = ``weights`` (a view of W, filters first) with filter i times scale[i]
    (batch norm's fold, darknet's fuse_batchnorm), or W itself if ``scale`` is
    None: each path makes the form it reads (the reordered filters, CNHW's
    [W | biases], Winograd's U, or for 1x1 layers W folded) in one pass from W,
    with no folded copy of W beside it."""
    if scale is None:
        np.copyto(out, weights)
    else:
        np.multiply(weights, scale.reshape((-1,) + (1,) * (weights.ndim - 1)), out=out)


def folded_filters(l, weights, scale):
    """W with the fold (``l.folded``, made once per change), for the paths that read
    W itself in every pass (1x1; CNHW outside the inference bands)."""
    if scale is None:
        return weights
    if "folded" not in l.prepared:
        folded_into(l.folded, weights, scale)
        l.prepared.add("folded")
    return l.folded


def pool_part(l, images, r0, r1):
    """With ``l.pooling`` (inference, and a [maxpool] whose windows tile this
    layer's output right after it: ``l.pool_after``), that layer's output for
    ``images`` (a slice) and output rows [r0, r1) (whole windows), computed
    from this layer's just-finished part while it is in cache instead of
    from memory by the pool's own pass (which then skips: ``prepooled``)."""
    if not l.pooling:
        return
    pool = l.pool_after
    k, count = pool.size, images.stop - images.start
    x = l.output.reshape(l.batch, l.n, l.out_h, l.out_w)[images, :, r0:r1]
    target = pool.output.reshape(l.batch, l.n, pool.out_h, pool.out_w)[images]
    target = target[:, :, r0 // k : r1 // k]
    tiled_band(
        pool,
        x.reshape(count * l.n, r1 - r0, l.out_w),
        target.reshape(count * l.n, (r1 - r0) // k, pool.out_w),
        pool.pool_scratch,
    )


def derived(l, fold):
    """Forget the weights derived from W (l.prepared: the folded filters, their
    column order, Winograd's U) when W or the batch-norm fold differs from what
    they were made from. One comparison per pass (a third of the fold plus
    reorder it replaces, docs/benchmark.md); in-place edits, updates and
    loads are all seen."""
    scale = None if fold is None else fold[0]
    seen = l.weights_seen
    same = seen is not None and seen.dtype == l.weights.dtype and np.array_equal(l.weights, seen)
    if same and scale is None:
        same = l.scale_seen is None
    elif same:
        same = l.scale_seen is not None and np.array_equal(scale, l.scale_seen)
    if not same:
        if seen is None or seen.dtype != l.weights.dtype:
            l.weights_seen = np.empty_like(l.weights)
        np.copyto(l.weights_seen, l.weights)
        l.scale_seen = None if scale is None else scale.copy()
        l.prepared = set()


def training_tile(l):
    """The path of a layer whose first pass trains: 4 (F(4,3)) or 0 (the columns),
    from its shape alone, never a timing, so that two runs with the same seed (and
    a run resumed from a checkpoint) sum in the same order and stay byte-identical.

    A cost model per output pixel, with H = C N / (C + N) and w = 16 T / (out_h
    out_w) the outputs F(4,3) computes per output kept (T = ceil(out_h / 4)
    ceil(out_w / 4) tiles per image: w = 1 when 4 divides both sides)::

        columns  (C + N) (9 H + COLUMNS_COST)         GEMM, then copies ~ C + N
        F(4,3)   (C + N) w (2.25 H + TRANSFORM_COST)  36 / 16 multiplies per output

    F(4,3) when it is the cheaper, and, on images of fewer than
    WINOGRAD_TRAIN_TILES tiles, H >= WINOGRAD_TRAIN_SMALL_CHANNELS: a piece then
    holds many images, and the transforms cost more than the model says. The
    two costs are fitted to a training step (forward, both gradients) timed per
    layer in CPU time at one thread, on cifar.cfg's and mnist_yolo.cfg's layers
    and a grid of 3 to 512 channels at 4x4 to 128x128 (docs/benchmark.md): with
    w = 1, F(4,3) from H > 17.8 (32 -> 64 channels, not 32 -> 32); at 14x14
    (w = 1.31) from H = 54 (128 channels, not 96); at 10x10 (1.44) from 73;
    at 13x13 (1.51) from 84; at 6x6 (1.78) from 130. F(2,3) never won a
    training step (its 4 multiplies per output save less than its transforms
    cost), so training leaves it to inference's measured plan."""
    tiles = math.ceil(l.out_h / 4) * math.ceil(l.out_w / 4)
    waste = 16 * tiles / (l.out_h * l.out_w)
    h = l.c * l.n / (l.c + l.n)
    if tiles < WINOGRAD_TRAIN_TILES and h < WINOGRAD_TRAIN_SMALL_CHANNELS:
        return 0
    columns = 9 * h + WINOGRAD_TRAIN_COLUMNS_COST
    return 4 if waste * (2.25 * h + WINOGRAD_TRAIN_TRANSFORM_COST) < columns else 0


def measure(l, net, finish, weights, biases, scale):
    """The fastest path for this layer: 0 (the columns) or a Winograd tile; best
    of PLAN_RUNS alternated runs each, on ``plan_clock()``. A tile's transformed
    weights are made before each of its runs, outside the timing (a pass pays
    for them only when the weights change), and dropped after it, so that one
    tile's U at most is held at a time (F(4,3)'s is 4x the weights: holding
    both tiles' raised yolov3-tiny's peak by 75 MB), and never beside the
    columns' reordered filters, likewise made before each columns run and
    let go before each tile's; the winner's form is kept. Paths within
    PLAN_TIE of the fastest count as equally fast (best-of-3 timings on a
    shared machine differ by a few percent): one of those that keeps at least
    PLAN_TIE_BYTES less memory (``kept_bytes``) wins instead (darknet19's 7x7
    layers at batch 8 had F(2,3) with a 32 MB U, F(4,3) streamed and the
    columns within 10%, and the pick varied from run to run).
    A U above KEPT_U_BYTES is not kept at all when the tile takes the batch in
    one piece: that tile is timed, and runs, streamed (``l.winograd_streamed``:
    U made a block of filters at a time in each pass, wino.streamed_products),
    so that inference holds no layer's U beyond the columns' cap (darknet19's
    1024-filter layers: 72 MB each). The workspace pages the runs touched are
    given back at the end: the winner touches its own again."""
    times = {tile: [] for tile in (0, *WINOGRAD_TILES)}
    streams = {tile: bool(tile) and streams_u(l, tile) for tile in times}
    clock = plan_clock()
    for _ in range(PLAN_RUNS):
        for tile in times:
            l.winograd, l.winograd_weights = tile, None
            l.winograd_streamed = streams[tile]
            if tile and not streams[tile]:  # (a fresh U: winograd_weights makes it)
                winograd_weights(l, weights, scale)
            if tile:
                release_ordered(l)
            else:
                ordered_filters(l, weights, scale)
            tick = clock()
            if tile:
                forward_winograd(l, net, finish, weights, biases, scale)
            else:
                path = forward_banded if l.band else forward_columns
                path(l, net, finish, weights, biases, scale)
            times[tile].append(clock() - tick)
    fastest = best = min(times, key=lambda tile: min(times[tile]))
    kept = {tile: kept_bytes(l, tile, streams[tile]) for tile in times}
    for tile in times:  # as fast within the noise, and much less memory kept
        near = min(times[tile]) <= min(times[fastest]) * (1 + PLAN_TIE)
        if near and kept[fastest] - kept[tile] >= PLAN_TIE_BYTES and kept[tile] < kept[best]:
            best = tile
    l.winograd_streamed = streams[best]
    if best != l.winograd:  # the last run's tile is not the winner
        l.winograd, l.winograd_weights = best, None
        l.prepared.discard("winograd")
        if best and not streams[best]:
            winograd_weights(l, weights, scale)
    if best:
        release_ordered(l)
    release(net.workspace)  # the paths that lost leave no scratch resident
    return best


def kept_bytes(l, tile, streamed):
    """Bytes of the weights' form a path keeps: U (a^2 / 9 of W), none when
    streamed, the reordered filters or [W | biases] (about W) for the columns."""
    if not tile:
        return l.weights.nbytes
    return 0 if streamed else (tile + 2) ** 2 * l.weights.nbytes // 9


def ordered_filters(l, weights, scale=None):
    """l.ordered: the NHWC columns' W as (n, ky, kx, c), with the fold ``scale`` if
    given, made when missing (a Winograd path lets it go); None on CNHW, whose
    columns read W as it is."""
    if l.ordered is not None and "ordered" not in l.prepared:
        folded_into(l.ordered, weights.transpose(0, 2, 3, 1), scale)
        l.prepared.add("ordered")
    return l.ordered


def release_ordered(l):
    """Let the columns' reordered filters go (written: resident) until they are needed."""
    if l.ordered is not None and "ordered" in l.prepared:
        l.ordered = zeros(l.ordered.shape, l.ordered.dtype)
        l.prepared.discard("ordered")


def streams_u(l, tile):
    """Whether inference streams F(tile, 3)'s U instead of keeping it (measure)."""
    return 4 * (tile + 2) ** 2 * l.n * l.c > KEPT_U_BYTES and wino.one_piece(l, tile)


def plan_clock():
    """The clock ``measure`` times the paths with: this thread's CPU time when every
    BLAS in the process runs one thread (then all the work is this thread's, and
    a busy machine's other processes, which stretch wall time at random, are not
    counted: on a shared machine the wall-clock plan picked a path 25% slower
    on a 512 -> 1024 layer), else wall time (threadpoolctl missing, or BLAS
    threads whose CPU time is not this thread's)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return time.perf_counter
    threads = [p.get("num_threads") for p in threadpool_info() if p.get("user_api") == "blas"]
    return time.thread_time if threads and set(threads) == {1} else time.perf_counter


def forward_pointwise(l, net, finish, weights, biases, scale=None):
    """1x1, no padding: out_b (n, rows) = W (n, c) @ x_b (c, rows), on the NCHW
    input itself (stride s: its every s-th row and column, gathered per chunk)."""
    s, rows = l.stride, l.out_h * l.out_w
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.n, rows)
    w = folded_filters(l, weights, scale).reshape(l.n, l.c)
    for b0, b1, _ in chunks(l, l.forward_chunk):
        if s == 1:
            source = x[b0:b1].reshape(b1 - b0, l.c, rows)
        else:
            source = slot(l, net, "xpad", (b1 - b0, l.c, l.out_h, l.out_w))
            np.copyto(source, x[b0:b1, :, ::s, ::s][:, :, : l.out_h, : l.out_w])
            source = source.reshape(b1 - b0, l.c, rows)
        np.matmul(w, source, out=out[b0:b1])
        if finish:
            out[b0:b1] += biases[:, None]
            activate(out[b0:b1], l.activation)
            pool_part(l, slice(b0, b1), 0, l.out_h)


def winograd_weights(l, weights, scale=None):
    """U = G W Gt for the layer's tile (W with the fold ``scale``, if given, folded
    in a block of filters at a time), remade only when ``derived`` forgot it.
    Made at the first use of a tile (the measured plan tries two)."""
    a = l.winograd + 2
    if l.winograd_weights is None or len(l.winograd_weights) != a * a:
        l.winograd_weights = np.zeros((a * a, l.n, l.c), weights.dtype)
        l.prepared.discard("winograd")
    if "winograd" not in l.prepared:
        u = l.winograd_weights
        if scale is None:
            wino.weight_transform(weights, l.winograd, u)
        else:
            block = wino.stream_filters(l, l.winograd)
            for n0 in range(0, l.n, block):
                n1 = min(n0 + block, l.n)
                part = np.empty_like(weights[n0:n1])
                folded_into(part, weights[n0:n1], scale[n0:n1])
                done = np.empty((a * a, n1 - n0, l.c), u.dtype)
                wino.weight_transform(part, l.winograd, done)
                u[:, n0:n1] = done
        l.prepared.add("winograd")
    return l.winograd_weights


def forward_winograd(l, net, finish, weights, biases, scale=None):
    """3x3 stride 1 by Winograd F(m x m, 3 x 3), m = l.winograd (kernels/winograd.py),
    NCHW; a streamed U (inference) is made from ``weights`` in each pass, its
    products multiplied by ``scale`` (the batch-norm fold), if given."""
    streamed = l.winograd_streamed and not net.train
    u = None if streamed else winograd_weights(l, weights, scale)
    out = l.output.reshape(l.batch, l.n, l.out_h, l.out_w)
    finish = (biases, l.activation) if finish else None

    def images_done(b0, b1):
        pool_part(l, slice(b0, b1), 0, l.out_h)

    wino.forward(l, net, u, l.winograd, out, finish, images_done, (weights, scale))


def forward_cnhw_bands(l, net, finish, weights, biases, scale=None):
    """Inference on the CNHW path, one image and one band of ``cnhw_band_rows(l)``
    output rows at a time: the band's columns stay in cache between im2col and
    the GEMM, and its output between the GEMM and the activation. The biases
    ride in the GEMM, ``y = [W | b] @ [cols; 1]`` (a row of ones under the
    columns), so no pass adds them. Training keeps the per-chunk forward (its
    sums must follow the shape rule, module docstring)."""
    k, s, ng, cg, ow = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_w
    kk = k * k * cg
    capacity = (l.slots["dypad"] - l.slots["cols"]) // ((kk + 1) * ow)  # rows the slot holds
    band, rows = min(cnhw_band_rows(l), capacity), kk + 1 if finish else kk
    if l.pooling and band % l.pool_after.size:
        l.pooling = False  # bands of part windows (a slot too small): the pool's own pass
    weights = weights.reshape(l.n, -1)
    if finish:
        if "bias_weights" not in l.prepared:
            folded_into(l.bias_weights[:, :kk], weights, scale)
            l.prepared.add("bias_weights")
        l.bias_weights[:, kk] = biases
        weights = l.bias_weights
    else:
        weights = folded_filters(l, weights, scale).reshape(l.n, -1)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.n, l.out_h * ow)
    for b0, b1, border in chunks(l, l.forward_chunk):
        xpad = scratch(l, net, b1 - b0)[0]
        to_padded_cnhw(x[b0:b1], l.pad, xpad, border)
        for b in range(b1 - b0):
            for r0 in range(0, l.out_h, band):
                r1 = min(r0 + band, l.out_h)
                inputs, pixels = slice(r0 * s, (r1 - 1) * s + k), slice(r0 * ow, r1 * ow)
                y = out[b0 + b, :, pixels]  # (n, band pixels), rows of the NCHW output
                part = slot(l, net, "cols", (rows, (r1 - r0) * ow))
                part[kk:] = 1  # the biases' row (none without finish)
                for g in range(l.groups):
                    group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
                    im2col_cnhw(xpad[channels, b : b + 1, inputs], k, s, r1 - r0, ow, part[:kk])
                    np.matmul(weights[group], part, out=y[group])
                if finish:
                    activate(y, l.activation)
                    pool_part(l, slice(b0 + b, b0 + b + 1), r0, r1)


def cnhw_band_rows(l):
    """Output rows per band of forward_cnhw_bands: columns (and the biases' row)
    of about BAND_BYTES; whole windows of the pool after the layer, if any."""
    kk = l.size**2 * (l.c // l.groups) + 1
    rows = int(max(1, min(l.out_h, BAND_BYTES // (4 * kk * l.out_w))))
    if l.pool_after is not None:  # (its windows tile the output: size divides out_h)
        k = l.pool_after.size
        rows = max(k, rows - rows % k)
    return rows


def forward_columns(l, net, finish, weights, biases, scale=None):
    """im2col + GEMM, a chunk of images at a time (module docstring)."""
    if l.cnhw and not net.train and INFERENCE_BANDS:
        forward_cnhw_bands(l, net, finish, weights, biases, scale)
        return
    k, s, ng, cg, rows = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_h * l.out_w
    ordered = ordered_filters(l, weights, scale)
    weights = (folded_filters(l, weights, scale) if l.cnhw else ordered).reshape(l.n, -1)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.n, rows)
    if l.cnhw and finish:
        bias_plane = l.bias_plane
        np.copyto(bias_plane, biases[:, None])
    for b0, b1, border in chunks(l, l.forward_chunk):
        xpad, _, y, cols = scratch(l, net, b1 - b0)
        (to_padded_cnhw if l.cnhw else to_padded_nhwc)(x[b0:b1], l.pad, xpad, border)
        for g in range(l.groups):
            group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
            if l.cnhw:  # out_b (n, rows) = W @ cols_b, one GEMM per image, in place
                im2col_cnhw(xpad[channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(
                    weights[group],
                    cols.reshape(-1, b1 - b0, rows).transpose(1, 0, 2),
                    out=out[b0:b1, group],
                )
            else:  # y (rows, n) = cols @ W.T
                if not l.direct:
                    im2col_nhwc(xpad[..., channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(cols, weights[group].T, out=y[:, group])
        if l.cnhw:
            y = out[b0:b1]
        if finish:  # CNHW: a full plane of biases adds ~2.5x faster than a column
            y += bias_plane if l.cnhw else biases
            activate(y, l.activation)
        if not l.cnhw:
            target = in_layout(l, out[b0:b1])
            np.copyto(target, y.reshape(target.shape))
        if finish:
            pool_part(l, slice(b0, b1), 0, l.out_h)


def backward(l, net, finish):
    """weight_updates (and, with ``finish``, the activation gradient applied to
    l.delta chunk by chunk, and bias_updates) and net.delta (when not None)."""
    derived(l, None)  # backward follows an unfolded forward; a no-op check then
    if l.pointwise:
        backward_pointwise(l, net, finish)
        return
    if l.winograd and l.winograd_backward is None:  # first backward: time both
        l.winograd_backward = measure_backward(l, net, finish)
    if l.winograd and l.winograd_backward:
        backward_winograd(l, net, finish)
        return
    ordered_filters(l, l.weights)  # (let go if the forward ran Winograd)
    backward_columns(l, net, finish)


def measure_backward(l, net, finish):
    """Whether Winograd's backward beats the columns' on this layer, best of two
    runs each; every buffer a backward writes is restored after each run."""
    buffers = [l.delta, l.weight_updates, l.bias_updates]
    buffers += [] if net.delta is None else [net.delta]
    saved = [b.copy() for b in buffers]
    times = {False: [], True: []}
    run = {False: backward_columns, True: backward_winograd}
    ordered_filters(l, l.weights)
    for _ in range(2):
        for choice in (False, True):
            tick = time.perf_counter()
            run[choice](l, net, finish)
            times[choice].append(time.perf_counter() - tick)
            for b, copy in zip(buffers, saved, strict=True):
                np.copyto(b, copy)
    return min(times[True]) < min(times[False])


def backward_columns(l, net, finish):
    """backward by the columns: transposed, banded or per chunk (module docstring)."""
    if l.transposed and net.delta is not None:
        backward_transposed(l, net, finish)
        return
    if l.band:
        backward_banded(l, net, finish)
        return
    k, s, ng, cg, rows = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_h * l.out_w
    kk = k * k * cg
    delta = l.delta.reshape(l.batch, l.n, rows)
    grad = l.ordered_grad.reshape(l.n, -1)
    grad.fill(0)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    dx = None if net.delta is None else net.delta.reshape(l.batch, l.c, l.h, l.w)
    for b0, b1, border in chunks(l, l.chunk):
        xpad, dxpad, dy, cols = scratch(l, net, b1 - b0)
        if finish:  # delta *= f'(output), chunk by chunk
            gradient(l.output[b0:b1], l.activation, l.delta[b0:b1])
        if dx is not None or not l.cnhw:  # CNHW dW reads delta as it is
            source = in_layout(l, delta[b0:b1])
            np.copyto(dy.reshape(source.shape), source)
        (to_padded_cnhw if l.cnhw else to_padded_nhwc)(x[b0:b1], l.pad, xpad, border)
        if dx is not None and not l.direct:
            dxpad.fill(0)
        for g in range(l.groups):
            group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
            if l.cnhw:  # dW = sum over images of delta_b (n, rows) @ cols_b.T
                im2col_cnhw(xpad[channels], k, s, l.out_h, l.out_w, cols)
                parts = slot(l, net, "grads", (b1 - b0, ng, kk))
                np.matmul(
                    delta[b0:b1, group],
                    cols.reshape(-1, b1 - b0, rows).transpose(1, 2, 0),
                    out=parts,
                )
                np.add.reduce(parts, axis=0, out=l.chunk_grad)
            else:  # dW = dy.T @ cols
                if not l.direct:
                    im2col_nhwc(xpad[..., channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(dy[:, group].T, cols, out=l.chunk_grad)
            grad[group] += l.chunk_grad
            if dx is not None:
                input_gradient(l, g, dy, cols, dxpad)
        if dx is not None:
            add = add_from_padded_cnhw if l.cnhw else add_from_padded_nhwc
            add(dxpad, l.pad, dx[b0:b1])
    if finish:
        l.bias_updates += np.einsum("bnr->n", delta)
    l.weight_updates += l.ordered_grad if l.cnhw else l.ordered_grad.transpose(0, 3, 1, 2)


def backward_pointwise(l, net, finish):
    """1x1, no padding: dW = sum_b dy_b @ x_b.T, dx_b (every s-th pixel) += W.T @ dy_b."""
    s, n, c, rows = l.stride, l.n, l.c, l.out_h * l.out_w
    if finish:
        gradient(l.output, l.activation, l.delta)
        l.bias_updates += np.einsum("bnr->n", l.delta.reshape(l.batch, n, rows))
    delta = l.delta.reshape(l.batch, n, rows)
    x = net.input.reshape(l.batch, c, l.h, l.w)
    dx = None if net.delta is None else net.delta.reshape(l.batch, c, l.h, l.w)
    grad = l.weight_updates.reshape(n, c)
    w = l.weights.reshape(n, c)
    for b0, b1, _ in chunks(l, l.chunk):
        images = b1 - b0
        if s == 1:
            source = x[b0:b1].reshape(images, c, rows)
        else:
            source = slot(l, net, "xpad", (images, c, l.out_h, l.out_w))
            np.copyto(source, x[b0:b1, :, ::s, ::s][:, :, : l.out_h, : l.out_w])
            source = source.reshape(images, c, rows)
        parts = slot(l, net, "grads", (images, n, c))
        np.matmul(delta[b0:b1], source.transpose(0, 2, 1), out=parts)
        grad += np.add.reduce(parts, axis=0, out=l.chunk_grad)
        if dx is not None:
            dxs = slot(l, net, "dxpad", (images, c, rows))
            np.matmul(w.T, delta[b0:b1], out=dxs)
            if s == 1:
                dx[b0:b1] += dxs.reshape(images, c, l.h, l.w)
            else:
                dx[b0:b1, :, ::s, ::s][:, :, : l.out_h, : l.out_w] += dxs.reshape(
                    images, c, l.out_h, l.out_w
                )


def backward_winograd(l, net, finish):
    """Both gradients as the adjoint of the Winograd forward (minidark/kernels/winograd.py)."""
    if finish:
        gradient(l.output, l.activation, l.delta)
        l.bias_updates += np.einsum("bnr->n", l.delta.reshape(l.batch, l.n, -1))
    u = winograd_weights(l, l.weights)
    delta = l.delta.reshape(l.batch, l.n, l.out_h, l.out_w)
    dx = None if net.delta is None else net.delta.reshape(l.batch, l.c, l.h, l.w)
    wino.backward(l, net, u, l.winograd, delta, l.weight_updates, dx)


def input_gradient(l, g, dy, cols, dxpad):
    """Accumulate group g's -dL/d(input) of a chunk into dxpad (zeroed by the caller)."""
    k, s, ng, cg = l.size, l.stride, l.n // l.groups, l.c // l.groups
    group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
    weights = (l.weights if l.cnhw else l.ordered).reshape(l.n, -1)
    if l.cnhw:  # cols = W.T @ dy, scattered back
        np.matmul(weights[group].T, dy[group], out=cols)
        col2im_cnhw(cols, k, s, l.out_h, l.out_w, dxpad[channels])
    elif l.direct:  # the columns are the padded input itself
        np.matmul(dy, weights, out=dxpad.reshape(cols.shape))
    else:  # cols = dy @ W, scattered back
        np.matmul(dy[:, group], weights[group], out=cols)
        col2im_nhwc(cols, k, s, l.out_h, l.out_w, dxpad[..., channels])


def backward_transposed(l, net, finish):
    """Both gradients from the columns of the padded delta (module docstring)."""
    k, n, c, q, pixels = l.size, l.n, l.c, l.size - 1 - l.pad, l.h * l.w
    delta = l.delta.reshape(l.batch, n, l.out_h, l.out_w)
    x = net.input.reshape(l.batch, c, pixels)
    dx = net.delta.reshape(l.batch, c, l.h, l.w)
    np.copyto(l.flipped, l.weights[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
    flipped = l.flipped.reshape(-1, c)
    grad = l.flipped_grad.reshape(c, -1)
    grad.fill(0)
    for b0, b1, border in chunks(l, l.chunk):
        images = b1 - b0
        if finish:  # delta *= f'(output), chunk by chunk
            gradient(l.output[b0:b1], l.activation, l.delta[b0:b1])
        dypad = slot(l, net, "dypad", (images, l.out_h + 2 * q, l.out_w + 2 * q, n))
        columns = slot(l, net, "cols", (images * pixels, k * k * n))
        to_padded_nhwc(delta[b0:b1], q, dypad, border)
        im2col_nhwc(dypad, k, 1, l.h, l.w, columns)
        if images == 1:  # x (C, B h w): one image is already so
            channel_major = x[b0]
        else:
            channel_major = slot(l, net, "xpad", (c, images, pixels))
            np.copyto(channel_major, x[b0:b1].transpose(1, 0, 2))
        np.matmul(channel_major.reshape(c, -1), columns, out=l.chunk_flipped_grad)
        grad += l.chunk_flipped_grad
        dxn = slot(l, net, "dxpad", (images, l.h, l.w, c))  # dx, NHWC
        np.matmul(columns, flipped, out=dxn.reshape(-1, c))
        add_from_padded_nhwc(dxn, 0, dx[b0:b1])
    if finish:
        l.bias_updates += np.einsum("bnyx->n", delta)
    l.weight_updates += l.flipped_grad[:, ::-1, ::-1, :].transpose(3, 0, 1, 2)


def bands(l):
    """(first, end) output rows of each band, and the padded input rows it reads."""
    for r0 in range(0, l.out_h, l.band):
        r1 = min(r0 + l.band, l.out_h)
        yield r0, r1, slice(r0 * l.stride, (r1 - 1) * l.stride + l.size)


def forward_banded(l, net, finish, weights, biases, scale=None):
    """forward for an image too big for its columns: one image, one band of rows at a time."""
    k, s, ng, cg, w = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_w
    weights = ordered_filters(l, weights, scale).reshape(l.n, -1)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.n, l.out_h * w)
    xpad = slot(l, net, "xpad", (1, l.h + 2 * l.pad, l.w + 2 * l.pad, l.c))
    for b in range(l.batch):
        to_padded_nhwc(x[b : b + 1], l.pad, xpad, b == 0)
        for r0, r1, inputs in bands(l):
            rows = (r1 - r0) * w
            y, cols = slot(l, net, "y", (rows, l.n)), slot(l, net, "cols", (rows, k * k * cg))
            for g in range(l.groups):
                group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
                im2col_nhwc(xpad[:, inputs, :, channels], k, s, r1 - r0, w, cols)
                np.matmul(cols, weights[group].T, out=y[:, group])
            if finish:
                y += biases
                activate(y, l.activation)
            np.copyto(out[b, :, r0 * w : r1 * w].T, y)


def backward_banded(l, net, finish):
    """backward for an image too big for its columns: one image, one band of rows at a time."""
    k, s, ng, cg, w = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_w
    delta = l.delta.reshape(l.batch, l.n, l.out_h * w)
    grad = l.ordered_grad.reshape(l.n, -1)
    grad.fill(0)
    weights = l.ordered.reshape(l.n, -1)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    dx = None if net.delta is None else net.delta.reshape(l.batch, l.c, l.h, l.w)
    padded = (1, l.h + 2 * l.pad, l.w + 2 * l.pad, l.c)
    xpad, dxpad = slot(l, net, "xpad", padded), slot(l, net, "dxpad", padded)
    for b in range(l.batch):
        if finish:  # delta *= f'(output)
            gradient(l.output[b : b + 1], l.activation, l.delta[b : b + 1])
        to_padded_nhwc(x[b : b + 1], l.pad, xpad, b == 0)
        if dx is not None:
            dxpad.fill(0)
        for r0, r1, inputs in bands(l):
            rows = (r1 - r0) * w
            dy, cols = slot(l, net, "y", (rows, l.n)), slot(l, net, "cols", (rows, k * k * cg))
            np.copyto(dy, delta[b, :, r0 * w : r1 * w].T)
            for g in range(l.groups):
                group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
                im2col_nhwc(xpad[:, inputs, :, channels], k, s, r1 - r0, w, cols)
                np.matmul(dy[:, group].T, cols, out=l.chunk_grad)
                grad[group] += l.chunk_grad
                if dx is not None:  # cols = dy @ W, scattered back into the band's rows
                    np.matmul(dy[:, group], weights[group], out=cols)
                    col2im_nhwc(cols, k, s, r1 - r0, w, dxpad[:, inputs, :, channels])
        if dx is not None:
            add_from_padded_nhwc(dxpad, l.pad, dx[b : b + 1])
    if finish:
        l.bias_updates += np.einsum("bnr->n", delta)
    l.weight_updates += l.ordered_grad.transpose(0, 3, 1, 2)
