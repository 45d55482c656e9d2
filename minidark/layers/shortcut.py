"""[shortcut]: residual addition of an earlier layer (shortcut_layer.c).

With ``x`` = the previous layer's output (this layer's shape) and ``s`` = the
output of layer ``from`` (cfg ``from=``; negative = relative to this layer)::

    output = f(alpha * x + beta * s)                      (same shapes)

The output has the previous layer's shape. When the shapes differ, darknet's
rule (blas.c:shortcut_cpu) applies, with integer ratios ``stride = w_s / w``
and ``sample = w / w_s`` (each at least 1; the same ratios must hold for the
heights) over the first ``min(c, c_s)`` channels and ``min(h, h_s) x
min(w, w_s)`` positions::

    out[k, j*sample, i*sample] = alpha * x[...] + beta * s[k, j*stride, i*stride]

(nearest-neighbour subsampling of a larger ``s``, or adding a smaller ``s``
onto a sparse grid); everywhere else ``out = x``. Then the activation.
Backward, with ``delta *= f'(output)``: ``net.delta += alpha * delta`` on the
overlapped positions and ``+= delta`` elsewhere; ``s.delta += beta * delta``
gathered back through the same index map. ``l.input_layers = (from,)``.

cfg keys: ``from`` (required), ``activation`` (linear), ``alpha`` (1),
``beta`` (1). Deliberate deviations from darknet: ``from`` out of range, or
width and height ratios that disagree (darknet's assert) are a ConfigError;
darknet's backward scales *all* of net.delta by alpha although its forward
applies alpha only on the overlapped positions -- minidark's backward is the
exact gradient of darknet's forward (identical unless alpha != 1 and the
shapes differ).
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


def _dims(layer_or_params, size):
    """(w, h, c) of an image, or 1 x 1 x size for a flat vector."""
    w, h, c = layer_or_params
    return (w, h, c) if w and h and c else (1, 1, size)


@register_layer("shortcut")
def make_shortcut(options: Section, params: SizeParams) -> Layer:
    value = options.int("from")
    index = params.index + value if value < 0 else value
    if not 0 <= index < params.index:
        raise options.error(
            f"from={value} resolves to index {index}, but only the earlier "
            f"layers 0..{params.index - 1} can be added",
            "from",
        )
    source = params.net.layers[index]
    w, h, c = _dims((params.w, params.h, params.c), params.inputs)
    w2, h2, c2 = _dims((source.out_w, source.out_h, source.out_c), source.outputs)
    for a, b in (((w2, h2), (w, h)), ((w, h), (w2, h2))):  # darknet's asserts, both ways
        if a[0] // b[0] != a[1] // b[1]:
            raise options.error(
                f"cannot add layer {index} ({w2}x{h2}x{c2}) to a {w}x{h}x{c} "
                f"input: width and height ratios differ",
                "from",
            )
    stride, sample = max(w2 // w, 1), max(w // w2, 1)
    minw, minh, minc = min(w, w2), min(h, h2), min(c, c2)
    batch = params.batch
    l = Layer(
        type="shortcut",
        batch=batch,
        inputs=w * h * c,
        outputs=w * h * c,
        w=w2,
        h=h2,
        c=c2,
        out_w=w,
        out_h=h,
        out_c=c,
        activation=options.activation("activation", "linear"),
        alpha=options.float("alpha", 1.0),
        beta=options.float("beta", 1.0),
        index_from=index,
        input_layers=(index,),
    )
    # index maps into the (c, h, w) views of this layer and of the source
    l.out_part = (
        slice(None),
        slice(0, minc),
        slice(0, minh * sample, sample),
        slice(0, minw * sample, sample),
    )
    l.from_part = (
        slice(None),
        slice(0, minc),
        slice(0, minh * stride, stride),
        slice(0, minw * stride, stride),
    )
    l.same_shape = (w, h, c) == (w2, h2, c2)
    l.output = zeros((batch, l.outputs))
    l.delta = zeros((batch, l.outputs))
    l.desc = f"from {index}"
    l.flops = 2 * l.outputs
    l.forward, l.backward = forward_shortcut, backward_shortcut
    return l


def _image(array, batch, w, h, c):
    return array.reshape(batch, c, h, w)


def forward_shortcut(l: Layer, net: Network) -> None:
    source = net.layers[l.index_from].output
    x = net.input.reshape(l.output.shape)
    if l.same_shape:
        np.multiply(source.reshape(l.output.shape), l.beta, out=l.output)
        if l.alpha == 1:
            l.output += x
        else:
            l.output += l.alpha * x
    else:
        np.copyto(l.output, x)
        out = _image(l.output, l.batch, l.out_w, l.out_h, l.out_c)[l.out_part]
        if l.alpha != 1:
            out *= l.alpha
        out += l.beta * _image(source, l.batch, l.w, l.h, l.c)[l.from_part]
    activate(l.output, l.activation)


def backward_shortcut(l: Layer, net: Network) -> None:
    gradient(l.output, l.activation, l.delta)
    if net.delta is not None:
        target = net.delta.reshape(l.delta.shape)
        if l.same_shape or l.alpha == 1:
            target += l.alpha * l.delta if l.alpha != 1 else l.delta
        else:
            target += l.delta
            part = _image(target, l.batch, l.out_w, l.out_h, l.out_c)[l.out_part]
            part += (l.alpha - 1) * _image(l.delta, l.batch, l.out_w, l.out_h, l.out_c)[l.out_part]
    source_delta = net.layers[l.index_from].delta
    if source_delta is not None:
        part = _image(source_delta, l.batch, l.w, l.h, l.c)[l.from_part]
        delta = _image(l.delta, l.batch, l.out_w, l.out_h, l.out_c)[l.out_part]
        if l.beta == 1:
            part += delta
        else:
            part += l.beta * delta
