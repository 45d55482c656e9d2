"""[rnn]: darknet's vanilla recurrent layer (rnn_layer.c).

Three connected sublayers, all with the cfg's activation a, hidden size H::

    u_t = a(U x_t + b_U)          input_layer   (inputs -> H)
    q_t = a(S s_{t-1} + b_S)      self_layer    (H -> H)
    s_t = u_t + q_t   (+ s_{t-1} with shortcut=1)
    y_t = a(O s_t + b_O)          output_layer  (H -> H): the layer's output is y, not s

cfg keys: ``output`` (1), ``activation`` (logistic), ``batch_normalize`` (0,
per-step statistics in every sublayer), ``shortcut`` (0). The network batch is
B * time_steps rows, step-major; this layer's ``batch`` is B. .weights:
input_layer, self_layer, output_layer, each a connected block.

``state`` (T+1, B, H) holds s_{-1} .. s_{T-1}; ``hidden`` (B, H) is the
state carried across batches and inference calls: s_{-1} of the next
forward is s_{T-1} of this one (darknet's GPU path; its CPU path resets it
to 0 every training batch). BPTT is truncated at the batch start. Backward,
t = T-1 .. 0, with g_t = -dL/ds_t accumulated in the self_layer's delta::

    d_O = dy_t a'(y_t);   O_grad += d_O^T s_t;   g_t += d_O O
    d_U = g_t a'(u_t)                        (input_layer delta, taken before the next line)
    d_S = g_t a'(q_t);    S_grad += d_S^T s_{t-1};   g_{t-1} += d_S S (+ g_t with shortcut)
    U_grad += d_U^T x_t;  net.delta_t += d_U U

Deliberately fixed: darknet's CPU backward takes d_U from d_S, i.e. with an
extra factor a'(q_t) (its GPU path does not); its CPU state buffer is
allocated for one step and written for T+1 (here T+1 slots); its CPU
shortcut gradient adds d_S instead of g_t.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..layer import Layer
from ..registry import register_layer
from .connected import backward_connected, forward_connected
from .recurrent import (
    StepNet,
    adopt_connected,
    all_steps,
    at_step,
    backward_input_only,
    backward_params,
    clear_deltas,
    connected_record,
    steps_of,
)

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network


@register_layer("rnn")
def make_rnn(options: Section, params: SizeParams) -> Layer:
    l = connected_record(
        "rnn",
        options,
        params,
        activation=options.activation("activation", "logistic"),
        shortcut=options.bool("shortcut", False),
    )
    hidden, steps, batch, batch_normalize = l.outputs, l.steps, l.batch, l.batch_normalize
    activation = l.activation
    adopt_connected(
        l,
        options,
        params,
        (("input_layer", params.inputs), ("self_layer", hidden), ("output_layer", hidden)),
        activation,
    )
    out = l.sublayers["output_layer"]
    l.output = out.output_steps.reshape(steps * batch, hidden)
    l.delta = out.delta_steps.reshape(steps * batch, hidden)
    l.state = np.zeros((steps + 1, batch, hidden), np.float32)
    l.hidden = np.zeros((batch, hidden), np.float32)
    l.carried = ("hidden",)
    l.fused = not batch_normalize  # input and output layers over all steps at once
    l.desc = f"{params.inputs} -> {hidden} x{steps}"
    l.step_forward, l.step_backward = forward_connected, backward_connected
    l.forward, l.backward = forward_rnn, backward_rnn
    return l


def forward_rnn(l: Layer, net: Network) -> None:
    """Also [crnn]'s: ``l.step_forward`` is the sublayers' forward."""
    U, S, O = (l.sublayers[n] for n in ("input_layer", "self_layer", "output_layer"))
    forward_sub = l.step_forward
    x = steps_of(net.input, l.steps, l.batch)
    clear_deltas(l)
    step = StepNet(net)
    np.copyto(l.state[0], l.hidden)
    if l.fused:
        forward_sub(all_steps(U), step.at(net.input))
    for t in range(l.steps):
        at_step(U, t)
        if not l.fused:
            forward_sub(U, step.at(x[t]))
        forward_sub(at_step(S, t), step.at(l.state[t]))
        s = l.state[t + 1]
        np.add(U.output, S.output, out=s)
        if l.shortcut:
            s += l.state[t]
        if not l.fused:
            forward_sub(at_step(O, t), step.at(s))
    if l.fused:
        forward_sub(all_steps(O), step.at(l.state[1:]))
    np.copyto(l.hidden, l.state[l.steps])


def backward_rnn(l: Layer, net: Network) -> None:
    U, S, O = (l.sublayers[n] for n in ("input_layer", "self_layer", "output_layer"))
    backward_sub = l.step_backward
    x = steps_of(net.input, l.steps, l.batch)
    dx = None if net.delta is None else steps_of(net.delta, l.steps, l.batch)
    step = StepNet(net)
    if l.fused:  # d_O O into every g_t at once
        backward_sub(all_steps(O), step.at(l.state[1:], S.delta_steps))
    for t in range(l.steps - 1, -1, -1):
        g = S.delta_steps[t]  # g_t, complete once step t+1 is done
        if not l.fused:
            backward_sub(at_step(O, t), step.at(l.state[t + 1], g))
        np.copyto(U.delta_steps[t], g)
        earlier = S.delta_steps[t - 1] if t > 0 else None
        if l.shortcut and earlier is not None:
            earlier += g
        if l.fused:
            backward_input_only(at_step(S, t), earlier)
        else:
            backward_sub(at_step(S, t), step.at(l.state[t], earlier))
        if not l.fused:
            backward_sub(at_step(U, t), step.at(x[t], None if dx is None else dx[t]))
    if l.fused:
        backward_params(S, l.state[: l.steps])
        backward_sub(all_steps(U), step.at(net.input, net.delta))
