"""[softmax] (alias [soft]): the loss head (softmax_layer.c).

Forward, per group of ``n = inputs / groups`` consecutive values (or per
group of a ``tree=`` hierarchy, or per pixel across channels with
``spatial=1``), with temperature T::

    p_i = exp((x_i - max x) / T) / sum_j exp((x_j - max x) / T)

The Jacobian is ``dp_i/dx_j = p_i (delta_ij - p_j) / T``. With the
cross-entropy ``L = -sum_i t_i log p_i`` and one-hot (sum-to-one) truth per
group, ``dL/dx_i = (p_i - t_i) / T``. darknet writes, and minidark keeps,

    delta = truth - output                  (the negative gradient at T = 1)
    loss  = -truth * log(output);  cost = sum(loss)

so at T != 1 the delta lacks the 1/T factor (darknet's behaviour, pinned by
its reference vectors). Backward adds the delta unchanged into net.delta
(``axpy``): ``t - p`` is already the gradient with respect to the logits.

cfg keys: ``groups`` (1), ``temperature`` (1), ``noloss`` (0: with 1 no
delta or cost is computed), ``spatial`` (0), ``tree`` (none; a darknet tree
file, ``name parent`` per line). As on darknet's GPU path, truth entries
equal to -1234 (groups of a tree with no positive label) are masked out of
delta and loss; darknet's CPU path does not mask them and trains on garbage.
log is clamped at the smallest float32 so a zero probability gives a large
finite loss rather than inf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.blas import axpy
from ..kernels.buffers import zeros
from ..kernels.tree import SECRET_NUM, read_tree
from ..layer import Layer
from ..registry import register_layer

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

TINY = np.finfo(np.float32).tiny


@register_layer("softmax", "soft")
def make_softmax(options: Section, params: SizeParams) -> Layer:
    batch, inputs = params.batch, params.inputs
    l = Layer(
        type="softmax",
        **params.same_shape(),
        groups=options.int("groups", 1),
        temperature=options.float("temperature", 1.0, above=0),
        noloss=options.bool("noloss", False),
        spatial=options.bool("spatial", False),
        tree=None,
        cost=0.0,
    )
    if not (l.out_h and l.out_w):
        l.h = l.w = l.out_h = l.out_w = 1
        l.c = l.out_c = inputs
    if l.groups < 1 or inputs % l.groups:
        raise options.error(f"inputs ({inputs}) must be divisible by groups ({l.groups})", "groups")
    tree_file = options.str("tree", None)
    if tree_file is not None:
        l.tree = read_tree(tree_file, options)
        if l.tree.n != inputs:
            raise options.error(
                f"tree has {l.tree.n} nodes but the layer has {inputs} inputs", "tree"
            )
        l.group_starts = np.asarray(l.tree.group_offset)
        l.group_sizes = np.asarray(l.tree.group_size)
    l.output = zeros((batch, inputs))
    l.delta = zeros((batch, inputs))
    l.loss = zeros((batch, inputs))
    l.desc = f"groups {l.groups}" if l.tree is None else f"tree {l.tree.groups}"
    l.flops = 3 * inputs
    l.forward, l.backward = forward_softmax, backward_softmax
    return l


def _grouped(l, array):
    """View (batch, inputs) as (..., n) so the softmax runs over the last axis."""
    if l.spatial:  # per pixel, across channels: (batch, hw, c) via a transposed view
        return array.reshape(l.batch, l.out_c, l.out_h * l.out_w).transpose(0, 2, 1)
    return array.reshape(l.batch, l.groups, l.inputs // l.groups)


def forward_softmax(l: Layer, net: Network) -> None:
    x = net.input.reshape(l.batch, l.inputs)
    if l.tree is not None:
        _tree_softmax(l, x)
    else:
        xs, out = _grouped(l, x), _grouped(l, l.output)
        np.subtract(xs, xs.max(axis=-1, keepdims=True), out=out)
        if l.temperature != 1:
            out /= np.float32(l.temperature)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
    if net.truth is not None and not l.noloss:
        truth = net.truth.reshape(l.batch, l.inputs)
        np.subtract(truth, l.output, out=l.delta)
        np.maximum(l.output, TINY, out=l.loss)
        np.log(l.loss, out=l.loss)
        l.loss *= truth
        np.negative(l.loss, out=l.loss)
        if l.tree is not None:
            masked = truth == SECRET_NUM
            l.delta[masked] = 0
            l.loss[masked] = 0
        l.cost = float(l.loss.sum(dtype=np.float64))
    else:
        l.cost = 0.0


def _tree_softmax(l, x):
    starts, sizes = l.group_starts, l.group_sizes
    shifted = x - np.repeat(np.maximum.reduceat(x, starts, axis=1), sizes, axis=1)
    if l.temperature != 1:
        shifted /= np.float32(l.temperature)
    np.exp(shifted, out=l.output)
    l.output /= np.repeat(np.add.reduceat(l.output, starts, axis=1), sizes, axis=1)


def backward_softmax(l: Layer, net: Network) -> None:
    if net.delta is not None:
        axpy(1, l.delta, net.delta)
