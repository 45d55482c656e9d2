"""[upsample]: nearest-neighbour upsampling, or sum-pool downsampling (upsample_layer.c).

With ``s = stride`` (2) and ``scale`` (1)::

    s > 0:  output[c, y, x] = scale * input[c, y // s, x // s]       out = (w*s, h*s, c)
    s < 0:  ("reverse", s = |stride|) the adjoint, a scaled sum-pool:
            output[c, y, x] = scale * sum_{dy, dx < s} input[c, y*s + dy, x*s + dx]
                                                                     out = (w // s, h // s, c)

In reverse mode the last ``w % s`` columns and ``h % s`` rows of the input
are ignored (darknet, for such sizes, indexes the input as if it were
``(h//s*s) x (w//s*s)``, i.e. with the wrong row length: a bug not mirrored).
Backward is the adjoint of each: ``net.delta += scale * (sum over each
s x s block of delta)`` for s > 0, ``net.delta[block] += scale * delta`` for s < 0.

cfg keys: ``stride`` (2), ``scale`` (1). Deliberate deviations from darknet:
its reverse-mode backward *overwrites* net.delta; minidark accumulates like
every layer, so a reversed upsample may feed a route/shortcut fan-out.
``stride=0`` is a ConfigError (darknet builds a 0x0 layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..kernels.buffers import zeros
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


@register_layer("upsample")
def make_upsample(options: Section, params: SizeParams) -> Layer:
    stride = options.int("stride", 2)
    if stride == 0:
        raise options.error("stride must be nonzero (negative means downsample)", "stride")
    params.require_image(options)
    w, h, c, s = params.w, params.h, params.c, abs(stride)
    reverse = stride < 0
    out_w, out_h = (w // s, h // s) if reverse else (w * s, h * s)
    if out_w < 1 or out_h < 1:
        raise options.error(f"a {w}x{h} input is smaller than the reverse stride {s}", "stride")
    batch = params.batch
    params.reserve(
        options,
        3 * batch * out_w * out_h * c,
        "stride",
        f"(output {out_w}x{out_h}x{c}, batch {batch})",
    )
    l = Layer(
        type="upsample",
        batch=batch,
        w=w,
        h=h,
        c=c,
        out_w=out_w,
        out_h=out_h,
        out_c=c,
        inputs=w * h * c,
        outputs=out_w * out_h * c,
        stride=s,
        reverse=reverse,
        scale=options.float("scale", 1.0),
    )
    l.output = zeros((batch, l.outputs))
    l.delta = zeros((batch, l.outputs))
    if not reverse:
        l.input_grad = zeros((batch, l.inputs))  # scratch for backward
    l.desc = f"/{s}" if reverse else f"{s}x"
    l.flops = l.outputs if not reverse else l.inputs
    l.forward, l.backward = forward_upsample, backward_upsample
    return l


def _blocks(image, h, w, s):
    """(batch, c, H, W) with H >= h*s, W >= w*s -> a (batch, c, h, s, w, s) view of its blocks."""
    b, c, y, x = image.strides
    return as_strided(image, image.shape[:2] + (h, s, w, s), (b, c, y * s, y, x * s, x))


def forward_upsample(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.c, l.out_h, l.out_w)
    if l.reverse:  # sum-pool each s x s block
        blocks = _blocks(x, l.out_h, l.out_w, l.stride)
        np.sum(blocks, axis=(3, 5), out=out)
        if l.scale != 1:
            out *= l.scale
    else:  # repeat each pixel into an s x s block
        blocks = _blocks(out, l.h, l.w, l.stride)
        np.multiply(x[:, :, :, None, :, None], l.scale, out=blocks)


def backward_upsample(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    target = net.delta.reshape(l.batch, l.c, l.h, l.w)
    delta = l.delta.reshape(l.batch, l.c, l.out_h, l.out_w)
    if l.reverse:
        blocks = _blocks(target, l.out_h, l.out_w, l.stride)
        blocks += (delta if l.scale == 1 else l.scale * delta)[:, :, :, None, :, None]
    else:
        summed = l.input_grad.reshape(target.shape)
        np.sum(_blocks(delta, l.h, l.w, l.stride), axis=(3, 5), out=summed)
        if l.scale != 1:
            summed *= l.scale
        target += summed
