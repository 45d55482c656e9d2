"""A frozen network: inference only, in the memory inference needs.

``net.freeze()`` turns a Network into an inference engine, as OpenCV's dnn
or ONNX Runtime hold one:

* Every array the .weights file holds (``l.saved``: weights, biases, batch
  norm's scales and rolling statistics) is made read-only, so the forms
  derived from them (the folded batch norm, the reordered filters,
  Winograd's U) are made once and never compared again: no copy of the
  weights is kept to notice an edit (80 MB on darknet19), and an edit is an
  error instead of a stale answer.
* Layer outputs share buffers by liveness. A layer's output is live from
  the layer that writes it (the convolution before a pool it fills:
  ``pool_after``) to the last layer that reads it (the next layer, and the
  layers naming it in ``input_layers``: route, shortcut); two outputs whose
  lives do not overlap may use the same buffer. Outputs stay whole where
  they are read after the pass: the output layer and the layers after it,
  the detection heads (yolo, region, detection: boxes are read from them),
  the recurrent layers (their state spans passes), the layers given in
  ``keep``, and every layer of a network holding a layer type minidark
  does not know (a plugin may read any layer).
* Training is refused: no backward or update, and forward(train=True) is a
  MinidarkError naming unfreeze().

``net.unfreeze()`` gives every layer its own output again and makes the
parameters writable (the derived forms are remade at the next pass).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from .kernels.buffers import zeros

if TYPE_CHECKING:
    from .layer import Layer
    from .network import Network

# types whose forward writes its whole output from net.input and its input_layers
SHARED_TYPES = frozenset(
    {
        "activation",
        "avgpool",
        "batchnorm",
        "connected",
        "convolutional",
        "crop",
        "deconvolutional",
        "dropout",
        "l2norm",
        "local",
        "logistic",
        "maxpool",
        "normalization",
        "reorg",
        "route",
        "shortcut",
        "softmax",
        "upsample",
    }
)
# known types whose output stays whole: read after the pass, or carried across passes
WHOLE_TYPES = frozenset({"cost", "crnn", "detection", "gru", "lstm", "region", "rnn", "yolo"})


def freeze(net: Network, keep=()) -> None:
    """Make ``net`` inference-only (module docstring); ``keep``: indexes of layers
    whose outputs must stay readable after a pass (e.g. a feature layer)."""
    keep = tuple(sorted({int(i) for i in keep}))
    for i in keep:
        if not 0 <= i < len(net.layers):
            raise ValueError(f"keep: no layer {i} (the network has {len(net.layers)})")
    if net.frozen:
        unfreeze(net)
    for layer in _with_sublayers(net.layers):
        for name in layer.saved:
            getattr(layer, name).flags.writeable = False
        if layer.type == "convolutional":  # derived forms: made once from here on
            layer.weights_seen = layer.scale_seen = None
            layer.prepared = set()
    owners, buffers = output_plan(net, keep)
    shapes = [layer.output.shape for layer in net.layers]
    for layer in net.layers:
        owner = owners[layer.index]
        if owner in buffers:
            layer.output = buffers[owner][: np.prod(shapes[owner])].reshape(shapes[owner])
    net.frozen, net.kept, net.shared_outputs = True, keep, (owners, set(buffers))


def unfreeze(net: Network) -> None:
    """Undo ``freeze``: own outputs, writable parameters, derived forms remade."""
    if not net.frozen:
        return
    owners, shared = net.shared_outputs
    fresh = {}
    for layer in net.layers:
        owner = owners[layer.index]
        if owner in shared:
            if owner not in fresh:
                fresh[owner] = zeros(net.layers[owner].output.shape)
            layer.output = fresh[owner]
    for layer in _with_sublayers(net.layers):
        for name in layer.saved:
            getattr(layer, name).flags.writeable = True
        if layer.type == "convolutional":
            layer.prepared = set()
    net.frozen, net.kept, net.shared_outputs = False, (), None


@contextlib.contextmanager
def thawed(net: Network):
    """The block runs on ``net`` unfrozen (writable parameters, own outputs); a
    frozen net is frozen again after it, keeping the same layers whole."""
    if not net.frozen:
        yield
        return
    kept = net.kept
    unfreeze(net)
    try:
        yield
    finally:
        freeze(net, kept)


def output_plan(net: Network, keep=()):
    """(owners, buffers): ``owners[i]`` the index of the layer whose array layer i's
    output is (itself, or the layer a [dropout] works in place on); ``buffers``
    {owner index: shared buffer its output is a view of} for the outputs that
    share, each buffer as large as the largest output placed in it."""
    layers = net.layers
    owners, first_of = [], {}
    for layer in layers:  # a [dropout] in place holds the array of the layer before
        key = (layer.output.__array_interface__["data"][0], layer.output.size)
        owners.append(first_of.setdefault(key, layer.index))
    if any(l.type not in SHARED_TYPES | WHOLE_TYPES for l in layers):
        return owners, {}
    last = net.output_layer.index
    whole = {owners[i] for i in keep}
    whole |= {owners[l.index] for l in layers if l.index >= last or l.type not in SHARED_TYPES}
    start, end = {}, {}
    for layer in layers:
        owner, i = owners[layer.index], layer.index
        writer = i - 1 if i and layers[i - 1].pool_after is layer else i
        start[owner] = min(start.get(owner, writer), writer)
        end[owner] = max(end.get(owner, i), i + 1)  # the next layer reads it as net.input
        for source in layer.input_layers:
            end[owners[source]] = max(end[owners[source]], i)
    lives = sorted(
        (start[o], end[o], o, layers[o].output.size) for o in set(owners) if o not in whole
    )
    placed = []  # [end of the last life placed, largest size, owner indexes]
    for begin, finish, owner, size in lives:
        free = [b for b in placed if b[0] < begin]
        fits = [b for b in free if b[1] >= size]
        if fits:  # the smallest that holds it; else grow the largest free one
            chosen = min(fits, key=lambda b: b[1])
        elif free:
            chosen = max(free, key=lambda b: b[1])
        else:
            chosen = [0, 0, []]
            placed.append(chosen)
        chosen[0], chosen[1] = finish, max(chosen[1], size)
        chosen[2].append(owner)
    buffers = {}
    for _, size, members in placed:
        buffer = zeros(size)
        for owner in members:
            buffers[owner] = buffer
    return owners, buffers


def _with_sublayers(layers) -> list[Layer]:
    found = []
    for layer in layers:
        found.append(layer)
        found += _with_sublayers((layer.sublayers or {}).values())
    return found
