"""`minidark gradcheck` and minidark.testing.gradcheck as a user sees them:
prelu passes, prelu_broken fails with a table, exit codes, --layer,
--inference, expected gaps (batch norm, softmax temperature, dropout) and a
layer's own gradcheck_gap hook."""

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark import registry
from minidark.cli import main as cli_main
from minidark.commands import gradcheck as gradcheck_cli
from minidark.errors import MinidarkError
from minidark.plugins import load_plugins
from minidark.testing import KnownGap, format_results, gradcheck, learned_arrays, summarize
from minidark.tools.gradcheck import GradResult, numeric_gradient

ROOT = Path(__file__).resolve().parent.parent
PRELU = str(ROOT / "examples" / "prelu.py")
PRELU_BROKEN = str(ROOT / "examples" / "prelu_broken.py")
PRELU_MNIST = str(ROOT / "examples" / "prelu_mnist.cfg")

# a small image net: prelu has 3 channels of 4x4 pixels each
PRELU_IMAGE = """
[net]
batch=2
height=4
width=4
channels=3

[prelu]
slope=-0.3

[connected]
output=4
activation=tanh

[softmax]
"""


pytestmark = pytest.mark.usefixtures("isolated_registry")  # conftest.py


def cli(*argv):
    parser = gradcheck_cli.add_arguments(argparse.ArgumentParser())
    parser.add_argument("--plugin", action="append", default=[])
    return gradcheck_cli.run(parser.parse_args([str(a) for a in argv]))


ROW = re.compile(
    r"^\s*(\d+) (\S+)\s+(.+?)\s+(\S+e[+-]\d+)\s+(\S+)\s+(ok|FAIL|gap|skip|kink)"
    r"\s*(.*)$"
)


def rows(text):
    """{(layer, array): (result, note)} from the printed table."""
    table = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            index, _, array, _, _, result, note = match.groups()
            table[(int(index), array)] = (result, note)
    return table


# ------------------------------------------------------------------ prelu
def test_prelu_passes_from_python(tmp_path, write_cfg):
    load_plugins([PRELU])
    results = gradcheck(write_cfg(tmp_path, PRELU_IMAGE))
    assert [(r.index, r.array) for r in results] == [
        (0, "input"),
        (0, "slopes"),
        (1, "input"),
        (1, "biases"),
        (1, "weights"),
        (2, "input"),
    ]
    assert all(r.status == "ok" for r in results), format_results(results)
    assert max(r.error for r in results) < 1e-7


def test_prelu_broken_fails_from_python(tmp_path, write_cfg):
    load_plugins([PRELU_BROKEN])
    results = gradcheck(write_cfg(tmp_path, PRELU_IMAGE), layer=0)
    by_array = {r.array: r for r in results}
    assert by_array["input"].status == "ok"
    assert by_array["slopes"].status == "FAIL" and by_array["slopes"].error > 0.1
    table = format_results(results)
    assert "slopes" in table and "FAIL" in table
    assert summarize(results) == "FAILED: 1 of 2 arrays (layer 0 slopes)"


def test_gradcheck_accepts_cfg_text():
    load_plugins([PRELU])
    results = gradcheck(PRELU_IMAGE, layer=-1)
    assert [(r.index, r.type, r.status) for r in results] == [(2, "softmax", "ok")]


def test_gradcheck_accepts_a_layer(tmp_path, write_cfg):
    load_plugins([PRELU])
    layer = minidark.load_network(write_cfg(tmp_path, PRELU_IMAGE)).layers[0]
    results = gradcheck(layer)
    assert [(r.index, r.array, r.status) for r in results] == [
        (0, "input", "ok"),
        (0, "slopes", "ok"),
    ]
    assert layer.slopes.dtype == np.float64  # converted in place, like a Network


def test_cli_passes_on_prelu_mnist_cfg(capsys):
    assert cli(PRELU_MNIST, "--plugin", PRELU) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert table[(1, "slopes")][0] == "ok"
    assert table[(1, "input")][0] == "ok"
    assert len(table) == 9 and all(result == "ok" for result, _ in table.values())
    assert out.rstrip().endswith("passed: 9 of 9 arrays")


