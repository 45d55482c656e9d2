"""Learning-rate policies and burn_in: darknet's get_current_rate formulas
(darknet-spec section 2), evaluated at n = seen // (batch * subdivisions)."""

import math

import numpy as np
import pytest

from conftest import net_from


def policy_net(tmp_path, options, batch=4, subdivisions=1, seed=0):
    return net_from(
        tmp_path,
        f"[net]\ninputs=2\nbatch={batch}\nsubdivisions={subdivisions}\n"
        f"learning_rate=0.1\n{options}\n[softmax]\n",
        seed=seed,
    )


def rate_at(net, n):
    net.seen = n * net.batch * net.subdivisions
    assert net.current_batch == n
    return net.current_rate()


N = [0, 1, 2, 5, 9, 10, 11, 99, 100, 101, 250, 999]


def check(net, formula):
    for n in N:
        assert rate_at(net, n) == pytest.approx(formula(n), rel=1e-12, abs=1e-15), n


def test_constant(tmp_path):
    check(policy_net(tmp_path, "policy=constant"), lambda n: 0.1)


def test_step(tmp_path):
    check(policy_net(tmp_path, "policy=step\nstep=10\nscale=0.5"), lambda n: 0.1 * 0.5 ** (n // 10))


def test_steps_take_effect_at_the_step(tmp_path):
    net = policy_net(tmp_path, "policy=steps\nsteps=10,100,250\nscales=.5,.1,10")

    def formula(n):
        rate = 0.1
        for step, scale in ((10, 0.5), (100, 0.1), (250, 10)):
            if step > n:
                break
            rate *= scale
        return rate

    check(net, formula)
    assert rate_at(net, 9) == pytest.approx(0.1)
    assert rate_at(net, 10) == pytest.approx(0.05)  # AT n == steps[0]
    assert rate_at(net, 99) == pytest.approx(0.05)
    assert rate_at(net, 100) == pytest.approx(0.005)
    assert rate_at(net, 250) == pytest.approx(0.05)


def test_decreasing_steps_are_refused(tmp_path):
    # darknet returns at the first steps[i] > n, so a step after a larger one
    # would never apply where it says: refused at parse time
    from minidark.errors import ConfigError

    with pytest.raises(ConfigError, match="steps must not decrease"):
        policy_net(tmp_path, "policy=steps\nsteps=100,10\nscales=.5,.1")


def test_exp(tmp_path):
    check(policy_net(tmp_path, "policy=exp\ngamma=0.99"), lambda n: 0.1 * 0.99**n)


def test_poly(tmp_path):
    net = policy_net(tmp_path, "policy=poly\npower=2\nmax_batches=1000")
    check(net, lambda n: 0.1 * (1 - n / 1000) ** 2)
    assert rate_at(net, 1000) == 0
    assert rate_at(net, 1500) == 0  # deliberate: clamped (darknet: (negative)^power)


@pytest.mark.parametrize("name", ["sigmoid", "sig"])
def test_sigmoid(tmp_path, name):
    net = policy_net(tmp_path, f"policy={name}\ngamma=0.05\nstep=100")
    check(net, lambda n: 0.1 / (1 + math.exp(0.05 * (n - 100))))
    assert rate_at(net, 100) == pytest.approx(0.05)


def test_sigmoid_huge_exponent_does_not_overflow(tmp_path):
    net = policy_net(tmp_path, "policy=sigmoid\ngamma=100\nstep=1")
    assert rate_at(net, 10**6) == pytest.approx(0.0, abs=1e-300)


def test_random_is_a_fresh_seeded_draw_each_call(tmp_path):
    net = policy_net(tmp_path, "policy=random\npower=2", seed=7)
    rates = [rate_at(net, 5) for _ in range(200)]
    assert all(0 <= r <= 0.1 for r in rates) and len(set(rates)) == 200
    rng = np.random.default_rng(7)  # lr * U(0,1)^power from the net's generator
    np.testing.assert_allclose(rates, [0.1 * rng.random() ** 2 for _ in range(200)])
    assert np.mean(rates) == pytest.approx(0.1 / 3, rel=0.15)  # E[U^2] = 1/3


@pytest.mark.parametrize(
    "options, after",
    [
        ("policy=constant", lambda n: 0.1),
        (
            "policy=steps\nsteps=20,100\nscales=.1,.1",
            lambda n: 0.1 * 0.1 ** ((n >= 20) + (n >= 100)),
        ),
        ("policy=poly\nmax_batches=1000", lambda n: 0.1 * (1 - n / 1000) ** 3),
    ],
)
def test_burn_in_comes_first_for_any_policy(tmp_path, options, after):
    power = 3 if "poly" in options else 4
    net = policy_net(tmp_path, f"{options}\nburn_in=10\npower={power}")
    for n in N:
        expected = 0.1 * (n / 10) ** power if n < 10 else after(n)
        assert rate_at(net, n) == pytest.approx(expected, rel=1e-12, abs=1e-18), n
    assert rate_at(net, 0) == 0 and rate_at(net, 10) == pytest.approx(after(10))


def test_current_batch_counts_full_batches(tmp_path):
    net = policy_net(tmp_path, "policy=step\nstep=1\nscale=.5", batch=8, subdivisions=2)
    assert (net.batch, net.subdivisions) == (4, 2)
    net.seen = 15
    assert net.current_batch == 1  # 15 // (4 * 2)
    assert net.current_rate() == pytest.approx(0.05)
    net.seen = 16
    assert net.current_batch == 2 and net.current_rate() == pytest.approx(0.025)


def test_update_uses_the_rate_after_seen_is_increased(tmp_path):
    # darknet: train_network_datum increments seen, then update_network gets the rate
    net = net_from(
        tmp_path,
        "[net]\ninputs=2\nbatch=2\nlearning_rate=1\nmomentum=0\ndecay=0\n"
        "policy=steps\nsteps=1\nscales=.5\n[connected]\noutput=2\n"
        "activation=linear\n[softmax]\n",
        seed=0,
    )
    l = net.layers[0]
    x, truth = np.ones((2, 2), np.float32), np.eye(2, dtype=np.float32)
    before = l.biases.copy()
    net.train_step(x, truth)  # seen 0 -> 2: n = 1, rate 0.5
    step = l.biases - before
    net2 = net_from(
        tmp_path,
        "[net]\ninputs=2\nbatch=2\nlearning_rate=1\nmomentum=0\n"
        "decay=0\n[connected]\noutput=2\nactivation=linear\n[softmax]\n",
        seed=0,
    )
    before2 = net2.layers[0].biases.copy()
    net2.train_step(x, truth)  # constant rate 1
    np.testing.assert_allclose(step, 0.5 * (net2.layers[0].biases - before2), rtol=1e-5)
