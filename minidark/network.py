"""The Network: darknet's forward / backward / update loops.

Data flows one way::

    loader -> net.input, net.truth
           -> forward:  for each layer, l.forward(l, net); net.input = l.output
                        (a loss layer, e.g. softmax, writes l.delta = truth - output)
           -> backward: for each layer from the last, net.input = previous output,
                        net.delta = previous delta (None for layer 0); l.backward(l, net)
           -> update:   for each layer with parameters, l.update(l, args)

Conventions, written once here and relied on by every layer:

* Buffers are float32, batch-major ``(batch, outputs)``; image layers view
  them as NCHW ``(batch, c, h, w)``.
* ``l.delta`` is the *negative* gradient of the loss with respect to
  ``l.output`` (darknet's sign): loss layers write ``truth - output`` and
  the update *adds* ``rate * updates``.
* ``backward`` *accumulates* into ``net.delta`` (``+=``/axpy), never
  assigns, because a layer's delta may have several consumers (route,
  shortcut). ``forward`` in training mode zeroes every delta first.
* ``*_updates`` buffers hold sums over the batch; ``update`` scales them by
  ``learning_rate / (batch * subdivisions)`` and then by momentum.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

import numpy as np

from . import freeze as freezing
from .errors import MinidarkError
from .kernels.buffers import zeros
from .optim import policy
from .optim.adam import allocate_adam_state

if TYPE_CHECKING:
    import numpy.typing as npt

    from .cfg.netconfig import NetConfig
    from .layer import Layer


class UpdateArgs:
    """darknet's update_args: what every l.update(l, args) receives."""

    def __init__(
        self,
        learning_rate: float,
        momentum: float,
        decay: float,
        batch: int,
        t: int = 0,
        adam: int = 0,
        B1: float = 0.9,
        B2: float = 0.999,
        eps: float = 1e-7,
    ) -> None:
        self.learning_rate, self.momentum, self.decay = learning_rate, momentum, decay
        self.batch, self.t = batch, t
        self.adam, self.B1, self.B2, self.eps = adam, B1, B2, eps  # optim/adam.py


