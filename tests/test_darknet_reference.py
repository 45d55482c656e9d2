"""Numeric fidelity to the C darknet (issue 5).

* ``test_darknet_vectors``: every vector directory under
  ``../shared/refdata/vectors`` (or ``$MINIDARK_REFDATA/vectors``) is replayed by
  :func:`minidark.testing.replay_vectors`: inference pass, two SGD steps, every
  recorded array within ``1e-4*max|ref| + 1e-6``, and the ``.weights`` checks.
* The *plumbing* tests below are NOT fidelity claims: they dump minidark's
  own arrays in darknet's file layout (with an independent copy of darknet's
  loops) and check that the harness finds, times and compares every file kind
  (batch-norm internals, dropout uniforms, maxpool indexes, strided conv,
  odd pooling, 7x7 inputs) and fails loudly when something is off.
* The gap tests document where a numerical gradient check disagrees with
  darknet by design.
"""
import json
import shutil

import numpy as np
import pytest

import minidark
from minidark.testing import (ArrayCheck, compare_arrays, refdata_root, replay_vectors,
                              vector_dirs)
from minidark.weights import save_weights

VECTORS = vector_dirs()


# ------------------------------------------------------------ darknet's data
def test_reference_vectors_are_found():
    assert VECTORS, (f"no darknet vector directories under {refdata_root()}/vectors "
                     "(set MINIDARK_REFDATA to the folder holding vectors/)")


@pytest.mark.parametrize("directory", VECTORS or [None],
                         ids=[d.name for d in VECTORS] or ["missing"])
def test_darknet_vectors(directory):
    assert directory is not None, f"no vector directories under {refdata_root()}"
    report = replay_vectors(directory)
    print(report.summary())
    report.assert_passed()
    # every recorded array was compared, none silently dropped
    npy = {p.stem for p in directory.glob("*.npy")} - {
        p.stem for p in directory.glob("input_s*.npy")} - {
        p.stem for p in directory.glob("truth_s*.npy")}
    compared = {c.name for c in report.checks}
    assert npy <= compared, sorted(npy - compared)


# -------------------------------------------------------- compare_arrays
def test_compare_arrays_tolerance_boundary():
    ref = np.array([2.0, -1.0, 0.5], np.float32)
    tol = 1e-4 * 2.0 + 1e-6
    assert compare_arrays("a", ref + np.float32(0.9 * tol), ref).passed
    bad = ref.copy()
    bad[1] += 2 * tol
    check = compare_arrays("a", bad, ref)
    assert not check.passed
    assert check.index == (1,)
    text = check.describe()
    assert "max abs" in text and "max rel" in text and "first differing index (1,)" in text


def test_compare_arrays_noise_floor_uses_absolute_tolerance():
    ref = np.array([1e-7, -2e-7, 5e-8], np.float32)        # analytically zero
    ours = np.array([-3e-7, 4e-7, 0.0], np.float32)         # different rounding noise
    check = compare_arrays("noise", ours, ref)
    assert check.passed and "rounding noise" in check.note
    assert not compare_arrays("noise", ref + 1e-4, ref).passed


def test_compare_arrays_integers_exact_sizes_and_missing():
    ref = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert compare_arrays("idx", ref.reshape(-1).copy(), ref).passed   # reshaped by size
    other = ref.copy()
    other[1, 2] = 0
    check = compare_arrays("idx", other, ref)
    assert not check.passed and check.index == (1, 2)
    assert not compare_arrays("x", np.zeros(5), np.zeros(6)).passed
    assert not compare_arrays("x", None, np.zeros(6)).passed
    assert not compare_arrays("x", np.array([np.nan]), np.array([1.0])).passed


# ------------------------------------------------- synthetic dumps (plumbing)
def _randomize(net, rng):
    ranges = {"weights": None, "biases": (-0.1, 0.1), "scales": (0.5, 1.5),
              "rolling_mean": (-0.2, 0.2), "rolling_variance": (0.5, 1.5)}
    for layer in net.layers:
        for name in layer.saved:
            array = getattr(layer, name)
            low_high = ranges.get(name)
            if low_high is None:
                fan_in = array.size // array.shape[0]
                low_high = (-np.sqrt(6 / fan_in), np.sqrt(6 / fan_in))
            array[...] = rng.uniform(*low_high, array.shape)


