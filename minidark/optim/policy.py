"""Learning-rate policies and burn-in (darknet's get_current_rate).

With ``n = seen // (batch * subdivisions)`` (the current batch number) and
``lr = learning_rate``:

| policy   | rate                                            |
|----------|-------------------------------------------------|
| burn-in  | ``lr * (n / burn_in) ** power`` while n < burn_in (any policy) |
| constant | ``lr``                                          |
| step     | ``lr * scale ** (n // step)``                   |
| steps    | ``lr`` times every ``scales[i]`` with ``steps[i] <= n`` |
| exp      | ``lr * gamma ** n``                             |
| poly     | ``lr * (1 - n / max_batches) ** power``         |
| random   | ``lr * U(0,1) ** power`` (a new draw per call)  |
| sigmoid  | ``lr / (1 + exp(gamma * (n - step)))``          |
"""
import math

import numpy as np


def current_batch(net):
    return net.seen // (net.batch * net.subdivisions)


def current_rate(net, rng=None):
    n = current_batch(net)
    lr = net.learning_rate
    if n < net.burn_in:
        return lr * (n / net.burn_in) ** net.power
    policy = net.policy
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * net.scale ** (n // net.step)
    if policy == "steps":
        rate = lr
        for step, scale in zip(net.steps, net.scales):
            if step > n:
                return rate
            rate *= scale
        return rate
    if policy == "exp":
        return lr * net.gamma ** n
    if policy == "poly":
        return lr * max(0.0, 1 - n / net.max_batches) ** net.power
    if policy == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return lr * rng.random() ** net.power
    if policy == "sigmoid":
        z = net.gamma * (n - net.step)
        return lr / (1 + math.exp(min(z, 700.0)))
    raise ValueError(f"unknown policy {policy!r}")
