"""Learning-rate policies and burn-in (darknet's get_current_rate).

With ``n = seen // images_per_update`` (the current batch number; images per
update = batch x subdivisions) and ``lr = learning_rate``, all options read
from ``net.config`` (minidark/cfg/netconfig.py):

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
    return net.seen // net.images_per_update


def current_rate(net, rng=None):
    n = current_batch(net)
    config = net.config
    lr = config.learning_rate
    if n < config.burn_in:
        return lr * (n / config.burn_in) ** config.power
    policy = config.policy
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * config.scale ** (n // config.step)
    if policy == "steps":
        rate = lr
        for step, scale in zip(config.steps, config.scales, strict=True):
            if step > n:
                return rate
            rate *= scale
        return rate
    if policy == "exp":
        return lr * config.gamma**n
    if policy == "poly":
        return lr * max(0.0, 1 - n / config.max_batches) ** config.power
    if policy == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return lr * rng.random() ** config.power
    if policy == "sigmoid":
        z = config.gamma * (n - config.step)
        return lr / (1 + math.exp(min(z, 700.0)))
    raise ValueError(f"unknown policy {policy!r}")
