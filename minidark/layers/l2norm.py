"""[l2norm]: scale each pixel's channel vector to unit length (l2norm_layer.c).

At every position, over the channels (a flat input is one vector)::

    r = sqrt(sum_c x_c^2),     y_c = x_c / r

Backward is the exact gradient (the Jacobian ``(I - y y^T) / r``)::

    net.delta += (delta - y * sum_c(y_c delta_c)) / r

cfg keys: none. Output shape = input shape. Deliberate deviations from
darknet: its backward passes delta straight through (``net.delta +=
delta``), ignoring the normalization's gradient; minidark adds the exact one
(gradcheck passes). An all-zero vector gives 0 instead of darknet's NaN
(``r`` is floored at the smallest normal float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.buffers import zeros
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

TINY = np.finfo(np.float32).tiny


@register_layer("l2norm")
def make_l2norm(options: Section, params: SizeParams) -> Layer:
    w, h, c = params.w, params.h, params.c
    if not (w and h and c):
        w, h, c = 1, 1, params.inputs
    batch, outputs = params.batch, w * h * c
    l = Layer(
        type="l2norm",
        batch=batch,
        w=w,
        h=h,
        c=c,
        out_w=w,
        out_h=h,
        out_c=c,
        inputs=outputs,
        outputs=outputs,
    )
    l.norms = np.zeros((batch, 1, w * h), np.float32)  # r at every position
    l.dots = np.zeros((batch, 1, w * h), np.float32)  # scratch: sum_c y_c delta_c
    l.output = zeros((batch, outputs))
    l.delta = np.zeros((batch, outputs), np.float32)
    l.flops = 3 * outputs
    l.forward, l.backward = forward_l2norm, backward_l2norm
    return l


def forward_l2norm(l: Layer, net: Network) -> None:
    shape = (l.batch, l.c, l.w * l.h)
    x, y = net.input.reshape(shape), l.output.reshape(shape)
    np.multiply(x, x, out=y)
    np.sum(y, axis=1, keepdims=True, out=l.norms)
    np.sqrt(l.norms, out=l.norms)
    np.maximum(l.norms, TINY, out=l.norms)
    np.divide(x, l.norms, out=y)


def backward_l2norm(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    shape = (l.batch, l.c, l.w * l.h)
    y, delta = l.output.reshape(shape), l.delta.reshape(shape)
    np.sum(y * delta, axis=1, keepdims=True, out=l.dots)
    grad = delta - y * l.dots
    grad /= l.norms
    net.delta.reshape(shape)[...] += grad
