"""darknet .weights files: round trip, header layout (20 bytes, uint64 seen),
legacy 16-byte header, transposed connected weights, per-layer order, exact
size, truncated / oversized files naming the layer, and darknet's own files
from ../shared/refdata/vectors."""

import glob
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark.errors import WeightsError

from conftest import REFDATA, net_from, write_cfg

MLP = (
    "[net]\nbatch=4\ninputs=6\n[connected]\noutput=5\nactivation=relu\n"
    "[connected]\noutput=3\nactivation=linear\nbatch_normalize=1\n[softmax]\n"
)


def randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for name in layer.saved:
            array = getattr(layer, name)
            low = 0.5 if name in ("rolling_variance", "scales") else -1
            array[...] = rng.uniform(low, 1.5, array.shape)
    return net


def test_round_trip_gives_identical_outputs(tmp_path):
    a = randomize(net_from(tmp_path, MLP, seed=0))
    a.seen = 1234
    path = str(tmp_path / "a.weights")
    minidark.save_weights(a, path)
    b = net_from(tmp_path, MLP, seed=1)  # different initialisation
    assert minidark.load_weights(b, path) == 1234 and b.seen == 1234
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x).copy(), b.forward(x))
    for la, lb in zip(a.layers, b.layers, strict=False):
        for name in la.saved:
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
    again = str(tmp_path / "b.weights")
    minidark.save_weights(b, again)
    assert Path(path).read_bytes() == Path(again).read_bytes()


def test_load_network_with_weights_and_clear(tmp_path):
    a = randomize(net_from(tmp_path, MLP))
    a.seen = 80
    path = str(tmp_path / "a.weights")
    minidark.save_weights(a, path)
    cfg = write_cfg(tmp_path, MLP)
    assert minidark.load_network(cfg, path).seen == 80
    b = minidark.load_network(cfg, path, clear=True, batch=1)
    assert b.seen == 0 and b.batch == 1
    x = np.random.default_rng(3).normal(size=(1, 6)).astype(np.float32)
    np.testing.assert_allclose(b.predict(x), a.predict(x), rtol=1e-6)


def test_header_layout_and_file_size(tmp_path):
    net = randomize(net_from(tmp_path, MLP))
    net.seen = 2**40 + 7  # needs all 64 bits
    path = tmp_path / "h.weights"
    minidark.save_weights(net, str(path))
    data = path.read_bytes()
    assert struct.unpack_from("<iiiQ", data) == (0, 2, 0, 2**40 + 7)
    params = 5 + 30 + 3 + 15 + 3 * 3
    assert net.params == params
    assert len(data) == 20 + 4 * params
    fresh = net_from(tmp_path, MLP)
    assert minidark.load_weights(fresh, str(path)) == 2**40 + 7


def test_per_layer_order(tmp_path):
    net = net_from(tmp_path, MLP)
    first, second = net.layers[0], net.layers[1]
    values = {}
    counter = 0.0
    for layer in (first, second):
        for name in layer.saved:
            array = getattr(layer, name)
            array[...] = np.arange(counter, counter + array.size).reshape(array.shape)
            values[(layer.index, name)] = array.copy()
            counter += array.size
    path = tmp_path / "o.weights"
    minidark.save_weights(net, str(path))
    floats = np.frombuffer(path.read_bytes(), "<f4", offset=20)
    np.testing.assert_array_equal(floats, np.arange(counter))  # written in saved order
    assert first.saved == ("biases", "weights")
    assert second.saved == ("biases", "weights", "scales", "rolling_mean", "rolling_variance")
    # connected weights are stored row = output
    np.testing.assert_array_equal(floats[5:35].reshape(5, 6), values[(0, "weights")])


def write_file(path, header, arrays):
    with open(path, "wb") as handle:
        handle.write(header)
        for array in arrays:
            handle.write(np.asarray(array, "<f4").tobytes())


def test_legacy_16_byte_header(tmp_path):
    net = net_from(tmp_path, "[net]\ninputs=3\n[connected]\noutput=2\n")
    biases, weights = np.array([1.0, 2.0]), np.arange(6.0).reshape(2, 3)
    path = str(tmp_path / "old.weights")
    write_file(path, struct.pack("<iiii", 0, 1, 0, 77), [biases, weights])  # v0.1: int32 seen
    assert minidark.load_weights(net, path) == 77
    np.testing.assert_array_equal(net.layers[0].biases, biases)
    np.testing.assert_array_equal(net.layers[0].weights, weights)


@pytest.mark.parametrize("major, minor", [(1001, 0), (0, 1001)])
def test_transposed_connected_weights(tmp_path, major, minor):
    net = net_from(tmp_path, "[net]\ninputs=3\n[connected]\noutput=2\n")
    weights = np.arange(6.0).reshape(2, 3)  # (outputs, inputs)
    path = str(tmp_path / "t.weights")
    write_file(path, struct.pack("<iiii", major, minor, 0, 5), [[0, 0], weights.T])
    assert minidark.load_weights(net, path) == 5  # 16-byte header too
    np.testing.assert_array_equal(net.layers[0].weights, weights)


