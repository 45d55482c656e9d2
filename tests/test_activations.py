"""Every darknet activation (darknet-spec section 3.5): forward against a naive
scalar formula, gradient (computed from the output y, as darknet does)
against float64 central differences away from the kinks, and the
[activation] layer's gradient check."""

import math
import warnings

import numpy as np
import pytest

from minidark.kernels.activations import ACTIVATIONS, activate, gradient
from minidark.testing import format_results, gradcheck

NAMES = [
    "logistic",
    "relu",
    "relie",
    "linear",
    "ramp",
    "tanh",
    "plse",
    "leaky",
    "elu",
    "loggy",
    "stair",
    "hardtan",
    "lhtan",
    "selu",
]


def stair(x):
    n = math.floor(x)
    if n % 2 == 0:  # C's n % 2 is -1 for odd negative n: odd either way
        return math.floor(x / 2)
    return (x - n) + math.floor(x / 2)


def plse(x):
    if x < -4:
        return 0.01 * (x + 4)
    if x > 4:
        return 0.01 * (x - 4) + 1
    return 0.125 * x + 0.5


def lhtan(x):
    if x < 0:
        return 0.001 * x
    if x > 1:
        return 0.001 * (x - 1) + 1
    return x


NAIVE = {  # darknet-spec 3.5, one scalar at a time
    "logistic": lambda x: 1 / (1 + math.exp(-x)),
    "loggy": lambda x: 2 / (1 + math.exp(-x)) - 1,
    "relu": lambda x: x * (x > 0),
    "elu": lambda x: x if x >= 0 else math.exp(x) - 1,
    "selu": lambda x: 1.0507 * x if x >= 0 else 1.0507 * 1.6732 * (math.exp(x) - 1),
    "relie": lambda x: x if x > 0 else 0.01 * x,
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "leaky": lambda x: x if x > 0 else 0.1 * x,
    "linear": lambda x: x,
    "tanh": lambda x: (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1),
    "plse": plse,
    "stair": stair,
    "hardtan": lambda x: -1 if x < -1 else (1 if x > 1 else x),
    "lhtan": lhtan,
}
KINKS = {
    "relu": [0],
    "elu": [0],
    "selu": [0],
    "relie": [0],
    "ramp": [0],
    "leaky": [0],
    "plse": [-4, 4],
    "hardtan": [-1, 1],
    "lhtan": [0, 1],
    "stair": list(range(-7, 8)),
}

GRID = np.concatenate([np.linspace(-6.5, 6.5, 1301), [-4, -1, 0, 1, 4, 2.5, -2.5, 1e-4, -1e-4]])


def naive(name, x):
    return np.array([NAIVE[name](float(v)) for v in x], np.float64)


