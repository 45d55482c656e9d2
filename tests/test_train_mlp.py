"""End to end on real MNIST: ONE epoch (469 mini-batches of 128) of
cfg/mnist_mlp.cfg, as shipped, reaches >= 96% test top-1.

Pixels are /255 (darknet's scaling); the data order is a seeded permutation
(two concatenated permutations, since 469 * 128 = 60032 > 60000), and
load_network(..., seed=...) fixes the initialisation, so the run is
deterministic. MNIST must be in data/mnist: missing files fail, never skip.
"""

import numpy as np
import pytest

import minidark

from conftest import ROOT, one_hot

SEED = 0
BATCHES = 469


@pytest.mark.slow
def test_one_epoch_of_mnist_mlp_reaches_96_percent(mnist):
    x_train, y_train, x_test, y_test = mnist
    net = minidark.load_network(str(ROOT / "cfg" / "mnist_mlp.cfg"), seed=SEED)
    assert net.batch == 128 and net.subdivisions == 1 and net.inputs == 784
    rng = np.random.default_rng(SEED)
    order = np.concatenate([rng.permutation(len(x_train)), rng.permutation(len(x_train))])
    truth = one_hot(y_train)
    losses = []
    for i in range(BATCHES):
        rows = order[i * 128 : (i + 1) * 128]
        losses.append(net.train_step(x_train[rows], truth[rows]))
    assert net.seen == BATCHES * 128 and net.t == BATCHES
    assert np.isfinite(losses).all()
    assert np.mean(losses[-50:]) < 0.3 < np.mean(losses[:10])  # it learned
    probs = net.predict(x_test)
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    print(f"one epoch of cfg/mnist_mlp.cfg: test top-1 {accuracy:.4f}")
    assert accuracy >= 0.96, f"test top-1 {accuracy:.4f} after one epoch"
