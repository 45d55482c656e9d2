"""[cost]: a regression loss head (cost_layer.c).

With ``d = truth - input`` per element and ``scale`` (1):

| type   | error (l.output)                 | delta (= -d error / d input) |
|--------|----------------------------------|------------------------------|
| sse    | d^2 / 2                          | d                            |
| masked | as sse; where truth == -1234 the input is set to -1234 (delta 0) |
| smooth | d^2 / 2 if abs(d) < 1 else abs(d) - 1/2 | d, or sign(d)         |
| L1     | abs(d)                           | sign(d)                      |

``cost = scale * sum(error)``; backward adds ``scale * delta`` to net.delta.
Deliberate fixes to darknet: its sse/smooth errors are d^2 and 2|d|-1 (twice
the loss whose gradient the delta is), its smooth delta has the wrong sign for
|d| >= 1, and its cost ignores ``scale``; here every (cost, delta) pair is a
true (loss, negative gradient) pair, so gradient checks pass. Deltas are
identical to darknet's (except smooth's sign fix). ``ratio``, ``thresh`` and
``noobj`` are read for cfg compatibility; like darknet's CPU path they do
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.blas import axpy
from ..kernels.tree import SECRET_NUM
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

COST_TYPES = ("sse", "masked", "smooth", "L1")


@register_layer("cost")
def make_cost(options: Section, params: SizeParams) -> Layer:
    batch, inputs = params.batch, params.inputs
    cost_type = options.str("type", "sse")
    if cost_type not in COST_TYPES:
        raise options.error(
            f"unknown cost type '{cost_type}'; known: {', '.join(COST_TYPES)}", "type"
        )
    l = Layer(
        type="cost",
        **params.same_shape(),
        cost_type=cost_type,
        scale=options.float("scale", 1.0),
        cost=0.0,
    )
    options.float("ratio", 0.0), options.float("noobj", 1.0), options.float("thresh", 0.0)
    if not (l.out_h and l.out_w):
        l.h = l.w = l.out_h = l.out_w = 1
        l.c = l.out_c = inputs
    l.output = np.zeros((batch, inputs), np.float32)
    l.delta = np.zeros((batch, inputs), np.float32)
    l.desc = cost_type
    l.forward, l.backward = forward_cost, backward_cost
    return l


def forward_cost(l: Layer, net: Network) -> None:
    if net.truth is None:
        l.cost = 0.0
        return
    x = net.input.reshape(l.batch, l.inputs)
    truth = net.truth.reshape(l.batch, l.inputs)
    if l.cost_type == "masked":
        x[truth == SECRET_NUM] = SECRET_NUM
    d = np.subtract(truth, x, out=l.delta)
    if l.cost_type == "L1":
        np.abs(d, out=l.output)
        np.sign(d, out=l.delta)
    elif l.cost_type == "smooth":
        absd = np.abs(d)
        inside = absd < 1
        np.copyto(l.output, np.where(inside, 0.5 * d * d, absd - 0.5))
        np.copyto(l.delta, np.where(inside, d, np.sign(d)))
    else:
        np.multiply(d, d, out=l.output)
        l.output *= 0.5
    l.cost = l.scale * float(l.output.sum(dtype=np.float64))


def backward_cost(l: Layer, net: Network) -> None:
    if net.delta is not None:
        axpy(l.scale, l.delta, net.delta)
