"""[crnn]: darknet's convolutional recurrent layer (crnn_layer.c).

The [rnn] recurrence (minidark/layers/rnn.py) with three 3x3 stride-1 pad-1
convolutions as sublayers, all with the cfg's activation a::

    u_t = a(conv_U(x_t)),  q_t = a(conv_S(s_{t-1})),  s_t = u_t + q_t (+ s_{t-1})
    y_t = a(conv_O(s_t))                    input c -> hidden, self hidden -> hidden,
                                            output hidden -> output_filters

cfg keys: ``output_filters`` (1), ``hidden_filters`` (1), ``activation``
(logistic), ``batch_normalize`` (0), ``shortcut`` (0). Input and output are
images of the same height and width. .weights: input_layer, self_layer,
output_layer, each a convolutional block. State, carry and backward as
[rnn]'s (``state`` (T+1, B, hidden h w), ``hidden`` carried).

Deliberately fixed, besides [rnn]'s CPU gradient error: darknet never sets
its sublayers' learning-rate scale (0: the weights never change, on CPU and
GPU); here they learn with the layer's own scale. darknet's network
workspace ignores the sublayers (a crash in im2col); here the layer reports
their workspace size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..layer import Layer
from ..registry import register_layer
from .convolutional import backward_convolutional, forward_convolutional, make_convolutional
from .recurrent import adopt, per_step_batch, sublayer
from .rnn import backward_rnn, forward_rnn

if TYPE_CHECKING:
    from ..cfg.builder import SizeParams
    from ..cfg.grammar import Section


@register_layer("crnn")
def make_crnn(options: Section, params: SizeParams) -> Layer:
    params.require_image(options)
    output_filters = options.int("output_filters", 1)
    hidden_filters = options.int("hidden_filters", 1)
    activation = options.activation("activation", "logistic")
    batch_normalize = options.bool("batch_normalize", False)
    shortcut = options.bool("shortcut", False)
    for key, value in (("output_filters", output_filters), ("hidden_filters", hidden_filters)):
        if value < 1:
            raise options.error(f"{key} must be >= 1, got {value}", key)
    steps, batch = per_step_batch(options, params)
    h, w, c = params.h, params.w, params.c
    l = Layer(
        type="crnn",
        batch=batch,
        steps=steps,
        h=h,
        w=w,
        c=c,
        inputs=h * w * c,
        out_h=h,
        out_w=w,
        out_c=output_filters,
        outputs=h * w * output_filters,
        hidden_filters=hidden_filters,
        activation=activation,
        batch_normalize=batch_normalize,
        shortcut=shortcut,
    )
    conv = dict(size=3, stride=1, pad=1, activation=activation, batch_normalize=batch_normalize)
    subs = [
        (
            name,
            sublayer(
                make_convolutional,
                options,
                params,
                steps,
                batch,
                h * w * n_in,
                h=h,
                w=w,
                c=n_in,
                filters=n_out,
                **conv,
            ),
        )
        for name, n_in, n_out in (
            ("input_layer", c, hidden_filters),
            ("self_layer", hidden_filters, hidden_filters),
            ("output_layer", hidden_filters, output_filters),
        )
    ]
    adopt(l, subs)
    out = l.sublayers["output_layer"]
    l.output = out.output_steps.reshape(steps * batch, l.outputs)
    l.delta = out.delta_steps.reshape(steps * batch, l.outputs)
    l.state = np.zeros((steps + 1, batch, hidden_filters * h * w), np.float32)
    l.hidden = np.zeros((batch, hidden_filters * h * w), np.float32)
    l.carried = ("hidden",)
    l.desc = f"{hidden_filters}/{output_filters} 3x3 x{steps}"
    l.fused = False  # conv sublayers: one step at a time
    l.step_forward, l.step_backward = forward_convolutional, backward_convolutional
    l.forward, l.backward = forward_rnn, backward_rnn
    return l
