"""Replay darknet's reference vectors and compare every array.

A *vector directory* holds what the original C darknet computed for a tiny
network (layout: ``../shared/refdata/README.md``)::

    net.cfg  index.json  weights_before.weights  weights_after_sN.weights
    input_sN.npy  truth_sN.npy  cost_sN.npy  infer_Lxx_<type>_output.npy
    Lxx_<type>_<what>_sN.npy          e.g. L00_connected_weight_updates_grad_s1

Usage, on the shared vectors or on your own darknet dumps::

    from minidark.testing import replay_vectors, vector_dirs
    for directory in vector_dirs():     # $MINIDARK_REFDATA/vectors, else ../shared/refdata/vectors
        report = replay_vectors(directory)
        print(report.summary())
        report.assert_passed()               # AssertionError listing every failing array

What ``replay_vectors`` does, in darknet's order:

1. build the network from ``net.cfg`` and read ``weights_before.weights`` with
   minidark's reader; writing it back must give the same bytes;
2. inference pass (``train=False``) on ``input_s1``, every layer's output
   captured right after its own forward (and ``net.predict`` checked against
   the output layer);
3. for each step N: recorded dropout uniforms are handed to the layer
   (``layer.next_rand``), parameters are captured (``_before``), then
   ``net.train_datum(input_sN, truth_sN)`` runs (``seen += batch``, forward,
   backward, update) with spies on each layer's forward (output, BN
   internals, maxpool indexes, loss, cost, uniforms: captured *immediately*,
   because dropout later changes the previous layer's output in place) and
   backward (``delta_in`` before, ``delta_out`` after), and on
   ``net.backward`` (``*_updates`` after backward: ``_grad``); afterwards the
   parameters (``_after``) and update buffers (``_momentum``) are captured;
4. ``.weights`` checks per step: (a) darknet's own ``_after_sN`` parameter
   arrays loaded into a fresh network and written by minidark's writer must be
   byte-identical to darknet's ``weights_after_sN.weights`` (this pins the file
   format, layer order and header); (b) the file minidark writes for *its
   own* trained network, read back, must equal darknet's file within the
   tolerance (bit equality is impossible: darknet's float32 sums run in a
   different order than numpy/OpenBLAS; a_mlp differs by up to ~128 ULPs).

Every recorded array is compared with ``|ours - ref| <= rtol*max|ref| + atol``
(``rtol=1e-4``, ``atol=1e-6``); integer arrays (maxpool indexes) must be
equal. An array whose ``max|ref|`` is below ``noise_floor`` (1e-5) is rounding
noise of an analytically zero quantity (e.g. a conv bias gradient through
batch norm) and is compared with the absolute tolerance ``noise_atol``
(1e-5) only. An array the harness cannot obtain from minidark is a failure,
never a skip.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np

from .. import load_network
from ..data.mnist import load_mnist
from ..weights import load_weights, save_weights, weights_bytes
from .gradcheck import learned_arrays

RTOL, ATOL = 1e-4, 1e-6
NOISE_FLOOR, NOISE_ATOL = 1e-5, 1e-5

_LAYER_FILE = re.compile(
    r"^(?P<infer>infer_)?L(?P<layer>\d+)_(?P<type>[A-Za-z0-9]+)_(?P<what>.+?)"
    r"(?:_s(?P<step>\d+))?$"
)
_NET_FILE = re.compile(r"^(?P<what>input|truth|cost)_s(?P<step>\d+)$")
_WEIGHTS_AFTER = "weights_after_s{}.weights"
# recurrent layers (README-new-layers.md): state buffers dumped around the recurrent passes,
# sublayer arrays named <sub>_<array>, found in layer.sublayers
RECURRENT = ("rnn", "gru", "lstm", "crnn")
_RECURRENT_SUFFIXES = (
    ("_after_forward", "forward"),
    ("_before_backward", "delta_in"),
    ("_after_backward", "delta_out"),
)
_STATE_ALIASES = {("rnn", "state"): "hidden", ("crnn", "state"): "hidden"}  # infer (B, H) state
_ATTRIBUTE_ALIASES = {("lstm", "h"): "hidden", ("lstm", "c"): "cell_state"}  # darknet's h, c
_SEEN_PROBE = "_seen12800"  # region vectors: delta/cost of the step's forward at seen = 12800
_PHASE_SUFFIXES = (
    ("_before", "before"),
    ("_after", "after"),
    ("_grad", "grad"),
    ("_momentum", "momentum"),
)
# what -> layer attribute, captured right after the layer's own forward
_FORWARD = {
    "output": "output",
    "indexes": "indexes",
    "loss": "loss",
    "cost": "cost",
    "rand": "rand",
}


# ---------------------------------------------------------------- locations
def default_refdata_root() -> Path:
    """``<repo>/../shared/refdata``, where the project's darknet data lives."""
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "refdata"


def refdata_root() -> Path:
    """``$MINIDARK_REFDATA`` if set, else :func:`default_refdata_root`."""
    env = os.environ.get("MINIDARK_REFDATA")
    return Path(env) if env else default_refdata_root()


