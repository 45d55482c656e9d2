"""[normalization] (alias [lrn]): local response normalization across channels
(normalization_layer.c).

At every pixel, over the channels k = 0..C-1, with ``h = (size-1)/2``,
``m = size/2`` and the window ``W(k) = [k-h, k+m]`` clipped to ``[0, C)``::

    norm_k = kappa + alpha * (sum_{j in W(k)} x_j^2  -  [m < C] x_m^2)
    y_k    = x_k * norm_k^(-beta)

``alpha`` is not divided by ``size``. The ``- x_m^2`` term is darknet's: its
running-sum loop seeds channel 0 with channels ``0..m-1`` and then adds and
drops one channel per step, so channel ``m`` is never added but is
subtracted once the window has passed it. minidark reproduces darknet's
forward exactly (so darknet-trained weights give the same outputs); with the
default alpha the term is tiny, but ``norm`` can become negative (NaN) for
inputs above ~1/sqrt(alpha), as in darknet.

Backward is the EXACT gradient of that forward, with ``g_k = delta_k x_k
norm_k^(-beta-1)``::

    net.delta_j += delta_j norm_j^(-beta)
                   - 2 alpha beta x_j (sum_{k: j in W(k)} g_k - [j == m] sum_k g_k)

cfg keys: ``alpha`` (.0001), ``beta`` (.75), ``kappa`` (1), ``size`` (5).
Deliberate deviations from darknet: darknet's backward is an approximation
(``net.delta = delta * norm^-beta``, dropping the second term) and
*overwrites* net.delta; minidark adds the exact gradient (gradcheck passes).
With ``size/2 > C`` darknet reads past the channel array; minidark clips the
window to the existing channels.
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


@register_layer("normalization", "lrn")
def make_normalization(options: Section, params: SizeParams) -> Layer:
    alpha, beta = options.float("alpha", 0.0001), options.float("beta", 0.75)
    kappa, size = options.float("kappa", 1.0), options.int("size", 5)
    if size < 1:
        raise options.error(f"size must be >= 1, got {size}", "size")
    w, h, c = params.w, params.h, params.c
    if not (w and h and c):
        w, h, c = 1, 1, params.inputs
    batch, outputs = params.batch, w * h * c
    l = Layer(
        type="normalization",
        batch=batch,
        w=w,
        h=h,
        c=c,
        out_w=w,
        out_h=h,
        out_c=c,
        inputs=outputs,
        outputs=outputs,
        alpha=alpha,
        beta=beta,
        kappa=kappa,
        size=size,
    )
    k = np.arange(c)
    l.window_lo = np.maximum(k - (size - 1) // 2, 0)  # W(k) = [lo, hi)
    l.window_hi = np.minimum(k + size // 2 + 1, c)
    l.reach_lo = np.maximum(k - size // 2, 0)  # {k : j in W(k)} = [lo, hi)
    l.reach_hi = np.minimum(k + (size - 1) // 2 + 1, c)
    l.missing = size // 2 if size // 2 < c else None  # darknet's never-added channel
    l.norms = np.zeros((batch, outputs), np.float32)
    l.sums = np.zeros((batch, c + 1, w * h), np.float32)  # scratch: prefix sums over channels
    l.output = zeros((batch, outputs))
    l.delta = np.zeros((batch, outputs), np.float32)
    l.desc = f"size {size}"
    l.flops = outputs * (size + 3)
    l.forward, l.backward = forward_normalization, backward_normalization
    return l


def _window_sums(l, values, lo, hi, out):
    """out[:, k] = sum_{j in [lo_k, hi_k)} values[:, j], via prefix sums over channels."""
    sums = l.sums
    sums[:, 0] = 0
    np.cumsum(values, axis=1, out=sums[:, 1:])
    np.subtract(sums[:, hi], sums[:, lo], out=out)


def forward_normalization(l: Layer, net: Network) -> None:
    shape = (l.batch, l.c, l.w * l.h)
    x = net.input.reshape(shape)
    norms = l.norms.reshape(shape)
    out = l.output.reshape(shape)
    np.multiply(x, x, out=out)  # out as scratch: x^2
    _window_sums(l, out, l.window_lo, l.window_hi, norms)
    if l.missing is not None:
        norms -= out[:, l.missing : l.missing + 1]
    norms *= l.alpha
    norms += l.kappa
    np.power(norms, -l.beta, out=out)
    out *= x


def backward_normalization(l: Layer, net: Network) -> None:
    if net.delta is None:
        return
    shape = (l.batch, l.c, l.w * l.h)
    x, norms = net.input.reshape(shape), l.norms.reshape(shape)
    delta, target = l.delta.reshape(shape), net.delta.reshape(shape)
    g = delta * x * np.power(norms, -l.beta - 1)
    reach = np.empty_like(g)
    _window_sums(l, g, l.reach_lo, l.reach_hi, reach)
    if l.missing is not None:
        reach[:, l.missing] -= l.sums[:, -1]  # sum over all k of g_k
    reach *= x
    reach *= -2 * l.alpha * l.beta
    target += reach
    target += delta * np.power(norms, -l.beta)
