"""Machinery shared by the recurrent layers ([rnn], [gru], [lstm], [crnn]).

As in darknet, a recurrent layer owns ordinary sublayers (connected, or
convolutional for crnn) built by their own ``make_*`` functions with the
per-step batch B, and walks through the T time steps of a batch by pointing
the sublayer's per-step buffers at step t of T-step storage::

    sub.output_steps (T, B, outputs)     at_step(sub, t): sub.output = sub.output_steps[t]
    sub.delta_steps  (T, B, outputs)     ... likewise delta, and batch norm's x, x_norm,
                                         mean, variance (statistics are per step, as darknet)

so each step calls the sublayer's unchanged forward/backward, and the
parameter gradients (``*_updates``) sum over all steps. Network buffers are
step-major: rows t*B .. t*B+B-1 of ``net.input`` are step t.

Without batch norm (``l.fused``) the same sums take fewer, larger GEMMs: a
sublayer outside the recurrence runs once over all T*B rows
(``all_steps``), and a recurrent one computes only its input gradient per
step (``backward_input_only``) and its parameter gradients once after the
loop (``backward_params``). With batch norm, darknet's per-step statistics
need the step-by-step path.

The parent layer exposes each sublayer array darknet saves as
``<sub>_<array>`` (the same array object), so ``saved`` lists them in
darknet's .weights order and the reference harness finds
``Lxx_<type>_<sub>_<array>_sN``. ``carried`` names the arrays that hold the
hidden state across batches and calls (``Network.reset_state`` zeroes them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import gradient
from ..layer import Layer
from ..optim import update_parameters
from .connected import make_connected

if TYPE_CHECKING:
    from ..network import UpdateArgs

STEP_FIELDS = ("output", "delta", "x", "x_norm", "mean", "variance")
UPDATES = (("biases", "bias_updates"), ("weights", "weight_updates"), ("scales", "scale_updates"))


class SubOptions:
    """The cfg a sublayer's make function reads: fixed values, as darknet passes
    them in code; errors point at the parent's section."""

    def __init__(self, parent, **values):
        self.parent, self.values = parent, values

    def _get(self, key, default):
        return self.values.get(key, default)

    def int(self, key, default=0):
        return int(self._get(key, default))

    def float(self, key, default=0.0):
        return float(self._get(key, default))

    def bool(self, key, default=False):
        return bool(self._get(key, default))

    def str(self, key, default=""):
        return str(self._get(key, default))

    def activation(self, key="activation", default="linear"):
        return self._get(key, default)

    def has(self, key):
        return key in self.values

    def error(self, message, key=None):
        return self.parent.error(f"in a sublayer: {message}")


class SubParams:
    """darknet's size_params for a sublayer: one step's batch."""

    def __init__(self, params, batch, inputs, h=0, w=0, c=0):
        self.parent = params
        self.net, self.index = params.net, params.index
        self.batch, self.inputs, self.h, self.w, self.c = batch, inputs, h, w, c
        self.time_steps = 1

    def require_image(self, section):
        pass

    def reserve(self, section, floats, key=None, what="buffers"):
        """The network builder's memory check, when it has one."""
        reserve = getattr(self.parent, "reserve", None)
        if reserve is not None:
            reserve(section, floats, key, what)


def sublayer(make, options, params, steps, batch, inputs, h=0, w=0, c=0, **values):
    """Build one sublayer for ``batch`` rows per step, with T-step storage."""
    sub_params = SubParams(params, batch, inputs, h, w, c)
    sub = make(SubOptions(options, **values), sub_params)
    sub.step_fields = tuple(f for f in STEP_FIELDS if getattr(sub, f, None) is not None)
    # only a connected sublayer without batch norm ever runs over all steps at once
    whole = sub.type == "connected" and not sub.batch_normalize and sub.input_grad is not None
    sub_params.reserve(
        options,
        steps * sum(getattr(sub, f).size for f in sub.step_fields)
        + (steps * batch * inputs if whole else 0),
        what="buffers of every time step",
    )
    for field in sub.step_fields:
        array = getattr(sub, field)
        setattr(sub, field + "_steps", np.zeros((steps,) + array.shape, array.dtype))
    if whole:
        sub.input_grad_steps = np.zeros((steps * batch, inputs), sub.input_grad.dtype)
    at_step(sub, 0)
    return sub


def all_steps(sub):
    """The sublayer as one layer over all T steps (batch T*B), sharing its arrays.

    For a connected sublayer outside the recurrence (it reads only x_t, or
    nothing recurrent reads its output) and without batch norm (darknet's
    statistics are per step): one GEMM instead of T, the same sums."""
    whole = Layer(**vars(sub))
    whole.batch = sub.output_steps.shape[0] * sub.batch
    whole.output = sub.output_steps.reshape(whole.batch, -1)
    whole.delta = sub.delta_steps.reshape(whole.batch, -1)
    whole.input_grad = sub.input_grad_steps
    return whole


