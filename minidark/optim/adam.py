"""darknet's Adam step (adam_update_gpu; darknet's CPU path has none).

With ``rate = learning_rate * layer_scale`` (not divided by the batch, as
darknet's GPU update), decay ``d``, B = batch * subdivisions, update count
``t`` (``net.t`` after its increment) and, for every parameter ``w`` with
its summed negative gradient ``g`` (``*_updates``) -- weights, biases and
batch-norm scales alike, all decayed::

    g += -d * B * w
    m  = B1 * m + (1 - B1) * g
    v  = B2 * v + (1 - B2) * g**2
    w += rate * (m / (1 - B1**t)) / (sqrt(v / (1 - B2**t)) + eps)
    g  = 0

Since ``g`` is the *sum* over B images, this is ``torch.optim.Adam(lr=rate,
betas=(B1, B2), eps=eps / B, weight_decay=d)`` on the mean loss for every
parameter (the factor B cancels except against eps).

Moments live on the layer as darknet names them: ``m``/``v`` for the weights,
``bias_m``/``bias_v``, ``scale_m``/``scale_v``; they are listed in the layer's
``train_state`` so resume checkpoints keep them.
"""

import numpy as np


def moment_names(updates):
    """(m, v) attribute names for the ``*_updates`` buffer ``updates``."""
    if updates == "weight_updates":
        return "m", "v"
    prefix = updates.removesuffix("_updates")
    return f"{prefix}_m", f"{prefix}_v"


def adam_pairs(layer):
    """(parameter, updates) pairs Adam steps: the weights and ``sgd_params``."""
    return (("weights", "weight_updates"), *layer.sgd_params)


def allocate_adam_state(layer):
    """Give ``layer`` (and its sublayers) zeroed moments for each parameter it
    has, unless it has them already; list them in ``train_state``."""
    names = list(layer.train_state)
    if layer.update is not None:
        for param, updates in adam_pairs(layer):
            values = getattr(layer, param)
            if values is None:
                continue
            for name in moment_names(updates):
                if getattr(layer, name) is None:
                    setattr(layer, name, np.zeros_like(values, dtype=np.float32))
                if name not in names:
                    names.append(name)
    layer.train_state = tuple(names)
    for sub in (layer.sublayers or {}).values():
        allocate_adam_state(sub)


def adam_update(layer, args):
    rate = args.learning_rate * layer.learning_rate_scale
    b1, b2, t = args.B1, args.B2, args.t
    # bias corrections in float32 as darknet's powf
    correct1 = np.float32(1) - np.float32(b1) ** np.float32(t)
    correct2 = np.float32(1) - np.float32(b2) ** np.float32(t)
    for param, updates in adam_pairs(layer):
        w = getattr(layer, param)
        if w is None:
            continue
        m_name, v_name = moment_names(updates)
        m, v, g = getattr(layer, m_name), getattr(layer, v_name), getattr(layer, updates)
        if m is None:
            raise ValueError(
                f"layer {layer.index} [{layer.type}] has no Adam moments for {param}: "
                f"build the network with adam=1 in [net] (Network.finalize allocates them)"
            )
        g += np.float32(-args.decay * args.batch) * w
        m *= np.float32(b1)
        m += np.float32(1 - b1) * g
        v *= np.float32(b2)
        v += np.float32(1 - b2) * g * g
        w += np.float32(rate) * (m / correct1) / (np.sqrt(v / correct2) + np.float32(args.eps))
        g.fill(0)
