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

Computed by im2col + GEMM, a chunk of images at a time (``minidark/kernels/conv.py``
has the paths and their formulas): per group ``y = cols @ W_g.T`` with the
columns of the padded input in NHWC order, or darknet's CNHW order for a
layer with few input channels; backward ``dW_g = dy_g.T @ cols`` and
``net.delta += col2im(dy_g @ W_g)``, or, for stride 1 and one group, both
gradients from the columns of the padded delta (a transposed convolution).
1x1 unpadded layers are one GEMM per image on the NCHW input; 3x3 stride-1
layers may run Winograd F(2x2, 3x3) or F(4x4, 3x3) instead, picked per layer by
timing the three at the first forward. Scratch lives in ``net.workspace`` (bounded: bands of
rows past ``conv.COLUMN_BYTES``); bias and activation are applied chunk by
chunk while the result is in cache. In inference, batch norm is folded into
the filters (darknet's ``fuse_batchnorm``): scale ``scales / (sqrt(var) + eps)``,
shift ``biases - mean * scale``; a backward after an inference forward first
rebuilds BN's caches with the unfolded forward.

Deliberately fixed: darknet's ``size == 1`` shortcut ignored stride and
padding and *overwrote* ``net.delta``; here 1x1 convolutions take the
general path (skipping only the im2col copy when stride is 1), and backward
always accumulates. A window larger than the padded input is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels import conv
from ..kernels.activations import activate, gradient
from ..kernels.bn import FORWARD_EPS, backward_bn, forward_bn, make_bn
from ..kernels.buffers import drawn, zeros
from ..kernels.im2col import conv_output_size
from ..layer import Layer
from ..optim import update_parameters
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network, UpdateArgs


@register_layer("convolutional", "conv")
def make_convolutional(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    n = options.int("filters", 1)
    k = options.int("size", 1)
    stride = options.int("stride", 1)
    padding = options.int("padding", 0)
    if options.bool("pad", False):
        padding = k // 2
    groups = options.int("groups", 1)
    h, w, c, batch = params.h, params.w, params.c, params.batch
    for key, value in (("filters", n), ("size", k), ("stride", stride), ("groups", groups)):
        if value < 1:
            raise options.error(f"{key} must be >= 1, got {value}", key)
    if padding < 0:
        raise options.error(f"padding must be >= 0, got {padding}", "padding")
    if c % groups or n % groups:
        raise options.error(
            f"groups={groups} must divide the input channels ({c}) and filters ({n})", "groups"
        )
    if h + 2 * padding < k or w + 2 * padding < k:
        raise options.error(
            f"size={k} is larger than the padded input {w}x{h} (padding {padding})", "size"
        )
    out_h, out_w = conv_output_size(h, k, stride, padding), conv_output_size(w, k, stride, padding)
    weights = n * (c // groups) * k * k  # N(0, 1) drawn in float64, then weights, updates, plan
    params.reserve(
        options,
        2 * batch * out_h * out_w * n + 6 * weights,
        "padding" if padding > max(h, w) else "size" if k * k > n else "filters",
        f"(output {out_w}x{out_h}x{n}, batch {batch}; {weights:,} weights)",
    )
    l = Layer(
        type="convolutional",
        batch=batch,
        h=h,
        w=w,
        c=c,
        n=n,
        size=k,
        stride=stride,
        pad=padding,
        groups=groups,
        out_h=out_h,
        out_w=out_w,
        out_c=n,
        inputs=h * w * c,
        outputs=out_h * out_w * n,
        activation=options.activation("activation", "logistic"),
        batch_normalize=options.bool("batch_normalize", False),
    )
    l.output = zeros((batch, l.outputs))
    l.delta = zeros((batch, l.outputs))
    kk = k * k * (c // groups)
    scale = np.sqrt(2.0 / kk)
    l.weights = drawn(params.net.rng.standard_normal, (n, c // groups, k, k), lambda v: v * scale)
    l.biases = np.zeros(n, np.float32)
    l.weight_updates = zeros(l.weights.shape)
    l.bias_updates = np.zeros_like(l.biases)
    l.saved = ("biases", "weights")
    if l.batch_normalize:
        make_bn(l, n, out_h * out_w)
        l.saved = ("biases", "scales", "rolling_mean", "rolling_variance", "weights")
    conv.plan(l)  # column layout, gradient path, chunk, workspace slots
    l.desc = f"{n} {k}x{k}/{stride}" + (f" g{groups}" if groups > 1 else "")
    l.flops = 2 * n * kk * out_h * out_w
    l.forward, l.backward, l.update = (
        forward_convolutional,
        backward_convolutional,
        update_convolutional,
    )
    return l


def forward_convolutional(l: Layer, net: Network) -> None:
    l.bn_folded = l.batch_normalize and not net.train
    if l.bn_folded:  # inference BN as an affine map folded into the filters: one pass
        scale = l.scales / (np.sqrt(l.rolling_variance) + FORWARD_EPS)
        conv.forward(l, net, finish=True, fold=(scale, l.biases - l.rolling_mean * scale))
        return
    conv.forward(l, net, finish=not l.batch_normalize)  # + biases, activation
    if l.batch_normalize:
        forward_bn(l, l.output, net.train)
        activate(l.output, l.activation)


def backward_convolutional(l: Layer, net: Network) -> None:
    if l.bn_folded:  # a backward after inference (rare): BN's caches, as forward_bn keeps them
        conv.forward(l, net, finish=False)
        forward_bn(l, l.output, False)
        activate(l.output, l.activation)
        l.bn_folded = False
    if l.batch_normalize:  # BN needs the whole batch's delta first
        gradient(l.output, l.activation, l.delta)
        backward_bn(l, l.delta)
    conv.backward(l, net, finish=not l.batch_normalize)  # activation gradient, biases


def update_convolutional(l: Layer, args: UpdateArgs) -> None:
    update_parameters(l, args)
