"""Weights into other networks (darknet's load_weights_upto and its keys):
cutoff, files ending at a layer boundary, dontload / numload / dontloadscales /
flipped, stopbackward, and the partial / reset / normalize / denormalize verbs."""

import struct
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark import cli
from minidark.errors import WeightsError

from conftest import net_from, write_cfg

STOCK = Path(__file__).parent / "cfg" / "stock"

CONV_NET = """[net]
batch=2
height=8
width=8
channels=3
learning_rate=0.1
momentum=0.9
decay=0.0005
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=6
size=3
stride=1
pad=1
activation=leaky
[connected]
output=5
activation=linear
batch_normalize=1
[softmax]
"""


def randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for name in layer.saved:
            array = getattr(layer, name)
            low = 0.5 if name in ("rolling_variance", "scales") else -1
            array[...] = rng.uniform(low, 1.5, array.shape)
    return net


def saved(net, path, cutoff=None):
    minidark.save_weights(net, path, cutoff=cutoff)
    return Path(path).read_bytes()


def same_params(a, b):
    return all(
        np.array_equal(getattr(la, n), getattr(lb, n))
        for la, lb in zip(a, b, strict=True)
        for n in la.saved
    )


def test_cutoff_file_is_a_byte_prefix_and_loads_with_a_note(tmp_path, capsys):
    full_net = randomize(net_from(tmp_path, CONV_NET, seed=0))
    full = saved(full_net, tmp_path / "full.weights")
    part = saved(full_net, tmp_path / "part.weights", cutoff=2)
    assert full.startswith(part) and len(part) < len(full)
    fresh = net_from(tmp_path, CONV_NET, seed=5)
    initial = [l.weights for l in fresh.layers[2:]]
    initial = [w.copy() for w in initial if w is not None]
    minidark.load_weights(fresh, tmp_path / "part.weights")
    assert "loaded the first 1 of 3 layers" in capsys.readouterr().err
    assert same_params(fresh.layers[:2], full_net.layers[:2])
    rest = [l.weights for l in fresh.layers[2:] if l.weights is not None]
    assert all(np.array_equal(a, b) for a, b in zip(rest, initial, strict=True))


def test_load_network_cutoff_reads_only_the_first_layers(tmp_path, capsys):
    full_net = randomize(net_from(tmp_path, CONV_NET, seed=0))
    saved(full_net, tmp_path / "full.weights")
    cfg = write_cfg(tmp_path, CONV_NET)
    net = minidark.load_network(cfg, tmp_path / "full.weights", cutoff=3, seed=9)
    assert same_params(net.layers[:3], full_net.layers[:3])
    assert not np.array_equal(net.layers[3].weights, full_net.layers[3].weights)
    assert "bytes after layer 2 [convolutional] not read" in capsys.readouterr().err
    # without the cutoff the same file loads in full, silently
    net = minidark.load_network(cfg, tmp_path / "full.weights")
    assert same_params(net.layers, full_net.layers)
    assert capsys.readouterr().err == ""


def test_a_file_ending_inside_a_layer_is_still_an_error_naming_it(tmp_path):
    full_net = randomize(net_from(tmp_path, CONV_NET))
    data = saved(full_net, tmp_path / "full.weights")
    part = saved(full_net, tmp_path / "part.weights", cutoff=3)
    (tmp_path / "cut.weights").write_bytes(data[: len(part) + 8])
    with pytest.raises(WeightsError, match=r"ends inside layer 3 \[connected\] 'biases'"):
        minidark.load_weights(net_from(tmp_path, CONV_NET), tmp_path / "cut.weights")
    (tmp_path / "head.weights").write_bytes(data[:20])
    with pytest.raises(WeightsError, match="no layer's weights"):
        minidark.load_weights(net_from(tmp_path, CONV_NET), tmp_path / "head.weights")


def test_leftover_bytes_without_cutoff_or_dontload_are_still_an_error(tmp_path):
    data = saved(randomize(net_from(tmp_path, CONV_NET)), tmp_path / "full.weights")
    (tmp_path / "long.weights").write_bytes(data + b"\0" * 8)
    with pytest.raises(WeightsError, match="8 bytes left after the last layer"):
        minidark.load_weights(net_from(tmp_path, CONV_NET), tmp_path / "long.weights")


