"""[deconvolutional] (alias [deconv]): transposed convolution (deconvolutional_layer.c).

Each input pixel scatters a k x k patch per output channel::

    out[b, n, iy*s - p + ky, ix*s - p + kx] += W[c, n, ky, kx] * x[b, c, iy, ix]

(positions outside the output dropped), then ``+ biases`` (or batch norm,
whose shift is the bias), then the activation. Output size, darknet's:
``out = (in - 1) * stride + size - 2 * padding``.

cfg keys (darknet defaults): ``filters`` (1), ``size`` (1), ``stride`` (1),
``pad`` (0; nonzero means ``padding = size / 2``, overriding ``padding``),
``padding`` (0), ``activation`` (logistic), ``batch_normalize`` (0).
Weights are stored ``(c_in, n_out, size, size)`` -- transposed compared with
a convolution -- and .weights order is a conv's: biases, [scales,
rolling_mean, rolling_variance], weights. darknet's init: 0.02 N(0, 1) scaled
by out_h out_w / (h w); biases 0.

Computed as the adjoint of a convolution, in darknet's CNHW column order
(dims: B batch, C inputs channels, N filters, P = B h w input pixels)::

    xc   (C, P)       = x in CNHW order
    cols (N k k, P)   = W.reshape(C, N k k).T @ xc
    out             = col2im(cols) into the zero-padded output, interior kept

Backward, with ``delta`` = -dL/d(output) times the activation derivative::

    D  (N k k, P)  = im2col(delta padded by p)
                     D[(n,ky,kx), (b,iy,ix)] = delta[b, n, iy s - p + ky, ix s - p + kx]
    weight_updates += (xc @ D.T).reshape(C, N, k, k)
    net.delta      += W.reshape(C, N k k) @ D         (back to (B, C, h, w); accumulates)

Deliberately fixed: darknet's load_weights divides by an unset ``groups``
(0) for this layer and crashes; here weights load like any other layer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate, gradient
from ..kernels.bn import backward_bn, forward_bn, make_bn
from ..kernels.buffers import drawn, zeros
from ..kernels.im2col import col2im_cnhw, im2col_cnhw
from ..layer import Layer
from ..optim import update_parameters
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network, UpdateArgs


@register_layer("deconvolutional", "deconv")
def make_deconvolutional(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    n = options.int("filters", 1)
    k = options.int("size", 1)
    stride = options.int("stride", 1)
    activation = options.activation("activation", "logistic")
    batch_normalize = options.bool("batch_normalize", False)
    pad = options.bool("pad", False)
    padding = options.int("padding", 0)
    if pad:
        padding = k // 2
    for key, value in (("filters", n), ("size", k), ("stride", stride)):
        if value < 1:
            raise options.error(f"{key} must be >= 1, got {value}", key)
    if padding < 0:
        raise options.error(f"padding must be >= 0, got {padding}", "padding")
    h, w, c, batch = params.h, params.w, params.c, params.batch
    out_h, out_w = (h - 1) * stride + k - 2 * padding, (w - 1) * stride + k - 2 * padding
    if out_h < 1 or out_w < 1:
        raise options.error(
            f"padding={padding} leaves no output: (in - 1) * stride + size "
            f"- 2 * padding = {out_w}x{out_h}",
            "pad" if pad else "padding",
        )
    pixels, columns = batch * h * w, n * k * k
    params.reserve(
        options,
        2 * batch * out_h * out_w * n
        + 6 * c * columns
        + 2 * columns * pixels
        + n * batch * (out_h + 2 * padding) * (out_w + 2 * padding)
        + 2 * c * pixels,
        "stride" if stride > max(k, n) else "size" if k * k > n else "filters",
        f"(output {out_w}x{out_h}x{n}, batch {batch}; {c * columns:,} weights)",
    )
    l = Layer(
        type="deconvolutional",
        batch=batch,
        h=h,
        w=w,
        c=c,
        n=n,
        size=k,
        stride=stride,
        pad=padding,
        out_h=out_h,
        out_w=out_w,
        out_c=n,
        inputs=h * w * c,
        outputs=out_h * out_w * n,
        activation=activation,
        batch_normalize=batch_normalize,
    )
    l.output = zeros((batch, l.outputs))
    l.delta = np.zeros((batch, l.outputs), np.float32)
    l.weights = drawn(
        params.net.rng.standard_normal, (c, n, k, k), lambda v: v * 0.02 * (out_h * out_w) / (h * w)
    )
    l.biases = np.zeros(n, np.float32)
    l.weight_updates = np.zeros_like(l.weights)
    l.bias_updates = np.zeros_like(l.biases)
    l.saved = ("biases", "weights")
    if batch_normalize:
        make_bn(l, n, out_h * out_w)
        l.saved = ("biases", "scales", "rolling_mean", "rolling_variance", "weights")
    l.input_cnhw = np.zeros((c, pixels), np.float32)  # xc, kept for backward
    l.cols = np.zeros((n * k * k, pixels), np.float32)  # forward cols, backward D
    l.padded = np.zeros((n, batch, out_h + 2 * padding, out_w + 2 * padding), np.float32)
    l.input_grad = np.zeros((c, pixels), np.float32)
    l.desc = f"{n} {k}x{k}/{stride}"
    l.flops = 2 * c * n * k * k * h * w
    l.forward, l.backward, l.update = forward_deconv, backward_deconv, update_deconv
    return l


def forward_deconv(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    xc = l.input_cnhw.reshape(l.c, l.batch, l.h, l.w)
    np.copyto(xc, x.transpose(1, 0, 2, 3))
    np.matmul(l.weights.reshape(l.c, -1).T, l.input_cnhw, out=l.cols)
    l.padded.fill(0)
    col2im_cnhw(l.cols, l.size, l.stride, l.h, l.w, l.padded)
    p = l.pad
    out = l.output.reshape(l.batch, l.n, l.out_h, l.out_w)
    np.copyto(out, l.padded[:, :, p : p + l.out_h, p : p + l.out_w].transpose(1, 0, 2, 3))
    if l.batch_normalize:
        forward_bn(l, l.output, net.train)
    else:
        out += l.biases[:, None, None]
    activate(l.output, l.activation)


def backward_deconv(l: Layer, net: Network) -> None:
    gradient(l.output, l.activation, l.delta)
    delta = l.delta.reshape(l.batch, l.n, l.out_h, l.out_w)
    if l.batch_normalize:
        backward_bn(l, l.delta)
    else:
        l.bias_updates += delta.sum(axis=(0, 2, 3))
    p = l.pad
    l.padded.fill(0)  # the border stays zero: positions darknet's col2im dropped
    np.copyto(l.padded[:, :, p : p + l.out_h, p : p + l.out_w], delta.transpose(1, 0, 2, 3))
    im2col_cnhw(l.padded, l.size, l.stride, l.h, l.w, l.cols)
    l.weight_updates += (l.input_cnhw @ l.cols.T).reshape(l.weights.shape)
    if net.delta is not None:
        np.matmul(l.weights.reshape(l.c, -1), l.cols, out=l.input_grad)
        dx = l.input_grad.reshape(l.c, l.batch, l.h, l.w).transpose(1, 0, 2, 3)
        net.delta.reshape(l.batch, l.c, l.h, l.w)[...] += dx


def update_deconv(l: Layer, args: UpdateArgs) -> None:
    update_parameters(l, args)
