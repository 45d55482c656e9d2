"""[batchnorm]: standalone batch normalization (batchnorm_layer.c), per channel.

    output = scales * (input - mean) / (sqrt(var) + 1e-6) + biases

with the batch statistics in training (``mean``, unbiased ``var`` over batch
and spatial positions, N = batch * h * w; rolling averages updated with
momentum .99) and the rolling statistics at inference; the math is
``minidark/bn.py``, shared with [convolutional] and [connected]. No cfg
keys; output shape = input shape, channels = the input's c (a flat input,
e.g. after [connected], is c channels of 1 x 1).

Backward is darknet's (bn.py), which is not quite the derivative of the
forward: it differentiates var as if divided by N (the forward divides by
N - 1) and uses ``sqrt(var + 1e-5)`` where the forward uses
``sqrt(var) + 1e-6``; the input gradient is off by O(1/N) relatively
(tests/layers/test_batchnorm.py bounds the gap). Scales and biases
gradients are exact.

Deliberately fixed (darknet's CPU [batchnorm] segfaults, never trains and
forgets its shift): x / x_norm are allocated, ``scales`` and ``biases`` are
trained by ``update`` (SGD with momentum, no decay, like conv BN), backward
*accumulates* into ``net.delta`` (darknet overwrote it). Saved arrays:
darknet's three, ``scales, rolling_mean, rolling_variance``, then
``biases`` appended after them -- so a .weights file written by darknet for
a network with [batchnorm] does not load (its size check fails) and a
minidark file does not load in darknet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.bn import backward_bn, forward_bn, make_bn
from ..kernels.buffers import zeros
from ..layer import Layer
from ..optim import update_parameters
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network, UpdateArgs


@register_layer("batchnorm")
def make_batchnorm(options: Section, params: SizeParams) -> Layer:
    h, w, c, batch = params.h, params.w, params.c, params.batch
    if not (h and w and c):  # flat input: one channel per value
        h, w, c = 1, 1, params.inputs
    l = Layer(
        type="batchnorm",
        batch=batch,
        h=h,
        w=w,
        c=c,
        out_h=h,
        out_w=w,
        out_c=c,
        inputs=h * w * c,
        outputs=h * w * c,
    )
    l.output = zeros((batch, l.outputs))
    l.delta = np.zeros((batch, l.outputs), np.float32)
    l.biases = np.zeros(c, np.float32)
    l.bias_updates = np.zeros(c, np.float32)
    make_bn(l, c, h * w)
    l.saved = ("scales", "rolling_mean", "rolling_variance", "biases")
    l.desc = f"{c} channels"
    l.flops = 4 * l.outputs
    l.forward, l.backward, l.update = forward_batchnorm, backward_batchnorm, update_batchnorm
    return l


def forward_batchnorm(l: Layer, net: Network) -> None:
    np.copyto(l.output, net.input.reshape(l.output.shape))
    forward_bn(l, l.output, net.train)


def backward_batchnorm(l: Layer, net: Network) -> None:
    backward_bn(l, l.delta)
    if net.delta is not None:
        net.delta += l.delta.reshape(net.delta.shape)


def update_batchnorm(l: Layer, args: UpdateArgs) -> None:
    update_parameters(l, args)