def small_tiny(classes, dontload=False):
    text = (STOCK / "tiny.cfg").read_text()
    for key, value in (("batch", 2), ("subdivisions", 1), ("height", 32), ("width", 32)):
        text = "\n".join(
            f"{key}={value}" if line.replace(" ", "").startswith(f"{key}=") else line
            for line in text.splitlines()
        )
    head = "filters=1000\nsize=1\nstride=1\npad=1\nactivation=linear"
    assert head in text
    new_head = head.replace("1000", str(classes)) + ("\ndontload=1" if dontload else "")
    return text.replace(head, new_head)


def test_tiny_imagenet_weights_into_a_ten_class_head_load_and_train(tmp_path, capsys):
    big = minidark.load_network(write_cfg(tmp_path, small_tiny(1000), "tiny1000.cfg"), seed=1)
    randomize(big)
    for layer in big.layers:  # keep activations in range through 16 layers
        if layer.weights is not None:
            layer.weights *= 0.1
    minidark.save_weights(big, tmp_path / "tiny.weights")
    cfg = write_cfg(tmp_path, small_tiny(10, dontload=True), "tiny10.cfg")
    net = minidark.load_network(cfg, tmp_path / "tiny.weights", seed=2, clear=True)
    head = [l for l in net.layers if l.weights is not None][-1]
    assert head.dontload and head.weights.shape[0] == 10
    assert "bytes after layer" in capsys.readouterr().err
    backbone = [
        (a, b) for a, b in zip(big.layers, net.layers, strict=True) if b.saved and not b.dontload
    ]
    assert len(backbone) == len([l for l in big.layers if l.saved]) - 1
    assert all(np.array_equal(getattr(a, n), getattr(b, n)) for a, b in backbone for n in a.saved)
    x = np.random.default_rng(0).uniform(0, 1, (2, net.inputs)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[[3, 7]]
    before = head.weights.copy()
    losses = [net.train_step(x, y) for _ in range(3)]
    assert np.isfinite(losses).all() and not np.array_equal(head.weights, before)


KEYS_NET = """[net]
batch=1
height=4
width=4
channels=2
[convolutional]
filters=3
size=3
stride=1
pad=1
activation=linear
{extra}
"""


def test_numload_reads_the_first_filters_only(tmp_path):
    small = randomize(
        net_from(tmp_path, KEYS_NET.format(extra="").replace("filters=3", "filters=2"))
    )
    minidark.save_weights(small, tmp_path / "two.weights")
    net = net_from(tmp_path, KEYS_NET.format(extra="numload=2"), seed=4)
    third = net.layers[0].weights[2].copy()
    minidark.load_weights(net, tmp_path / "two.weights")
    conv = net.layers[0]
    np.testing.assert_array_equal(conv.weights[:2], small.layers[0].weights)
    np.testing.assert_array_equal(conv.biases[:2], small.layers[0].biases)
    np.testing.assert_array_equal(conv.weights[2], third)


def test_numload_above_filters_is_a_cfg_error(tmp_path):
    with pytest.raises(minidark.ConfigError, match="numload"):
        net_from(tmp_path, KEYS_NET.format(extra="numload=4"))


def test_flipped_transposes_the_file_weights(tmp_path):
    plain = randomize(net_from(tmp_path, KEYS_NET.format(extra="")))
    w = plain.layers[0].weights  # (n, c*k*k) as darknet's matrix
    header = struct.pack("<iiiQ", 0, 2, 0, 0)
    body = plain.layers[0].biases.tobytes() + w.reshape(3, -1).T.astype("<f4").tobytes()
    (tmp_path / "flipped.weights").write_bytes(header + body)
    net = net_from(tmp_path, KEYS_NET.format(extra="flipped=1"))
    minidark.load_weights(net, tmp_path / "flipped.weights")
    np.testing.assert_array_equal(net.layers[0].weights, w)


def test_dontloadscales_reads_a_file_without_batch_norm(tmp_path):
    plain = randomize(net_from(tmp_path, KEYS_NET.format(extra="")))
    minidark.save_weights(plain, tmp_path / "plain.weights")
    bn = net_from(tmp_path, KEYS_NET.format(extra="batch_normalize=1\ndontloadscales=1"))
    scales = bn.layers[0].scales.copy()
    minidark.load_weights(bn, tmp_path / "plain.weights")
    np.testing.assert_array_equal(bn.layers[0].weights, plain.layers[0].weights)
    np.testing.assert_array_equal(bn.layers[0].scales, scales)


def test_stopbackward_freezes_the_layers_up_to_it(tmp_path):
    text = CONV_NET.replace("filters=6", "filters=6\nstopbackward=1").replace(
        "decay=0.0005", "decay=0"
    )
    net = randomize(net_from(tmp_path, text))
    frozen = [l.weights.copy() for l in net.layers[:3] if l.weights is not None]
    x = np.random.default_rng(0).normal(size=(2, net.inputs)).astype(np.float32)
    net.train_step(x, np.eye(5, dtype=np.float32)[[1, 2]])
    assert all(
        np.array_equal(a, l.weights)
        for a, l in zip(frozen, [l for l in net.layers[:3] if l.weights is not None], strict=True)
    )
    assert net.layers[3].weight_updates.any()


# ---------------------------------------------------------------- verbs
def test_partial_verb_writes_the_prefix_with_seen_cleared(tmp_path, capsys):
    net = randomize(net_from(tmp_path, CONV_NET))
    net.seen = 640
    data = saved(net, tmp_path / "full.weights")
    cfg = write_cfg(tmp_path, CONV_NET)
    out = tmp_path / "net.conv.2"
    assert cli.main(["partial", str(cfg), str(tmp_path / "full.weights"), str(out), "2"]) == 0
    assert "layers 0-1, 1 with weights" in capsys.readouterr().out
    part = out.read_bytes()
    assert struct.unpack_from("<Q", part, 12)[0] == 0
    assert part[20:] == data[20 : len(part)] and len(part) < len(data)
    status = cli.main(["partial", str(cfg), str(tmp_path / "full.weights"), str(out), "9"])
    assert status == 2 and "N must be between 0 and the 5 layers" in capsys.readouterr().err


def outputs(net, seed=3):
    x = np.random.default_rng(seed).normal(size=(net.batch, net.inputs)).astype(np.float32)
    return net.predict(x)


def test_reset_and_denormalize_keep_the_function(tmp_path):
    cfg = write_cfg(tmp_path, CONV_NET)
    net = randomize(net_from(tmp_path, CONV_NET))
    saved(net, tmp_path / "bn.weights")
    expected = outputs(net)
    assert cli.main(["reset", str(cfg), str(tmp_path / "bn.weights"), str(tmp_path / "r.w")]) == 0
    reset = minidark.load_network(cfg, tmp_path / "r.w")
    np.testing.assert_allclose(outputs(reset), expected, rtol=1e-4, atol=1e-5)
    assert (reset.layers[0].rolling_variance == 1).all() and (reset.layers[3].scales == 1).all()
    assert (
        cli.main(["denormalize", str(cfg), str(tmp_path / "bn.weights"), str(tmp_path / "d.w")])
        == 0
    )
    plain_cfg = write_cfg(tmp_path, CONV_NET.replace("batch_normalize=1", ""), "plain.cfg")
    plain = minidark.load_network(plain_cfg, tmp_path / "d.w")
    np.testing.assert_allclose(outputs(plain), expected, rtol=1e-4, atol=1e-5)
    # and back: normalize the plain file into the batch-norm layout
    assert (
        cli.main(["normalize", str(plain_cfg), str(tmp_path / "d.w"), str(tmp_path / "n.w")]) == 0
    )
    all_bn = CONV_NET.replace("filters=6", "filters=6\nbatch_normalize=1")
    again = minidark.load_network(write_cfg(tmp_path, all_bn, "bn.cfg"), tmp_path / "n.w")
    np.testing.assert_allclose(outputs(again), expected, rtol=1e-4, atol=1e-5)


def test_train_cutoff_option_reaches_load_network(monkeypatch):
    """--cutoff N on classifier train is passed to load_network."""
    seen = {}

    def fake_load_network(*args, **kwargs):
        seen.update(kwargs)
        raise minidark.errors.DataError("stop here")

    monkeypatch.setattr(minidark, "load_network", fake_load_network)
    status = cli.main(
        [
            "classifier",
            "train",
            "cfg/mnist.data",
            "cfg/mnist_lenet.cfg",
            "x.weights",
            "--cutoff",
            "4",
            "--clear",
            "--no-progress",
        ]
    )
    assert status == 2 and seen.get("cutoff") == 4
    assert (
        cli.main(["classifier", "train", "cfg/mnist.data", "cfg/mnist_lenet.cfg", "--cutoff", "0"])
        == 2
    )
