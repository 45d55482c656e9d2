"""darknet's own trained classifiers, run by minidark.

``mnist/mnist_mlp_c1_2ep.weights`` (in ``../shared/refdata``) was trained by
the C darknet with ``cfg/mnist_mlp.cfg``; darknet's softmax outputs on the 10k
MNIST test images are in ``mnist/mnist_mlp_c1_2ep.test_probs.npy``. minidark
must reproduce them to 1e-5 and the top-1 (0.9699) / top-2 (0.9916) exactly.

Every ``mnist/<stem>.test_probs.npy`` found under ``$MINIDARK_REFDATA`` or
``../shared/refdata`` is checked the same way (a future darknet LeNet too):
weights ``mnist/<stem>.weights``, cfg ``cfg/<stem>.cfg`` or, dropping
trailing ``_part``s of the stem, e.g. ``cfg/mnist_lenet.cfg`` for
``mnist_lenet_c1_2ep``; the top-k must equal those of darknet's probabilities.
"""

import numpy as np
import pytest

from minidark.data.mnist import load_mnist
from minidark.testing import check_darknet_predictions, refdata_root
from minidark.tools.reference import default_refdata_root

from conftest import MNIST  # the MNIST folder (data/mnist, $MINIDARK_DATA or ../shared)

pytestmark = [pytest.mark.refdata, pytest.mark.mnist]
ROOTS = list(dict.fromkeys([refdata_root().resolve(), default_refdata_root().resolve()]))


def _cfg_for(root, stem):
    parts = stem.split("_")
    while parts:
        cfg = root / "cfg" / ("_".join(parts) + ".cfg")
        if cfg.is_file():
            return cfg
        parts.pop()
    raise FileNotFoundError(f"no cfg for {stem} under {root / 'cfg'}")


def _trained():
    found = {}
    for root in ROOTS:
        for probs in sorted((root / "mnist").glob("*.test_probs.npy")):
            stem = probs.name[: -len(".test_probs.npy")]
            found.setdefault(stem, (root, probs))
    return found


TRAINED = _trained()


def _check(stem):
    root, probs = TRAINED[stem]
    return check_darknet_predictions(
        _cfg_for(root, stem), root / "mnist" / f"{stem}.weights", probs, data_dir=MNIST
    )


def test_darknet_trained_mlp_reproduces_darknets_test_predictions():
    assert "mnist_mlp_c1_2ep" in TRAINED, f"darknet's MLP not found under {ROOTS}"
    result = _check("mnist_mlp_c1_2ep")
    print(
        f"max |ours - darknet| = {result['max_abs']:.3e}, top-1 {result['top1']}, "
        f"top-2 {result['top2']}, argmax agreement {result['argmax_agree']}"
    )
    assert result["probs"].shape == (10000, 10)
    assert result["max_abs"] <= 1e-5, result["max_abs"]
    assert result["passed"]
    assert result["darknet_top1"] == 0.9699 and result["darknet_top2"] == 0.9916
    assert result["top1"] == 0.9699
    assert result["top2"] == 0.9916
    assert result["argmax_agree"] == 1.0


@pytest.mark.parametrize("stem", sorted(TRAINED) or ["missing"])
def test_darknet_trained_classifier(stem):
    assert stem in TRAINED, f"no mnist/*.test_probs.npy under {ROOTS}"
    result = _check(stem)
    print(f"{stem}: max |ours - darknet| = {result['max_abs']:.3e}, top-1 {result['top1']}")
    assert result["max_abs"] <= 1e-5, result["max_abs"]
    assert result["top1"] == result["darknet_top1"]
    assert result["top2"] == result["darknet_top2"]


def test_check_darknet_predictions_detects_a_mismatch(tmp_path):
    """The check can fail: darknet's probabilities, slightly changed, are rejected."""
    root, probs_file = TRAINED["mnist_mlp_c1_2ep"]
    probs = np.load(probs_file)[:200].copy()
    probs[17, 3] += 5e-5
    np.save(tmp_path / "probs.npy", probs)
    images, labels = load_mnist(MNIST, "test")
    result = check_darknet_predictions(
        root / "cfg" / "mnist_mlp.cfg",
        root / "mnist" / "mnist_mlp_c1_2ep.weights",
        tmp_path / "probs.npy",
        images[:200],
        labels[:200],
    )
    assert not result["passed"] and result["max_abs"] > 4e-5
    with pytest.raises(ValueError, match="200 rows"):
        check_darknet_predictions(
            root / "cfg" / "mnist_mlp.cfg",
            root / "mnist" / "mnist_mlp_c1_2ep.weights",
            tmp_path / "probs.npy",
            images[:100],
            labels[:100],
        )
