"""[prelu] with a DELIBERATELY WRONG backward: the demo of a failing gradcheck.

A copy of examples/prelu.py whose backward forgets that the slope only
multiplies the negative inputs: it sums ``delta * x`` over all inputs
instead of ``delta * min(x, 0)``. Forward and training still "work" (the
loss goes down), which is why such bugs survive; the gradient check finds
it and names the array::

    minidark gradcheck examples/prelu_mnist.cfg --plugin examples/prelu_broken.py

Math, per channel c (a flat input of n values has n channels of one pixel)::

    out = x             where x > 0
    out = slope_c * x   where x <= 0

With ``delta`` = -dL/d(out) (darknet's sign: the NEGATIVE gradient)::

    slope_updates_c += sum over batch and pixels of delta * min(x, 0)
    net.delta       += delta * (1 where x > 0, slope_c where x <= 0)

cfg keys: ``slope`` (0.25, the initial value of every slope, as in
PyTorch's nn.PReLU). Output size = input size. Saved in .weights: the
slopes (one float per channel). The update is darknet's SGD with momentum
and no weight decay (minidark.optim.sgd.sgd_update), like biases.
"""

import numpy as np

from minidark import Layer, register_layer
from minidark.optim.sgd import sgd_update


@register_layer("prelu")
def make_prelu(options, params):
    batch, inputs = params.batch, params.inputs
    h, w, c = params.h, params.w, params.c
    if not (h and w and c):  # flat input: one channel per value
        h, w, c = 1, 1, inputs
    l = Layer(
        type="prelu",
        batch=batch,
        inputs=inputs,
        outputs=inputs,
        h=h,
        w=w,
        c=c,
        out_h=h,
        out_w=w,
        out_c=c,
    )
    l.slopes = np.full(c, options.float("slope", 0.25), np.float32)
    l.slope_updates = np.zeros(c, np.float32)
    l.output = np.zeros((batch, inputs), np.float32)
    l.delta = np.zeros((batch, inputs), np.float32)
    l.negative = np.zeros((batch, inputs), np.float32)  # min(x, 0), kept for backward
    l.gain = np.zeros((batch, inputs), np.float32)  # d out / d x, kept for backward
    l.saved = ("slopes",)  # .weights: these arrays, in order
    l.sgd_params = (("slopes", "slope_updates"),)  # what sgd_update steps
    l.desc = f"{c} slopes"
    l.flops = 2 * inputs
    l.forward, l.backward, l.update = forward_prelu, backward_prelu, update_prelu
    return l


def _views(l, array):
    """(batch, inputs) -> (batch, channels, pixels), a view (never stored on l)."""
    return array.reshape(l.batch, l.out_c, l.out_h * l.out_w)


def forward_prelu(l, net):
    x = _views(l, net.input)
    negative, gain = _views(l, l.negative), _views(l, l.gain)
    np.minimum(x, 0, out=negative)
    np.copyto(gain, l.slopes[:, None])  # slope_c where x <= 0 ...
    np.copyto(gain, 1, where=x > 0)  # ... and 1 where x > 0
    np.multiply(x, gain, out=_views(l, l.output))


def backward_prelu(l, net):
    delta = _views(l, l.delta)
    # BUG (deliberate): d out / d slope_c is min(x, 0), not x
    l.slope_updates += np.einsum("bcs,bcs->c", delta, _views(l, net.input))
    if net.delta is not None:  # layer 0 has no delta to pass on
        delta *= _views(l, l.gain)  # now -dL/dx
        net.delta += l.delta.reshape(net.delta.shape)  # accumulate, never assign


def update_prelu(l, args):
    sgd_update(l, args)
