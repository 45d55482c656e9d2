"""[crop]: a random (training) or centred (inference) crop, and a random flip (crop_layer.c).

With an input ``w x h x c`` and a window ``crop_width x crop_height``::

    output[c, i, j] = input[c, dh + i, col(j)] * 2 - 1       (* 1 + 0 with noadjust=1)
    col(j) = dw + j,   or with a flip  w - dw - 1 - j

Training draws one offset ``dh ~ U{0..h-crop_height}``, ``dw ~ U{0..w-crop_width}``
and (with ``flip=1``) one coin for the flip per *batch*, not per image, as
darknet does, from ``net.rng`` (draw order: flip, dh, dw). Inference takes
the centre ``((h-crop_height)/2, (w-crop_width)/2)`` without a flip and draws
nothing. Output size: ``crop_width x crop_height x c``.

cfg keys: ``crop_height`` (1), ``crop_width`` (1), ``flip`` (0), ``noadjust``
(0); ``angle`` (0), ``saturation`` (1), ``exposure`` (1), ``shift`` (0) are
read for compatibility and, as on darknet's CPU path, do nothing (darknet
applies them only on the GPU).

Deliberate deviations from darknet: its crop has no delta and an empty
backward, so nothing upstream of a crop trains; minidark's backward scatters
``2 * delta`` (``1 *`` with noadjust) back into the cropped window of
net.delta -- the exact gradient, so a crop may sit inside a network. (darknet
cfgs put it first, where there is no net.delta and the two agree.) A window
larger than the input is a ConfigError (darknet: undefined behaviour).
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


@register_layer("crop")
def make_crop(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    w, h, c = params.w, params.h, params.c
    out_h, out_w = options.int("crop_height", 1), options.int("crop_width", 1)
    for key, size, limit in (("crop_height", out_h, h), ("crop_width", out_w, w)):
        if not 1 <= size <= limit:
            raise options.error(
                f"{key}={size} must be between 1 and the input's "
                f"{'height' if key == 'crop_height' else 'width'} {limit}",
                key,
            )
    batch = params.batch
    l = Layer(
        type="crop",
        batch=batch,
        w=w,
        h=h,
        c=c,
        out_w=out_w,
        out_h=out_h,
        out_c=c,
        inputs=w * h * c,
        outputs=out_w * out_h * c,
        flip=options.bool("flip", False),
        angle=options.float("angle", 0.0),
        saturation=options.float("saturation", 1.0, above=0),
        exposure=options.float("exposure", 1.0, above=0),
        shift=options.float("shift", 0.0),
        noadjust=options.bool("noadjust", False),
        scale=out_h / h,  # darknet's l.scale (used when resizing)
        dh=0,
        dw=0,
        flipped=False,
    )  # the window of the last forward
    l.multiplier, l.offset = (1.0, 0.0) if l.noadjust else (2.0, -1.0)
    l.output = zeros((batch, l.outputs))
    l.delta = np.zeros((batch, l.outputs), np.float32)
    l.desc = f"{out_w}x{out_h}" + (" flip" if l.flip else "")
    l.flops = 2 * l.outputs
    l.forward, l.backward = forward_crop, backward_crop
    return l


def _window(l, image):
    """The (batch, c, crop_height, crop_width) view of ``image`` the last forward used."""
    rows = image[:, :, l.dh : l.dh + l.out_h]
    if l.flipped:  # columns w-dw-1 down to w-dw-crop_width
        start = l.w - l.dw - l.out_w
        return rows[:, :, :, start : start + l.out_w][..., ::-1]
    return rows[:, :, :, l.dw : l.dw + l.out_w]


def forward_crop(l: Layer, net: Network) -> None:
    if net.train:
        l.flipped = bool(l.flip and net.rng.integers(0, 2))
        l.dh = int(net.rng.integers(0, l.h - l.out_h + 1))
        l.dw = int(net.rng.integers(0, l.w - l.out_w + 1))
    else:
        l.flipped, l.dh, l.dw = False, (l.h - l.out_h) // 2, (l.w - l.out_w) // 2
    x = net.input.reshape(l.batch, l.c, l.h, l.w)
    out = l.output.reshape(l.batch, l.c, l.out_h, l.out_w)
    np.multiply(_window(l, x), l.multiplier, out=out)
    if l.offset:
        out += l.offset


def backward_crop(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    target = _window(l, net.delta.reshape(l.batch, l.c, l.h, l.w))
    delta = l.delta.reshape(l.batch, l.c, l.out_h, l.out_w)
    if l.multiplier == 1:
        target += delta
    else:
        target += l.multiplier * delta