def test_cli_fails_on_prelu_broken_with_a_table(capsys):
    assert cli(PRELU_MNIST, "--plugin", PRELU_BROKEN) == 1
    out = capsys.readouterr().out
    table = rows(out)
    assert table[(1, "slopes")][0] == "FAIL"
    assert [key for key, (result, _) in table.items() if result == "FAIL"] == [(1, "slopes")]
    assert "max rel error" in out and "bound" in out
    assert out.rstrip().endswith("FAILED: 1 of 9 arrays (layer 1 slopes)")


def test_cli_one_layer(capsys):
    assert cli(PRELU_MNIST, "--plugin", PRELU_BROKEN, "--layer", "2") == 0
    out = capsys.readouterr().out
    assert set(rows(out)) == {(2, "input"), (2, "biases"), (2, "weights")}
    assert "layer 2 of 4" in out


def test_cli_errors(capsys):
    with pytest.raises(MinidarkError, match="unknown section type \\[prelu\\]"):
        cli(PRELU_MNIST)
    with pytest.raises(MinidarkError, match=r"--layer 4: .* has 4 layers \(0-3\)"):
        cli(PRELU_MNIST, "--plugin", PRELU, "--layer", "4")
    # through the minidark CLI: a user error is one line on stderr and exit status 2
    for argv, needle in [
        ([PRELU_MNIST, "--plugin", "examples/no_such_plugin.py"], "no such file"),
        ([PRELU_MNIST, "--batch", "0"], "argument --batch: must be >= 1"),
        ([PRELU_MNIST, "--max-checks", "0"], "--max-checks: must be >= 1"),
        (["cfg/mnist.data"], "cfg/mnist.data is given as CFG but is a .data file"),
    ]:
        assert cli_main(["gradcheck", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_standalone_main_exit_codes(capsys):
    """0 passed, 1 a check failed (not 2: that is a user error)."""
    assert cli_main(["gradcheck", PRELU_MNIST, "--plugin", PRELU, "--layer", "1"]) == 0
    registry.unregister_layer("prelu")
    assert cli_main(["gradcheck", PRELU_MNIST, "--plugin", PRELU_BROKEN, "--layer", "1"]) == 1
    capsys.readouterr()


def test_python_m_gradcheck_is_the_cli():
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "minidark.commands.gradcheck",
            PRELU_MNIST,
            "--plugin",
            PRELU_BROKEN,
            "--layer",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert "FAILED: 1 of 2 arrays (layer 1 slopes)" in done.stdout


# ---------------------------------------------------------- expected gaps
BN_CFG = """
[net]
batch=4
inputs=6

[connected]
output=5
activation=leaky
batch_normalize=1

[dropout]
probability=0.3

[softmax]
temperature=2
"""


def test_expected_gaps_in_training(tmp_path, write_cfg, capsys):
    path = write_cfg(tmp_path, BN_CFG)
    assert cli(path, "--batch", "8") == 0
    table = rows(capsys.readouterr().out)
    assert table[(0, "input")][0] == "gap" and "BN backward uses 1/N" in table[(0, "input")][1]
    assert table[(0, "weights")][0] == "gap"
    assert table[(0, "biases")] == ("ok", "") and table[(0, "scales")] == ("ok", "")
    assert table[(1, "input")] == ("ok", "")
    assert table[(2, "input")][0] == "gap" and "lacks 1/T" in table[(2, "input")][1]
    # at batch 2 there are 2 values per channel: too few to tell the gap from a bug
    assert cli(path, "--batch", "2") == 0
    table = rows(capsys.readouterr().out)
    assert table[(0, "weights")][0] == "skip" and "use batch >= 8" in table[(0, "weights")][1]


def test_bn_gap_bound_and_temperature_scaling(tmp_path, write_cfg):
    results = gradcheck(write_cfg(tmp_path, BN_CFG), batch=16)
    by = {(r.index, r.array): r for r in results}
    assert by[(0, "input")].tolerance == pytest.approx(4 / 16 + 1e-3)
    assert 1e-4 < by[(0, "weights")].error < by[(0, "weights")].tolerance
    assert by[(2, "input")].error < 1e-7  # exact once the numeric side is scaled by T


def test_inference_mode(tmp_path, write_cfg, capsys):
    assert cli(write_cfg(tmp_path, BN_CFG), "--inference") == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert "inference mode" in out
    assert table[(0, "input")] == ("ok", "")  # inference BN is an exact affine map
    assert table[(1, "input")][0] == "skip"  # dropout's backward is training-only


def test_a_layer_declares_its_own_gap(tmp_path, write_cfg):
    load_plugins([PRELU_BROKEN])
    net = minidark.load_network(write_cfg(tmp_path, PRELU_IMAGE))
    net.layers[0].gradcheck_gap = KnownGap(
        "expected gap: demo", tolerance=math.inf, arrays=("slopes",)
    )
    results = gradcheck(net, layer=0)
    assert [(r.array, r.status, r.note) for r in results] == [
        ("input", "ok", ""),
        ("slopes", "skip", "expected gap: demo"),
    ]
    net.layers[0].gradcheck_gap = lambda layer, train: None  # opt out of any gap
    assert [r.status for r in gradcheck(net, layer=0)] == ["ok", "FAIL"]


def test_learned_arrays_follow_saved_and_sgd_params(tmp_path, write_cfg):
    load_plugins([PRELU])
    net = minidark.load_network(write_cfg(tmp_path, PRELU_IMAGE))
    assert learned_arrays(net.layers[0]) == [("slopes", "slope_updates")]
    assert learned_arrays(net.layers[1]) == [
        ("biases", "bias_updates"),
        ("weights", "weight_updates"),
    ]


def prelu_with_backward(tmp_path, write_cfg, wrap):
    load_plugins([PRELU])
    net = minidark.load_network(write_cfg(tmp_path, PRELU_IMAGE))
    layer = net.layers[0]
    original = layer.backward
    layer.backward = lambda l, n: wrap(original, l, n)
    return net


def test_gradcheck_really_compares_numbers(tmp_path, write_cfg):
    """A slope gradient off by 1% must fail: the check is not vacuous."""

    def one_percent_off(original, l, n):
        before = l.slope_updates.copy()
        original(l, n)
        l.slope_updates += 0.01 * (l.slope_updates - before)

    results = gradcheck(prelu_with_backward(tmp_path, write_cfg, one_percent_off), layer=0)
    assert [r.status for r in results] == ["ok", "FAIL"]
    assert 0.005 < results[1].error < 0.02


def test_gradcheck_catches_assigning_instead_of_accumulating(tmp_path, write_cfg):
    def assigns(original, l, n):
        if n.delta is None:
            return original(l, n)
        before = n.delta.copy()
        original(l, n)
        n.delta -= before  # as if it had written net.delta[...] = ...

    results = gradcheck(prelu_with_backward(tmp_path, write_cfg, assigns), layer=0)
    assert [(r.array, r.status) for r in results] == [("input", "FAIL"), ("slopes", "ok")]


def test_gradcheck_catches_a_backward_that_needs_net_delta(tmp_path, write_cfg):
    def no_none_check(original, l, n):
        n.delta += l.delta.reshape(n.delta.shape)  # AttributeError when net.delta is None

    results = gradcheck(prelu_with_backward(tmp_path, write_cfg, no_none_check), layer=0)
    last = results[-1]
    assert (last.array, last.status) == ("net.delta None", "FAIL")
    assert "AttributeError" in last.note
    assert "net.delta None" in format_results(results)


# ------------------------------------------------------------------ kinks
# (cfg, seed, layer) where plain central differences crossed relu's kink and
# reported FAIL on a correct layer
KINKED = [
    ("mnist_bn.cfg", 0, 2),
    ("mnist_lenet.cfg", 3, 2),
    ("mnist_lenet.cfg", 5, 0),
    ("mnist_lenet.cfg", 6, 2),
    ("mnist_lenet.cfg", 7, 0),
    ("mnist_lenet.cfg", 11, 0),
]


@pytest.mark.parametrize("cfg, seed, layer", KINKED)
def test_shipped_relu_cfgs_pass_where_steps_cross_a_kink(cfg, seed, layer):
    results = gradcheck(str(ROOT / "cfg" / cfg), layer=layer, seed=seed)
    assert all(r.status in ("ok", "gap") for r in results), format_results(results)
    # the kink handling is what made them pass: some entry needed a smaller step
    assert sum(r.refined + r.kinks for r in results) >= 1


def test_numeric_gradient_leaves_out_an_unresolvable_kink():
    theta = np.array([0.0, 0.5, -0.3, 0.2, 0.7, -0.9, 0.4, 0.1])  # |x| has its kink at 0

    def loss():
        return float(np.abs(theta).sum())

    analytic = -np.sign(theta)  # darknet sign
    numeric, kink, refined = numeric_gradient(
        loss, loss(), theta, np.arange(8), analytic, 1e-5, 1e-4
    )
    assert kink.tolist() == [True] + [False] * 7 and refined == 0
    np.testing.assert_allclose(numeric[1:], analytic[1:], atol=1e-9)
    # a value 0.5 eps from the kink: the smaller steps measure it
    theta[0] = 0.5e-5
    numeric, kink, refined = numeric_gradient(
        loss, loss(), theta, np.arange(8), analytic, 1e-5, 1e-4
    )
    assert not kink.any() and refined == 1 and numeric[0] == pytest.approx(-1, abs=1e-6)


def test_numeric_gradient_keeps_everything_when_the_loss_is_not_piecewise_smooth():
    """A forward that is not deterministic is not 'kinks everywhere': it must fail."""
    noise = np.random.default_rng(0)
    theta = np.linspace(-1, 1, 8)

    def loss():
        return float(theta.sum() + noise.normal() * 1e-3)

    numeric, kink, _ = numeric_gradient(loss, loss(), theta, np.arange(8), -np.ones(8), 1e-5, 1e-4)
    assert not kink.any()
    assert np.abs(numeric + 1).max() > 1  # the noise shows as a large error


def test_kink_status_and_summary():
    kinked = GradResult(
        0, "maxpool", "input", 0.0, math.inf, "1 of 1 entries at a kink, not compared", kinks=1
    )
    some = GradResult(
        1,
        "convolutional",
        "biases",
        1e-10,
        1e-4,
        "2 of 40 entries at a kink, not compared",
        kinks=2,
    )
    assert kinked.status == "kink" and some.status == "ok"
    assert summarize([kinked, some]) == (
        "passed: 1 of 2 arrays, 1 not checked, 3 entries at a kink not compared"
    )
    assert rows(format_results([kinked, some])) == {
        (0, "input"): ("kink", "1 of 1 entries at a kink, not compared"),
        (1, "biases"): ("ok", "2 of 40 entries at a kink, not compared"),
    }


def test_a_wrong_relu_conv_backward_still_fails_where_steps_cross_a_kink():
    """The kink handling leaves out entries at a kink, not errors: 1% off still fails."""
    net = minidark.load_network(str(ROOT / "cfg" / "mnist_lenet.cfg"), batch=2, seed=3)
    layer = net.layers[2]
    original = layer.backward

    def one_percent_off(l, n):
        before = l.bias_updates.copy()
        original(l, n)
        l.bias_updates += 0.01 * (l.bias_updates - before)

    layer.backward = one_percent_off
    results = {r.array: r for r in gradcheck(net, layer=2, seed=3)}
    assert results["biases"].status == "FAIL" and results["biases"].error > 0.005
    assert results["weights"].status == "ok"