def vector_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Sorted vector directories (those holding a ``net.cfg``) under ``root/vectors``
    (``root`` defaults to :func:`refdata_root`); ``root`` may also be the
    ``vectors`` folder itself or a single vector directory. Empty if none."""
    root = Path(root) if root is not None else refdata_root()
    if (root / "net.cfg").is_file():
        return [root]
    base = root / "vectors" if (root / "vectors").is_dir() else root
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / "net.cfg").is_file())


# --------------------------------------------------------------- comparison
class ArrayCheck:
    """The result of comparing one array (or one byte/exact check)."""

    def __init__(
        self,
        name,
        passed,
        *,
        max_abs=0.0,
        max_rel=0.0,
        ref_max=0.0,
        tolerance=0.0,
        index=None,
        ours=None,
        ref=None,
        note="",
    ):
        self.name, self.passed = name, bool(passed)
        self.max_abs, self.max_rel, self.ref_max = max_abs, max_rel, ref_max
        self.tolerance, self.index, self.ours, self.ref, self.note = (
            tolerance,
            index,
            ours,
            ref,
            note,
        )

    def describe(self):
        text = f"{self.name}: {'ok' if self.passed else 'FAIL'}"
        if self.tolerance or self.max_abs:
            text += (
                f"  max abs {self.max_abs:.3e}  max rel {self.max_rel:.3e}"
                f"  (max|ref| {self.ref_max:.3e}, tol {self.tolerance:.3e})"
            )
        if self.index is not None:
            text += f"  first differing index {self.index}: ours {self.ours!r} ref {self.ref!r}"
        if self.note:
            text += f"  [{self.note}]"
        return text

    def __repr__(self):
        return f"<ArrayCheck {self.describe()}>"


def compare_arrays(
    name: str,
    ours: np.ndarray,
    ref: np.ndarray,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    noise_floor: float = NOISE_FLOOR,
    noise_atol: float = NOISE_ATOL,
) -> ArrayCheck:
    """Compare ``ours`` with darknet's ``ref``; returns an :class:`ArrayCheck`.

    Floats pass when ``|ours - ref| <= rtol * max|ref| + atol`` everywhere, or,
    when ``max|ref| < noise_floor``, ``|ours - ref| <= noise_atol``. ``max_rel``
    is ``max|ours - ref| / max|ref|``. Integers must be equal. A missing
    value (``None``), a size mismatch or a non-finite value fails.
    """
    ref = np.asarray(ref)
    if ours is None:
        return ArrayCheck(name, False, note="minidark has no such array")
    ours = np.asarray(ours)
    if ours.size != ref.size:
        return ArrayCheck(name, False, note=f"size mismatch: ours {ours.shape}, ref {ref.shape}")
    ours = ours.reshape(ref.shape)
    if ref.dtype.kind in "iub":
        diff = ours.astype(np.int64) != ref.astype(np.int64)
        if not diff.any():
            return ArrayCheck(name, True, note="exact")
        first = np.unravel_index(np.argmax(diff), ref.shape)
        return ArrayCheck(
            name,
            False,
            index=tuple(int(i) for i in first),
            ours=ours[first].item(),
            ref=ref[first].item(),
            note=f"integers differ in {int(diff.sum())} of {ref.size} places",
        )
    ref64, ours64 = ref.astype(np.float64), ours.astype(np.float64)
    ref_max = float(np.abs(ref64).max()) if ref.size else 0.0
    note = ""
    if ref_max < noise_floor:
        tolerance = noise_atol
        note = f"max|ref| < {noise_floor:g}: rounding noise, absolute tolerance only"
    else:
        tolerance = rtol * ref_max + atol
    err = np.abs(ours64 - ref64)
    err[~np.isfinite(ours64)] = np.inf
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else np.inf)
    bad = err > tolerance
    if not bad.any():
        return ArrayCheck(
            name,
            True,
            max_abs=max_abs,
            max_rel=max_rel,
            ref_max=ref_max,
            tolerance=tolerance,
            note=note,
        )
    first = np.unravel_index(np.argmax(bad), ref.shape)
    return ArrayCheck(
        name,
        False,
        max_abs=max_abs,
        max_rel=max_rel,
        ref_max=ref_max,
        tolerance=tolerance,
        index=tuple(int(i) for i in first),
        ours=float(ours64[first]),
        ref=float(ref64[first]),
        note=(note + "; " if note else "")
        + f"{int(bad.sum())} of {ref.size} values out of tolerance",
    )


def compare_bytes(name, ours, ref, layout=None):
    """Byte identity; on failure names the first differing offset (and, with
    ``layout`` = [(start, end, label)], which array it falls in)."""
    if ours == ref:
        return ArrayCheck(name, True, note=f"byte-identical, {len(ref)} bytes")
    n = min(len(ours), len(ref))
    first = next((i for i in range(n) if ours[i] != ref[i]), n)
    where = ""
    for start, end, label in layout or ():
        if start <= first < end:
            where = f" in {label} (float {(first - start) // 4})"
    return ArrayCheck(
        name,
        False,
        index=(first,),
        note=f"bytes differ from offset {first}{where}; sizes ours {len(ours)}, darknet {len(ref)}",
    )


# ------------------------------------------------------------------ reports
class ReplayReport:
    """All checks of one vector directory."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.checks = []

    def add(self, check):
        self.checks.append(check)
        return check

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self):
        return [c for c in self.checks if not c.passed]

    def worst(self, exclude_noise=True):
        """The float check with the largest max_rel (ignoring noise-level arrays)."""
        floats = [
            c
            for c in self.checks
            if c.tolerance
            and not (exclude_noise and c.note.startswith("max|ref| <"))
            and not c.note.startswith("deviation, differs")
        ]
        return max(floats, key=lambda c: c.max_rel, default=None)

    def summary(self):
        deviations = sum(c.note.startswith("deviation") for c in self.checks)
        lines = [
            f"{self.directory.name}: {len(self.checks)} checks, "
            f"{len(self.failures)} failed"
            + (f", {deviations} listed deviations from darknet" if deviations else "")
        ]
        worst = self.worst()
        if worst is not None:
            lines.append(f"  largest relative error: {worst.max_rel:.3e} ({worst.name})")
        lines += ["  " + c.describe() for c in self.failures]
        return "\n".join(lines)

    def table(self):
        return "\n".join(c.describe() for c in self.checks)

    def assert_passed(self):
        if not self.passed:
            raise AssertionError(f"darknet reference vectors {self.directory}:\n{self.summary()}")


