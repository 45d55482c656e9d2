"""[lstm]: darknet's long short-term memory layer (lstm_layer.c), the standard
LSTM without peepholes.

Eight linear connected sublayers, each with its own bias: wf, wi, wg, wo
(H -> H) and uf, ui, ug, uo (inputs -> H). Per step::

    f = sigma(wf h + uf x),  i = sigma(wi h + ui x),  g = tanh(wg h + ug x),  o = sigma(wo h + uo x)
    c <- f * c + i * g,      h <- o * tanh(c)          the output of step t is h; c_t is in ``cell``

cfg keys: ``output`` (1), ``batch_normalize`` (0). .weights: wi, wf, wo, wg,
ui, uf, uo, ug (darknet's order). ``hidden``, ``cell_state`` (B, H: darknet's
h and c) carry the state across
batches and inference calls, never reset (``prev_state``/``prev_cell``:
their values at the start of the forward). Backward (BPTT truncated at the
batch start), t = T-1 .. 0, with dc = 0 at t = T-1::

    dc_t = dh_t o (1 - tanh^2 c_t) + dc
    do = dh_t tanh(c_t) o (1 - o);   dg = dc_t i (1 - g^2)
    di = dc_t g i (1 - i);           df = dc_t c_{t-1} f (1 - f)
    each gate delta goes to its w-sublayer (input h_{t-1}; dh_{t-1} += d W)
    and its u-sublayer (input x_t; net.delta_t += d U);   dc <- dc_t f

Deliberately fixed (darknet's CPU build can neither train this layer -- no
delta, no backward -- nor does its unwired backward give the gradient): at
t = 0 the previous state is the real h_{-1}, c_{-1} (darknet reuses h_0,
c_0); ``dc`` starts at 0 every batch (darknet carries it over from the
last batch); after a training batch h and c hold the last step, as after
inference (darknet leaves step 0's values there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.activations import activate
from ..layer import Layer
from ..registry import register_layer
from .connected import backward_connected, forward_connected
from .recurrent import (
    StepNet,
    adopt_connected,
    all_steps,
    at_step,
    backward_params,
    clear_deltas,
    connected_record,
    steps_of,
)

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section
    from ..network import Network

GATES = ("f", "i", "g", "o")


@register_layer("lstm")
def make_lstm(options: Section, params: SizeParams) -> Layer:
    l = connected_record("lstm", options, params)
    hidden, steps, batch, batch_normalize = l.outputs, l.steps, l.batch, l.batch_normalize
    order = [f"w{g}" for g in "ifog"] + [f"u{g}" for g in "ifog"]  # .weights order
    adopt_connected(
        l, options, params, [(name, hidden if name[0] == "w" else params.inputs) for name in order]
    )
    shape = (steps, batch, hidden)
    l.output = np.zeros((steps * batch, hidden), np.float32)
    l.delta = np.zeros((steps * batch, hidden), np.float32)
    l.gates = np.zeros((len(GATES),) + shape, np.float32)  # f, i, g, o of every step
    l.cell = np.zeros(shape, np.float32)
    l.tanh_cell = np.zeros(shape, np.float32)
    l.hidden = np.zeros((batch, hidden), np.float32)  # darknet's h_cpu
    l.cell_state = np.zeros((batch, hidden), np.float32)  # darknet's c_cpu
    l.prev_state = np.zeros((batch, hidden), np.float32)
    l.h_prev = np.zeros(shape, np.float32)  # h_{t-1} of every step
    l.prev_cell = np.zeros((batch, hidden), np.float32)
    l.dc = np.zeros((batch, hidden), np.float32)  # -dL/dc flowing to step t-1
    l.dc_t = np.zeros((batch, hidden), np.float32)
    l.scratch = np.zeros((batch, hidden), np.float32)
    l.carried = ("hidden", "cell_state")
    l.fused = not batch_normalize  # u-sublayers over all steps at once, w-gates stacked
    l.w_stacked = np.zeros((len(GATES) * hidden, hidden), np.float32)  # wf, wi, wg, wo weights
    l.w_out = np.zeros((batch, len(GATES) * hidden), np.float32)  # one step's h W^T
    l.gate_deltas = np.zeros((batch, len(GATES) * hidden), np.float32)  # one step's gate deltas
    l.desc = f"{params.inputs} -> {hidden} x{steps}"
    l.forward, l.backward = forward_lstm, backward_lstm
    return l


def torch_weights(l):
    """The layer as ``torch.nn.LSTM(inputs, H)``'s state dict (float32 numpy arrays):
    torch stacks the gates in the order i, f, g, o; ``weight_ih`` holds the u-sublayers,
    ``weight_hh`` the w-sublayers, and the two bias vectors add up as here."""
    s = l.sublayers
    return {
        "weight_ih_l0": np.concatenate([s["u" + g].weights for g in "ifgo"]),
        "weight_hh_l0": np.concatenate([s["w" + g].weights for g in "ifgo"]),
        "bias_ih_l0": np.concatenate([s["u" + g].biases for g in "ifgo"]),
        "bias_hh_l0": np.concatenate([s["w" + g].biases for g in "ifgo"]),
    }


def _previous(l, out, t):
    """(h_{t-1}, c_{t-1})."""
    return (l.prev_state, l.prev_cell) if t == 0 else (out[t - 1], l.cell[t - 1])


def forward_lstm(l: Layer, net: Network) -> None:
    s = l.sublayers
    x = steps_of(net.input, l.steps, l.batch)
    out = steps_of(l.output, l.steps, l.batch)
    clear_deltas(l)
    if net.train:
        l.dc.fill(0)
    step = StepNet(net)
    np.copyto(l.prev_state, l.hidden)
    np.copyto(l.prev_cell, l.cell_state)
    H = l.outputs
    if l.fused:
        for k, gate in enumerate(GATES):
            forward_connected(all_steps(s["u" + gate]), step.at(net.input))
            np.copyto(l.w_stacked[k * H : (k + 1) * H], s["w" + gate].weights)
    for t in range(l.steps):
        h, c_prev = _previous(l, out, t)
        np.copyto(l.h_prev[t], h)
        if l.fused:  # the four linear w-sublayers in one GEMM
            np.matmul(h, l.w_stacked.T, out=l.w_out)
        for k, gate in enumerate(GATES):
            w, u = at_step(s["w" + gate], t), at_step(s["u" + gate], t)
            if l.fused:
                np.add(l.w_out[:, k * H : (k + 1) * H], w.biases, out=w.output)
            else:
                forward_connected(w, step.at(h))
                forward_connected(u, step.at(x[t]))
            value = l.gates[GATES.index(gate), t]
            np.add(w.output, u.output, out=value)
            activate(value, "tanh" if gate == "g" else "logistic")
        f, i, g, o = l.gates[:, t]
        c = l.cell[t]
        np.multiply(f, c_prev, out=c)
        c += i * g
        np.tanh(c, out=l.tanh_cell[t])
        np.multiply(o, l.tanh_cell[t], out=out[t])
    np.copyto(l.hidden, out[l.steps - 1])
    np.copyto(l.cell_state, l.cell[l.steps - 1])


def backward_lstm(l: Layer, net: Network) -> None:
    s = l.sublayers
    x = steps_of(net.input, l.steps, l.batch)
    dx = None if net.delta is None else steps_of(net.delta, l.steps, l.batch)
    out = steps_of(l.output, l.steps, l.batch)
    delta = steps_of(l.delta, l.steps, l.batch)
    step = StepNet(net)
    l.dc.fill(0)
    dc, tmp, H = l.dc_t, l.scratch, l.outputs
    for t in range(l.steps - 1, -1, -1):
        h_p, c_p = _previous(l, out, t)
        f, i, g, o = l.gates[:, t]
        dh, tc = delta[t], l.tanh_cell[t]
        np.multiply(tc, tc, out=dc)  # dc_t = dh o (1 - tanh^2 c) + dc
        np.subtract(1, dc, out=dc)
        dc *= o
        dc *= dh
        dc += l.dc
        gate_delta = {gate: s["u" + gate].delta_steps[t] for gate in GATES}
        np.multiply(dh, tc, out=gate_delta["o"])
        np.subtract(1, o, out=tmp)
        gate_delta["o"] *= o * tmp
        np.multiply(g, g, out=tmp)
        np.subtract(1, tmp, out=tmp)
        np.multiply(dc, i, out=gate_delta["g"])
        gate_delta["g"] *= tmp
        np.subtract(1, i, out=tmp)
        np.multiply(dc, g, out=gate_delta["i"])
        gate_delta["i"] *= i * tmp
        np.subtract(1, f, out=tmp)
        np.multiply(dc, c_p, out=gate_delta["f"])
        gate_delta["f"] *= f * tmp
        earlier = delta[t - 1] if t > 0 else None
        for gate in ("o", "g", "i", "f"):  # darknet's order
            np.copyto(s["w" + gate].delta_steps[t], gate_delta[gate])
            if l.fused:  # linear: the delta is final
                k = GATES.index(gate)
                np.copyto(l.gate_deltas[:, k * H : (k + 1) * H], gate_delta[gate])
            else:
                backward_connected(at_step(s["w" + gate], t), step.at(h_p, earlier))
                backward_connected(
                    at_step(s["u" + gate], t), step.at(x[t], None if dx is None else dx[t])
                )
        if l.fused and earlier is not None:  # dh_{t-1} += sum over gates of d W
            np.matmul(l.gate_deltas, l.w_stacked, out=tmp)
            earlier += tmp
        np.multiply(dc, f, out=l.dc)
    if l.fused:
        for gate in ("o", "g", "i", "f"):
            backward_params(s["w" + gate], l.h_prev)
            backward_connected(all_steps(s["u" + gate]), step.at(net.input, net.delta))
