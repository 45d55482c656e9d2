"""Shared fixtures for the test suite.

* ``write_cfg(tmp_path, text, name="net.cfg")`` writes a cfg (dedented) and
  returns its path; ``net_from(tmp_path, text, **kw)`` builds the Network.
  Both are plain functions (``from conftest import write_cfg``) and fixtures.
* ``mnist`` (session scope) is real MNIST from ``data/mnist/`` (or
  ``$MINIDARK_DATA``): ``(x_train, y_train, x_test, y_test)``, images float32
  ``(n, 784)`` in [0, 1], labels int64. It never downloads and never skips:
  missing files FAIL the test with instructions.
* ``REFDATA`` is ``../shared/refdata`` beside the clone (or ``$MINIDARK_REFDATA``).
"""
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REFDATA = Path(os.environ.get("MINIDARK_REFDATA") or ROOT.parent / "shared" / "refdata")


def write_cfg(tmp_path, text, name="net.cfg"):
    """Write ``text`` (dedented) to ``tmp_path/name``; return the path as str."""
    path = Path(tmp_path) / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def net_from(tmp_path, text, name="net.cfg", **kwargs):
    """Build a Network from cfg text (quietly)."""
    import minidark
    return minidark.load_network(write_cfg(tmp_path, text, name), **kwargs)


@pytest.fixture(name="write_cfg")
def _write_cfg_fixture():
    """The ``write_cfg`` helper as a fixture: ``write_cfg(tmp_path, text)``."""
    return write_cfg


@pytest.fixture(name="net_from")
def _net_from_fixture():
    """The ``net_from`` helper as a fixture: ``net_from(tmp_path, text, **kw)``."""
    return net_from


@pytest.fixture(scope="session")
def mnist():
    from minidark.data.mnist import load_mnist
    from minidark.errors import DataError

    folders = [ROOT / "data" / "mnist"]
    if os.environ.get("MINIDARK_DATA"):
        env = Path(os.environ["MINIDARK_DATA"])
        folders += [env, env / "mnist"]
    for folder in folders:
        try:
            x_train, y_train = load_mnist(str(folder), "train")
            x_test, y_test = load_mnist(str(folder), "test")
        except DataError:
            continue
        assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
        return x_train, y_train, x_test, y_test
    pytest.fail(
        "MNIST is missing: these tests need the real data set and are never skipped. "
        f"Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {ROOT / 'data' / 'mnist'} "
        "(CI links ../shared/data/mnist there) or in the folder named by $MINIDARK_DATA.",
        pytrace=False)


def one_hot(labels, classes=10):
    return np.eye(classes, dtype=np.float32)[np.asarray(labels)]


def mnist_datasets(train_rows, valid_rows):
    """The first rows of MNIST's training and test sets as trainer Datasets (1x28x28)."""
    from minidark.data.dataset import load_dataset
    folder = ROOT / "data" / "mnist"
    train = load_dataset(str(folder / "train-images-idx3-ubyte.gz"), (1, 28, 28),
                         progress=False).subset(train_rows)
    valid = load_dataset(str(folder / "t10k-images-idx3-ubyte.gz"), (1, 28, 28),
                         progress=False).subset(valid_rows)
    return train, valid


@pytest.fixture
def isolated_registry(monkeypatch):
    """Start from the built-in layers and leave no plugin behind (registry, plugin
    state and imported plugin modules); installed entry points stay off unless a
    test turns them on."""
    import sys
    from minidark import plugins, registry
    plugins.load_layers()
    saved = dict(registry._REGISTRY), dict(registry._ORIGIN)
    modules = set(sys.modules)
    monkeypatch.setattr(plugins, "_state", plugins._State())
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._ORIGIN.clear()
    registry._ORIGIN.update(saved[1])
    for name in set(sys.modules) - modules:
        if name.startswith(("minidark_plugin_", "minidark_testplugin", "tp_", "clash_")):
            del sys.modules[name]