# ------------------------------------------------------------- deviations
class Deviation:
    """Where minidark deliberately differs from the darknet code path that produced a
    vector set (a defect not copied; README-new-layers.md), as data.

    ``arrays``: regular expressions over check names (array labels such as
    ``L00_rnn_input_layer_delta_s1``, ``our weights_after_s1.weights L00 ...``,
    ``train_datum() return value s2 ...``). Such a check passes only if ours is
    *out* of tolerance of darknet's value (a deviation that no longer shows is a
    failure: remove it from the list), or, with ``matches``, only if ours is
    within tolerance of the same array in that other set (darknet's other code
    path for the same network, weights and data). ``resync``: steps before which
    the harness loads darknet's recorded parameters, update buffers and the
    ``state`` arrays ({layer: {attribute: (file stem with {step}, index)}}), so
    that a deviation in one step is not carried into the next step's forward.
    """

    def __init__(self, reason, arrays, matches=None, resync=(), state=None):
        self.reason, self.matches = reason, matches
        self.arrays = [re.compile(a) for a in arrays]
        self.resync, self.state = tuple(resync), state or {}

    def covers(self, name):
        return any(a.search(name) for a in self.arrays)


DEVIATIONS = {
    "g2_yolo_two_scales": Deviation(
        "darknet's 1x1-convolution backward (CPU, and GPU without cuDNN) writes its input "
        "gradient with beta = 0, overwriting what the [route] above had already added into "
        "L00's delta; minidark's backward accumulates (cuDNN's beta = 1), so L00 keeps the "
        "12x12 head's gradient: step 2 starts from darknet's recorded parameters",
        [
            r"^L00_convolutional_(delta_(in|out)|(bias|weight)_updates_(grad|momentum)"
            r"|(biases|weights)_after)_s[12]$",
            r"^our weights_after_s[12]\.weights L00 (biases|weights)$",
        ],
        resync=(2,),
    ),
    "h_region": Deviation(
        "darknet's CPU region backward is commented out (no gradient reaches earlier layers, "
        "the conv only decays); minidark's is darknet's GPU backward (logistic derivative on "
        "x, y, obj, then added), which h2_region_gpupath replays for the same network, "
        "weights and step-1 data: step 2 starts from darknet's recorded parameters",
        [
            r"^L01_region_delta_out_s[12]$",
            r"^L00_convolutional_(delta_(in|out)|(bias|weight)_updates_(grad|momentum)"
            r"|(biases|weights)_after)_s[12]$",
            r"^our weights_after_s[12]\.weights L00 (biases|weights)$",
        ],
        resync=(2,),
    ),
    "j_rnn": Deviation(
        "darknet's CPU rnn backward takes the input_layer delta after the self_layer "
        "multiplied it by a'(q_t) (an extra factor); minidark's is g_t a'(u_t), the true "
        "gradient and darknet's GPU path. darknet's CPU path also resets the state every "
        "training batch where minidark carries it (GPU path): step 2 starts from darknet's "
        "recorded parameters and state",
        [
            r"^L00_rnn_input_layer_(delta|(bias|weight)_updates_(grad|momentum)"
            r"|(biases|weights)_after)_s[12]$",
            r"^our weights_after_s[12]\.weights L00 input_layer_(biases|weights)$",
        ],
        resync=(2,),
        state={0: {"hidden": ("L00_rnn_state_s{step}", 0)}},
    ),
    "k_gru": Deviation(
        "darknet's CPU gru backward is empty (no gradient, only weight decay); minidark's "
        "is the true gradient, darknet's GPU backward: checked against k2_gru_gpupath "
        "(same cfg, weights, data)",
        [
            r"^L00_gru_delta_out_s1$",
            r"^L00_gru_\w+_(delta|(bias|weight)_updates_\w+"
            r"|(biases|weights)_after)_s1$",
            r"_s2$",
            r"^our weights_after_s[12]",
            r"^train_datum\(\) return value s2",
        ],
        matches="k2_gru_gpupath",
    ),
    "l_lstm": Deviation(
        "darknet's lstm backward (unwired on CPU, the same algorithm as its GPU path) uses "
        "h_0, c_0 as the previous state at t = 0 (minidark: h_-1, c_-1), carries the cell "
        "gradient dc over from the previous batch (minidark: 0), and leaves h, c at step "
        "0's values after backward (minidark: the last step's, as after inference): "
        "step 2 starts from darknet's recorded parameters and h, c",
        [
            r"^L00_lstm_[hc]_after_backward_s[12]$",
            r"^L00_lstm_[uw]f_(delta|bias_updates_(grad|momentum)|biases_after)_s1$",
            r"^L00_lstm_(uf|w[fiog])_(weight_updates_(grad|momentum)|weights_after)_s1$",
            r"^our weights_after_s1\.weights L00 (w[fiog]_weights|[uw]f_biases|uf_weights)$",
            r"^L00_lstm_(dc_(before|after)_backward|delta_out)_s2$",
            r"^L00_lstm_[uw][fiog]_(delta|(bias|weight)_updates_(grad|momentum)"
            r"|(biases|weights)_after)_s2$",
            r"^our weights_after_s2\.weights L00 [uw][fiog]_(biases|weights)$",
        ],
        resync=(2,),
        state={
            0: {
                "hidden": ("L00_lstm_h_before_s{step}", None),
                "cell_state": ("L00_lstm_c_before_s{step}", None),
            }
        },
    ),
    "n_crnn": Deviation(
        "darknet's crnn sublayers never learn (make_convolutional_layer leaves their "
        "learning-rate scale at 0, CPU and GPU); minidark's learn with the layer's scale. "
        "Its CPU backward has rnn's extra a'(q_t) in the input_layer gradient (minidark: "
        "the true gradient) and resets the state every training batch (minidark carries "
        "it): step 2 starts from darknet's recorded parameters and state",
        [
            r"^L00_crnn_input_layer_(delta|(bias|weight)_updates_(grad|momentum))_s[12]$",
            r"^L00_crnn_(input|self|output)_layer_(biases|weights)_after_s[12]$",
            r"^our weights_after_s[12]\.weights L00 (input|self|output)_layer_(biases|weights)$",
        ],
        resync=(2,),
        state={0: {"hidden": ("L00_crnn_state_s{step}", 0)}},
    ),
}


