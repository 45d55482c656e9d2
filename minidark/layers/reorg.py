"""[reorg]: darknet's space/depth reshuffle (reorg_layer.c, blas.c:reorg_cpu/flatten).

darknet's ``reorg_cpu(x, w, h, c, batch, s, forward, out)`` is a permutation
between a ``(c, h, w)`` index ``(k, j, i)`` and a ``(c/s^2, h*s, w*s)`` index
``(k % c', j*s + o/s, i*s + o%s)`` with ``c' = c/s^2``, ``o = k / c'``; both
index the same flat buffer size. The layer calls it with its *input* sizes
``(w, h, c)``, so, per image, with ``s`` = ``stride``:

* default (``out = w/s x h/s x c*s^2``): the input buffer is read as
  ``(c', h*s, w*s)`` and the output buffer is written as ``(c, h, w)``::

      output[(o*c' + k') * h*w + j*w + i] = input[k' * h*s*w*s + (j*s + o/s) * w*s + i*s + o%s]

  (this is *not* a plain space-to-depth of the input image: YOLOv2 was
  trained with exactly this shuffle, so it is reproduced as is);
* ``reverse=1`` (``out = w*s x h*s x c/s^2``): the inverse direction on the
  real shapes, a depth-to-space -- ``output[k', j*s + o/s, i*s + o%s] =
  input[o*c' + k', j, i]``;
* ``flatten=1``: per image ``(c, h*w) -> (h*w, c)`` (with ``reverse``: back);
* ``extra=N``: the input copied into the first ``inputs`` values of an output
  of ``inputs + N`` values (the rest stay 0); darknet's sizes are 0x0x0.

Backward applies the inverse permutation (copy for ``extra``) and adds.

cfg keys: ``stride`` (1), ``reverse`` (0), ``flatten`` (0), ``extra`` (0).
Deliberate deviations from darknet: its backward *overwrites* net.delta and
tests ``reverse`` before ``extra`` (forward tests them the other way round);
minidark accumulates and uses the forward's precedence (flatten, extra,
reverse). Sizes the shuffle cannot map one-to-one (``c`` not divisible by
``s^2``, or ``h``/``w`` not divisible by ``s`` without reverse) are a
ConfigError (darknet reads and writes out of bounds).
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


@register_layer("reorg")
def make_reorg(options: Section, params: SizeParams) -> Layer:
    stride = options.int("stride", 1)
    reverse, flatten = options.bool("reverse", False), options.bool("flatten", False)
    extra = options.int("extra", 0)
    params.require_image(options)
    if stride < 1:
        raise options.error(f"stride must be >= 1, got {stride}", "stride")
    if extra < 0:
        raise options.error(f"extra must be >= 0, got {extra}", "extra")
    w, h, c, s = params.w, params.h, params.c, stride
    if reverse:
        out_w, out_h, out_c = w * s, h * s, c // (s * s)
    else:
        out_w, out_h, out_c = w // s, h // s, c * s * s
    inputs = w * h * c
    outputs = out_w * out_h * out_c
    if not extra and (c % (s * s) or outputs != inputs):
        raise options.error(
            f"stride {s} cannot reorganise a {w}x{h}x{c} input: channels must "
            f"be divisible by {s * s}" + ("" if reverse else f" and width, height by {s}"),
            "stride",
        )
    if extra:
        out_w = out_h = out_c = 0
        outputs = inputs + extra
    batch = params.batch
    params.reserve(
        options,
        2 * batch * outputs,
        "extra" if extra else "stride",
        f"({outputs:,} outputs, batch {batch})",
    )
    l = Layer(
        type="reorg",
        batch=batch,
        w=w,
        h=h,
        c=c,
        out_w=out_w,
        out_h=out_h,
        out_c=out_c,
        inputs=inputs,
        outputs=outputs,
        stride=s,
        reverse=reverse,
        flatten=flatten,
        extra=extra,
    )
    l.output = zeros((batch, outputs))
    l.delta = np.zeros((batch, outputs), np.float32)
    l.desc = (
        "flatten" if flatten else f"extra {extra}" if extra else f"x{s}" if reverse else f"/{s}"
    )
    l.forward, l.backward = forward_reorg, backward_reorg
    return l


# The shuffle in both directions, as numpy views on flat (batch, c*h*w) buffers,
# with (w, h, c) the sizes darknet passes to reorg_cpu and c' = c / s^2:
#   packed:   (batch, s, s, c', h, w)       index (o/s, o%s, k', j, i) = channel o*c'+k'
#   unpacked: (batch, c', h, s, w, s)       index (k', j, o/s, i, o%s)
def _packed(array, l):
    s = l.stride
    return array.reshape(l.batch, s, s, l.c // (s * s), l.h, l.w)


def _unpacked(array, l):
    s = l.stride
    return array.reshape(l.batch, l.c // (s * s), l.h, s, l.w, s)


TO_PACKED = (0, 3, 5, 1, 2, 4)  # unpacked axes -> packed order
TO_UNPACKED = (0, 3, 4, 1, 5, 2)  # packed axes -> unpacked order


def _transpose_hw_c(array, l, to_hwc):
    shape = (l.batch, l.c, l.h * l.w) if to_hwc else (l.batch, l.h * l.w, l.c)
    return array.reshape(shape).transpose(0, 2, 1)


def forward_reorg(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.inputs)
    if l.flatten:  # output (hw, c) from (c, hw), or back with reverse
        np.copyto(
            l.output.reshape(l.batch, -1), _transpose_hw_c(x, l, not l.reverse).reshape(l.batch, -1)
        )
    elif l.extra:
        np.copyto(l.output[:, : l.inputs], x)
    elif l.reverse:  # darknet reorg_cpu(forward=1): unpacked[out] = packed[in]
        np.copyto(_unpacked(l.output, l), _packed(x, l).transpose(TO_UNPACKED))
    else:  # darknet reorg_cpu(forward=0): packed[out] = unpacked[in]
        np.copyto(_packed(l.output, l), _unpacked(x, l).transpose(TO_PACKED))


def backward_reorg(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    target = net.delta.reshape(l.batch, l.inputs)
    delta = l.delta
    if l.flatten:
        target += _transpose_hw_c(delta, l, l.reverse).reshape(l.batch, -1)
    elif l.extra:
        target += delta[:, : l.inputs]
    elif l.reverse:
        _packed(target, l)[...] += _unpacked(delta, l).transpose(TO_PACKED)
    else:
        _unpacked(target, l)[...] += _packed(delta, l).transpose(TO_UNPACKED)
