"""Test helpers usable from your own tests: the numerical gradient check.

    from minidark.tools.gradcheck import gradcheck, format_results
    results = gradcheck("cfg/my_layer.cfg")            # every layer of a cfg file
    results = gradcheck(net, layer=2)                  # one layer of a Network
    results = gradcheck(CFG_TEXT)                      # cfg text (contains a newline)
    assert all(r.passed for r in results), format_results(results)

Each layer is checked in isolation, in float64, by central differences:
its input (and the outputs of layers it reads through ``l.input_layers``,
e.g. route and shortcut) and every learnable array are perturbed by ``eps``
and the change of a scalar loss is compared with what ``backward`` produced.
The loss is the layer's own ``cost`` for loss layers (softmax, cost), else
``L = -sum(R * output)`` for a fixed random ``R``, so that ``delta = R`` is
exactly ``-dL/d(output)`` in darknet's sign convention. The inputs are
uniform in [-1, 1] and have the shapes the cfg gives each layer.

Every buffer backward adds into (the input delta, the sources' deltas, the
``*_updates``) starts at a random value and the check uses what backward
added, so a backward that assigns instead of accumulating fails; backward is
also run once with ``net.delta = None`` (as for layer 0) and a crash there
is a failed row ``net.delta None``.

The error of one array is ``max|numeric - analytic| / max(max|numeric|,
max|analytic|)`` over up to ``max_checks`` randomly picked entries; it
passes at ``tolerance`` (1e-4; a correct float64 backward gives ~1e-9).

Kinks. relu, leaky, a max-pool's argmax, l1 are not differentiable
everywhere: when the ``±eps`` step moves a value across such a point, the
central difference mixes two slopes and a correct backward would fail
(LeNet's convolutions did at some seeds). Each entry's two one-sided slopes
are compared; where they disagree beyond the tolerance the entry is measured
again with ``eps/10``, ``eps/100``, ``eps/1000``, and left out ("N entries at
a kink, not compared"; status ``kink`` when none is left) only if they never
agree. A broken backward still fails: its error shows at the entries that
are nowhere near a kink. See :func:`numeric_gradient`.

Learnable arrays are found from the layer: ``l.learned`` (a dict
``{"slopes": "slope_updates"}``) if set, else each name in ``l.saved`` whose
update buffer is named by ``l.sgd_params`` or is ``weight_updates`` /
``bias_updates`` / ``scale_updates`` / ``<name>_updates``.

Expected gaps. Some backwards are deliberately not the exact derivative of
their forward (darknet fidelity). Such a check is reported with a note and a
looser, documented bound instead of as a plain failure. A layer declares its
gap with ``l.gradcheck_gap``: a :class:`KnownGap`, or a function
``(layer, train) -> KnownGap | None``. Layers without one are looked up in
``KNOWN_GAPS``, which covers the shared darknet code paths:

* batch norm in training (any layer built with ``minidark.kernels.bn.make_bn``):
  darknet's backward treats the unbiased variance ``sum/(N-1)`` of the
  forward as if it were ``sum/N`` (N = batch * pixels per channel), a
  relative error of order 1/N: bound ``4/N + 1e-3`` on the input and on
  arrays before the normalisation (weights); below N = 8 values per channel
  the gap cannot be told from a bug and the check is skipped (use a larger
  batch). biases and scales are checked exactly.
* softmax with ``temperature`` T != 1: darknet's delta ``truth - output``
  lacks the 1/T factor; the numeric gradient is multiplied by T before the
  comparison, which is then exact.
* dropout in inference (``train=False``): backward only exists for training
  (darknet never calls it otherwise); not checked.

The network's random generator is reseeded before every forward, so dropout
masks and random crops are the same in every evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..cfg import parse_network, parse_network_cfg, read_cfg_text
from ..layer import Layer
from ..network import Network

# learnable array -> the buffer backward accumulates its negative gradient in
UPDATE_NAMES = {"weights": "weight_updates", "biases": "bias_updates", "scales": "scale_updates"}


class KnownGap:
    """A deliberate difference between a backward and the forward's derivative.

    ``note`` is printed in the table; ``tolerance`` (None: the normal one;
    ``math.inf``: not checked) is the documented bound; the numeric gradient is
    multiplied by ``scale`` before comparing; ``arrays`` limits the gap to
    some array names (None: all; ``"input"`` is the layer input).
    """

    def __init__(
        self,
        note: str,
        tolerance: float | None = None,
        scale: float = 1.0,
        arrays: Iterable[str] | None = None,
        skip: Iterable[str] | None = None,
    ) -> None:
        self.note, self.tolerance, self.scale = note, tolerance, scale
        self.arrays = None if arrays is None else tuple(arrays)
        self.skip = tuple(skip or ())  # array names the gap does not apply to

    def applies_to(self, array: str) -> bool:
        if array in self.skip:
            return False
        return self.arrays is None or array in self.arrays

    def __repr__(self):
        return f"KnownGap({self.note!r}, tolerance={self.tolerance}, scale={self.scale})"


def bn_gap(layer, train):
    shape = layer.bn_shape
    if shape is None or not train:
        return None
    n = shape[0] * shape[2]
    note = "expected gap: BN backward uses 1/N, forward variance 1/(N-1)"
    if n < 8:
        batch = -(-8 // shape[2])
        return KnownGap(
            f"{note}; N={n} is too small to check: use batch >= {batch}",
            math.inf,
            skip=("biases", "scales"),
        )
    return KnownGap(f"{note}; bound 4/N+1e-3, N={n}", 4.0 / n + 1e-3, skip=("biases", "scales"))


def softmax_temperature_gap(layer, train):
    temperature = layer.temperature
    if layer.type != "softmax" or temperature == 1:
        return None
    return KnownGap(
        f"expected gap: delta lacks 1/T; compared with numeric x T={temperature:g}",
        scale=temperature,
    )


def dropout_inference_gap(layer, train):
    if layer.type != "dropout" or train:
        return None
    return KnownGap("not checked: dropout's backward runs only in training", math.inf)


KNOWN_GAPS = [bn_gap, softmax_temperature_gap, dropout_inference_gap]


def known_gap(layer: Layer, train: bool) -> KnownGap | None:
    """The KnownGap for this layer in this mode, or None."""
    declared = layer.gradcheck_gap
    if declared is not None:
        return declared(layer, train) if callable(declared) else declared
    for rule in KNOWN_GAPS:
        gap = rule(layer, train)
        if gap is not None:
            return gap
    return None


class GradResult:
    """One checked array: ``error`` against ``tolerance``; ``note`` explains a gap."""

    def __init__(
        self,
        index: int,
        type: str,
        array: str,
        error: float,
        tolerance: float,
        note: str = "",
        expected_gap: bool = False,
        kinks: int = 0,
        refined: int = 0,
    ) -> None:
        self.index, self.type, self.array = index, type, array
        self.error, self.tolerance, self.note = error, tolerance, note
        self.expected_gap = expected_gap
        self.kinks = kinks  # entries left out: every step tried crossed a kink
        self.refined = refined  # entries measured again with a smaller step (see numeric_gradient)

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    @property
    def checked(self) -> bool:
        return self.tolerance != math.inf

    @property
    def status(self) -> str:
        """'ok', 'FAIL', 'gap' (within an expected gap's bound), 'skip', or 'kink'
        (every picked entry sat at a kink: nothing was compared)."""
        if not self.checked:
            return "kink" if self.kinks else "skip"
        if not self.passed:
            return "FAIL"
        return "gap" if self.expected_gap else "ok"

    def __repr__(self):
        return f"<{self.index} {self.type} {self.array}: {self.error:.2e} {self.status}>"


def learned_arrays(layer: Layer) -> list[tuple[str, str]]:
    """(parameter name, update-buffer name) pairs backward fills for this layer."""
    declared = layer.learned
    if declared is not None:
        return list(declared.items())
    named = dict(UPDATE_NAMES)
    named.update(dict(layer.sgd_params))
    pairs = []
    for name in layer.saved:
        update = named.get(name, f"{name}_updates")
        if getattr(layer, update, None) is not None:
            pairs.append((name, update))
    return pairs


def to_float64(net: Network) -> Network:
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
            with np.errstate(invalid="ignore"):  # np.empty scratch may hold NaN bit patterns
                memo[id(owner)] = (owner, owner.astype(np.float64))
        return memo[id(owner)][1].reshape(array.shape)

    sublayers = [sub for l in net.layers for sub in (l.sublayers or {}).values()]  # recurrent
    for holder in [net] + list(net.layers) + sublayers:
        for name, value in list(vars(holder).items()):
            if isinstance(value, np.ndarray):
                setattr(holder, name, convert(value))
    net.input = net.input_buffer
    return net


def _truth_for(layer, rng, shape):
    if layer.type == "softmax" and layer.tree is None:
        groups = layer.groups
        n = shape[1] // groups
        truth = np.zeros((shape[0], groups, n))
        picks = rng.integers(0, n, (shape[0], groups))
        np.put_along_axis(truth, picks[..., None], 1.0, axis=2)
        return truth.reshape(shape)
    return rng.uniform(0, 1, shape)


REFINE = (10, 100, 1000)  # eps is divided by these, in turn, at a suspected kink


def numeric_gradient(loss, base, flat, picks, analytic, eps, tolerance):
    """Central differences ``-dL/dθ`` at ``flat[picks]``, and which entries sit at a kink.

    Per entry, the one-sided slopes ``g+ = -(L(θ+ε) - L(θ))/ε`` and
    ``g- = -(L(θ) - L(θ-ε))/ε`` are taken (``base`` is ``L(θ)``) and the
    central difference is their mean. Where ``L`` is smooth they differ by
    ``ε L''``; where the step crosses a kink (relu's 0, a max-pool's argmax
    switching, l1's 0) they differ by the change of slope, and their mean is
    neither slope: a correct backward would "fail" there. Such an entry,
    ``|g+ - g-| > tolerance * scale``, is tried again with ``ε/10``,
    ``ε/100``, ``ε/1000`` (also curing plain strong curvature); if the
    one-sided slopes never agree it is a kink and left out of the
    comparison. A kink is rare (a value within ε of a break point), so when
    more than a quarter of the entries look like kinks the loss itself is
    not piecewise smooth (a non-deterministic forward, say) and they are all
    kept: the check then fails as it should.

    Returns ``(numeric, kink, refined)``: float64 values, a boolean mask, and
    how many entries needed a smaller step.
    """

    def slopes(i, step):
        keep = flat[i]
        flat[i] = keep + step
        plus = loss()
        flat[i] = keep - step
        minus = loss()
        flat[i] = keep
        return -(plus - base) / step, -(base - minus) / step

    sides = np.array([slopes(i, eps) for i in picks], np.float64).reshape(len(picks), 2)
    numeric = sides.mean(axis=1)
    scale = max(np.abs(numeric).max(initial=0), np.abs(analytic).max(initial=0), 1e-12)
    limit = tolerance * scale
    kink = np.abs(sides[:, 0] - sides[:, 1]) > limit
    refined = 0
    for k in np.flatnonzero(kink):
        for divisor in REFINE:
            up, down = slopes(picks[k], eps / divisor)
            if abs(up - down) <= limit:
                numeric[k], kink[k] = (up + down) / 2, False
                refined += 1
                break
    if kink.sum() > max(1, len(picks) // 4):
        kink[:] = False
    return numeric, kink, refined


def gradcheck_layer(
    net: Network,
    index: int,
    *,
    train: bool = True,
    eps: float = 1e-5,
    tolerance: float = 1e-4,
    seed: int = 0,
    max_checks: int = 40,
) -> list[GradResult]:
    """Check one layer's input and parameter gradients; returns GradResults."""
    layer = net.layers[index]
    rng = np.random.default_rng(seed)
    is_loss = layer.cost is not None
    x = rng.uniform(-1, 1, (net.batch, layer.inputs))
    if layer.type in ("softmax",):  # spread logits so the softmax is not saturated
        x *= 2
    sources = [net.layers[j] for j in layer.input_layers]
    for source in sources:
        source.output[...] = rng.uniform(-1, 1, source.output.shape)
    truth = _truth_for(layer, rng, (net.batch, layer.truths or layer.outputs)) if is_loss else None
    weights_r = rng.normal(size=layer.output.shape)

    carried = {name: getattr(layer, name).copy() for name in layer.carried}

    def loss():
        net.seed(seed)
        for name, value in carried.items():  # recurrent: the same initial state each time
            getattr(layer, name)[...] = value
        net.input, net.truth, net.train = x, truth, train
        if layer.delta is not None:
            layer.delta.fill(0)
        layer.forward(layer, net)
        return layer.cost if is_loss else -float(np.sum(weights_r * layer.output))

    # analytic: one forward, delta = R (or the loss layer's own), one backward.
    # Every buffer backward adds into starts at a random value, and the check
    # uses what was added: a backward that assigns instead of accumulating fails.
    loss()
    if not is_loss:
        layer.delta[...] = weights_r
    updates = [getattr(layer, update) for _, update in learned_arrays(layer)]
    input_delta = np.empty_like(x)
    targets = [input_delta] + [s.delta for s in sources] + updates
    starts = []
    for target in targets:
        target[...] = rng.uniform(-1, 1, target.shape)
        starts.append(target.copy())
    net.input, net.delta = x, input_delta
    layer.backward(layer, net)
    net.delta = None
    added = [target - start for target, start in zip(targets, starts, strict=True)]
    gap = known_gap(layer, train)

    checks = [("input", x, added[0])]
    checks += [
        (f"layer {s.index} output", s.output, d)
        for s, d in zip(sources, added[1 : 1 + len(sources)], strict=True)
    ]
    learned = learned_arrays(layer)
    checks += [
        (name, getattr(layer, name), d)
        for (name, _), d in zip(learned, added[1 + len(sources) :], strict=True)
    ]
    base = loss()
    results = []
    for name, array, analytic in checks:
        flat, grad = array.reshape(-1), analytic.reshape(-1)
        picks = np.arange(flat.size)
        if flat.size > max_checks:
            picks = rng.choice(flat.size, max_checks, replace=False)
        numeric, kink, refined = numeric_gradient(
            loss, base, flat, picks, grad[picks], eps, tolerance
        )
        bound, note, expected = tolerance, "", False
        if gap is not None and gap.applies_to(name):
            numeric *= gap.scale
            if gap.tolerance is not None:
                bound = max(tolerance, gap.tolerance)
            note, expected = gap.note, True
        kept = ~kink
        kinks = int(kink.sum())
        if kinks:
            note = "; ".join(
                filter(None, [f"{kinks} of {len(picks)} entries at a kink, not compared", note])
            )
        scale = max(
            np.abs(numeric[kept]).max(initial=0), np.abs(grad[picks][kept]).max(initial=0), 1e-12
        )
        error = float(np.abs(numeric[kept] - grad[picks][kept]).max(initial=0) / scale)
        if not kept.any():
            bound = math.inf  # nothing left to compare
        results.append(
            GradResult(
                index, layer.type, name, error, bound, note, expected, kinks=kinks, refined=refined
            )
        )
    # as the first layer of a network, backward gets net.delta = None
    loss()
    net.input, net.delta = x, None
    try:
        layer.backward(layer, net)
    except Exception as exc:  # reported as a failed check
        results.append(
            GradResult(
                index,
                layer.type,
                "net.delta None",
                math.inf,
                tolerance,
                f"backward as layer 0 raised {type(exc).__name__}: {exc}",
            )
        )
    loss()  # leave the layer's buffers as a forward of the checked input left them
    return results


def _as_network(target, batch, seed):
    if isinstance(target, Network):
        return target
    if isinstance(target, Layer):
        return _wrap_layer(target)
    if isinstance(target, str) and "\n" in target and not os.path.exists(target):
        return parse_network(read_cfg_text(target), batch=batch, seed=seed, verbose=False)
    return parse_network_cfg(target, batch=batch, seed=seed, verbose=False)


def _wrap_layer(layer):
    """A one-layer Network around a Layer built by a make function."""
    net = Network()
    net.batch, net.inputs = layer.batch, layer.inputs
    net.h, net.w, net.c = layer.h, layer.w, layer.c
    net.layers = [layer]
    net.finalize()
    return net


def gradcheck(
    target: str | os.PathLike | Network | Layer,
    layer: int | None = None,
    *,
    batch: int = 2,
    train: bool = True,
    seed: int = 0,
    **kwargs: Any,
) -> list[GradResult]:
    """Gradient-check every layer (or one) of a cfg file, cfg text, Network or Layer.

    ``batch`` overrides the cfg's batch (ignored for a Network or Layer);
    ``train=False`` checks the inference-mode backward. ``layer`` may be
    negative (from the end). Other keywords go to :func:`gradcheck_layer`
    (``eps``, ``tolerance``, ``max_checks``). The Network is converted to
    float64 in place.
    """
    net = _as_network(target, batch, seed)
    to_float64(net)
    count = len(net.layers)
    if layer is None:
        indices = range(count)
    else:
        if not -count <= layer < count:
            raise IndexError(
                f"layer {layer} does not exist: the network has {count} layers (0-{count - 1})"
            )
        indices = [layer % count]
    results = []
    for index in indices:
        results += gradcheck_layer(net, index, train=train, seed=seed, **kwargs)
    return results


def format_results(results: Iterable[GradResult]) -> str:
    """A table of max relative errors with the bound, the result and any note."""
    lines = [
        f"{'layer':>5} {'type':<14} {'array':<18} {'max rel error':>13} {'bound':>9}  result  note"
    ]
    for r in results:
        bound = "-" if not r.checked else f"{r.tolerance:.1e}"
        line = (
            f"{r.index:>5} {r.type:<14} {r.array:<18} {r.error:>13.2e} {bound:>9}"
            f"  {r.status:<6}  {r.note}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


def summarize(results: Sequence[GradResult]) -> str:
    """One line: how many arrays passed, failed, had expected gaps or were skipped."""
    failed = [r for r in results if r.status == "FAIL"]
    gaps = sum(r.status == "gap" for r in results)
    skipped = sum(r.status in ("skip", "kink") for r in results)
    kinks = sum(r.kinks for r in results)
    extra = "".join(
        [
            f", {gaps} within an expected gap's bound" if gaps else "",
            f", {skipped} not checked" if skipped else "",
            f", {kinks} entries at a kink not compared" if kinks else "",
        ]
    )
    if failed:
        where = ", ".join(f"layer {r.index} {r.array}" for r in failed)
        return f"FAILED: {len(failed)} of {len(results)} arrays ({where}){extra}"
    return f"passed: {len(results) - skipped} of {len(results)} arrays{extra}"