def _resync(net, directory, step, layer_types, deviation):
    """Load darknet's recorded start of ``step``: parameters, update buffers, state."""
    for layer in net.layers:
        type_ = layer_types.get(layer.index, layer.type)
        prefix = f"L{layer.index:02d}_{type_}_"
        for name in layer.saved:
            getattr(layer, name)[...] = np.load(
                directory / f"{prefix}{name}_before_s{step}.npy"
            ).reshape(getattr(layer, name).shape)
        for _, update in learned_arrays(layer):
            file = directory / f"{prefix}{update}_momentum_s{step - 1}.npy"
            getattr(layer, update)[...] = np.load(file).reshape(getattr(layer, update).shape)
        for attribute, (stem, index) in deviation.state.get(layer.index, {}).items():
            value = np.load(directory / f"{stem.format(step=step)}.npy")
            value = value if index is None else value[index]
            getattr(layer, attribute)[...] = value.reshape(getattr(layer, attribute).shape)


# ------------------------------------------------------------------- replay
class _Entry:
    def __init__(self, file, step, layer, type, what):
        self.file, self.step, self.layer, self.type, self.what = file, step, layer, type, what

    @property
    def label(self):
        return Path(self.file).stem


def _parse_name(file, layer_types):
    """File name -> _Entry; step 0 = inference, layer -1 = network level."""
    stem = Path(file).stem
    m = _NET_FILE.match(stem)
    if m:
        return _Entry(file, int(m["step"]), -1, None, m["what"])
    m = _LAYER_FILE.match(stem)
    if not m:
        return _Entry(file, None, None, None, stem)
    layer = int(m["layer"])
    type_ = layer_types.get(layer, m["type"])
    prefix = f"{'infer_' if m['infer'] else ''}L{m['layer']}_{type_}_"
    if not stem.startswith(prefix):  # index.json type disagrees with the file name
        type_ = m["type"]
        prefix = f"{'infer_' if m['infer'] else ''}L{m['layer']}_{type_}_"
    rest = stem[len(prefix) :]
    if m["infer"]:
        return _Entry(file, 0, layer, type_, rest)
    step = re.search(r"_s(\d+)$", rest)
    if not step:
        return _Entry(file, None, layer, type_, rest)
    return _Entry(file, int(step[1]), layer, type_, rest[: step.start()])


def _locate(entry):
    """(phase, attribute) where minidark holds ``entry``'s array, or None."""
    what = entry.what
    if entry.step == 0:
        if entry.type in RECURRENT and what.endswith("_after"):  # state after the pass
            what = what[: -len("_after")]
            what = _STATE_ALIASES.get((entry.type, what), what)
            return "infer", _ATTRIBUTE_ALIASES.get((entry.type, what), what)
        if entry.type in RECURRENT and what in ("cell", "state"):
            return "infer", what
        return ("infer", _FORWARD.get(what)) if what in _FORWARD else None
    if what.endswith(_SEEN_PROBE):  # a forward of the same step with net.seen = 12800
        return "seen12800", _FORWARD.get(what[: -len(_SEEN_PROBE)], what[: -len(_SEEN_PROBE)])
    for suffix, phase in _RECURRENT_SUFFIXES if entry.type in RECURRENT else ():
        if what.endswith(suffix):
            what = what[: -len(suffix)]
            return phase, _ATTRIBUTE_ALIASES.get((entry.type, what), what)
    for suffix, phase in _PHASE_SUFFIXES:
        if what.endswith(suffix):
            what = what[: -len(suffix)]
            return phase, _ATTRIBUTE_ALIASES.get((entry.type, what), what)
    if what == "delta_in":
        return "delta_in", "delta"
    if what == "delta_out":
        return "delta_out", "delta"
    if what.startswith("bn_"):
        return "forward", what[3:]  # bn_x, bn_x_norm, bn_mean, bn_variance
    if what in _FORWARD:
        return "forward", _FORWARD[what]
    if entry.type in RECURRENT:  # sublayer deltas after backward, the rest after forward
        return ("delta_out" if what.endswith("_delta") else "forward"), what
    return None


