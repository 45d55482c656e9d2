"""A damaged, truncated or foreign sidecar is one line naming the file and what
to do (--no-exact-resume, or an earlier checkpoint); never a traceback, never
silently taken for the state of the weights beside it."""

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_training import tiny_trainer, write_tiny_cfg, write_tiny_data_file

import minidark.train.chart as chart
from minidark.cli import main
from minidark.train.checkpoint import CheckpointError, sidecar_path, state_checksum


@pytest.fixture(autouse=True)
def no_chart(monkeypatch):
    monkeypatch.setattr(chart, "draw_chart", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run: (cfg, folder); tiny_2.weights is resumed in the tests."""
    tmp_path = tmp_path_factory.mktemp("sidecar")
    cfg = write_tiny_cfg(tmp_path, max_batches=8, backup_every=2)
    tiny_trainer(cfg, tmp_path / "backup").run()
    return cfg, tmp_path / "backup"


def arrays_of(path):
    with np.load(path, allow_pickle=False) as state:
        return {key: state[key] for key in state.files}


def save_npz(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def copy_checkpoint(trained, tmp_path):
    """tiny_2.weights and its sidecar, copied: (weights path, sidecar path, arrays)."""
    folder = trained[1]
    weights = tmp_path / "tiny_2.weights"
    weights.write_bytes((folder / "tiny_2.weights").read_bytes())
    sidecar = sidecar_path(weights)
    arrays = arrays_of(sidecar_path(folder / "tiny_2.weights"))
    return weights, sidecar, arrays


def restore_error(cfg, weights):
    with pytest.raises(CheckpointError) as error:
        tiny_trainer(cfg, weights.parent / "out", weights=str(weights))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{sidecar_path(weights)}: cannot resume exactly: ")
    assert "Pass --no-exact-resume to train on from the weights alone" in message
    return message


def edited(arrays, **changes):
    result = dict(arrays)
    for key, value in changes.items():
        if value is None:
            del result[key.replace("__", "/")]
        else:
            result[key.replace("__", "/")] = value
    return result


def not_a_permutation(arrays):
    order = arrays["order"].copy()
    order[0] = order[1]
    return edited(arrays, order=order)


def nan_momentum(arrays):
    momentum = arrays["layer0/weight_updates"].copy()
    momentum[0, 0] = np.nan
    return edited(arrays, layer0__weight_updates=momentum)


CASES = {
    # name: (what to write, what the message says)
    "random bytes": (lambda a: bytes(range(256)) * 8, "it is not a readable sidecar"),
    "empty": (lambda a: b"", "it is not a readable sidecar"),
    "missing key": (lambda a: edited(a, position=None), "key 'position' is missing"),
    "bad JSON": (
        lambda a: edited(a, trainer_rng=np.array("{'state': ")),
        "key 'trainer_rng' is not a random generator state",
    ),
    "other generator": (
        lambda a: edited(a, net_rng=np.array(json.dumps(np.random.PCG64DXSM(1).state))),
        "key 'net_rng' is not a random generator state",
    ),
    "position beyond the data": (
        lambda a: edited(a, position=np.array(11)),
        "position=11 is outside [0, 10]",
    ),
    "negative position": (
        lambda a: edited(a, position=np.array(-1)),
        "position=-1 is outside [0, 10]",
    ),
    "position as text": (
        lambda a: edited(a, position=np.array("3")),
        "key 'position' is not an integer",
    ),
    "order not a permutation": (not_a_permutation, "'order' is not a permutation of the 10"),
    "wrong shape": (
        lambda a: edited(a, layer0__weight_updates=np.zeros((3, 3), np.float32)),
        "layer0/weight_updates has shape (3, 3) float32, layer 0 [connected] needs (8, 16)",
    ),
    "missing layer": (
        lambda a: edited(a, layer2__bias_updates=None),
        "it has no layer2/bias_updates (layer 2 [connected] bias_updates)",
    ),
    "NaN momentum": (nan_momentum, "layer0/weight_updates holds NaN or infinite values"),
    "future version": (
        lambda a: edited(a, version=np.array(99)),
        "format version 99; this minidark reads versions 1, 2",
    ),
    "other weights": (
        lambda a: edited(a, weights_sha256=np.array("0" * 64)),
        "it belongs to other weights (their SHA-256 differs)",
    ),
    "history lengths": (
        lambda a: edited(a, history__loss=np.zeros(2)),
        "its history lists have different lengths",
    ),
    "object array": (
        lambda a: edited(a, t=np.array([{"x": 1}], dtype=object)),
        "member 't.npy' is damaged",
    ),
    # these two are not re-signed: the checksum finds them
    "edited": (lambda a: edited(a, position=np.array(2)), "their checksum differs"),
    "swapped members": (
        lambda a: edited(a, history__loss=a["history/avg"], history__avg=a["history/loss"]),
        "its contents were changed or damaged (their checksum differs)",
    ),
}
UNSIGNED = ("edited", "swapped members")


def signed(arrays):
    """``arrays`` with a valid checksum, as a program forging a sidecar would write."""
    return dict(arrays, state_sha256=np.array(state_checksum(arrays)))


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_sidecar_is_one_line_saying_what_to_do(trained, tmp_path, case):
    cfg = trained[0]
    weights, sidecar, arrays = copy_checkpoint(trained, tmp_path)
    content, expected = CASES[case]
    content = content(arrays)
    if isinstance(content, bytes):
        with open(sidecar, "wb") as handle:
            handle.write(content)
    else:
        content = content if case in UNSIGNED else signed(content)
        with open(sidecar, "wb") as handle:
            np.savez(handle, allow_pickle=case == "object array", **content)
    message = restore_error(cfg, weights)
    assert expected in message, message
    # no other checkpoint beside the copy: none is offered
    assert "(the newest other complete one is" not in message
    # --no-exact-resume: the weights alone
    trainer = tiny_trainer(cfg, tmp_path / "out", weights=str(weights), exact=False)
    assert not trainer.restored and trainer.net.current_batch == 5
    assert trainer.run()["status"] == "finished"


def test_truncated_sidecar_offers_the_previous_checkpoint(trained, tmp_path):
    cfg, folder = trained
    for name in ("tiny_1.weights", "tiny_2.weights", "tiny.backup"):
        for suffix in ("", ".state.npz"):
            (tmp_path / (name + suffix)).write_bytes((folder / (name + suffix)).read_bytes())
    sidecar = tmp_path / "tiny_2.weights.state.npz"
    sidecar.write_bytes(sidecar.read_bytes()[:3000])
    message = restore_error(cfg, tmp_path / "tiny_2.weights")
    assert "it is not a readable sidecar (BadZipFile" in message
    assert message.endswith(f"(the newest other complete one is {tmp_path / 'tiny.backup'})")


def test_a_member_whose_header_lies_about_its_size(trained, tmp_path):
    """A shape of 2^40 floats in a few bytes is refused before anything is allocated."""
    cfg = trained[0]
    weights, sidecar, arrays = copy_checkpoint(trained, tmp_path)
    save_npz(sidecar, signed(arrays))
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (118 - len(header)) + b"\n"
    with zipfile.ZipFile(sidecar, "a") as archive:
        archive.writestr(
            "huge.npy",
            b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16,
        )
    assert "member 'huge.npy' is damaged" in restore_error(cfg, weights)


def test_a_sidecar_that_is_not_a_file(trained, tmp_path):
    import os

    cfg = trained[0]
    weights, sidecar, _ = copy_checkpoint(trained, tmp_path)
    os.mkfifo(sidecar)  # reading it would block forever
    assert "it is not a regular file" in restore_error(cfg, weights)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=3000))
def test_random_bytes_as_sidecar(trained, tmp_path, content):
    cfg = trained[0]
    weights, sidecar, _ = copy_checkpoint(trained, tmp_path)
    with open(sidecar, "wb") as handle:
        handle.write(content)
    restore_error(cfg, weights)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_bytes_of_a_real_sidecar(trained, tmp_path, data):
    """Flipped or cut bytes: an error as above, or (a byte zip does not read) the
    exact state; anything else fails."""
    cfg = trained[0]
    weights, sidecar, _ = copy_checkpoint(trained, tmp_path)
    original = (trained[1] / "tiny_2.weights.state.npz").read_bytes()
    content = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(content) - 1))
        content[index] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content)))]
    with open(sidecar, "wb") as handle:
        handle.write(bytes(content))
    try:
        trainer = tiny_trainer(cfg, tmp_path / "out", weights=str(weights))
    except CheckpointError as error:
        assert str(error).startswith(f"{sidecar}: cannot resume exactly: ")
        assert "\n" not in str(error)
        return
    assert trainer.restored
    reference = tiny_trainer(cfg, tmp_path / "ref", weights=str(trained[1] / "tiny_2.weights"))
    assert trainer.state_arrays().keys() == reference.state_arrays().keys()
    for key, value in trainer.state_arrays().items():
        np.testing.assert_array_equal(value, reference.state_arrays()[key], err_msg=key)


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    data = write_tiny_data_file(tmp_path)
    cfg = write_tiny_cfg(tmp_path, max_batches=4, backup_every=2)
    assert main(["classifier", "train", data, cfg, "--seed", "3", "--no-progress"]) == 0
    backup = tmp_path / "backup" / "tiny.backup"
    (tmp_path / "backup" / "tiny.backup.state.npz").write_bytes(b"PK\x03\x04 not really")
    capsys.readouterr()
    longer = write_tiny_cfg(tmp_path, max_batches=6, backup_every=2, name="longer.cfg")
    status = main(["classifier", "train", data, longer, str(backup), "--no-progress"])
    err = capsys.readouterr().err
    assert status != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1]
    assert errors[0].startswith(f"minidark: error: {backup}.state.npz: cannot resume exactly: ")
    assert "--no-exact-resume" in errors[0] and "tiny.weights" in errors[0]
    status = main(
        ["classifier", "train", data, longer, str(backup), "--no-progress", "--no-exact-resume"]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "--no-exact-resume: tiny.backup.state.npz not used" in captured.out
