"""Test helpers usable from your own tests: the numerical gradient check.

    from minidark.testing import gradcheck
    results = gradcheck("cfg/my_layer.cfg")            # every layer of a cfg
    results = gradcheck(net, layer=2)                  # one layer of a Network
    assert all(r.passed for r in results), format_results(results)

Each layer is checked in isolation, in float64, by central differences:
its input (and the outputs of layers it reads through ``l.input_layers``,
e.g. route and shortcut) and every learnable array are perturbed by ``eps``
and the change of a scalar loss is compared with what ``backward`` produced.
The loss is the layer's own ``cost`` for loss layers (softmax, cost), else
``L = -sum(R * output)`` for a fixed random ``R``, so that ``delta = R`` is
exactly ``-dL/d(output)`` in darknet's sign convention.

The network's random generator is reseeded before every forward, so dropout
masks and random crops are the same in every evaluation.
"""
import numpy as np

from .network import Network

# learnable array -> the buffer backward accumulates its negative gradient in
UPDATE_NAMES = {"weights": "weight_updates", "biases": "bias_updates",
                "scales": "scale_updates"}


class GradResult:
    def __init__(self, index, type, array, error, tolerance, note=""):
        self.index, self.type, self.array = index, type, array
        self.error, self.tolerance, self.note = error, tolerance, note

    @property
    def passed(self):
        return self.error <= self.tolerance

    def __repr__(self):
        return (f"<{self.index} {self.type} {self.array}: {self.error:.2e} "
                f"{'ok' if self.passed else 'FAIL'}>")


def learned_arrays(layer):
    """(parameter name, update-buffer name) pairs backward fills for this layer."""
    declared = getattr(layer, "learned", None)
    if declared is not None:
        return list(declared.items())
    pairs = []
    for name in layer.saved:
        update = UPDATE_NAMES.get(name, f"{name}_updates")
        if getattr(layer, update, None) is not None:
            pairs.append((name, update))
    return pairs


def to_float64(net):
    """Convert every float32 buffer of ``net`` and its layers to float64 in place,
    keeping buffers that layers share (dropout) shared."""
    memo = {}

    def convert(array):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            return array
        owner = array if array.base is None else array.base
        if not isinstance(owner, np.ndarray) or owner.size != array.size:
            owner = array  # a partial view: convert on its own
        if id(owner) not in memo:
            memo[id(owner)] = (owner, owner.astype(np.float64))
        return memo[id(owner)][1].reshape(array.shape)

    for holder in [net] + list(net.layers):
        for name, value in list(vars(holder).items()):
            if isinstance(value, np.ndarray):
                setattr(holder, name, convert(value))
    net.input = net.input_buffer
    return net


def _truth_for(layer, rng, shape):
    if layer.type == "softmax" and getattr(layer, "tree", None) is None:
        groups = getattr(layer, "groups", 1)
        n = shape[1] // groups
        truth = np.zeros((shape[0], groups, n))
        picks = rng.integers(0, n, (shape[0], groups))
        np.put_along_axis(truth, picks[..., None], 1.0, axis=2)
        return truth.reshape(shape)
    return rng.uniform(0, 1, shape)


def gradcheck_layer(net, index, *, train=True, eps=1e-5, tolerance=1e-4, seed=0,
                    max_checks=40):
    """Check one layer's input and parameter gradients; returns GradResults."""
    layer = net.layers[index]
    rng = np.random.default_rng(seed)
    is_loss = layer.cost is not None
    x = rng.uniform(-1, 1, (net.batch, layer.inputs))
    if layer.type in ("softmax",):  # spread logits so the softmax is not saturated
        x *= 2
    sources = [net.layers[j] for j in getattr(layer, "input_layers", ())]
    for source in sources:
        source.output[...] = rng.uniform(-1, 1, source.output.shape)
    truth = _truth_for(layer, rng, (net.batch, layer.outputs)) if is_loss else None
    weights_r = rng.normal(size=layer.output.shape)

    def loss():
        net.seed(seed)
        net.input, net.truth, net.train = x, truth, train
        if layer.delta is not None:
            layer.delta.fill(0)
        layer.forward(layer, net)
        return layer.cost if is_loss else -float(np.sum(weights_r * layer.output))

    # analytic: one forward, delta = R (or the loss layer's own), one backward
    loss()
    if not is_loss:
        layer.delta[...] = weights_r
    for _, update in learned_arrays(layer):
        getattr(layer, update).fill(0)
    input_delta = np.zeros_like(x)
    for source in sources:
        source.delta.fill(0)
    net.input, net.delta = x, input_delta
    layer.backward(layer, net)
    net.delta = None

    checks = [("input", x, input_delta.copy())]
    checks += [(f"layer {s.index} output", s.output, s.delta.copy()) for s in sources]
    checks += [(name, getattr(layer, name), getattr(layer, update).copy())
               for name, update in learned_arrays(layer)]
    results = []
    for name, array, analytic in checks:
        flat, grad = array.reshape(-1), analytic.reshape(-1)
        picks = np.arange(flat.size)
        if flat.size > max_checks:
            picks = rng.choice(flat.size, max_checks, replace=False)
        numeric = np.empty(len(picks))
        for k, i in enumerate(picks):
            keep = flat[i]
            flat[i] = keep + eps
            plus = loss()
            flat[i] = keep - eps
            minus = loss()
            flat[i] = keep
            numeric[k] = -(plus - minus) / (2 * eps)   # darknet sign: -dL/dθ
        scale = max(np.abs(numeric).max(), np.abs(grad[picks]).max(), 1e-12)
        error = float(np.abs(numeric - grad[picks]).max() / scale)
        results.append(GradResult(index, layer.type, name, error, tolerance))
    return results


def gradcheck(target, layer=None, *, batch=2, train=True, seed=0, **kwargs):
    """Gradient-check every layer (or one) of a cfg path or a Network."""
    if isinstance(target, Network):
        net = target
    else:
        from . import load_network
        net = load_network(target, batch=batch, seed=seed)
    to_float64(net)
    indices = range(len(net.layers)) if layer is None else [layer]
    results = []
    for index in indices:
        results += gradcheck_layer(net, index, train=train, seed=seed, **kwargs)
    return results


def format_results(results):
    """A table of max relative errors with pass/fail."""
    lines = [f"{'layer':>5} {'type':<14} {'array':<18} {'max rel error':>14}  result"]
    for r in results:
        lines.append(f"{r.index:>5} {r.type:<14} {r.array:<18} {r.error:>14.2e}  "
                     f"{'ok' if r.passed else 'FAIL'}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)

from .reference import ArrayCheck, ReplayReport, check_darknet_predictions, compare_arrays, refdata_root, replay_vectors, vector_dirs  # noqa: E402,F401,E501