def dump_minidark_vectors(cfg_text, directory, steps=2, seed=0):
    """Write minidark's own arrays in darknet's vector layout, running darknet's
    loops by hand (not through the harness's spies)."""
    directory.mkdir(parents=True)
    cfg = directory / "net.cfg"
    cfg.write_text(cfg_text)
    rng = np.random.default_rng(seed)
    net = minidark.load_network(cfg, seed=seed)
    _randomize(net, rng)
    save_weights(net, directory / "weights_before.weights")
    net = minidark.load_network(cfg, weights=directory / "weights_before.weights", seed=seed)
    files = []

    def save(name, array, step, layer):
        array = np.array(array)
        np.save(directory / f"{name}.npy", array)
        files.append({"file": f"{name}.npy", "dtype": array.dtype.str,
                      "shape": list(array.shape), "step": step, "layer": layer})

    def image(l, array):
        if l.out_h * l.out_w > 1:
            return array.reshape(l.batch, l.out_c, l.out_h, l.out_w)
        return array.reshape(l.batch, -1)

    def tag(l):
        return f"L{l.index:02d}_{l.type}"

    last = net.output_layer
    groups = getattr(last, "groups", 1)
    xs, truths = [], []
    for s in range(1, steps + 1):
        xs.append(rng.random((net.batch, net.c, net.h, net.w), dtype=np.float32))
        t = np.zeros((net.batch, groups, net.outputs // groups), np.float32)
        t[np.arange(net.batch)[:, None], np.arange(groups), rng.integers(0, t.shape[2], (net.batch, groups))] = 1
        truths.append(t.reshape(net.batch, -1))
        save(f"input_s{s}", xs[-1], s, -1)
        save(f"truth_s{s}", truths[-1], s, -1)

    # inference pass
    net.input_buffer[...] = xs[0].reshape(net.batch, -1)
    net.input, net.truth, net.train = net.input_buffer, None, False
    for l in net.layers:
        l.forward(l, net)
        save(f"infer_{tag(l)}_output", image(l, l.output), 0, l.index)
        net.input = l.output

    for s in range(1, steps + 1):
        for l in net.layers:
            for name in l.saved:
                save(f"{tag(l)}_{name}_before_s{s}", getattr(l, name), s, l.index)
        net.seen += net.batch
        net.input_buffer[...] = xs[s - 1].reshape(net.batch, -1)
        net.truth_buffer[...] = truths[s - 1]
        net.input, net.truth, net.train = net.input_buffer, net.truth_buffer, True
        for l in net.layers:
            if l.type == "dropout":
                rand = rng.random((l.batch, l.inputs), dtype=np.float32)
                l.next_rand = rand
                save(f"{tag(l)}_rand_s{s}", rand, s, l.index)
            if l.delta is not None:
                l.delta.fill(0)
            l.forward(l, net)
            save(f"{tag(l)}_output_s{s}", image(l, l.output), s, l.index)
            if getattr(l, "batch_normalize", False):
                for name in ("x", "x_norm"):
                    save(f"{tag(l)}_bn_{name}_s{s}", image(l, getattr(l, name)), s, l.index)
                save(f"{tag(l)}_bn_mean_s{s}", l.mean, s, l.index)
                save(f"{tag(l)}_bn_variance_s{s}", l.variance, s, l.index)
            if l.type == "maxpool":
                save(f"{tag(l)}_indexes_s{s}", image(l, l.indexes).astype(np.int32), s, l.index)
            if l.type == "softmax":
                save(f"{tag(l)}_loss_s{s}", l.loss, s, l.index)
                save(f"{tag(l)}_cost_s{s}", np.array([l.cost], np.float32), s, l.index)
            net.input = l.output
        costs = [l.cost for l in net.layers if l.cost is not None]
        save(f"cost_s{s}", np.array([sum(costs) / len(costs)], np.float32), s, -1)
        for i in range(len(net.layers) - 1, -1, -1):
            l = net.layers[i]
            prev = net.layers[i - 1] if i else None
            net.input = prev.output if prev else net.input_buffer
            net.delta = prev.delta if prev else None
            save(f"{tag(l)}_delta_in_s{s}", image(l, l.delta), s, i)
            l.backward(l, net)
            save(f"{tag(l)}_delta_out_s{s}", image(l, l.delta), s, i)
        net.delta = None
        for l in net.layers:
            for name in ("weight_updates", "bias_updates", "scale_updates"):
                if getattr(l, name, None) is not None:
                    save(f"{tag(l)}_{name}_grad_s{s}", getattr(l, name), s, l.index)
        net.update()
        for l in net.layers:
            for name in l.saved:
                save(f"{tag(l)}_{name}_after_s{s}", getattr(l, name), s, l.index)
            for name in ("weight_updates", "bias_updates", "scale_updates"):
                if getattr(l, name, None) is not None:
                    save(f"{tag(l)}_{name}_momentum_s{s}", getattr(l, name), s, l.index)
        save_weights(net, directory / f"weights_after_s{s}.weights")
    layers = [{"index": l.index, "type": l.type, "inputs": l.inputs, "outputs": l.outputs,
               "out_chw": [l.out_c, l.out_h, l.out_w]} for l in net.layers]
    (directory / "index.json").write_text(json.dumps(
        {"files": files, "layers": layers, "steps": steps,
         "net": {"batch": net.batch, "seen_after": net.seen}, "checks": {}}))
    return directory


NET = """[net]
batch=4
height={h}
width={w}
channels={c}
learning_rate=0.1
momentum=0.9
decay=0.0005
"""
CONNECTED_BN_DROPOUT = NET.format(h=3, w=3, c=2) + """
[connected]
output=8
batch_normalize=1
activation=leaky

[dropout]
probability=0.4

[connected]
output=6
activation=linear

[softmax]
groups=2
temperature=1.5
"""
CONV_BN_DROPOUT_STRIDED = NET.format(h=7, w=7, c=2) + """
[convolutional]
filters=3
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky

[dropout]
probability=0.3

[maxpool]
size=3
stride=2

[connected]
output=6
batch_normalize=1
activation=relu

[dropout]
probability=0.25

[connected]
output=4
activation=linear

[softmax]
"""


@pytest.fixture
def bn_dropout_dir(tmp_path):
    return dump_minidark_vectors(CONNECTED_BN_DROPOUT, tmp_path / "plumb_bn_dropout")


def test_plumbing_connected_bn_dropout(bn_dropout_dir):
    """Plumbing, not fidelity: BN internals, dropout uniforms, 'before dropout' outputs."""
    report = replay_vectors(bn_dropout_dir)
    report.assert_passed()
    names = {c.name for c in report.checks}
    for name in ("L00_connected_bn_x_norm_s2", "L00_connected_bn_variance_s1",
                 "L01_dropout_rand_s2", "L00_connected_scale_updates_grad_s2",
                 "L00_connected_rolling_variance_after_s2", "L03_softmax_loss_s1"):
        assert name in names
    # the layer before dropout is recorded before dropout changed it in place
    before = np.load(bn_dropout_dir / "L00_connected_output_s1.npy")
    after = np.load(bn_dropout_dir / "L01_dropout_output_s1.npy")
    assert not np.array_equal(before, after)


def test_plumbing_conv_bn_dropout_strided_odd_maxpool(tmp_path):
    """Plumbing, not fidelity: conv BN, strided conv, 3/2 maxpool indexes, 7x7 input."""
    directory = dump_minidark_vectors(CONV_BN_DROPOUT_STRIDED, tmp_path / "plumb_conv")
    report = replay_vectors(directory)
    report.assert_passed()
    names = {c.name for c in report.checks}
    assert {"L02_maxpool_indexes_s1", "L00_convolutional_bn_x_s2",
            "L00_convolutional_weight_updates_momentum_s2"} <= names


def _failures(directory):
    return {c.name: c for c in replay_vectors(directory).failures}


def test_harness_fails_on_a_perturbed_array(bn_dropout_dir):
    path = bn_dropout_dir / "L02_connected_weight_updates_grad_s2.npy"
    array = np.load(path)
    array[1, 2] += 1e-3 * np.abs(array).max() + 1e-5
    np.save(path, array)
    failed = _failures(bn_dropout_dir)
    assert set(failed) == {"L02_connected_weight_updates_grad_s2"}
    assert failed["L02_connected_weight_updates_grad_s2"].index == (1, 2)


def test_harness_replays_the_recorded_uniforms(bn_dropout_dir):
    """Without the recorded uniforms dropout draws its own mask and outputs differ."""
    rand = bn_dropout_dir / "L01_dropout_rand_s1.npy"
    np.save(rand, 1 - np.load(rand))
    failed = _failures(bn_dropout_dir)
    assert "L01_dropout_output_s1" in failed and "L01_dropout_rand_s1" not in failed


def test_harness_fails_on_unknown_or_missing_arrays(bn_dropout_dir):
    np.save(bn_dropout_dir / "L00_connected_mystery_s1.npy", np.zeros(3, np.float32))
    (bn_dropout_dir / "L03_softmax_loss_s2.npy").unlink()
    failed = _failures(bn_dropout_dir)
    assert "does not know" in failed["L00_connected_mystery_s1"].note
    assert "missing" in failed["L03_softmax_loss_s2.npy"].note


def test_harness_fails_on_a_changed_weights_byte(bn_dropout_dir):
    path = bn_dropout_dir / "weights_after_s1.weights"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01                      # last float of layer 2's weights, 1 ULP
    path.write_bytes(bytes(data))
    failed = _failures(bn_dropout_dir)
    byte_check = [c for n, c in failed.items() if n.startswith("weights_after_s1.weights")]
    assert byte_check and "layer 2 [connected] weights" in byte_check[0].note


def test_env_var_points_the_harness_elsewhere(bn_dropout_dir, monkeypatch):
    monkeypatch.setenv("MINIDARK_REFDATA", str(bn_dropout_dir.parent))
    assert vector_dirs() == [bn_dropout_dir]
    shutil.copytree(bn_dropout_dir, bn_dropout_dir.parent / "vectors" / "x")
    assert [d.name for d in vector_dirs()] == ["x"]


# -------------------------------------------- documented gaps to gradcheck
def _softmax_gradients(temperature):
    """darknet's softmax delta vs the true -dL/dx by central differences (float64)."""
    cfg = f"[net]\nbatch=2\ninputs=6\n[softmax]\ngroups=2\ntemperature={temperature}\n"
    from minidark.parser import parse_network, read_cfg_text
    from minidark.testing import to_float64
    net = to_float64(parse_network(read_cfg_text(cfg), verbose=False))
    l = net.layers[0]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6))
    truth = np.zeros((2, 2, 3))
    truth[:, :, 0] = 1
    truth = truth.reshape(2, 6)

    def loss(values):
        net.input, net.truth = values, truth
        l.forward(l, net)
        return l.cost

    loss(x)
    delta = l.delta.copy()
    numeric = np.zeros_like(x)
    eps = 1e-5
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = -(loss(plus) - loss(minus)) / (2 * eps)
    return delta, numeric


