"""[avgpool] (alias [avg]): global average pooling (avgpool_layer.c).

    output[b, c] = mean over (y, x) of input[b, c, y, x]
    net.delta[b, c, y, x] += delta[b, c] / (h * w)

No cfg keys (darknet's avgpool is global only). Output: 1 x 1 x c.
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


@register_layer("avgpool", "avg")
def make_avgpool(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    h, w, c, batch = params.h, params.w, params.c, params.batch
    l = Layer(
        type="avgpool",
        batch=batch,
        h=h,
        w=w,
        c=c,
        out_h=1,
        out_w=1,
        out_c=c,
        inputs=h * w * c,
        outputs=c,
    )
    l.output = zeros((batch, c))
    l.delta = np.zeros((batch, c), np.float32)
    l.desc = f"{w}x{h} -> 1x1"
    l.flops = h * w * c
    l.forward, l.backward = forward_avgpool, backward_avgpool
    return l


def forward_avgpool(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.c, l.h * l.w)
    np.sum(x, axis=2, out=l.output)
    l.output *= 1.0 / (l.h * l.w)


def backward_avgpool(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    dx = net.delta.reshape(l.batch, l.c, l.h * l.w)
    dx += (l.delta * (1.0 / (l.h * l.w)))[:, :, None]
