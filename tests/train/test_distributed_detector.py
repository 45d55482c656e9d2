"""Data-parallel detector training over MPI (DistributedDetectionTrainer).

The jobs run ``mpiexec -n 2`` on loopback in a subprocess
(tests/train/distributed_detector_job.py, or the ``minidark`` command) on the
tiny shapes set of test_detector_train, with multi-scale and every
augmentation on. Two ranks of batch b against one process of ``batch=2b,
subdivisions=2``: each rank's b rows are that process's mini-batch (the same
images, the same distortion, the same shapes through the same kernels), and
the gradient sum ``(S + g_0) + g_1`` of two ranks is the process's
accumulation in the same order (a sum of two float32 numbers does not depend
on its order), so the trained parameters are expected to be equal bit for
bit, and are compared exactly. Batch-norm running statistics are not
compared: two ranks average their per-rank statistics once per update where
one process folds its two mini-batches in one after the other (a different
number, which training never reads).
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from test_detector_train import CFG, make_dataset
from test_distributed import clean_env, mpiexec

from minidark.data.detection import DetectionDataset
from minidark.train.detection_eval import evaluate_detector, predict_dataset, score_detections
from minidark.train.detection_trainer import valid_share

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "distributed_detector_job.py")


def write_cfg(folder, name, batch, subdivisions=1, size=96):
    """The tiny [yolo] cfg at 96 px: multi-scale draws 96 or 128 every 10 iterations
    (max_batches is far, so the last-200-iterations rule never fixes the size)."""
    path = os.path.join(folder, name)
    text = CFG.format(size=size, max_batches=1000, random=1).replace(
        "batch=2\nsubdivisions=1", f"batch={batch}\nsubdivisions={subdivisions}"
    )
    with open(path, "w") as handle:
        handle.write(text)
    return path


def run_job(root, cfg, backup, out, ranks, stop_at, *extra):
    command = [sys.executable, JOB, str(root), cfg, str(backup), str(out), "--stop-at"]
    command += [str(stop_at), *extra]
    if ranks is not None:
        command = [mpiexec(), "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def trained(path):
    arrays = np.load(path)
    names = ("weights", "biases", "scales")
    return {k: arrays[k] for k in arrays.files if k.split("/")[-1] in names}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_dataset(root, images=7, size=40)  # 7 valid images: shares of 4 and 3
    return root


def test_two_ranks_of_2_train_the_detector_as_one_process_of_4_in_2_subdivisions(shapes, tmp_path):
    one = write_cfg(tmp_path, "one.cfg", batch=4, subdivisions=2)
    two = write_cfg(tmp_path, "two.cfg", batch=2)
    run_job(shapes, one, tmp_path / "b1", tmp_path / "one.npz", None, 12)
    done = run_job(shapes, two, tmp_path / "b2", tmp_path / "two.npz", 2, 12)
    assert done.stdout.count("status interrupted seen 48") == 1  # 12 x 4, rank 0 alone speaks
    one_process, two_ranks = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    # multi-scale resized both, together, to the same sizes (both sizes drawn)
    np.testing.assert_array_equal(one_process["sizes"], two_ranks["sizes"])
    assert set(two_ranks["sizes"][:10]) == {128} and set(two_ranks["sizes"][10:]) == {96}
    expected, got = trained(tmp_path / "one.npz"), trained(tmp_path / "two.npz")
    assert expected.keys() == got.keys() and len(expected) == 8
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the shared evaluation is the single process's, to the last bit
    for key in ("map50", "map"):
        assert two_ranks[key] == two_ranks[f"{key}_alone"]
        assert one_process[key] == one_process[f"{key}_alone"]


def test_a_two_rank_checkpoint_resumes_to_the_bytes_of_the_uninterrupted_run(shapes, tmp_path):
    two = write_cfg(tmp_path, "two.cfg", batch=2)
    run_job(shapes, two, tmp_path / "whole", tmp_path / "whole.npz", 2, 12)
    run_job(shapes, two, tmp_path / "split", tmp_path / "half.npz", 2, 5)
    backup = tmp_path / "split" / "job.backup"
    assert np.load(tmp_path / "half.npz")["seen"] == 20
    run_job(shapes, two, tmp_path / "split", tmp_path / "resumed.npz", 2, 12, "--weights", backup)
    whole = (tmp_path / "whole" / "job.backup").read_bytes()
    assert backup.read_bytes() == whole
    resumed = np.load(tmp_path / "resumed.npz")
    assert resumed["seen"] == 48 and set(resumed["sizes"]) == {96, 128}  # resized after resume


# ------------------------------------------------------------------ sharded evaluation
@pytest.mark.parametrize(("count", "batch", "size"), [(7, 2, 2), (7, 2, 3), (3, 4, 2), (0, 2, 2)])
def test_valid_shares_are_whole_batches_that_cover_the_images_once(count, batch, size):
    shares = [valid_share(count, batch, rank, size) for rank in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == count
    for (_, stop), (start, _) in itertools.pairwise(shares):
        assert stop == start
    assert all(start % batch == 0 and start <= stop for start, stop in shares)


def test_predictions_by_shares_score_as_the_whole_list(shapes):
    """The seam the ranks use: shares predicted apart and joined in order give
    the detections and the mAP of one pass over all images, exactly."""
    import minidark

    cfg = write_cfg(shapes, "eval.cfg", batch=2, size=32)
    net = minidark.load_network(cfg, seed=2)
    for layer in net.layers:  # confident, varied boxes: many detections to rank
        if layer.type == "convolutional":
            layer.biases += np.linspace(-1, 2, layer.biases.size, dtype=np.float32)
    valid = DetectionDataset.from_list(shapes / "valid.txt", 2)
    whole, _, _ = predict_dataset(net, valid)
    assert sum(len(d) for d in whole) > 20
    joined_dets, joined_truths = [], []
    for rank in range(3):
        start, stop = valid_share(len(valid), net.batch, rank, 3)
        dets, tru, _ = predict_dataset(net, valid, limit=stop, start=start)
        joined_dets += dets
        joined_truths += tru
    assert len(joined_dets) == len(whole)
    for a, b in zip(whole, joined_dets, strict=True):
        np.testing.assert_array_equal(a, b)
    expected = evaluate_detector(net, valid, 2)
    got = score_detections(joined_dets, joined_truths, 2)
    assert got == expected


# ------------------------------------------------------------------ the command
def test_mpiexec_runs_detector_train(shapes, tmp_path):
    runner = mpiexec()
    data = tmp_path / "shapes.data"
    text = (shapes / "shapes.data").read_text()
    data.write_text(text.replace(f"backup={shapes}/backup", f"backup={tmp_path}/b"))
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(CFG.format(size=32, max_batches=4, random=0))
    command = [sys.executable, "-m", "minidark", "detector", "train", str(data), str(cfg)]
    done = subprocess.run(
        [runner, "-n", "2", *command, "--seed", "4", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks, data parallel: rank 0 pid" in done.stdout
    assert "2 images per rank, 4 per update" in done.stdout
    lines = done.stdout.splitlines()
    assert sum(line.startswith("mAP@0.5 = ") for line in lines) == 1  # rank 0 alone speaks
    log = (tmp_path / "b" / "tiny.log").read_text().splitlines()
    assert sum(line.startswith("Region 4 Avg IOU:") for line in log) == 4  # rank 0's head
    assert any(line.startswith("4, ") and line.endswith(" 16 images") for line in log)
    assert (tmp_path / "b" / "tiny.weights.state.npz").exists()