def _snapshot(layer, attribute):
    value = getattr(layer, attribute, None)
    if value is None and layer.sublayers:  # <sub>_output / <sub>_delta: all time steps
        for name, sub in layer.sublayers.items():
            if attribute.startswith(name + "_"):
                field = attribute[len(name) + 1 :]
                value = getattr(sub, field + "_steps", None)
                if value is None:
                    value = getattr(sub, field, None)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (int, float, np.floating, np.integer)):
        return np.array([value], np.float64)
    return None


def _header_seen(data):
    major, minor, _ = struct.unpack_from("<iii", data, 0)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        return struct.unpack_from("<Q", data, 12)[0]
    return struct.unpack_from("<i", data, 12)[0]


def _layout(net):
    """(start, end, 'layer i [type] name') byte ranges of a .weights file."""
    out, offset = [(0, 20, "header")], 20
    for layer in net.layers:
        if not layer.saved or layer.dontsave:
            continue
        for name in layer.saved:
            size = 4 * getattr(layer, name).size
            out.append((offset, offset + size, f"layer {layer.index} [{layer.type}] {name}"))
            offset += size
    return out


def _fresh(cfg):
    return load_network(cfg, seed=0)


def replay_vectors(
    directory: str | os.PathLike,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    noise_floor: float = NOISE_FLOOR,
    noise_atol: float = NOISE_ATOL,
) -> ReplayReport:
    """Replay one darknet vector directory with minidark; returns a ReplayReport.

    Raises only when the network cannot be built or loaded at all (e.g. an
    unknown layer type); every other disagreement is a failed check. The
    steps are those of the module docstring, one method of ``_Replay`` each.
    """
    replay = _Replay(
        Path(directory), dict(rtol=rtol, atol=atol, noise_floor=noise_floor, noise_atol=noise_atol)
    )
    replay.read_vectors()
    replay.check_weights_before()
    replay.check_structure()
    replay.plan_captures()
    replay.replay_inference()
    for step in replay.steps:
        replay.replay_step(step)
    replay.check_detection_stats()
    replay.compare_captured()
    return replay.report