class _NetOption:
    """``net.<name>``: a read-only view of ``net.config.<name>``, the [net] option
    under darknet's ``net->name``. New code reads ``net.config`` directly."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, net, owner=None):
        if net is None:
            return self
        if net.config is None:
            raise AttributeError(
                f"'{self.name}': this Network has no [net] options (it was assembled without a cfg)"
            )
        return getattr(net.config, self.name)

    def __set__(self, net, value):
        raise AttributeError(f"net.{self.name} is read-only: set net.config.{self.name}")


class Network:
    """Layers in order, the buffers between them, and training state.

    ``config`` holds the [net] options (a ``minidark.cfg.NetConfig``, or None
    for a network assembled by hand); the sizes derived from it (``batch``
    per mini-batch, ``subdivisions``, ``time_steps``, ``inputs``, ``h``,
    ``w``, ``c``) are the Network's own, as a batch override or a resize
    changes them.
    """

    # [net] options read by training, data and tools, as darknet names them
    learning_rate = _NetOption()
    momentum = _NetOption()
    decay = _NetOption()
    policy = _NetOption()
    max_batches = _NetOption()
    backup_every = _NetOption()
    valid_every = _NetOption()
    min_ratio = _NetOption()
    max_ratio = _NetOption()
    angle = _NetOption()
    aspect = _NetOption()
    saturation = _NetOption()
    exposure = _NetOption()
    hue = _NetOption()
    flip = _NetOption()

    def __init__(self, config: NetConfig | None = None) -> None:
        self.config = config
        self.layers = []
        self.batch = 1  # rows per mini-batch, darknet's net->batch
        self.subdivisions = 1
        self.time_steps = 1
        self.inputs = 0
        self.h = self.w = self.c = 0
        if config is not None:
            self.batch = config.batch // config.subdivisions * config.time_steps
            self.subdivisions, self.time_steps = config.subdivisions, config.time_steps
            self.inputs = config.inputs
            self.h, self.w, self.c = config.height, config.width, config.channels
        self.seen = 0  # images trained on, darknet's *net.seen (by every replica together)
        self.replicas = 1  # processes training this net on shards of each batch (data parallel)
        self.before_update = None  # hook(net) after the last backward of an update (allreduce)
        self.t = 0  # number of updates, darknet's *net.t
        self.cost = 0.0  # mean of the loss layers' summed costs
        self.train = False
        self.input = None  # what the current layer reads
        self.truth = None  # truth of the current batch, or None
        self.delta = None  # what the current layer's backward accumulates into
        self.rng = np.random.default_rng()
        self.cfg_file = None
        self.sections = None  # the cfg's sections (for resize)
        self.rebuild_layers = None  # set by the cfg builder: sections -> layers, for resize
        self.frozen = False  # freeze(): inference only, read-only parameters (freeze.py)
        self.kept = ()  # frozen: layers whose outputs freeze() was asked to keep whole
        self.shared_outputs = None  # frozen: (owner of each output, owners sharing buffers)

    # ------------------------------------------------------------------ build
    def finalize(self) -> None:
        """Allocate the network-level buffers once the layers exist."""
        last = self.output_layer
        self.outputs = last.outputs
        self.truths = last.truths or last.outputs
        self.input_buffer = np.zeros((self.batch, self.inputs), np.float32)
        self.truth_buffer = np.zeros((self.batch, self.truths), np.float32)
        size = max((l.workspace_size for l in self.layers), default=0)
        self.workspace = zeros(size)  # zeros: no garbage in float64 checks
        self.input = self.input_buffer
        self.allocate_optimizer_state()

    def allocate_optimizer_state(self) -> None:
        """Adam's moments on every layer with parameters (adam=1), before any
        checkpoint restores them; layers that have them keep them."""
        if self.config is not None and self.config.adam:
            for layer in self.layers:
                allocate_adam_state(layer)

    @property
    def output_layer(self) -> Layer:
        """The last layer that is not a [cost] layer (darknet's get_network_output)."""
        for layer in reversed(self.layers):
            if layer.type != "cost":
                return layer
        return self.layers[-1]

    @property
    def output(self) -> np.ndarray:
        return self.output_layer.output

    def reset_state(self) -> None:
        """Zero every recurrent layer's carried hidden state (its ``carried`` arrays)."""
        for layer in self.layers:
            for name in layer.carried:
                getattr(layer, name).fill(0)

    def seed(self, seed: int | None) -> None:
        """Seed the generator used by dropout, crop and the random policy."""
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------ the passes
    def forward(
        self,
        x: npt.ArrayLike | None = None,
        truth: npt.ArrayLike | None = None,
        train: bool = False,
    ) -> np.ndarray:
        """Run every layer forward; return the output layer's output.

        ``x`` has ``batch`` rows shaped ``(batch, inputs)`` or ``(batch, c, h, w)``;
        ``truth`` (``(batch, truths)``) makes loss layers compute cost and delta.
        """
        if train and self.frozen:
            self._refuse_frozen("train")
        if x is not None:
            self._load(self.input_buffer, x, "input")
        if truth is not None:
            self._load(self.truth_buffer, truth, "truth")
        self.truth = self.truth_buffer if truth is not None else None
        self.train = train
        self.input = self.input_buffer
        for layer in self.layers:
            if train and layer.delta is not None:
                layer.delta.fill(0)
            layer.forward(layer, self)
            self.input = layer.output
        costs = [l.cost for l in self.layers if l.cost is not None]
        self.cost = float(sum(costs) / len(costs)) if costs else 0.0
        return self.output

    def backward(self) -> None:
        """Run every layer backward, from the last, accumulating deltas."""
        if self.frozen:
            self._refuse_frozen("run backward")
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer.stopbackward:
                break
            if i == 0:
                self.input, self.delta = self.input_buffer, None
            else:
                previous = self.layers[i - 1]
                self.input, self.delta = previous.output, previous.delta
            layer.backward(layer, self)
        self.delta = None

    def update(self) -> None:
        """Apply one SGD step (Adam with adam=1) to every layer with parameters."""
        if self.frozen:
            self._refuse_frozen("update")
        self.t += 1  # darknet: ++*net.t, then a.t = *net.t
        c = self.config
        args = UpdateArgs(
            self.current_rate(),
            c.momentum,
            c.decay,
            self.images_per_update,
            self.t,
            c.adam,
            c.B1,
            c.B2,
            c.eps,
        )
        for layer in self.layers:
            if layer.update is not None:
                layer.update(layer, args)

    def freeze(self, keep: tuple = ()) -> None:
        """Inference only, in the memory inference needs (minidark/freeze.py): the
        parameters read-only, their derived forms made once, layer outputs sharing
        buffers by liveness. Outputs read after a pass stay whole: the output
        layer's, the detection heads', and those of the layers in ``keep``."""
        freezing.freeze(self, keep)

    def unfreeze(self) -> None:
        """Undo freeze(): own outputs, writable parameters; training allowed."""
        freezing.unfreeze(self)

    def thawed(self):
        """``with net.thawed():`` the block runs unfrozen; a frozen net is frozen
        again after it (what load_weights and resize need to write)."""
        return freezing.thawed(self)

    def _refuse_frozen(self, what):
        raise MinidarkError(
            f"this network is frozen for inference (net.freeze()): it cannot {what}; "
            f"call net.unfreeze() first"
        )

    def resize(self, w: int, h: int) -> None:
        """Re-plan every layer for a ``w x h`` input (darknet's resize_network).

        The layers are rebuilt from the cfg's sections at the new size, then
        every array whose shape the new size does not change -- weights,
        biases, batch-norm scales and statistics, momentum (``*_updates``),
        anything else of the same shape -- is moved over from the old layer,
        so training continues with the same parameters and optimiser state;
        only the size-dependent buffers are new. ``net.rng`` is left as it
        was (initialisation draws of the rebuild are undone). A layer whose
        parameters depend on the input size (a [connected] layer reading a
        feature map) cannot be resized: ValueError naming it.
        """
        w, h = int(w), int(h)
        if w < 1 or h < 1:
            raise ValueError(f"resize needs a positive width and height, got {w} x {h}")
        if (w, h) == (self.w, self.h):
            return
        if self.rebuild_layers is None:
            raise ValueError("this Network was not built from a cfg: it cannot be resized")
        if self.frozen:  # the rebuilt layers are frozen again, keeping the same outputs
            with self.thawed():
                self.resize(w, h)
            return
        old_layers, old_size = self.layers, (self.w, self.h, self.inputs)
        state = self.rng.bit_generator.state
        self.w, self.h, self.inputs = w, h, w * h * self.c
        self.layers = []
        try:
            self.layers = self.rebuild_layers(self)
            self.allocate_optimizer_state()
            for old, new in zip(old_layers, self.layers, strict=True):
                _move_arrays(old, new)
        except Exception:
            self.layers = old_layers
            self.w, self.h, self.inputs = old_size
            raise
        finally:
            self.rng.bit_generator.state = state
        truths = self.truths
        self.finalize()
        if self.truths != truths:
            raise ValueError(f"resize changed the truth size ({truths} -> {self.truths})")

    # ----------------------------------------------------------- training
    def current_rate(self) -> float:
        return policy.current_rate(self, self.rng)

    @property
    def images_per_update(self) -> int:
        """Images summed into the ``*_updates`` of one update: batch x subdivisions
        (x replicas: data-parallel processes sum their updates before each one)."""
        return self.batch * self.subdivisions * self.replicas

    @property
    def current_batch(self) -> int:
        return policy.current_batch(self)

    def train_datum(self, x: npt.ArrayLike, truth: npt.ArrayLike) -> float:
        """One mini-batch (darknet's train_network_datum): returns its summed cost.
        With ``replicas`` processes each trains its own ``batch`` rows of a
        ``replicas x batch`` mini-batch; ``seen`` counts them all."""
        rows = self.batch * self.replicas
        self.seen += rows
        self.forward(x, truth, train=True)
        self.backward()
        if (self.seen // rows) % self.subdivisions == 0:
            if self.before_update is not None:
                self.before_update(self)
            self.update()
        return self.cost

    def train_step(self, x: npt.ArrayLike, truth: npt.ArrayLike) -> float:
        """darknet's train_network: ``x`` holds ``n * batch`` rows, trained as n
        consecutive mini-batches (one update per ``subdivisions``). Returns the
        mean loss per image."""
        x = np.asarray(x)
        rows = x.shape[0]
        if rows % self.batch:
            raise ValueError(f"train_step needs a multiple of batch={self.batch} rows, got {rows}")
        total = 0.0
        for start in range(0, rows, self.batch):
            total += self.train_datum(
                x[start : start + self.batch], truth[start : start + self.batch]
            )
        return total / rows

    # ----------------------------------------------------------- inference
    def predict(self, x: npt.ArrayLike) -> np.ndarray:
        """Outputs for any number of rows, in chunks of ``batch`` (inference mode)."""
        x = np.asarray(x, dtype=np.float32)
        rows = x.shape[0]
        if x.size != rows * self.inputs:
            raise ValueError(f"predict needs rows of {self.inputs} values, got shape {x.shape}")
        x = x.reshape(rows, self.inputs)
        result = np.empty((rows, self.outputs), np.float32)
        for start in range(0, rows, self.batch):
            chunk = x[start : start + self.batch]
            n = chunk.shape[0]
            self.input_buffer[:n] = chunk
            if n < self.batch:
                self.input_buffer[n:] = 0
            self.forward(train=False)
            result[start : start + n] = self.output.reshape(self.batch, -1)[:n]
        return result

    def _load(self, buffer, array, what):
        array = np.asarray(array)
        if array.shape[0] != self.batch or array.size != buffer.size:
            raise ValueError(
                f"{what} must have {self.batch} rows of {buffer.shape[1]} values "
                f"(batch={self.batch}), got shape {array.shape}"
            )
        np.copyto(buffer, array.reshape(buffer.shape), casting="same_kind")

    # -------------------------------------------------------------- display
    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers)

    def summary(self) -> str:
        """darknet's layer table, with parameters and FLOPs per image."""
        lines = [
            f"{'layer':>5} {'type':<14} {'details':<18} {'input':>16}    {'output':>16}"
            f" {'params':>10} {'BFLOPs':>8}"
        ]
        for l in self.layers:
            lines.append(
                f"{l.index:>5} {l.type:<14} {l.desc:<18} "
                f"{l.w:>4} x{l.h:>4} x{l.c:>5} -> {l.out_w:>4} x{l.out_h:>4} x{l.out_c:>5}"
                f" {l.params:>10,} {l.flops / 1e9:>8.3f}"
            )
        flops = sum(l.flops for l in self.layers)
        lines.append(
            f"batch {self.batch} (x{self.subdivisions} subdivisions), "
            f"{self.params:,} parameters, {flops / 1e9:.3f} BFLOPs per image"
        )
        return "\n".join(lines)

    def print_summary(self, file: TextIO | None = None) -> None:
        print(self.summary(), file=file if file is not None else sys.stderr)

    def __repr__(self) -> str:
        return f"<Network {len(self.layers)} layers, batch {self.batch}, inputs {self.inputs}>"


def _move_arrays(old: Layer, new: Layer) -> None:
    """Give ``new`` (the same section at another input size) every array of
    ``old`` that keeps its shape; a saved or momentum array that changes shape
    means the layer cannot be resized."""
    for name, value in vars(old).items():
        if isinstance(value, np.ndarray):
            target = getattr(new, name, None)
            if isinstance(target, np.ndarray) and target.shape == value.shape:
                setattr(new, name, value)
            elif name in old.saved or name.endswith("_updates"):
                raise ValueError(
                    f"layer {old.index} [{old.type}] cannot be resized: its "
                    f"{name} depends on the input size"
                )
    for sub_name, sub in (old.sublayers or {}).items():
        _move_arrays(sub, new.sublayers[sub_name])
