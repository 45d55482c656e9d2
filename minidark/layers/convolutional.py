"""[convolutional] (alias [conv]): 2-D convolution by im2col + GEMM (convolutional_layer.c).

    output = activation(conv(input, weights) + biases)    or, with batch_normalize,
    output = activation(BN(conv(input, weights)))         (biases are BN's shift)

cfg keys (darknet defaults): ``filters`` (1), ``size`` (1), ``stride`` (1),
``pad`` (0; nonzero means ``padding = size / 2``, overriding ``padding``),
``padding`` (0), ``groups`` (1), ``activation`` (logistic), ``batch_normalize`` (0).
Output size: ``out = (in + 2 padding - size) / stride + 1``, ``filters`` channels.
Weights ``[filters][c / groups][size][size]`` (darknet's order, kept in
``l.weights`` and in .weights files), initialised N(0, 1) * sqrt(2 / (size^2 c / groups));
biases 0. .weights order: biases, [scales, rolling_mean, rolling_variance], weights.

Dims legend: B batch, C input channels, N filters, g groups, k size, s stride,
M = columns of a chunk = images * out_h * out_w, K = k*k*C/g. The batch is
processed in chunks of ``l.chunk`` images so the columns (M x K) stay in
cache. Per chunk and group, in the NHWC layout (``minidark/im2col.py``)::

    forward:  cols (M, K) = im2col(input)      y (M, N/g) = cols @ W_g.T
    backward: dy (M, N) = delta (NHWC)         weight_updates_g += dy_g.T @ cols
              cols = dy_g @ W_g                net.delta += col2im(cols)     (if net.delta)

with ``W_g`` the group's weights reordered to (N/g, ky, kx, c); in darknet's
CNHW layout, the same transposed: ``y (N/g, M) = W_g @ cols``, ``dW = dy_g @
cols.T``, ``cols = W_g.T @ dy_g``, with darknet's weights as they are.
``l.cnhw`` picks CNHW when its contiguous runs (out_w, stride 1) beat NHWC's
(k*C/g): a first layer with few channels. 1x1 stride-1 convolutions
(``l.direct``) use the NHWC input itself as the columns. With NHWC, stride 1,
one group and padding <= k-1 (``l.transposed``), the input gradient is a
convolution instead: ``dx = im2col(delta padded by k-1-padding) @ W
flipped`` (im2col's copies are cheaper than col2im's adds; +3% on LeNet).
The columns are recomputed in backward instead of being kept (80 MB for
LeNet's second conv): from cache, that costs less than reading them back
from memory. Scratch lives in ``net.workspace`` (``l.workspace_size`` floats).

Deliberately fixed: darknet's ``size == 1`` shortcut ignored stride and
padding and *overwrote* ``net.delta``; here 1x1 convolutions take the
general path (skipping only the im2col copy when stride is 1), and backward
always accumulates. A window larger than the padded input is an error.
"""
import math

import numpy as np

from ..activations import activate, gradient
from ..bn import backward_bn, forward_bn, make_bn
from ..im2col import (add_from_padded_cnhw, add_from_padded_nhwc, col2im_cnhw, col2im_nhwc,
                      conv_output_size, im2col_cnhw, im2col_nhwc, to_padded_cnhw,
                      to_padded_nhwc)
from ..layer import Layer
from ..registry import register_layer
from ..sgd import sgd_update

CHUNK_BYTES = 4 << 20        # target size of one chunk's columns
LAYOUT = "auto"              # column layout: "auto" (per layer), "nhwc" or "cnhw" (tests)


