"""Resume determinism: N iterations straight == N/2, stop, resume, N/2 more.

The run exercises everything that carries state between iterations:
momentum, subdivisions, a steps policy, dropout (net.rng), augmentation
and epoch permutations (the trainer's rng), epochs ending mid-iteration,
and evaluation during training.
"""

import io
import os

import numpy as np
import pytest

import minidark
from minidark.train.checkpoint import CheckpointError
from minidark.train.trainer import Trainer, sidecar_path, train_state_names

from conftest import mnist_datasets

CFG = """[net]
batch=32
subdivisions=2
height=28
width=28
channels=1
learning_rate=0.05
momentum=0.9
decay=0.0005
policy=steps
steps=8,14
scales=.5,.5
max_batches=20
valid_every=6
backup_every=6
angle=10
min_crop=28
max_crop=34
aspect=1.1
exposure=1.3
flip=1

[connected]
output=32
activation=leaky

[dropout]
probability=.2

[connected]
output=10
activation=linear

[softmax]
"""


@pytest.fixture(scope="module")
def data():
    return mnist_datasets(200, 100)  # 6.25 iterations per epoch


def trainer_for(tmp_path, data, folder, weights=None, seed=7):
    cfg = tmp_path / "resume.cfg"
    cfg.write_text(CFG)
    net = minidark.load_network(str(cfg), weights, seed=seed)
    trainer = Trainer(
        net,
        data[0],
        data[1],
        backup_dir=tmp_path / folder,
        base="resume",
        top=2,
        seed=seed,
        progress=False,
        out=io.StringIO(),
    )
    return trainer


def state_of(net):
    arrays = {}
    for layer in net.layers:
        for name in tuple(layer.saved) + tuple(train_state_names(layer)):
            arrays[f"{layer.index}/{name}"] = getattr(layer, name).copy()
    return arrays


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("straight")
    trainer = trainer_for(tmp_path, data, "a")
    assert trainer.augment is not None and trainer.rows == 32
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["iterations"] == 20
    return trainer, tmp_path / "a"


def test_stop_and_resume_gives_the_same_weights(tmp_path, data, straight):
    reference, _ = straight
    first = trainer_for(tmp_path, data, "b")

    def stop_half_way(trainer):
        if trainer.net.current_batch == 10:
            trainer.request_stop()  # what Ctrl-C does

    first.on_iteration = stop_half_way
    summary = first.run()
    assert summary["status"] == "interrupted" and summary["iterations"] == 10
    backup = str(tmp_path / "b" / "resume.backup")
    assert summary["weights"] == backup and os.path.exists(sidecar_path(backup))

    # a different seed: everything must come from the sidecar
    second = trainer_for(tmp_path, data, "b", weights=backup, seed=12345)
    assert second.net.seen == 10 * 32
    assert "restored" in second.restore(backup)
    summary = second.run()
    assert summary["status"] == "finished" and summary["iterations"] == 10
    assert_same_state(state_of(second.net), state_of(reference.net))
    assert second.net.seen == reference.net.seen and second.net.t == reference.net.t
    np.testing.assert_array_equal(second.history["loss"], reference.history["loss"])
    assert second.valid_history == reference.valid_history
    with (
        open(tmp_path / "b" / "resume.weights", "rb") as b,
        open(straight[1] / "resume.weights", "rb") as a,
    ):
        assert a.read() == b.read()


def test_resume_from_an_epoch_checkpoint(tmp_path, data, straight):
    reference, folder = straight
    checkpoint = str(folder / "resume_2.weights")  # epoch 2: seen 416 after iteration 13
    resumed = trainer_for(tmp_path, data, "c", weights=checkpoint, seed=1)
    assert resumed.net.current_batch == 13
    resumed.restore(checkpoint)
    resumed.run()
    assert_same_state(state_of(resumed.net), state_of(reference.net))


def test_without_sidecar_training_goes_on_fresh(tmp_path, data, straight):
    folder = straight[1]
    plain = tmp_path / "plain.weights"  # a darknet file: no momentum, no order
    plain.write_bytes((folder / "resume_1.weights").read_bytes())
    resumed = trainer_for(tmp_path, data, "d", weights=str(plain))
    assert "start fresh" in resumed.restore(str(plain))
    assert resumed.net.current_batch == 7 and resumed.epoch == 1
    assert all(
        not layer_updates.any()
        for layer_updates in (
            l.weight_updates for l in resumed.net.layers if l.weight_updates is not None
        )
    )
    summary = resumed.run()
    assert summary["status"] == "finished" and resumed.net.current_batch == 20


def test_sidecar_of_other_weights_is_an_error_unless_exactness_is_waived(tmp_path, data, straight):
    _, folder = straight
    weights = tmp_path / "w.weights"
    weights.write_bytes((folder / "resume_1.weights").read_bytes())
    (tmp_path / "w.weights.state.npz").write_bytes(
        (folder / "resume_2.weights.state.npz").read_bytes()
    )
    resumed = trainer_for(tmp_path, data, "e", weights=str(weights))
    with pytest.raises(CheckpointError) as error:
        resumed.restore(str(weights))
    message = str(error.value)
    assert (
        message.startswith(
            f"{weights}.state.npz: cannot resume exactly: it belongs to other weights"
        )
        and "--no-exact-resume" in message
    )
    assert not resumed.restored
    note = resumed.restore(str(weights), exact=False)
    assert "start fresh" in note and not resumed.restored
