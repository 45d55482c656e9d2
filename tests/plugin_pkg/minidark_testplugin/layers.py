"""Two trivial layers: [tp_double] (out = 2x) and [tp_negate] (out = -x).

[tp_double] registers itself with the decorator when the module is imported;
make_negate is left undecorated so the entry point ``tp_negate =
"minidark_testplugin.layers:make_negate"`` registers it by the entry
point's name.
"""

import numpy as np

from minidark import Layer, register_layer


def _make_scaled(options, params, factor, type):
    batch, inputs = params.batch, params.inputs
    l = Layer(
        type=type,
        **params.same_shape(),
        factor=factor,
    )
    l.output = np.zeros((batch, inputs), np.float32)
    l.delta = np.zeros((batch, inputs), np.float32)
    l.forward, l.backward = forward_scaled, backward_scaled
    return l


@register_layer("tp_double")
def make_double(options, params):
    return _make_scaled(options, params, 2.0, "tp_double")


def make_negate(options, params):
    return _make_scaled(options, params, -1.0, "tp_negate")


def forward_scaled(l, net):
    np.multiply(net.input.reshape(l.output.shape), l.factor, out=l.output)


def backward_scaled(l, net):
    if net.delta is not None:
        net.delta += l.factor * l.delta.reshape(net.delta.shape)
