"""darknet's own trained MNIST MLP, run by minidark (issue 5).

``../shared/refdata/mnist/mnist_mlp_c1_2ep.weights`` was trained by the C
darknet with ``../shared/refdata/cfg/mnist_mlp.cfg``; darknet's softmax
outputs on the 10k MNIST test images are in ``mnist_mlp_c1_2ep.test_probs.npy``.
minidark must reproduce them to 1e-5 and the top-1/top-2 accuracies exactly.
The same check (``check_darknet_predictions``) applies to any darknet-trained
classifier, e.g. a LeNet, given its cfg, weights and darknet's probabilities.
"""
from pathlib import Path

import numpy as np

from minidark.testing import check_darknet_predictions, refdata_root

REPO = Path(__file__).resolve().parents[1]


def test_darknet_trained_mlp_reproduces_darknets_test_predictions():
    root = refdata_root()
    result = check_darknet_predictions(root / "cfg" / "mnist_mlp.cfg",
                                       root / "mnist" / "mnist_mlp_c1_2ep.weights",
                                       root / "mnist" / "mnist_mlp_c1_2ep.test_probs.npy",
                                       data_dir=REPO / "data" / "mnist")
    print(f"max |ours - darknet| = {result['max_abs']:.3e}, top-1 {result['top1']}, "
          f"top-2 {result['top2']}, argmax agreement {result['argmax_agree']}")
    assert result["probs"].shape == (10000, 10)
    assert result["max_abs"] <= 1e-5, result["max_abs"]
    assert result["passed"]
    assert result["darknet_top1"] == 0.9699 and result["darknet_top2"] == 0.9916
    assert result["top1"] == 0.9699
    assert result["top2"] == 0.9916
    assert result["argmax_agree"] == 1.0


def test_check_darknet_predictions_detects_a_mismatch(tmp_path):
    """The check can fail: darknet's probabilities, slightly changed, are rejected."""
    root = refdata_root()
    probs = np.load(root / "mnist" / "mnist_mlp_c1_2ep.test_probs.npy")[:200].copy()
    probs[17, 3] += 5e-5
    np.save(tmp_path / "probs.npy", probs)
    from minidark.data.mnist import load_mnist
    images, labels = load_mnist(REPO / "data" / "mnist", "test")
    result = check_darknet_predictions(root / "cfg" / "mnist_mlp.cfg",
                                       root / "mnist" / "mnist_mlp_c1_2ep.weights",
                                       tmp_path / "probs.npy", images[:200], labels[:200])
    assert not result["passed"] and result["max_abs"] > 4e-5
