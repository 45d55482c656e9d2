"""[gru]: darknet's gated recurrent unit (gru_layer.c).

Six linear connected sublayers, each with its own bias: uz, ur, uh (inputs
-> H) and wz, wr, wh (H -> H). Per step, with h the state::

    z = sigma(uz x + wz h),   r = sigma(ur x + wr h)
    c = act(uh x + wh (r * h))          act: logistic, or tanh with tanh=1
    h <- z * h + (1 - z) * c            the output of step t is the new h

cfg keys: ``output`` (1), ``batch_normalize`` (0), ``tanh`` (0: darknet's
default candidate activation is logistic). .weights: wz, wr, wh, uz, ur, uh.

``state`` (B, H) is never reset, neither between training batches nor
between inference calls (darknet); ``prev_state`` is its copy at the start
of the forward. Backward (darknet's GPU path, the true gradient; BPTT
truncated at the batch start), t = T-1 .. 0, with h_p = h_{t-1}, d = dh_t::

    dh_{t-1} += d z
    d_c = d (1 - z) act'(c)                 -> uh and wh deltas
    d_z = d (h_p - c) z (1 - z)             -> uz and wz deltas
    f   = d_c W_wh  (gradient of r * h_p);  dh_{t-1} += f r
    d_r = f h_p r (1 - r)                   -> ur and wr deltas
    dh_{t-1} += d_r W_wr + d_z W_wz;  net.delta_t += the u-sublayers' input gradients

Deliberately fixed: darknet's CPU backward is empty (the layer never
learns). Not copied: the GPU path's clip of every sublayer delta to [-1, 1]
(the CPU connected layer has none, and it would break the gradient).
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


@register_layer("gru")
def make_gru(options: Section, params: SizeParams) -> Layer:
    use_tanh = options.bool("tanh", False)
    l = connected_record(
        "gru", options, params, tanh=use_tanh, candidate="tanh" if use_tanh else "logistic"
    )
    hidden, steps, batch, batch_normalize = l.outputs, l.steps, l.batch, l.batch_normalize
    adopt_connected(
        l,
        options,
        params,
        [(f"w{g}", hidden) for g in "zrh"] + [(f"u{g}", params.inputs) for g in "zrh"],
    )
    shape = (steps, batch, hidden)
    l.output = np.zeros((steps * batch, hidden), np.float32)
    l.delta = np.zeros((steps * batch, hidden), np.float32)
    l.z, l.r, l.candidate_out = (np.zeros(shape, np.float32) for _ in range(3))
    l.forgot_state = np.zeros(shape, np.float32)  # r * h_{t-1}: wh's input
    l.forgot_delta = np.zeros((batch, hidden), np.float32)
    l.h_prev = np.zeros(shape, np.float32)  # h_{t-1} of every step
    l.w_stacked = np.zeros((2 * hidden, hidden), np.float32)  # wz, wr weights: one GEMM
    l.w_out = np.zeros((batch, 2 * hidden), np.float32)  # one step's h [Wz Wr]^T
    l.gate_deltas = np.zeros((batch, 2 * hidden), np.float32)  # one step's dz, dr
    l.scratch = np.zeros((batch, hidden), np.float32)
    l.state = np.zeros((batch, hidden), np.float32)
    l.prev_state = np.zeros((batch, hidden), np.float32)
    l.carried = ("state",)
    l.fused = not batch_normalize  # u-sublayers over all steps at once
    l.desc = f"{params.inputs} -> {hidden} x{steps}"
    l.forward, l.backward = forward_gru, backward_gru
    return l


def _previous(l, out, t):
    return l.prev_state if t == 0 else out[t - 1]


def forward_gru(l: Layer, net: Network) -> None:
    s = l.sublayers
    x = steps_of(net.input, l.steps, l.batch)
    out = steps_of(l.output, l.steps, l.batch)
    clear_deltas(l)
    step = StepNet(net)
    np.copyto(l.prev_state, l.state)
    H = l.outputs
    if l.fused:
        for name in ("uz", "ur", "uh"):
            forward_connected(all_steps(s[name]), step.at(net.input))
        np.copyto(l.w_stacked[:H], s["wz"].weights)
        np.copyto(l.w_stacked[H:], s["wr"].weights)
    for t in range(l.steps):
        h = _previous(l, out, t)
        np.copyto(l.h_prev[t], h)
        if l.fused:  # the linear wz and wr in one GEMM
            np.matmul(h, l.w_stacked.T, out=l.w_out)
            np.add(l.w_out[:, :H], s["wz"].biases, out=at_step(s["wz"], t).output)
            np.add(l.w_out[:, H:], s["wr"].biases, out=at_step(s["wr"], t).output)
        else:
            for name in ("wz", "wr"):
                forward_connected(at_step(s[name], t), step.at(h))
        for name in ("uz", "ur", "uh"):
            at_step(s[name], t)
            if not l.fused:
                forward_connected(s[name], step.at(x[t]))
        z, r, c = l.z[t], l.r[t], l.candidate_out[t]
        np.add(s["uz"].output, s["wz"].output, out=z)
        np.add(s["ur"].output, s["wr"].output, out=r)
        activate(z, "logistic")
        activate(r, "logistic")
        np.multiply(r, h, out=l.forgot_state[t])
        forward_connected(at_step(s["wh"], t), step.at(l.forgot_state[t]))
        np.add(s["uh"].output, s["wh"].output, out=c)
        activate(c, l.candidate)
        np.subtract(h, c, out=out[t])  # h_t = z h + (1 - z) c = c + z (h - c)
        out[t] *= z
        out[t] += c
    np.copyto(l.state, out[l.steps - 1])


def backward_gru(l: Layer, net: Network) -> None:
    s = l.sublayers
    x = steps_of(net.input, l.steps, l.batch)
    dx = None if net.delta is None else steps_of(net.delta, l.steps, l.batch)
    out = steps_of(l.output, l.steps, l.batch)
    delta = steps_of(l.delta, l.steps, l.batch)
    step = StepNet(net)
    tmp, H = l.scratch, l.outputs
    for t in range(l.steps - 1, -1, -1):
        h_p = _previous(l, out, t)
        d, z, r, c = delta[t], l.z[t], l.r[t], l.candidate_out[t]
        earlier = delta[t - 1] if t > 0 else None
        if earlier is not None:
            earlier += d * z
        dc = s["uh"].delta_steps[t]  # d (1 - z) act'(c)
        np.subtract(1, z, out=dc)
        dc *= d
        dc *= (1 - c * c) if l.tanh else c * (1 - c)
        np.copyto(s["wh"].delta_steps[t], dc)
        dz = s["uz"].delta_steps[t]  # d (h_p - c) z (1 - z)
        np.subtract(h_p, c, out=dz)
        dz *= d
        np.subtract(1, z, out=tmp)
        tmp *= z
        dz *= tmp
        np.copyto(s["wz"].delta_steps[t], dz)
        l.forgot_delta.fill(0)
        if l.fused:
            backward_input_only(at_step(s["wh"], t), l.forgot_delta)
        else:
            backward_connected(at_step(s["wh"], t), step.at(l.forgot_state[t], l.forgot_delta))
        if earlier is not None:
            earlier += l.forgot_delta * r
        dr = s["ur"].delta_steps[t]  # f h_p r (1 - r)
        np.multiply(l.forgot_delta, h_p, out=dr)
        np.subtract(1, r, out=tmp)
        tmp *= r
        dr *= tmp
        np.copyto(s["wr"].delta_steps[t], dr)
        if l.fused:  # linear: dh_{t-1} += dz Wz + dr Wr in one GEMM
            if earlier is not None:
                np.copyto(l.gate_deltas[:, :H], s["wz"].delta_steps[t])
                np.copyto(l.gate_deltas[:, H:], dr)
                np.matmul(l.gate_deltas, l.w_stacked, out=tmp)
                earlier += tmp
        else:
            for name in ("wr", "wz"):
                backward_connected(at_step(s[name], t), step.at(h_p, earlier))
        for name in ("uh", "ur", "uz") if not l.fused else ():
            backward_connected(at_step(s[name], t), step.at(x[t], None if dx is None else dx[t]))
    for name in ("uh", "ur", "uz") if l.fused else ():
        backward_connected(all_steps(s[name]), step.at(net.input, net.delta))
    if l.fused:
        backward_params(s["wh"], l.forgot_state)
        backward_params(s["wr"], l.h_prev)
        backward_params(s["wz"], l.h_prev)
