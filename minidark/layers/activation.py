"""[activation]: apply an activation function (activation_layer.c).

``output = f(input)``; backward ``delta *= f'(output)`` then
``net.delta += delta``. cfg keys: ``activation`` (linear). Deliberate fix:
darknet *overwrites* net.delta here, which breaks a layer whose output feeds
several consumers (route, shortcut); minidark accumulates, like every layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate, gradient
from ..kernels.buffers import zeros
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


@register_layer("activation")
def make_activation(options: Section, params: SizeParams) -> Layer:
    batch, inputs = params.batch, params.inputs
    l = Layer(
        type="activation",
        **params.same_shape(),
        activation=options.activation("activation", "linear"),
    )
    l.output = zeros((batch, inputs))
    l.delta = np.zeros((batch, inputs), np.float32)
    l.desc = l.activation
    l.flops = inputs
    l.forward, l.backward = forward_activation, backward_activation
    return l


def forward_activation(l: Layer, net: Network) -> None:
    np.copyto(l.output, net.input.reshape(l.output.shape))
    activate(l.output, l.activation)


def backward_activation(l: Layer, net: Network) -> None:
    gradient(l.output, l.activation, l.delta)
    if net.delta is not None:
        net.delta += l.delta.reshape(net.delta.shape)
