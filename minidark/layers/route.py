"""[route]: concatenate earlier layers' outputs along channels (route_layer.c).

For sources ``s_1 .. s_n`` (cfg ``layers=``, e.g. ``layers=-1,-3``; a negative
index is relative to this layer, a non-negative one is absolute), per batch
row::

    output[b] = concat(s_1.output[b], ..., s_n.output[b])      (in c, h, w order)

so with equal spatial sizes the result is the channel concatenation:
``out_w x out_h x (c_1 + ... + c_n)``. The output does not depend on
``net.input`` at all. Backward adds each slice of ``delta`` into its source's
delta (``s_i.delta += delta[:, slice_i]``), never into net.delta (unless the
previous layer is itself a source). ``l.input_layers`` lists the sources.

cfg keys: ``layers`` (required). Deliberate deviations from darknet: sources
with different spatial sizes, a missing ``layers``, or an index that is not an
earlier layer are a ConfigError naming the key (darknet silently makes a
0x0x0 layer, or segfaults).
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


@register_layer("route")
def make_route(options: Section, params: SizeParams) -> Layer:
    sources = []
    for value in options.ints("layers"):
        index = params.index + value if value < 0 else value
        if not 0 <= index < params.index:
            raise options.error(
                f"layer {value} resolves to index {index}, but only the "
                f"earlier layers 0..{params.index - 1} can be routed",
                "layers",
            )
        sources.append(index)
    layers = [params.net.layers[i] for i in sources]
    first = layers[0]
    out_c = first.out_c
    for index, layer in zip(sources[1:], layers[1:], strict=True):
        if (layer.out_w, layer.out_h) != (first.out_w, first.out_h):
            raise options.error(
                f"cannot concatenate layer {index} ({layer.out_w}x{layer.out_h}x{layer.out_c}) "
                f"with layer {sources[0]} ({first.out_w}x{first.out_h}x{first.out_c}): "
                f"spatial sizes differ",
                "layers",
            )
        out_c += layer.out_c
    sizes = [layer.outputs for layer in layers]
    outputs = sum(sizes)
    batch = params.batch
    l = Layer(
        type="route",
        batch=batch,
        inputs=outputs,
        outputs=outputs,
        out_w=first.out_w,
        out_h=first.out_h,
        out_c=out_c,
        input_layers=tuple(sources),
        input_sizes=tuple(sizes),
    )
    l.w, l.h, l.c = l.out_w, l.out_h, l.out_c
    l.output = zeros((batch, outputs))
    l.delta = zeros((batch, outputs))
    l.desc = "layers " + ",".join(str(i) for i in sources)
    l.forward, l.backward = forward_route, backward_route
    return l


def forward_route(l: Layer, net: Network) -> None:
    offset = 0
    for index, size in zip(l.input_layers, l.input_sizes, strict=True):
        source = net.layers[index].output.reshape(l.batch, size)
        np.copyto(l.output[:, offset : offset + size], source)
        offset += size


def backward_route(l: Layer, net: Network) -> None:
    offset = 0
    for index, size in zip(l.input_layers, l.input_sizes, strict=True):
        delta = net.layers[index].delta
        if delta is not None:
            target = delta.reshape(l.batch, size)
            target += l.delta[:, offset : offset + size]
        offset += size