def at_step(sub, t):
    """Point the sublayer's per-step buffers at time step t."""
    for field in sub.step_fields:
        setattr(sub, field, getattr(sub, field + "_steps")[t])
    return sub


def backward_input_only(sub, delta_out):
    """One step of a connected sublayer's backward (no batch norm) without its
    parameter gradients, which ``backward_params`` then sums over all steps in one
    GEMM: ``delta *= f'(output)``; ``delta_out += delta @ weights``."""
    gradient(sub.output, sub.activation, sub.delta)
    if delta_out is not None:
        np.matmul(sub.delta, sub.weights, out=sub.input_grad)
        delta_out += sub.input_grad


def backward_params(sub, inputs):
    """The parameter gradients of every step at once (``inputs``: (T, B, n), what the
    sublayer read at each step): ``bias_updates += sum delta``, ``weight_updates +=
    delta^T inputs`` over all T*B rows."""
    delta = sub.delta_steps.reshape(-1, sub.outputs)
    sub.bias_updates += delta.sum(axis=0)
    np.matmul(delta.T, inputs.reshape(delta.shape[0], -1), out=sub.weight_grad)
    sub.weight_updates += sub.weight_grad


def adopt(l, subs):
    """Attach ``subs`` [(name, sublayer)] to ``l`` in darknet's .weights order."""
    l.sublayers = dict(subs)
    saved, learned = [], {}
    for name, sub in subs:
        for field in sub.saved:
            setattr(l, f"{name}_{field}", getattr(sub, field))
            saved.append(f"{name}_{field}")
        for param, update in UPDATES:
            if getattr(sub, update, None) is not None:
                setattr(l, f"{name}_{update}", getattr(sub, update))
                learned[f"{name}_{param}"] = f"{name}_{update}"
    l.saved, l.learned = tuple(saved), learned
    l.workspace_size = max(sub.workspace_size for _, sub in subs)
    l.flops = sum(sub.flops for _, sub in subs)
    l.update = update_recurrent


def adopt_connected(l, options, params, inputs, activation="linear"):
    """Build a [connected] sublayer per ``(name, inputs)`` of ``inputs`` -- ``l.outputs``
    wide, with ``l``'s batch norm, over its ``steps`` x ``batch`` -- and ``adopt`` them."""
    subs = [
        (
            name,
            sublayer(
                make_connected,
                options,
                params,
                l.steps,
                l.batch,
                n_in,
                output=l.outputs,
                activation=activation,
                batch_normalize=l.batch_normalize,
            ),
        )
        for name, n_in in inputs
    ]
    adopt(l, subs)


def clear_deltas(l):
    for sub in l.sublayers.values():
        sub.delta_steps.fill(0)


def update_recurrent(l: Layer, args: UpdateArgs) -> None:
    """SGD on every sublayer, with the parent's learning-rate scale (darknet's
    crnn left its sublayers' scale at 0, so they never learned)."""
    for sub in l.sublayers.values():
        sub.learning_rate_scale = l.learning_rate_scale
        update_parameters(sub, args)


class StepNet:
    """What a sublayer's forward/backward reads of the network at one step."""

    def __init__(self, net):
        self.train, self.workspace, self.frozen = net.train, net.workspace, net.frozen
        self.input = self.delta = None

    def at(self, input, delta=None):
        self.input, self.delta = input, delta
        return self


def steps_of(array, steps, batch):
    """``array`` (T*B, ...) viewed as (T, B, n)."""
    return array.reshape(steps, batch, -1)


def connected_record(kind, options, params, **fields):
    """The Layer of [rnn], [gru] or [lstm]: ``output`` hidden units over the flat
    input, ``batch_normalize`` on its sublayers, B = batch / time_steps rows a step."""
    hidden = options.int("output", 1)
    if hidden < 1:
        raise options.error(f"output must be >= 1, got {hidden}", "output")
    batch_normalize = options.bool("batch_normalize", False)
    steps, batch = per_step_batch(options, params)
    return Layer(
        type=kind,
        batch=batch,
        steps=steps,
        inputs=params.inputs,
        outputs=hidden,
        h=1,
        w=1,
        c=params.inputs,
        out_h=1,
        out_w=1,
        out_c=hidden,
        batch_normalize=batch_normalize,
        **fields,
    )


def per_step_batch(options, params):
    """B = the network batch / time_steps (darknet: batch / steps)."""
    steps = params.time_steps
    if params.batch % steps:
        raise options.error(
            f"the network batch ({params.batch}) is not a multiple of time_steps ({steps})"
        )
    return steps, params.batch // steps
