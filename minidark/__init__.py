"""minidark: darknet, the C deep-learning framework, in Python on numpy.

Public API (stable)::

    net = minidark.load_network("cfg/mnist_mlp.cfg", weights=None)
    net.forward(x, truth=None, train=False); net.backward(); net.update()
    probs = net.predict(x)
    minidark.save_weights(net, "mlp.weights")
    minidark.register_layer("name", make_fn)
"""

from __future__ import annotations

import os

from .cfg import parse_network, parse_network_cfg, read_sections
from .errors import ConfigError, DataError, MinidarkError, WeightsError
from .layer import Layer
from .network import Network
from .registry import register_layer
from .weights import load_weights, save_weights

__version__ = "0.1.0"


def load_network(
    cfg: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    batch: int | None = None,
    clear: bool = False,
    strict: bool = False,
    seed: int | None = None,
    verbose: bool = False,
    max_memory: int | None = None,
    cutoff: int | None = None,
) -> Network:
    """Build the Network described by a .cfg/.yaml file and optionally load weights.

    ``batch`` overrides the cfg's batch (for inference); ``clear`` resets
    ``seen`` like darknet's -clear; ``seed`` makes initialisation and dropout
    reproducible; ``verbose`` prints darknet's layer table to stderr;
    ``max_memory`` (bytes) caps the network's buffers (default
    ``$MINIDARK_MAX_MEMORY``, else the available memory): a larger network
    is a ConfigError naming the layer. ``cutoff`` loads the weights of layers
    0..cutoff-1 only (darknet's load_weights_upto: a new head on a backbone).
    """
    net = parse_network_cfg(
        cfg, batch=batch, strict=strict, seed=seed, verbose=verbose, max_memory=max_memory
    )
    if weights:
        load_weights(net, weights, cutoff=cutoff)
    if clear:
        net.seen = 0
    return net


__all__ = [
    "ConfigError",
    "DataError",
    "Layer",
    "MinidarkError",
    "Network",
    "WeightsError",
    "__version__",
    "load_network",
    "load_weights",
    "parse_network",
    "parse_network_cfg",
    "read_sections",
    "register_layer",
    "save_weights",
]