class _Replay:
    """The state one replay shares between its steps: the vectors read, the
    network, what to capture where, what was captured, and the report."""

    def __init__(self, directory, tol):
        self.directory, self.tol = directory, tol
        self.report = ReplayReport(directory)
        self.deviation = DEVIATIONS.get(directory.name)
        matches = self.deviation.matches if self.deviation else None
        self.other = directory.parent / matches if matches else None  # darknet's other path
        self.cfg = directory / "net.cfg"
        self.net = None
        self.wanted = {}  # (step, phase, layer) -> {attribute}
        self.targets = []  # (entry, step, phase, layer, attribute)
        self.inputs = {}  # (what, step) -> array
        self.captured = {}  # (step, phase, layer, attribute) -> array
        self.head_stats = {}  # (step, layer, kind) -> a detection head's l.stats
        self.steps = []

    # ------------------------------------------------------------ comparing
    def compare(self, name, ours, ref, alternative=None):
        """Add the comparison of ``ours`` with ``ref``, or, for an array a listed
        deviation covers, with darknet's other code path (``alternative``) or
        the check that it differs."""
        check = compare_arrays(name, ours, ref, **self.tol)
        if self.deviation is None or not self.deviation.covers(name):
            return self.report.add(check)
        if self.other is not None:
            if alternative is None and (self.other / f"{name}.npy").is_file():
                alternative = np.load(self.other / f"{name}.npy")
            if alternative is None:
                return self.report.add(
                    ArrayCheck(name, False, note=f"deviation: {self.other.name} has no such array")
                )
            check = compare_arrays(name, ours, alternative, **self.tol)
            check.note = f"deviation, checked against {self.other.name}: {self.deviation.reason}"
            return self.report.add(check)
        check.passed = not check.passed
        check.note = (
            f"deviation, differs from darknet as listed: {self.deviation.reason}"
            if check.passed
            else "listed in DEVIATIONS but matches darknet"
        )
        return self.report.add(check)

    # ------------------------------------------------------------ 0. the vectors
    def read_vectors(self):
        """index.json, and every .npy it lists or the directory holds."""
        index_path = self.directory / "index.json"
        self.index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        self.layer_info = {int(l["index"]): l for l in self.index.get("layers", [])}
        self.layer_types = {i: l["type"] for i, l in self.layer_info.items()}
        listed = [f["file"] for f in self.index.get("files", [])]
        present = sorted(p.name for p in self.directory.glob("*.npy"))
        for name in listed:
            if name not in present:
                self.report.add(ArrayCheck(name, False, note="listed in index.json but missing"))
        self.entries = [
            _parse_name(name, self.layer_types)
            for name in dict.fromkeys(listed + present)
            if name in present
        ]
        self.data = {e.file: np.load(self.directory / e.file) for e in self.entries}

    # ------------------------------------------------------------ 1. build and read
    def check_weights_before(self):
        """Build the network, read weights_before.weights; writing it back gives the same bytes."""
        before_path = self.directory / "weights_before.weights"
        self.net = load_network(self.cfg, weights=before_path, seed=0)
        self.report.add(
            compare_bytes(
                "weights_before.weights rewritten by minidark",
                weights_bytes(self.net),
                before_path.read_bytes(),
                _layout(self.net),
            )
        )

    def check_structure(self):
        """The same layer types and sizes as darknet reports."""
        net, report = self.net, self.report
        if self.layer_info:
            report.add(
                ArrayCheck(
                    "layer count",
                    len(net.layers) == len(self.layer_info),
                    note=f"ours {len(net.layers)}, darknet {len(self.layer_info)}",
                )
            )
        for i, info in self.layer_info.items():
            if i >= len(net.layers):
                continue
            layer = net.layers[i]
            ours = (layer.type, layer.inputs, layer.outputs)
            ref = (
                info["type"],
                info.get("inputs", layer.inputs),
                info.get("outputs", layer.outputs),
            )
            out_chw = info.get("out_chw")
            if out_chw and all(out_chw) and layer.out_h * layer.out_w > 1:
                ours += ((layer.out_c, layer.out_h, layer.out_w),)
                ref += (tuple(out_chw),)
            report.add(
                ArrayCheck(
                    f"layer {i} type/inputs/outputs[/out chw]",
                    ours == ref,
                    note=f"ours {ours}, darknet {ref}",
                )
            )

    # ------------------------------------------------------------ what is captured where
    def plan_captures(self):
        """Sort the recorded arrays into network inputs and (step, phase, layer,
        attribute) targets; a file the harness cannot place is a failure."""
        net = self.net
        for e in self.entries:
            if e.step is None or e.layer is None:
                self.report.add(
                    ArrayCheck(
                        e.label,
                        False,
                        note="file name not in the "
                        "documented layout (Lxx_<type>_<what>_sN / "
                        "infer_Lxx_<type>_<what>)",
                    )
                )
                continue
            if e.layer == -1:
                if e.what in ("input", "truth"):  # (T, B, n): step-major
                    self.inputs[e.what, e.step] = self.data[e.file].reshape(net.batch, -1)
                else:
                    self.targets.append((e, e.step, "net", -1, e.what))
                continue
            if e.layer >= len(net.layers):
                self.report.add(
                    ArrayCheck(
                        e.label,
                        False,
                        note=f"layer {e.layer} does not "
                        f"exist (minidark built {len(net.layers)} layers)",
                    )
                )
                continue
            located = _locate(e)
            if located is None:
                self.report.add(
                    ArrayCheck(
                        e.label,
                        False,
                        note=f"the harness does not know how "
                        f"to get '{e.what}' from a minidark layer",
                    )
                )
                continue
            phase, attribute = located
            self.wanted.setdefault((e.step, phase, e.layer), set()).add(attribute)
            self.targets.append((e, e.step, phase, e.layer, attribute))
        self.steps = sorted({s for (_, s) in self.inputs if s > 0})

    def capture(self, step, phase, i):
        for attribute in self.wanted.get((step, phase, i), ()):
            self.captured[step, phase, i, attribute] = _snapshot(self.net.layers[i], attribute)

    def capture_all(self, step, phase):
        for i in range(len(self.net.layers)):
            self.capture(step, phase, i)

    def spy(self, step):
        """Wrap each layer's forward/backward to capture at the right moment
        (right after its own forward: dropout later changes the previous
        layer's output in place); returns what ``unspy`` restores."""
        originals = []
        for i, layer in enumerate(self.net.layers):
            fwd, bwd = layer.forward, layer.backward
            originals.append((layer, fwd, bwd))

            def forward(l, n, _f=fwd, _i=i):
                _f(l, n)
                self.capture(step, "infer" if step == 0 else "forward", _i)

            def backward(l, n, _b=bwd, _i=i):
                self.capture(step, "delta_in", _i)
                _b(l, n)
                self.capture(step, "delta_out", _i)

            layer.forward, layer.backward = forward, backward
        return originals

    @staticmethod
    def unspy(originals):
        for layer, fwd, bwd in originals:
            layer.forward, layer.backward = fwd, bwd

    # ------------------------------------------------------------ 2. inference
    def replay_inference(self):
        """Inference on input_s1 with the initial weights; net.predict against the output."""
        net = self.net
        if ("input", 1) not in self.inputs:
            if any(e.step == 0 for e in self.entries):
                self.report.add(
                    ArrayCheck("input_s1", False, note="inference outputs recorded but no input_s1")
                )
            return
        x = self.inputs["input", 1]
        originals = self.spy(0)
        try:
            net.forward(x, train=False)
        finally:
            self.unspy(originals)
        out_layer = net.output_layer
        ref_entry = next(
            (
                e
                for e in self.entries
                if e.step == 0 and e.layer == out_layer.index and e.what == "output"
            ),
            None,
        )
        if ref_entry is not None:
            net.reset_state()  # recurrent state: predict starts where darknet's pass did
            self.compare(
                f"net.predict(input_s1) vs {ref_entry.label}",
                net.predict(x),
                self.data[ref_entry.file],
            )
        net.reset_state()  # darknet trained a freshly loaded network

    # ------------------------------------------------------------ 3. training steps
    def replay_step(self, step):
        """One ``train_datum`` with spies, then the .weights checks of the step."""
        if ("truth", step) not in self.inputs:
            self.report.add(ArrayCheck(f"truth_s{step}", False, note="missing"))
            return
        self.feed_uniforms(step)
        if self.deviation is not None and step in self.deviation.resync:
            _resync(self.net, self.directory, step, self.layer_types, self.deviation)
        if any(key[:2] == (step, "seen12800") for key in self.wanted):
            self.seen_probe(step)
        returned = self.train_datum(step)
        self.check_return_value(step, returned)
        after_path = self.directory / _WEIGHTS_AFTER.format(step)
        if not after_path.is_file():
            self.report.add(ArrayCheck(after_path.name, False, note="missing"))
            return
        darknet_bytes = after_path.read_bytes()
        seen = _header_seen(darknet_bytes)
        self.report.add(
            ArrayCheck(
                f"seen after s{step}",
                self.net.seen == seen,
                note=f"ours {self.net.seen}, darknet {seen}",
            )
        )
        self.check_darknet_arrays_written(step, after_path, darknet_bytes)
        self.check_our_weights_after(step, after_path)

    def feed_uniforms(self, step):
        """Hand the recorded dropout uniforms of ``step`` to their layers (``next_rand``)."""
        for e, s, phase, i, attribute in self.targets:
            if s == step and attribute == "rand" and phase == "forward":
                layer = self.net.layers[i]
                if layer.rand is None:  # only a layer drawing uniforms takes them
                    self.report.add(
                        ArrayCheck(
                            e.label,
                            False,
                            note=f"layer {i} [{layer.type}] "
                            "takes no recorded uniforms (no next_rand)",
                        )
                    )
                    continue
                layer.next_rand = self.data[e.file]

    def seen_probe(self, step):
        """The region vectors' probe: the same step's training forward with
        ``net.seen = 12800`` (the anchor-prior term off); captured, then undone."""
        net = self.net
        seen = net.seen
        net.seen = 12800
        try:
            net.forward(self.inputs["input", step], self.inputs["truth", step], train=True)
        finally:
            net.seen = seen
        self.capture_all(step, "seen12800")
        self.head_stats.update(
            {(step, l.index, "stdout_seen12800"): dict(l.stats) for l in net.layers if l.stats}
        )

    def train_datum(self, step):
        """``net.train_datum`` with parameters captured before, updates after
        backward (``_grad``), parameters and momentum after; returns its value."""
        net = self.net
        self.capture_all(step, "before")
        originals = self.spy(step)
        net_backward = net.backward

        def backward_spy(_b=net_backward, _s=step):
            _b()
            self.capture_all(_s, "grad")

        net.backward = backward_spy
        try:
            returned = net.train_datum(self.inputs["input", step], self.inputs["truth", step])
        finally:
            del net.backward
            self.unspy(originals)
        self.capture_all(step, "after")
        self.capture_all(step, "momentum")
        self.head_stats.update(
            {(step, l.index, "stdout"): dict(l.stats) for l in net.layers if l.stats}
        )
        self.captured[step, "net", -1, "cost"] = np.array([net.cost])
        return returned

    def check_return_value(self, step, returned):
        returns = self.index.get("checks", {}).get("train_network_datum_returns", [])
        if len(returns) < step:
            return
        alternative = None
        if self.other is not None:
            alt_returns = json.loads((self.other / "index.json").read_text())["checks"][
                "train_network_datum_returns"
            ]
            alternative = np.array([alt_returns[step - 1]], np.float64)
        self.compare(
            f"train_datum() return value s{step} vs darknet's train_network_datum",
            np.array([returned]),
            np.array([returns[step - 1]], np.float64),
            alternative,
        )

    # ------------------------------------------------------------ 4. .weights after a step
    def check_darknet_arrays_written(self, step, after_path, darknet_bytes):
        """(a) darknet's own _after arrays, written by minidark's writer, give darknet's file."""
        copy, missing = _fresh(self.cfg), []
        for layer in copy.layers:
            if not layer.saved or layer.dontsave:
                continue
            for name in layer.saved:
                type_ = self.layer_types.get(layer.index, layer.type)
                file = f"L{layer.index:02d}_{type_}_{name}_after_s{step}.npy"
                if file not in self.data:
                    missing.append(file)
                    continue
                getattr(layer, name)[...] = self.data[file].reshape(getattr(layer, name).shape)
        copy.seen = self.net.seen
        if missing:
            self.report.add(
                ArrayCheck(
                    f"{after_path.name} from darknet's arrays",
                    False,
                    note=f"parameter dumps missing: {', '.join(missing)}",
                )
            )
        else:
            self.report.add(
                compare_bytes(
                    f"{after_path.name} written by minidark from darknet's _after_s{step} arrays",
                    weights_bytes(copy),
                    darknet_bytes,
                    _layout(copy),
                )
            )

    def check_our_weights_after(self, step, after_path):
        """(b) our own trained network's file, read back, against darknet's file."""
        ours_net, ref_net = _fresh(self.cfg), _fresh(self.cfg)
        _save_and_reload(self.net, ours_net)
        load_weights(ref_net, after_path)
        self.report.add(
            ArrayCheck(
                f"our weights_after_s{step} seen",
                ours_net.seen == ref_net.seen,
                note=f"ours {ours_net.seen}, darknet {ref_net.seen}",
            )
        )
        alt_net = None
        if self.other is not None:
            alt_net = _fresh(self.cfg)
            load_weights(alt_net, self.other / after_path.name)
        for ours_layer, ref_layer in zip(ours_net.layers, ref_net.layers, strict=True):
            for name in ours_layer.saved:
                self.compare(
                    f"our weights_after_s{step}.weights L{ours_layer.index:02d} {name}",
                    getattr(ours_layer, name),
                    getattr(ref_layer, name),
                    None if alt_net is None else getattr(alt_net.layers[ours_layer.index], name),
                )

    # ------------------------------------------------------------ 5. the rest
    def check_detection_stats(self):
        """The statistics line each detection head printed (parsed in index.json)."""
        rtol, atol = self.tol["rtol"], self.tol["atol"]
        for ref in self.index.get("detection_stats", []):
            ours = self.head_stats.get((ref["step"], ref["layer"], ref["kind"]))
            for key, value in ref.items():
                if key in ("step", "layer", "kind"):
                    continue
                name = f"stats s{ref['step']} L{ref['layer']:02d} {key}" + (
                    "" if ref["kind"] == "stdout" else f" ({ref['kind']})"
                )
                if ours is None or key not in ours:
                    self.report.add(
                        ArrayCheck(
                            name,
                            False,
                            note=f"layer {ref['layer']} has no "
                            f"statistic '{key}' for this pass (l.stats)",
                        )
                    )
                    continue
                # printed with %f: half a unit of the 6th decimal on top of the usual tolerance
                self.report.add(
                    compare_arrays(
                        name,
                        np.array([ours[key]]),
                        np.array([value]),
                        rtol=rtol,
                        atol=atol + 5e-7,
                        noise_floor=0,
                    )
                )

    def compare_captured(self):
        """Every recorded array against what was captured for it."""
        for e, step, phase, i, attribute in self.targets:
            key = (step, phase, i, attribute)
            if key not in self.captured:
                why = (
                    "no training step ran for it"
                    if step not in self.steps and step != 0
                    else "not captured"
                )
                self.report.add(ArrayCheck(e.label, False, note=why))
                continue
            value = self.captured[key]
            if value is None:
                layer = self.net.layers[i] if i >= 0 else None
                who = f"layer {i} [{layer.type}]" if layer is not None else "the network"
                self.report.add(
                    ArrayCheck(e.label, False, note=f"{who} has no array '{attribute}'")
                )
                continue
            self.compare(e.label, value, self.data[e.file])


