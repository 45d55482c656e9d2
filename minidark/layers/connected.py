"""[connected] (alias [conn]): a fully connected layer (connected_layer.c).

    output = activation(input @ weights.T + biases)     or, with batch_normalize,
    output = activation(BN(input @ weights.T))          (biases are BN's shift)

cfg keys: ``output`` (1), ``activation`` (logistic, darknet's default),
``batch_normalize`` (0). Weights are ``(outputs, inputs)``, initialised
U(-1, 1) * sqrt(2 / inputs); biases 0. The input is flattened in (c, h, w)
order. Backward, with ``delta`` = -dL/d(output)::

    delta *= f'(output)
    bias_updates   += sum_b delta                (or BN's backward)
    weight_updates += delta.T @ input
    net.delta      += delta @ weights            (when there is a previous layer)

.weights order: biases, weights, then scales, rolling_mean, rolling_variance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate, gradient
from ..kernels.bn import backward_bn, forward_bn, make_bn
from ..kernels.buffers import drawn, zeros
from ..layer import Layer
from ..optim import update_parameters
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network, UpdateArgs


@register_layer("connected", "conn")
def make_connected(options: Section, params: SizeParams) -> Layer:
    outputs = options.int("output", 1)
    if outputs < 1:
        raise options.error(f"output must be >= 1, got {outputs}", "output")
    batch, inputs = params.batch, params.inputs
    params.reserve(
        options,
        2 * batch * (outputs + inputs) + 6 * outputs * inputs,
        "output",
        f"({inputs:,} -> {outputs:,}: {outputs * inputs:,} weights)",
    )
    l = Layer(
        type="connected",
        batch=batch,
        inputs=inputs,
        outputs=outputs,
        h=1,
        w=1,
        c=inputs,
        out_h=1,
        out_w=1,
        out_c=outputs,
        activation=options.activation("activation", "logistic"),
        batch_normalize=options.bool("batch_normalize", False),
    )
    if params.h and params.w:
        l.h, l.w, l.c = params.h, params.w, params.c
    l.output = zeros((batch, outputs))
    l.delta = zeros((batch, outputs))
    scale = np.sqrt(2.0 / inputs)
    rng = params.net.rng
    l.weights = drawn(
        lambda count: rng.uniform(-1, 1, count), (outputs, inputs), lambda v: v * scale
    )
    l.biases = np.zeros(outputs, np.float32)
    l.weight_updates = zeros(l.weights.shape)
    l.bias_updates = np.zeros_like(l.biases)
    l.weight_grad = zeros(l.weights.shape)  # scratch: this batch's gradient
    l.input_grad = zeros((batch, inputs))
    l.saved = ("biases", "weights")
    if l.batch_normalize:
        make_bn(l, outputs, 1)
        l.saved += ("scales", "rolling_mean", "rolling_variance")
    l.desc = f"{inputs} -> {outputs}"
    l.flops = 2 * inputs * outputs
    l.forward, l.backward, l.update = forward_connected, backward_connected, update_connected
    return l


def forward_connected(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.inputs)
    np.matmul(x, l.weights.T, out=l.output)
    if l.batch_normalize:
        forward_bn(l, l.output, net.train)
    else:
        l.output += l.biases
    activate(l.output, l.activation)


def backward_connected(l: Layer, net: Network) -> None:
    gradient(l.output, l.activation, l.delta)
    if l.batch_normalize:
        backward_bn(l, l.delta)
    else:
        l.bias_updates += l.delta.sum(axis=0)
    x = net.input.reshape(l.batch, l.inputs)
    np.matmul(l.delta.T, x, out=l.weight_grad)
    l.weight_updates += l.weight_grad
    if net.delta is not None:
        np.matmul(l.delta, l.weights, out=l.input_grad)
        net.delta += l.input_grad.reshape(net.delta.shape)


def update_connected(l: Layer, args: UpdateArgs) -> None:
    update_parameters(l, args)
