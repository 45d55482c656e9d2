"""[logistic]: a loss head -- element-wise sigmoid with binary cross-entropy (logistic_layer.c).

    p = 1 / (1 + exp(-x))                                  (output)
    loss = -t log p - (1 - t) log(1 - p)                   (per element, l.loss)
    delta = t - p                                          (= -d loss / d x)
    cost = sum(loss) over the batch

Backward adds the delta unchanged into net.delta. Without truth (inference)
only the sigmoid is computed and cost is 0. cfg keys: none. Output shape =
input shape.

Deliberate deviation from darknet: the loss is computed from the logit as
``max(x, 0) - x t + log(1 + exp(-|x|))`` (the same value), so a saturated
sigmoid (p == 1.0 in float32) gives a large finite loss rather than darknet's
inf/NaN. Delta and output are darknet's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate
from ..kernels.buffers import zeros
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


@register_layer("logistic")
def make_logistic(options: Section, params: SizeParams) -> Layer:
    batch, inputs = params.batch, params.inputs
    l = Layer(
        type="logistic",
        **params.same_shape(),
        cost=0.0,
    )
    if not (l.out_h and l.out_w):
        l.h = l.w = l.out_h = l.out_w = 1
        l.c = l.out_c = inputs
    l.output = zeros((batch, inputs))
    l.delta = np.zeros((batch, inputs), np.float32)
    l.loss = np.zeros((batch, inputs), np.float32)
    l.desc = "x entropy"
    l.flops = 4 * inputs
    l.forward, l.backward = forward_logistic, backward_logistic
    return l


def forward_logistic(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.output.shape)
    np.copyto(l.output, x)
    activate(l.output, "logistic")
    if net.truth is None:
        l.cost = 0.0
        return
    truth = net.truth.reshape(l.output.shape)
    np.subtract(truth, l.output, out=l.delta)
    loss = l.loss  # max(x, 0) - x t + log1p(exp(-|x|))
    np.abs(x, out=loss)
    np.negative(loss, out=loss)
    np.exp(loss, out=loss)
    np.log1p(loss, out=loss)
    loss -= x * truth
    loss += np.maximum(x, 0)
    l.cost = float(loss.sum(dtype=np.float64))


def backward_logistic(l: Layer, net: Network) -> None:
    if net.delta is not None:
        net.delta += l.delta.reshape(net.delta.shape)