def test_all_fourteen_activations_registered():
    assert sorted(ACTIVATIONS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_naive_formula_float64(name):
    y = GRID.copy()
    activate(y, name)
    np.testing.assert_allclose(y, naive(name, GRID), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_forward_float32_in_place(name):
    x = GRID.astype(np.float32)
    y = x.copy()
    activate(y, name)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, naive(name, x.astype(np.float64)), rtol=2e-6, atol=2e-6)


def away_from_kinks(name, x, margin=1e-3):
    keep = np.ones(x.shape, bool)
    for k in KINKS.get(name, []):
        keep &= np.abs(x - k) > margin
    return x[keep]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_from_output_matches_central_differences(name):
    x = away_from_kinks(name, GRID)
    y = x.copy()
    activate(y, name)
    analytic = np.ones_like(x)
    gradient(y, name, analytic)  # delta *= f'(x), from y = f(x)
    eps = 1e-6
    numeric = (naive(name, x + eps) - naive(name, x - eps)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_multiplies_delta_in_place(name):
    rng = np.random.default_rng(1)
    x = away_from_kinks(name, rng.uniform(-5, 5, 200)).astype(np.float32)
    y = x.copy()
    activate(y, name)
    delta = rng.normal(size=x.shape).astype(np.float32)
    slope = np.ones_like(delta)
    gradient(y, name, slope)
    expected = delta * slope
    gradient(y, name, delta)
    assert delta.dtype == np.float32
    np.testing.assert_allclose(delta, expected, rtol=1e-6)


def test_gradients_at_the_kinks_follow_darknet():
    # darknet decides on the output: relu/leaky take the "off" slope at y == 0,
    # elu/selu the "on" slope; hardtan is 0 at the clamp, stair 0 on a step.
    def slope(name, x):
        y = np.array([x], np.float64)
        activate(y, name)
        d = np.ones(1)
        gradient(y, name, d)
        return d[0]

    assert slope("relu", 0.0) == 0 and slope("leaky", 0.0) == pytest.approx(0.1)
    assert slope("relie", 0.0) == pytest.approx(0.01)
    assert slope("elu", 0.0) == 1 and slope("selu", 0.0) == pytest.approx(1.0507)
    assert slope("hardtan", 1.0) == 0 and slope("hardtan", -1.0) == 0
    assert slope("stair", 2.0) == 0 and slope("stair", 3.5) == 1
    assert slope("lhtan", 0.0) == pytest.approx(0.001)
    assert slope("plse", 4.0) == pytest.approx(0.125)


def test_logistic_is_stable_for_large_inputs():
    x = np.array([-200, -100, 0, 100, 200], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning
        activate(x, "logistic")
    np.testing.assert_allclose(x, [0, 0, 0.5, 1, 1], atol=1e-30)


@pytest.mark.parametrize("name", NAMES)
def test_activation_layer_gradcheck(tmp_path, name):
    cfg = f"[net]\nbatch=3\ninputs=7\n\n[activation]\nactivation={name}\n"
    results = gradcheck(cfg, batch=3)
    assert [r.array for r in results] == ["input"]
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("name", ["relu", "tanh", "elu", "stair"])
def test_connected_layer_gradcheck_with_activation(name):
    cfg = f"[net]\nbatch=2\ninputs=5\n\n[connected]\noutput=4\nactivation={name}\n"
    results = gradcheck(cfg)
    assert {r.array for r in results} == {"input", "weights", "biases"}
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("name,slope", [("leaky", 0.1), ("relie", 0.01)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slope_gradients_are_bit_exact(name, slope, dtype):
    """leaky/relie multiply delta by exactly 1 or the slope in delta's dtype (the
    fast arithmetic factor equals np.where's), NaN outputs taking the slope."""
    rng = np.random.default_rng(4)
    y = rng.normal(size=1000).astype(dtype)
    y[:50] = 0
    y[50:60] = np.nan
    delta = rng.normal(size=1000).astype(dtype)
    expected = delta * np.where(y > 0, 1, slope).astype(dtype)
    gradient(y, name, delta)
    assert delta.dtype == dtype
    np.testing.assert_array_equal(delta, expected)


@pytest.mark.parametrize("size", [0, 5, 256, 1000, 4096 + 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_numpy_maximum_bit_for_bit(size, dtype):
    """relu runs as rows against a row of zeros plus a scalar tail; it gives exactly
    np.maximum(x, 0): NaN kept, negatives and -0.0 to the same zero, in place,
    also on a non-contiguous view."""
    rng = np.random.default_rng(size)
    x = rng.normal(size=size).astype(dtype)
    x[::7] = -0.0
    x[3::11] = np.nan
    expected = np.maximum(x, 0)
    y = x.copy()
    activate(y, "relu")
    np.testing.assert_array_equal(y, expected)
    assert (np.signbit(y) == np.signbit(expected)).all() and y.dtype == dtype
    grid = np.tile(x, (3, 1))
    view = grid[:, ::2]
    activate(view, "relu")
    np.testing.assert_array_equal(grid[:, ::2], np.tile(expected[::2], (3, 1)))
    np.testing.assert_array_equal(grid[:, 1::2], np.tile(x[1::2], (3, 1)))