def _save_and_reload(net, into):
    """``save_weights(net)`` to a temporary file, then ``load_weights`` it into ``into``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ours.weights"
        save_weights(net, path)
        load_weights(into, path)


# -------------------------------------------------- darknet-trained weights
def check_darknet_predictions(
    cfg: str | os.PathLike,
    weights: str | os.PathLike,
    probs_npy: str | os.PathLike,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    atol: float = 1e-5,
    batch: int = 1000,
) -> dict:
    """Predict with darknet-trained ``weights`` and compare with darknet's probabilities.

    ``images`` default to the 10k MNIST test images (``data_dir``, default
    ``<repo>/data/mnist``), pixel/255, one plane, IDX order; ``labels`` to
    their labels. Returns a dict: ``max_abs`` (max |ours - darknet|),
    ``passed`` (max_abs <= atol), ``top1``/``top2`` (our accuracy),
    ``darknet_top1``/``darknet_top2`` (from darknet's probabilities),
    ``argmax_agree`` (fraction of images where both pick the same class) and
    ``probs`` (ours).
    """
    if images is None:
        data_dir = data_dir or Path(__file__).resolve().parents[2] / "data" / "mnist"
        images, mnist_labels = load_mnist(data_dir, "test")
        labels = mnist_labels if labels is None else labels
    ref = np.load(probs_npy)
    if ref.shape[0] != len(images):
        raise ValueError(
            f"{probs_npy} holds {ref.shape[0]} rows of probabilities "
            f"but {len(images)} images were given"
        )
    net = load_network(cfg, weights, batch=min(batch, len(images)))
    probs = net.predict(images)
    result = {
        "probs": probs,
        "max_abs": float(np.abs(probs.astype(np.float64) - ref).max()),
        "argmax_agree": float(np.mean(probs.argmax(1) == ref.argmax(1))),
    }
    result["passed"] = result["max_abs"] <= atol
    if labels is not None:
        labels = np.asarray(labels)
        for k in (1, 2):
            result[f"top{k}"] = _topk(probs, labels, k)
            result[f"darknet_top{k}"] = _topk(ref, labels, k)
    return result


def _topk(probs, labels, k):
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))
