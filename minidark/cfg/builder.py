"""Sections -> Network: ``[net]`` into a NetConfig, each layer section through
its registered make function, then the network-level buffers.

Memory is checked as the network is built, before anything is touched: a
make function may call ``params.reserve(options, floats, key)`` before it
allocates (and must, before it fills a large array, e.g. random weights);
after each make the arrays the layer holds are counted (``np.zeros`` only
reserves address space, so counting after the call costs nothing). A layer
that takes the total beyond the limit is a ConfigError naming the layer and
the sizes. The limit is ``max_memory`` (bytes), else ``$MINIDARK_MAX_MEMORY``
(e.g. ``8G``), else the MemAvailable of ``/proc/meminfo``.
"""

import os
import re
import sys
import warnings

import numpy as np

from ..errors import ConfigError
from ..layer import Layer
from ..network import Network
from ..plugins import load_layers
from ..registry import get_make, suggest
from .grammar import check_keys, read_sections
from .netconfig import NetConfig, read_net_config

MEMORY_ENV = "MINIDARK_MAX_MEMORY"
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text):
    """Bytes from '123', '512M', '8G', '1.5GiB' (binary units), or None if malformed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        return None
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def available_memory():
    """MemAvailable from /proc/meminfo in bytes, or None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size:.1f} EiB"


class MemoryBudget:
    """Bytes the network's buffers may take, and bytes taken so far."""

    def __init__(self, max_memory=None):
        if max_memory is not None:
            self.limit, self.source = int(max_memory), "max_memory"
        elif os.environ.get(MEMORY_ENV):
            self.limit = parse_size(os.environ[MEMORY_ENV])
            if self.limit is None:
                raise ConfigError(
                    f"${MEMORY_ENV}={os.environ[MEMORY_ENV]!r} is not a size "
                    f"(bytes, or with K, M, G, T)"
                )
            self.source = f"${MEMORY_ENV}"
        else:
            self.limit, self.source = available_memory(), "available memory (MemAvailable)"
        self.used = 0

    def check(self, extra, describe):
        """Raise (via ``describe(message)``) if ``extra`` more bytes exceed the limit."""
        if self.limit is not None and self.used + extra > self.limit:
            so_far = f" (the network before it holds {human(self.used)})" if self.used else ""
            raise describe(
                f"needs {human(extra)}{so_far}, above the {human(self.limit)} of "
                f"{self.source}; make it smaller, or raise the limit with "
                f"load_network(max_memory=...) or ${MEMORY_ENV}"
            )


def array_bytes(layer, seen=None):
    """Bytes of the distinct arrays a layer (and its sublayers) holds."""
    seen = set() if seen is None else seen
    total = 0
    for value in vars(layer).values():
        if isinstance(value, np.ndarray):
            base = value if value.base is None else value.base
            if isinstance(base, np.ndarray) and id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(value, Layer):
            total += array_bytes(value, seen)
    return total


class SizeParams:
    """What a make function knows about its input (darknet's size_params)."""

    def __init__(self, net, index, budget):
        self.net, self.index, self.budget = net, index, budget
        self.batch, self.inputs = net.batch, net.inputs
        self.h, self.w, self.c = net.h, net.w, net.c
        self.time_steps = net.time_steps

    def same_shape(self):
        """The shape fields of a layer whose output has its input's shape
        (activation, dropout, cost, softmax, the YOLO heads, ...):
        ``Layer(type=..., **params.same_shape(), ...)``."""
        return dict(
            batch=self.batch,
            inputs=self.inputs,
            outputs=self.inputs,
            h=self.h,
            w=self.w,
            c=self.c,
            out_h=self.h,
            out_w=self.w,
            out_c=self.c,
        )

    def require_image(self, section):
        if not (self.h and self.w and self.c):
            raise section.error(
                f"layer {self.index} [{section.type}] needs an image input "
                f"(height, width, channels), got {self.inputs} flat inputs"
            )

    def reserve(self, section, floats, key=None, what="buffers"):
        """Refuse, before allocating, a layer whose ``floats`` float32 values
        (``what``: e.g. "output 640x480x16, weights ...") would exceed the memory limit."""

        def describe(message):
            return section.error(f"layer {self.index} {what} {message}", key)

        self.budget.check(4 * int(floats), describe)