def test_softmax_temperature_gap_is_darknets():
    """darknet's softmax delta is truth - p even at T != 1: the true gradient is
    (truth - p)/T, so a gradient check disagrees by exactly the factor T."""
    delta, numeric = _softmax_gradients(1.0)
    np.testing.assert_allclose(delta, numeric, atol=1e-8)
    delta, numeric = _softmax_gradients(2.0)
    np.testing.assert_allclose(delta, 2.0 * numeric, atol=1e-8)
    assert np.abs(delta - numeric).max() > 0.05


def _bn_gradients(batch, channels=3, seed=0):
    """-dL/dx of darknet's BN (training) for L = -sum(R * y): darknet's backward,
    central differences of darknet's forward, and darknet's backward with the
    var term divided by N-1 (float64)."""
    from minidark.bn import backward_bn, forward_bn, make_bn
    from minidark.layer import Layer
    rng = np.random.default_rng(seed)
    l = Layer(batch=batch)
    make_bn(l, channels, 1)
    for name in ("scales", "scale_updates", "rolling_mean", "rolling_variance", "mean",
                 "variance", "x", "x_norm"):
        setattr(l, name, getattr(l, name).astype(np.float64))
    l.scales[:] = rng.uniform(0.5, 1.5, channels)
    l.biases, l.bias_updates = rng.uniform(-.1, .1, channels), np.zeros(channels)
    x, r = rng.normal(size=(batch, channels)), rng.normal(size=(batch, channels))

    def objective(values):
        out = values.copy()
        forward_bn(l, out, True)
        return float(np.sum(r * out))

    numeric, eps = np.zeros_like(x), 1e-6
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = (objective(plus) - objective(minus)) / (2 * eps)
    objective(x)
    darknet = r.copy()
    backward_bn(l, darknet)
    # the same formula with var's derivative taken for the unbiased variance
    n, d = batch, r * l.scales
    inv = 1 / np.sqrt(l.variance + 1e-5)
    centered = x - l.mean
    var_delta = np.sum(d * centered, axis=0) * -0.5 * inv ** 3
    unbiased = d * inv + var_delta * 2 * centered / (n - 1) - np.sum(d, axis=0) * inv / n
    return darknet, numeric, unbiased


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_bn_backward_gap_is_darknets():
    """darknet's BN forward uses the *unbiased* variance (/(N-1)) but its backward
    differentiates it as if it were biased (/N) and uses sqrt(var + 1e-5)
    instead of sqrt(var) + 1e-6. So a gradient check of BN disagrees with
    darknet by a gap that vanishes as N grows (measured here: ~0.29 at N = 4,
    ~0.017 at N = 16, ~1e-3 at N = 64). minidark keeps darknet's backward (the
    reference vectors pin it); with the var term divided by N-1 the gap
    shrinks to the epsilon difference (~1e-5 / var)."""
    gaps = []
    for batch in (4, 16, 64):
        darknet, numeric, unbiased = _bn_gradients(batch)
        assert _rel(unbiased, numeric) < 1e-4, batch
        gaps.append(_rel(darknet, numeric))
    assert gaps[0] > 0.05 and gaps[0] > gaps[1] > gaps[2], gaps