@register_layer("convolutional", "conv")
def make_convolutional(options, params):
    params.require_image(options)
    n = options.int("filters", 1)
    k = options.int("size", 1)
    stride = options.int("stride", 1)
    padding = options.int("padding", 0)
    if options.int("pad", 0):
        padding = k // 2
    groups = options.int("groups", 1)
    h, w, c, batch = params.h, params.w, params.c, params.batch
    for key, value in (("filters", n), ("size", k), ("stride", stride), ("groups", groups)):
        if value < 1:
            raise options.error(f"{key} must be >= 1, got {value}", key)
    if padding < 0:
        raise options.error(f"padding must be >= 0, got {padding}", "padding")
    if c % groups or n % groups:
        raise options.error(f"groups={groups} must divide the input channels ({c}) "
                            f"and filters ({n})", "groups")
    if h + 2 * padding < k or w + 2 * padding < k:
        raise options.error(f"size={k} is larger than the padded input "
                            f"{w}x{h} (padding {padding})", "size")
    out_h, out_w = conv_output_size(h, k, stride, padding), conv_output_size(w, k, stride, padding)
    l = Layer(type="convolutional", batch=batch, h=h, w=w, c=c, n=n, size=k, stride=stride,
              pad=padding, groups=groups, out_h=out_h, out_w=out_w, out_c=n,
              inputs=h * w * c, outputs=out_h * out_w * n,
              activation=options.activation("activation", "logistic"),
              batch_normalize=options.bool("batch_normalize", False))
    l.output = np.zeros((batch, l.outputs), np.float32)
    l.delta = np.zeros((batch, l.outputs), np.float32)
    cg, ng, kk = c // groups, n // groups, k * k * (c // groups)
    scale = np.sqrt(2.0 / kk)
    l.weights = (params.net.rng.standard_normal((n, cg, k, k)) * scale).astype(np.float32)
    l.biases = np.zeros(n, np.float32)
    l.weight_updates = np.zeros_like(l.weights)
    l.bias_updates = np.zeros_like(l.biases)
    # column layout (minidark/im2col.py): darknet's CNHW order when its contiguous runs
    # (out_w) are longer than the NHWC ones (k*c/groups), e.g. a first layer; else NHWC
    l.direct = k == 1 and stride == 1 and groups == 1 and LAYOUT != "cnhw"  # 1x1: NHWC = columns
    l.cnhw = LAYOUT == "cnhw" or (LAYOUT == "auto" and stride == 1 and k * cg < out_w
                                  and not l.direct)
    l.ordered = None if l.cnhw else np.zeros((n, k, k, cg), np.float32)  # W as (n, ky, kx, c)
    l.ordered_grad = np.zeros((n, cg, k, k) if l.cnhw else (n, k, k, cg), np.float32)
    l.chunk_grad = np.zeros((ng, kk), np.float32)             # one chunk's, one group's
    l.chunk_bias = np.zeros(n, np.float32)
    l.saved = ("biases", "weights")
    if l.batch_normalize:
        make_bn(l, n, out_h * out_w)
        l.saved = ("biases", "scales", "rolling_mean", "rolling_variance", "weights")
    # input gradient as a convolution of the padded delta with the flipped kernel
    # (im2col + GEMM, cheaper than GEMM + col2im's adds): NHWC, stride 1, one group
    l.transposed = (not l.cnhw and not l.direct and stride == 1 and groups == 1
                    and padding <= k - 1)
    l.flipped = np.zeros((k, k, n, c), np.float32) if l.transposed else None
    # net.workspace slots, floats per image: padded input, its gradient, y, columns,
    # padded delta (l.transposed); one chunk of images keeps its columns in cache
    rows, q = out_h * out_w, k - 1 - padding
    padded = (h + 2 * padding) * (w + 2 * padding) * c
    columns = 0 if l.direct else max(rows * kk, h * w * k * k * n if l.transposed else 0)
    sizes = [padded, padded, rows * n, columns,
             (out_h + 2 * q) * (out_w + 2 * q) * n if l.transposed else 0]
    l.chunk = int(max(1, min(batch, CHUNK_BYTES // (4 * max(columns, rows * n)))))
    l.slots = dict(zip(("xpad", "dxpad", "y", "cols", "dypad"),
                       (int(a) * l.chunk for a in np.cumsum([0] + sizes))))
    l.workspace_size = int(sum(sizes) * l.chunk)
    l.desc = f"{n} {k}x{k}/{stride}" + (f" g{groups}" if groups > 1 else "")
    l.flops = 2 * n * kk * rows
    l.forward, l.backward, l.update = forward_convolutional, backward_convolutional, update_convolutional
    return l


def slot(l, net, name, shape):
    """A view of net.workspace: the named slot (see make), shaped for this chunk."""
    start = l.slots[name]
    return net.workspace[start:start + math.prod(shape)].reshape(shape)


def scratch(l, net, images):
    """This chunk's padded input, its gradient, y and columns; y is (rows, n) in
    NHWC order, (n, rows) in CNHW order."""
    hp, wp, rows = l.h + 2 * l.pad, l.w + 2 * l.pad, images * l.out_h * l.out_w
    kk = l.size ** 2 * l.c // l.groups
    if l.cnhw:
        padded = (l.c, images, hp, wp)
        return (slot(l, net, "xpad", padded), slot(l, net, "dxpad", padded),
                slot(l, net, "y", (l.n, rows)), slot(l, net, "cols", (kk, rows)))
    xpad = slot(l, net, "xpad", (images, hp, wp, l.c))
    cols = xpad.reshape(rows, l.c) if l.direct else slot(l, net, "cols", (rows, kk))
    return (xpad, slot(l, net, "dxpad", (images, hp, wp, l.c)),
            slot(l, net, "y", (rows, l.n)), cols)


def chunks(l):
    for start in range(0, l.batch, l.chunk):
        yield start, min(start + l.chunk, l.batch)


def in_layout(l, array):
    """A chunk of NCHW rows (images, n, out_h*out_w) viewed in the order of y."""
    return array.transpose(1, 0, 2) if l.cnhw else array.transpose(0, 2, 1)


def forward_convolutional(l, net):
    k, s, ng, cg, rows = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_h * l.out_w
    if not l.cnhw:
        np.copyto(l.ordered, l.weights.transpose(0, 2, 3, 1))
    weights = (l.weights if l.cnhw else l.ordered).reshape(l.n, -1)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.n, rows)
    for b0, b1 in chunks(l):
        xpad, _, y, cols = scratch(l, net, b1 - b0)
        (to_padded_cnhw if l.cnhw else to_padded_nhwc)(x[b0:b1], l.pad, xpad)
        for g in range(l.groups):
            group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
            if l.cnhw:       # y (n, rows) = W @ cols
                im2col_cnhw(xpad[channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(weights[group], cols, out=y[group])
            else:            # y (rows, n) = cols @ W.T
                if not l.direct:
                    im2col_nhwc(xpad[..., channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(cols, weights[group].T, out=y[:, group])
        if not l.batch_normalize:          # bias and activation while y is in cache
            y += l.biases[:, None] if l.cnhw else l.biases
            activate(y, l.activation)
        target = in_layout(l, out[b0:b1])
        np.copyto(target, y.reshape(target.shape))
    if l.batch_normalize:
        forward_bn(l, l.output, net.train)
        activate(l.output, l.activation)


def backward_convolutional(l, net):
    k, s, ng, cg, rows = l.size, l.stride, l.n // l.groups, l.c // l.groups, l.out_h * l.out_w
    if l.batch_normalize:                  # BN needs the whole batch's delta first
        gradient(l.output, l.activation, l.delta)
        backward_bn(l, l.delta)
    delta = l.delta.reshape(l.batch, l.n, rows)
    grad = l.ordered_grad.reshape(l.n, -1)
    grad.fill(0)
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    dx = None if net.delta is None else net.delta.reshape(l.batch, l.c, l.h, l.w)
    if dx is not None and l.transposed:
        np.copyto(l.flipped, l.weights[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
    for b0, b1 in chunks(l):
        xpad, dxpad, dy, cols = scratch(l, net, b1 - b0)
        if not l.batch_normalize:          # delta *= f'(output), chunk by chunk
            gradient(l.output[b0:b1], l.activation, l.delta[b0:b1])
        source = in_layout(l, delta[b0:b1])
        np.copyto(dy.reshape(source.shape), source)
        if not l.batch_normalize:
            np.add.reduce(dy, axis=1 if l.cnhw else 0, out=l.chunk_bias)
            l.bias_updates += l.chunk_bias
        (to_padded_cnhw if l.cnhw else to_padded_nhwc)(x[b0:b1], l.pad, xpad)
        if dx is not None and not l.direct and not l.transposed:
            dxpad.fill(0)
        for g in range(l.groups):
            group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
            if l.cnhw:       # dW = dy @ cols.T
                im2col_cnhw(xpad[channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(dy[group], cols.T, out=l.chunk_grad)
            else:            # dW = dy.T @ cols
                if not l.direct:
                    im2col_nhwc(xpad[..., channels], k, s, l.out_h, l.out_w, cols)
                np.matmul(dy[:, group].T, cols, out=l.chunk_grad)
            grad[group] += l.chunk_grad
            if dx is not None:
                dxpad, pad = input_gradient(l, net, g, dy, cols, dxpad, b1 - b0)
        if dx is not None:
            add = add_from_padded_cnhw if l.cnhw else add_from_padded_nhwc
            add(dxpad, pad, dx[b0:b1])
    l.weight_updates += l.ordered_grad if l.cnhw else l.ordered_grad.transpose(0, 3, 1, 2)


def input_gradient(l, net, g, dy, cols, dxpad, images):
    """Accumulate group g's -dL/d(input) of a chunk into dxpad (zeroed by the caller);
    returns the buffer holding it and its padding."""
    k, s, ng, cg = l.size, l.stride, l.n // l.groups, l.c // l.groups
    group, channels = slice(g * ng, (g + 1) * ng), slice(g * cg, (g + 1) * cg)
    weights = (l.weights if l.cnhw else l.ordered).reshape(l.n, -1)
    if l.cnhw:              # cols = W.T @ dy, scattered back
        np.matmul(weights[group].T, dy[group], out=cols)
        col2im_cnhw(cols, k, s, l.out_h, l.out_w, dxpad[channels])
    elif l.direct:          # the columns are the padded input itself
        np.matmul(dy, weights, out=dxpad.reshape(cols.shape))
    elif l.transposed:      # dx (NHWC) = im2col(delta padded by k-1-pad) @ flipped W
        q = k - 1 - l.pad
        dypad = slot(l, net, "dypad", (images, l.out_h + 2 * q, l.out_w + 2 * q, l.n))
        columns = slot(l, net, "cols", (images * l.h * l.w, k * k * l.n))
        dx = slot(l, net, "dxpad", (images, l.h, l.w, l.c))          # unpadded
        to_padded_nhwc(dy.reshape(images, l.out_h, l.out_w, l.n).transpose(0, 3, 1, 2), q, dypad)
        im2col_nhwc(dypad, k, 1, l.h, l.w, columns)
        np.matmul(columns, l.flipped.reshape(-1, l.c), out=dx.reshape(-1, l.c))
        return dx, 0
    else:                   # cols = dy @ W, scattered back
        np.matmul(dy[:, group], weights[group], out=cols)
        col2im_nhwc(cols, k, s, l.out_h, l.out_w, dxpad[..., channels])
    return dxpad, l.pad


def update_convolutional(l, args):
    sgd_update(l, args)