def parse_network(
    sections, *, batch=None, strict=False, verbose=True, file=None, seed=None, max_memory=None
):
    """Build a Network from parsed sections.

    ``batch`` overrides the cfg's batch (and sets subdivisions to 1), so a
    stock cfg can be loaded for inference without allocating for 128 images.
    ``max_memory`` (bytes) caps the network's buffers (module docstring).
    """
    load_layers()
    if not sections:
        raise ConfigError("cfg has no sections", file=file)
    head = sections[0]
    if head.type not in ("net", "network"):
        raise ConfigError(
            f"first section must be [net] or [network], got [{head.type}]",
            file=head.file,
            line=head.line,
            section=head.type,
        )
    for section in sections[1:]:
        if section.type in ("net", "network"):
            raise section.error(
                f"a second [{section.type}] (the first is at line {head.line}):"
                f" [net] may appear only once, as the first section"
            )
    config = read_net_config(head)
    check_keys(head, strict, "net", NetConfig.keys())
    net = Network(config)
    net.cfg_file = head.file
    net.sections = sections  # Network.resize rebuilds the layers from them
    net.rebuild_layers = rebuild_layers
    if seed is not None:
        net.seed(seed)
    if batch is not None:  # the cfg's batch: a recurrent net's batch holds every time step
        net.batch, net.subdivisions = int(batch) * net.time_steps, 1
    budget = MemoryBudget(max_memory)
    input_bytes = 8 * net.batch * net.inputs  # input and (about) truth buffers
    large = "batch" if net.batch > net.inputs else "inputs" if head.has("inputs") else "width"
    budget.check(
        input_bytes,
        lambda message: head.error(
            f"the input buffers (batch {net.batch} x {net.inputs:,} inputs, and the truth) "
            f"{message}",
            large if head.has(large) else None,
        ),
    )
    budget.used += input_bytes

    for index, section in enumerate(sections[1:]):
        net.layers.append(build_layer(net, index, section, budget, strict))
    if not net.layers:
        raise ConfigError(
            "cfg has no layers after [net]", file=head.file, line=head.line, section=head.type
        )
    workspace = 4 * max(layer.workspace_size for layer in net.layers)
    budget.check(
        workspace,
        lambda message: head.error(f"the shared workspace ({workspace // 4:,} floats) {message}"),
    )
    net.finalize()
    for layer, section in zip(net.layers, sections[1:], strict=True):
        truths = layer.truths or layer.outputs
        if layer.cost is not None and not layer.noloss and truths != net.truths:
            raise section.error(
                f"layer {layer.index} [{section.type}] computes a loss against the truth, "
                f"which has {net.truths} values per image (the outputs of layer "
                f"{net.output_layer.index}), but it has {truths}: make it the output layer "
                f"(only [cost] layers may follow) or, for a softmax, set noloss=1"
            )
    if verbose:
        print(net.summary(), file=sys.stderr)
    return net


def _read_load_keys(layer, section):
    """darknet's keys for loading another network's weights (weights.py)."""
    if layer.type in ("convolutional", "connected") and layer.batch_normalize:
        layer.dontloadscales = section.bool("dontloadscales", False)
    if layer.type == "convolutional":
        layer.numload = section.int("numload", 0, min=0, max=layer.out_c)
        layer.weights_flipped = section.bool("flipped", False)


def build_layer(net, index, section, budget, strict):
    """One layer from its section: make, the keys every layer takes, the checks."""
    make = get_make(section.type)
    if make is None:
        raise section.error(f"unknown section type [{section.type}]{suggest(section.type)}")
    params = SizeParams(net, index, budget)
    if net.layers:
        prev = net.layers[-1]
        params.h, params.w, params.c = prev.out_h, prev.out_w, prev.out_c
        params.inputs = prev.outputs
    try:
        layer = make(section, params)
    except MemoryError as exc:
        raise section.error(
            f"layer {index} [{section.type}] does not fit in memory ({exc or 'allocation failed'})"
        ) from None
    except (ValueError, OverflowError) as exc:
        if not _size_failure(exc):
            raise
        raise section.error(
            f"layer {index} [{section.type}] is too large to allocate ({exc})"
        ) from None
    layer.index = index
    layer.stopbackward = section.bool("stopbackward", False)
    layer.dontsave = section.bool("dontsave", False)
    layer.dontload = section.bool("dontload", False)
    _read_load_keys(layer, section)
    layer.learning_rate_scale = section.float("learning_rate", 1.0, min=0)
    if layer.outputs <= 0:
        raise section.error(
            f"layer {index} [{section.type}] has no outputs "
            f"(input {params.w}x{params.h}x{params.c})"
        )
    held = array_bytes(layer)
    budget.check(
        held,
        lambda message: section.error(
            f"layer {index} [{section.type}] (output {layer.out_w}x{layer.out_h}x{layer.out_c}"
            f" = {layer.outputs:,} values per image, batch {layer.batch}) {message}"
        ),
    )
    budget.used += held
    check_keys(section, strict, layer.type)
    return layer


def rebuild_layers(net):
    """Build ``net.layers`` again from ``net.sections`` at the net's current input
    size (for Network.resize); the keys were checked at the first build."""
    budget = MemoryBudget()
    net.layers = []  # each make reads the layers before it (route, shortcut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, section in enumerate(net.sections[1:]):
            net.layers.append(build_layer(net, index, section, budget, False))
    return net.layers


def _size_failure(exc):
    """Whether numpy or Python refused an array or an integer for its size."""
    text = str(exc)
    return isinstance(exc, OverflowError) or any(
        part in text
        for part in (
            "array is too big",
            "Maximum allowed",
            "negative dimensions",
            "maximum supported dimension",
        )
    )


def parse_network_cfg(path, **kwargs):
    """Read a .cfg/.yaml file and build its Network."""
    return parse_network(read_sections(path), file=os.fspath(path), **kwargs)
