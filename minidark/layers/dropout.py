"""[dropout]: inverted dropout, in place on the previous layer (dropout_layer.c).

Training: draw ``r ~ U(0, 1)`` per value; a value with ``r < probability``
becomes 0, the rest are multiplied by ``scale = 1 / (1 - probability)``.
Backward applies the same mask and scale to the delta. Inference: identity.

As in darknet, the layer *shares* ``output`` and ``delta`` with the layer
before it, so it modifies that layer's output in place (whose backward then
sees the dropped values; harmless for relu/leaky, whose gradient only reads
the sign). cfg keys: ``probability`` (.5). For replaying recorded runs,
set ``l.next_rand`` to a ``(batch, inputs)`` array of uniforms: the next
training forward uses it instead of drawing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


@register_layer("dropout")
def make_dropout(options: Section, params: SizeParams) -> Layer:
    probability = options.float("probability", 0.5)
    if not 0 <= probability < 1:
        raise options.error(f"probability must be in [0, 1), got {probability}", "probability")
    batch, inputs = params.batch, params.inputs
    l = Layer(
        type="dropout",
        **params.same_shape(),
        probability=probability,
        scale=1.0 / (1.0 - probability),
        next_rand=None,
    )
    if params.net.layers:  # share the previous layer's buffers (in place)
        previous = params.net.layers[-1]
        l.output, l.delta = previous.output, previous.delta
    else:  # first layer: own buffers, forward copies the input
        l.output = np.zeros((batch, inputs), np.float32)
        l.delta = np.zeros((batch, inputs), np.float32)
    l.rand = np.zeros((batch, inputs), np.float32)
    l.mask = np.zeros((batch, inputs), np.float32)
    l.desc = f"p = {probability:.2f}"
    l.forward, l.backward = forward_dropout, backward_dropout
    return l


def forward_dropout(l: Layer, net: Network) -> None:
    out = l.output.reshape(l.batch, l.inputs)
    if out is not net.input and not np.shares_memory(out, net.input):
        np.copyto(out, net.input.reshape(out.shape))
    if not net.train:
        return
    if l.next_rand is not None:
        np.copyto(l.rand, np.asarray(l.next_rand, np.float32).reshape(l.rand.shape))
        l.next_rand = None
    else:
        net.rng.random(out=l.rand, dtype=l.rand.dtype)
    np.greater_equal(l.rand, np.float32(l.probability), out=l.mask, casting="unsafe")
    l.mask *= np.float32(l.scale)
    out *= l.mask


def backward_dropout(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    target = net.delta.reshape(l.mask.shape)
    if np.shares_memory(target, l.delta):  # darknet's in-place case
        target *= l.mask
    else:  # own buffers (first layer, gradcheck)
        target += l.delta.reshape(l.mask.shape) * l.mask
