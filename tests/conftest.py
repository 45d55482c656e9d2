"""Shared fixtures for the test suite.

* ``write_cfg(tmp_path, text, name="net.cfg")`` writes a cfg (dedented) and
  returns its path; ``net_from(tmp_path, text, **kw)`` builds the Network.
  Both are plain functions (``from conftest import write_cfg``) and fixtures.

Data the suite does not ship, and where it is found:

* MNIST (``MNIST``, a folder path): ``data/mnist/``, then ``$MINIDARK_DATA``
  (or ``$MINIDARK_DATA/mnist``), then ``../shared/data/mnist`` beside the
  clone; when none holds the four IDX files, the first test that needs them
  downloads them (into ``$MINIDARK_DATA`` or ``data/mnist/``).
* darknet's reference data (``REFDATA``): ``$MINIDARK_REFDATA``, else
  ``../shared/refdata``.

A test that needs them is marked ``@pytest.mark.mnist`` or
``@pytest.mark.refdata`` (or calls :func:`require_mnist`); without the data it
is SKIPPED with one reason line saying what to set, except when ``$CI`` is set:
there missing data FAILS the test. The summary lists each skip reason once.
The ``mnist`` fixture (session scope) is real MNIST as arrays:
``(x_train, y_train, x_test, y_test)``, images float32 ``(n, 784)`` in [0, 1].
"""

import collections
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
REFDATA = Path(os.environ.get("MINIDARK_REFDATA") or SHARED / "refdata")


def _mnist_folders():
    """Where the four MNIST files are looked for, in order."""
    folders = [ROOT / "data" / "mnist"]
    if os.environ.get("MINIDARK_DATA"):
        env = Path(os.environ["MINIDARK_DATA"])
        folders += [env, env / "mnist"]
    return [*folders, SHARED / "data" / "mnist"]


def _holds_mnist(folder):
    from minidark.data.mnist import ALL_FILES, find_idx

    return all(find_idx(str(folder), stem) for stem in ALL_FILES)


_FOUND = next((f for f in _mnist_folders() if _holds_mnist(f)), None)
# Where MNIST is, or where a download puts it (minidark.data.mnist.ensure_mnist's rule).
MNIST = str(_FOUND or os.environ.get("MINIDARK_DATA") or ROOT / "data" / "mnist")
if _FOUND == SHARED / "data" / "mnist" and not os.environ.get("MINIDARK_DATA"):
    # cfg/mnist.data names data/mnist; the CLI, bench and train.py (subprocesses
    # too) also look in $MINIDARK_DATA
    os.environ["MINIDARK_DATA"] = MNIST
_download = {}  # the one download attempt of this session: {"error": message or None}


def missing_data(reason):
    """Skip the running test for missing data, or fail it when $CI is set."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: missing data is an error)", pytrace=False)
    pytest.skip(reason)


def require_mnist():
    """The folder holding MNIST's four IDX files; downloads them once if the network
    allows; otherwise skips the test (fails it under $CI)."""
    if _FOUND is not None or _holds_mnist(MNIST):
        return MNIST
    if "error" not in _download:
        from minidark.data.mnist import ALL_FILES, ensure_mnist
        from minidark.errors import DataError

        try:
            ensure_mnist(ALL_FILES, str(ROOT / "data" / "mnist"), progress=False)
            _download["error"] = None
        except DataError as exc:  # "MNIST is missing ... (why): put the files ..."
            message = str(exc)
            start, end = message.find("("), message.find("): put")
            _download["error"] = message[start + 1 : end] if 0 <= start < end else message
    if _download["error"] is None and _holds_mnist(MNIST):
        return MNIST
    tried = ", ".join(str(f) for f in _mnist_folders())
    missing_data(
        f"MNIST not found (looked in {tried}; download failed: {_download['error']}): "
        "set MINIDARK_DATA to a folder holding the four MNIST .gz files, "
        "or put ../shared beside the clone"
    )


def require_refdata():
    """darknet's reference data folder, or skip the test (fail it under $CI)."""
    if (REFDATA / "vectors").is_dir():
        return REFDATA
    missing_data(
        f"darknet reference data not found at {REFDATA}: "
        "set MINIDARK_REFDATA to the folder holding vectors/ and mnist/, "
        "or put ../shared beside the clone"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("refdata"):
        require_refdata()
    if item.get_closest_marker("mnist"):
        require_mnist()


def pytest_terminal_summary(terminalreporter):
    """Each distinct skip reason once, with its count (``-q`` keeps this)."""
    reasons = collections.Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.write_sep("-", "skipped tests, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:4d} skipped: {reason}")


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

    folder = require_mnist()
    x_train, y_train = load_mnist(folder, "train")
    x_test, y_test = load_mnist(folder, "test")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    return x_train, y_train, x_test, y_test


def one_hot(labels, classes=10):
    return np.eye(classes, dtype=np.float32)[np.asarray(labels)]


def mnist_datasets(train_rows, valid_rows):
    """The first rows of MNIST's training and test sets as trainer Datasets (1x28x28)."""
    from minidark.data.dataset import load_dataset
    from minidark.data.mnist import find_idx

    folder = require_mnist()
    train = load_dataset(
        find_idx(folder, "train-images-idx3-ubyte"), (1, 28, 28), progress=False
    ).subset(train_rows)
    valid = load_dataset(
        find_idx(folder, "t10k-images-idx3-ubyte"), (1, 28, 28), progress=False
    ).subset(valid_rows)
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
