"""[local]: a locally connected layer -- a convolution whose weights are not
shared between output positions (local_layer.c).

Dims legend: B batch, C input channels, n filters, k size, s stride,
L = out_h * out_w locations, K = C*k*k (darknet's column order c, ky, kx)::

    output[b, f, l] = f_act( sum_K weights[l, f, K] * cols[l, K, b] + biases[f, l] )
    cols[l, (c, ky, kx), b] = xpad[b, c, oy*s + ky, ox*s + kx]       l = (oy, ox)

Backward, with ``delta *= f'(output)``::

    bias_updates   += sum_b delta                       (per output element)
    weight_updates[l] += delta[l] (n x B) @ cols[l].T (B x K)
    net.delta      += col2im(weights[l].T @ delta[l])    (when there is a previous layer)

cfg keys: ``filters`` (1), ``size`` (1), ``stride`` (1), ``pad`` (0),
``activation`` (logistic). Output size, darknet's formula:
``out = (h - 1) / s + 1`` with ``pad``, else ``(h - size) / s + 1``.
Weights ``[L][n][C*k*k]``, biases ``[n][L]`` (one per output element);
.weights order: biases, weights. Update: darknet's SGD (minidark.optim.sgd).

Deliberate fixes of darknet's bugs: (1) darknet initialises only the first
location's weights (U(-1, 1) * sqrt(2 / (k*k*C))) and leaves the others 0;
minidark initialises every location that way. (2) darknet uses ``pad`` both
as a flag (for the output size) and as the pad amount in im2col, which only
agrees for size 3 (otherwise its columns do not match the output grid);
minidark keeps darknet's output size and pads by ``size / 2`` when
``pad`` is set (as the convolutional layer does), so every window is well
defined. For size 3 (the stock cfgs) the two agree exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate, gradient
from ..kernels.buffers import drawn, zeros
from ..kernels.im2col import add_from_padded_nhwc, col2im, to_padded_nhwc, window_view
from ..layer import Layer
from ..optim import update_parameters
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network, UpdateArgs


@register_layer("local")
def make_local(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    n, k = options.int("filters", 1), options.int("size", 1)
    stride, pad = options.int("stride", 1), options.bool("pad", False)
    activation = options.activation("activation", "logistic")
    for key, value in (("filters", n), ("size", k), ("stride", stride)):
        if value < 1:
            raise options.error(f"{key} must be >= 1, got {value}", key)
    h, w, c, batch = params.h, params.w, params.c, params.batch
    padding = k // 2 if pad else 0
    out_h = (h - 1) // stride + 1 if pad else (h - k) // stride + 1
    out_w = (w - 1) // stride + 1 if pad else (w - k) // stride + 1
    if out_h < 1 or out_w < 1:
        raise options.error(f"a {k}x{k} window does not fit the {w}x{h} input", "size")
    locations, K = out_h * out_w, c * k * k
    params.reserve(
        options,
        6 * locations * n * K + 5 * batch * locations * (n + K),
        "filters",
        f"({locations:,} locations x {n} filters x {K} weights each)",
    )
    l = Layer(
        type="local",
        batch=batch,
        h=h,
        w=w,
        c=c,
        out_h=out_h,
        out_w=out_w,
        out_c=n,
        inputs=h * w * c,
        outputs=locations * n,
        n=n,
        size=k,
        stride=stride,
        pad=pad,
        padding=padding,
        activation=activation,
        locations=locations,
    )
    scale = np.sqrt(2.0 / K)
    rng = params.net.rng
    l.weights = drawn(
        lambda count: rng.uniform(-1, 1, count), (locations, n, K), lambda v: v * scale
    )
    l.biases = np.zeros(l.outputs, np.float32)
    l.weight_updates = np.zeros_like(l.weights)
    l.bias_updates = np.zeros_like(l.biases)
    l.weight_grad = np.zeros_like(l.weights)  # scratch: this batch's gradient
    l.result = np.zeros((locations, n, batch), np.float32)  # scratch: (L, n, B) products
    l.output = zeros((batch, l.outputs))
    l.delta = np.zeros((batch, l.outputs), np.float32)
    l.saved = ("biases", "weights")
    l.padded_shape = (batch, h + 2 * padding, w + 2 * padding, c)
    l.workspace_size = 2 * batch * locations * K + int(np.prod(l.padded_shape))
    l.desc = f"{n} {k}x{k}/{stride}"
    l.flops = 2 * locations * n * K
    l.forward, l.backward, l.update = forward_local, backward_local, update_local
    return l


def _scratch(l, net):
    """net.workspace views: cols (L, K, B), im2col-layout cols, padded NHWC input."""
    size = l.batch * l.locations * l.c * l.size * l.size
    padded = int(np.prod(l.padded_shape))
    space = net.workspace
    return (
        space[:size].reshape(l.locations, -1, l.batch),
        space[size : 2 * size].reshape(l.batch * l.locations, -1),
        space[2 * size : 2 * size + padded].reshape(l.padded_shape),
    )


def _columns(l, net, cols, xpad):
    """cols (L, K, B) <- the windows of net.input, K in darknet's (c, ky, kx) order."""
    to_padded_nhwc(net.input.reshape(l.batch, l.c, l.h, l.w), l.padding, xpad)
    windows = window_view(xpad, l.size, l.stride, l.out_h, l.out_w)  # (B, oy, ox, ky, kx, C)
    np.copyto(
        cols.reshape(l.out_h, l.out_w, l.c, l.size, l.size, l.batch),
        windows.transpose(1, 2, 5, 3, 4, 0),
    )


def forward_local(l: Layer, net: Network) -> None:
    cols, _, xpad = _scratch(l, net)
    _columns(l, net, cols, xpad)
    np.matmul(l.weights, cols, out=l.result)  # (L, n, B)
    out = l.output.reshape(l.batch, l.n, l.locations)
    np.add(l.result.transpose(2, 1, 0), l.biases.reshape(l.n, l.locations), out=out)
    activate(l.output, l.activation)


def backward_local(l: Layer, net: Network) -> None:
    gradient(l.output, l.activation, l.delta)
    l.bias_updates += l.delta.sum(axis=0)
    cols, cols_nhwc, xpad = _scratch(l, net)
    _columns(l, net, cols, xpad)
    np.copyto(l.result, l.delta.reshape(l.batch, l.n, l.locations).transpose(2, 1, 0))
    np.matmul(l.result, cols.transpose(0, 2, 1), out=l.weight_grad)  # (L, n, K)
    l.weight_updates += l.weight_grad
    if net.delta is None:
        return
    np.matmul(l.weights.transpose(0, 2, 1), l.result, out=cols)  # (L, K, B)
    k = l.size
    np.copyto(
        cols_nhwc.reshape(l.batch, l.out_h, l.out_w, k, k, l.c),
        cols.reshape(l.out_h, l.out_w, l.c, k, k, l.batch).transpose(5, 0, 1, 3, 4, 2),
    )
    xpad.fill(0)
    col2im(cols_nhwc, k, l.stride, l.out_h, l.out_w, xpad)
    add_from_padded_nhwc(xpad, l.padding, net.delta.reshape(l.batch, l.c, l.h, l.w))


def update_local(l: Layer, args: UpdateArgs) -> None:
    update_parameters(l, args)