def test_truncated_file_names_the_layer(tmp_path):
    net = randomize(net_from(tmp_path, MLP))
    path = tmp_path / "t.weights"
    minidark.save_weights(net, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: -4 * 4])  # cut inside layer 1's rolling_mean
    with pytest.raises(WeightsError) as info:
        minidark.load_weights(net_from(tmp_path, MLP), str(path))
    message = str(info.value)
    assert "layer 1 [connected]" in message and "'rolling_mean'" in message
    assert str(path) in message and "does not fit" in message
    path.write_bytes(data[: 20 + 4 * 8])  # inside layer 0's weights
    with pytest.raises(WeightsError, match=r"layer 0 \[connected\] 'weights'"):
        minidark.load_weights(net_from(tmp_path, MLP), str(path))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (struct.pack("<iii", 0, 2, 0)[:11], "too short"),
        (struct.pack("<iiiQ", 0, 2, 0, 0)[:18], "header truncated"),
        (struct.pack("<iii", 0, 1, 0) + b"\0\0", "header truncated"),
    ],
)  # legacy, int32 seen
def test_truncated_header(tmp_path, data, message):
    path = tmp_path / "h.weights"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=message) as info:
        minidark.load_weights(net_from(tmp_path, MLP), str(path))
    assert str(path) in str(info.value)


def test_extra_bytes_are_an_error(tmp_path):
    net = randomize(net_from(tmp_path, MLP))
    path = tmp_path / "x.weights"
    minidark.save_weights(net, str(path))
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(WeightsError, match=r"8 bytes left after the last layer") as info:
        minidark.load_weights(net_from(tmp_path, MLP), str(path))
    assert "does not fit" in str(info.value)


def test_wrong_cfg_is_an_error(tmp_path):
    net = randomize(net_from(tmp_path, MLP))
    path = str(tmp_path / "w.weights")
    minidark.save_weights(net, path)
    bigger = MLP.replace("output=5", "output=6")
    with pytest.raises(WeightsError, match="layer"):
        minidark.load_weights(net_from(tmp_path, bigger), path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        minidark.load_weights(net_from(tmp_path, MLP), str(tmp_path / "none.weights"))


def test_dontsave_and_dontload(tmp_path):
    cfg = MLP.replace("activation=relu", "activation=relu\ndontsave=1")
    net = randomize(net_from(tmp_path, cfg))
    path = tmp_path / "d.weights"
    minidark.save_weights(net, str(path))
    assert len(path.read_bytes()) == 20 + 4 * (3 + 15 + 9)  # layer 0 not written
    loader = net_from(tmp_path, MLP.replace("activation=relu", "activation=relu\ndontload=1"))
    before = loader.layers[0].weights.copy()
    minidark.load_weights(loader, str(path))
    np.testing.assert_array_equal(loader.layers[0].weights, before)
    np.testing.assert_array_equal(loader.layers[1].weights, net.layers[1].weights)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    net = randomize(net_from(tmp_path, MLP))
    folder = tmp_path / "backup" / "deep"
    minidark.save_weights(net, str(folder / "m.weights"))  # creates the folder
    minidark.save_weights(net, str(folder / "m.weights"))  # overwrites
    assert os.listdir(folder) == ["m.weights"]


# --------------------------------------------------------------------------
# darknet's own files
# --------------------------------------------------------------------------
VECTORS = sorted(glob.glob(str(REFDATA / "vectors" / "*" / "weights_before.weights")))


@pytest.mark.refdata
def test_refdata_vectors_present():
    assert VECTORS, (
        f"no darknet reference vectors under {REFDATA / 'vectors'}: "
        "../shared/refdata must be beside the clone (or set $MINIDARK_REFDATA)"
    )


@pytest.mark.refdata
@pytest.mark.parametrize("weights", VECTORS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_reads_darknet_weights_files(tmp_path, weights):
    folder = os.path.dirname(weights)
    net = minidark.load_network(os.path.join(folder, "net.cfg"), weights)
    assert net.seen == 0
    checked = 0
    for path in glob.glob(os.path.join(folder, "L*_before_s1.npy")):
        match = re.match(r"L(\d+)_([a-z]+)_(\w+)_before_s1\.npy", os.path.basename(path))
        index, kind, name = int(match[1]), match[2], match[3]
        layer = net.layers[index]
        assert layer.type == kind
        np.testing.assert_array_equal(
            getattr(layer, name).reshape(-1), np.load(path).reshape(-1), err_msg=path
        )
        checked += 1
    assert checked >= 2
    assert os.path.getsize(weights) == 20 + 4 * net.params
    # writing it back gives darknet's bytes; so do its after-step files with their seen
    for name in ("weights_before.weights", "weights_after_s2.weights"):
        source = os.path.join(folder, name)
        seen = minidark.load_weights(net, source)
        out = str(tmp_path / name)
        minidark.save_weights(net, out)
        assert Path(out).read_bytes() == Path(source).read_bytes(), name
        assert seen == (0 if "before" in name else 2 * net.batch)
