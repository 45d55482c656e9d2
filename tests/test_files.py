"""Files a user names: FIFOs, devices, directories and huge files are refused before
reading (weights, .data, names, image lists, IDX, images); IDX files that are empty,
corrupt, truncated or claim impossible sizes; weights headers with implausible
versions or seen, and NaN/inf weights; names files with repeats; where a missing
MNIST is downloaded."""

import gzip
import hashlib
import os
import struct
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark
from minidark.data import mnist
from minidark.data.datafile import DataWarning, read_data_file, read_names
from minidark.data.dataset import load_image, load_image_list
from minidark.data.mnist import ensure_mnist, read_idx
from minidark.errors import DataError, MinidarkError, WeightsError
from minidark.files import TEXT_LIMIT, open_regular, read_text

from conftest import net_from

MLP = (
    "[net]\nbatch=2\ninputs=3\n[connected]\noutput=2\nactivation=relu\n"
    "[connected]\noutput=2\nactivation=linear\n[softmax]\n"
)
MLP_FLOATS = 2 + 6 + 2 + 4


def finishes(call, seconds=10):
    """Run ``call`` in a thread; return what it raised (it must finish: a FIFO must
    not block the reader)."""
    outcome = {}

    def target():
        try:
            call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the reader blocked"
    return outcome.get("error")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


def weights_file(path, header, floats):
    path.write_bytes(header + np.asarray(floats, "<f4").tobytes())
    return str(path)


# ------------------------------------------------------------ not a regular file
READERS = {
    "weights": lambda tmp_path, path: minidark.load_weights(net_from(tmp_path, MLP), path),
    "data file": lambda tmp_path, path: read_data_file(path),
    "names file": lambda tmp_path, path: read_names(path),
    "image list": lambda tmp_path, path: load_image_list(path, (1, 4, 4), ["a"], False),
    "IDX file": lambda tmp_path, path: read_idx(path),
    "image": lambda tmp_path, path: load_image(path, 1, 4, 4),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("fifo", "a named pipe (FIFO)"),
        ("device", "a character device"),
        ("directory", "a directory"),
    ],
)
def test_fifos_devices_and_directories_are_refused_unread(tmp_path, fifo, reader, kind, expected):
    path = {"fifo": fifo, "device": "/dev/zero", "directory": str(tmp_path)}[kind]
    error = finishes(lambda: READERS[reader](tmp_path, path))
    assert isinstance(error, MinidarkError), repr(error)
    assert f"{path}: " in str(error) and f"is {expected}, not a regular file" in str(error)


def test_huge_files_are_refused_by_size_unread(tmp_path):
    huge = tmp_path / "huge.names"
    with open(huge, "wb") as handle:
        handle.truncate(TEXT_LIMIT + 1)  # sparse: nothing is written
    with pytest.raises(
        DataError,
        match=r"huge.names: names file is 64.0 MiB, more than the "
        r"64.0 MiB a names file can be",
    ):
        read_names(str(huge))
    # weights: anything beyond what the cfg needs is refused before reading
    weights = tmp_path / "huge.weights"
    weights.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0))
    with open(weights, "r+b") as handle:
        handle.truncate(50 << 30)  # 50 GiB, sparse
    with pytest.raises(WeightsError, match=r"bytes left after the last layer"):
        minidark.load_weights(net_from(tmp_path, MLP), str(weights))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match=r"nope.data: cannot read data file: No such file"):
        read_data_file(str(tmp_path / "nope.data"))
    latin = tmp_path / "latin.names"
    latin.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"latin.names: names file is not UTF-8 text \(byte 3"):
        read_names(str(latin))


def test_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.names"
    path.write_bytes(b"\xef\xbb\xbfcat\ndog\n")
    assert read_names(str(path)) == ["cat", "dog"]
    assert read_text(str(path), "names file").startswith("cat")


def test_control_characters_in_paths_are_escaped(tmp_path):
    path = str(tmp_path / "evil\x1b[31mred\n.data")
    with pytest.raises(DataError) as error:
        read_data_file(path)
    message = str(error.value)
    assert "\x1b" not in message and "\n" not in message
    assert "evil\\x1b[31mred\\n.data" in message


def test_open_regular_gives_the_size_and_a_blocking_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    handle, size = open_regular(str(path), "file")
    with handle:
        assert size == 3 and handle.read() == b"abc"


# ------------------------------------------------------------------ IDX files
def idx_bytes(shape, values=None):
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    count = int(np.prod(shape)) if values is None else len(values)
    return header + (bytes(range(256)) * (count // 256 + 1))[:count]


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "empty-images-idx3-ubyte",
            idx_bytes((0, 28, 28)),
            r"holds no items \(shape \(0, 28, 28\)\)",
        ),
        ("zero-idx3-ubyte", idx_bytes((5, 0, 28)), r"give 0 values, expected 1 to"),
        (
            "huge-idx3-ubyte",
            idx_bytes((2**32 - 1,) * 3, b""),
            r"4294967295x4294967295x4294967295 "
            r"give \d+ values.*header is damaged",
        ),
        (
            "short-idx3-ubyte",
            idx_bytes((3,))[:6],
            r"header truncated: 1 dimensions need 8 bytes, "
            r"the file has 6",
        ),
        (
            "cut-idx3-ubyte",
            idx_bytes((4, 2, 2))[:-3],
            r"expected 16 values for shape \(4, 2, 2\), "
            r"found 13",
        ),
        ("long-idx3-ubyte", idx_bytes((4, 2, 2)) + b"x", r"expected 16 values .* found more"),
        ("ndim-idx3-ubyte", bytes([0, 0, 8, 9]), r"IDX header says 9 dimensions"),
        (
            "float-idx3-ubyte",
            bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4,
            r"not an IDX file of unsigned bytes",
        ),
    ],
)
def test_bad_idx_files_name_the_file(tmp_path, name, content, message):
    raw = tmp_path / name
    raw.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        read_idx(str(raw))
    assert str(raw) in str(error.value)
    packed = tmp_path / (name + ".gz")  # the same through gzip
    packed.write_bytes(gzip.compress(content))
    with pytest.raises(DataError, match=message):
        read_idx(str(packed))


def test_corrupt_and_truncated_gzip(tmp_path):
    content = gzip.compress(idx_bytes((50, 4, 4)), mtime=0)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(
        DataError,
        match=r"x-images-idx3-ubyte.gz: cannot read IDX file: "
        r"corrupt or truncated gzip",
    ):
        read_idx(str(path))
    damaged = bytearray(content)
    damaged[-6] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"corrupt or truncated gzip"):
        read_idx(str(path))
    path.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(DataError, match=r"corrupt or truncated gzip"):
        read_idx(str(path))


def test_a_gzip_bomb_is_not_inflated(tmp_path):
    """A header promising 16 values, then 64 MiB of zeros: read stops after 17 bytes."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    stream = gzip.compress(idx_bytes((4, 2, 2)) + bytes(64 << 20), compresslevel=1)
    path.write_bytes(stream)
    with pytest.raises(DataError, match=r"found more"):
        read_idx(str(path))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_any_idx_bytes_give_an_array_or_a_data_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("idx") / "f-idx3-ubyte"
    path.write_bytes(data)
    try:
        array = read_idx(str(path))
    except DataError:
        return
    assert array.dtype == np.uint8 and array.size == len(data) - 4 - 4 * array.ndim


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<fffQ", 1.0, 0.5, -2.0, 0),  # floats where the header should be
        struct.pack("<iiiQ", -1, 2, 0, 0),
        struct.pack("<iiiQ", 0, 2, 70000, 0),
        struct.pack("<iiiQ", 1000, 2, 0, 0),  # neither a version nor the transposed mark
        struct.pack("<iiii", 2**20, 0, 0, 0),
    ],
)
def test_implausible_header_versions_are_named(tmp_path, header):
    path = weights_file(tmp_path / "v.weights", header, np.zeros(MLP_FLOATS))
    with pytest.raises(
        WeightsError,
        match=r"v.weights: the header's format version "
        r".* is not one darknet writes",
    ) as error:
        minidark.load_weights(net_from(tmp_path, MLP), path)
    assert "does not fit" not in str(error.value)


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<iiiQ", 0, 2, 0, 2**63),
        struct.pack("<iiiQ", 0, 2, 0, 2**64 - 1),
        struct.pack("<iiii", 0, 1, 0, -5),
    ],
)
def test_seen_beyond_int64_or_negative_is_rejected(tmp_path, header):
    path = weights_file(tmp_path / "s.weights", header, np.zeros(MLP_FLOATS))
    with pytest.raises(
        WeightsError,
        match=r"s.weights: the header's seen .* is -?\d+, "
        r"outside 0 to 2\^63-1",
    ):
        minidark.load_weights(net_from(tmp_path, MLP), path)
    # the largest legal value loads
    path = weights_file(
        tmp_path / "ok.weights", struct.pack("<iiiQ", 0, 2, 5, 2**63 - 1), np.zeros(MLP_FLOATS)
    )
    assert minidark.load_weights(net_from(tmp_path, MLP), path) == 2**63 - 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_are_refused_naming_layer_and_array(tmp_path, bad):
    floats = np.arange(MLP_FLOATS, dtype=np.float32)
    floats[2 + 6 + 2 + 1] = bad  # layer 1's weights, index 1
    path = weights_file(tmp_path / "n.weights", struct.pack("<iiiQ", 0, 2, 0, 0), floats)
    with pytest.raises(
        WeightsError,
        match=r"n.weights: layer 1 \[connected\] 'weights' holds "
        r"1 NaN/inf value\(s\) of 4 \(first at index 1",
    ):
        minidark.load_weights(net_from(tmp_path, MLP), path)
    with pytest.raises(WeightsError, match="NaN/inf"):
        minidark.load_network(str(tmp_path / "net.cfg"), path)
    net = net_from(tmp_path, MLP)
    minidark.load_weights(net, path, allow_nonfinite=True)  # the escape hatch
    assert not np.isfinite(net.layers[1].weights).all()


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=20 + 4 * MLP_FLOATS + 8))
def test_any_weights_bytes_load_or_give_a_weights_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("w")
    path = folder / "any.weights"
    path.write_bytes(data)
    net = net_from(folder, MLP)
    try:
        seen = minidark.load_weights(net, str(path))
    except WeightsError:
        return
    assert 0 <= seen < 2**63
    assert all(np.isfinite(getattr(l, n)).all() for l in net.layers for n in l.saved)


# ------------------------------------------------------------------ names files
def test_names_with_repeats_are_accepted(tmp_path):
    """darknet's 9k.names and imagenet.shortnames.list repeat printed names."""
    names = tmp_path / "9k.names"
    names.write_text("crane\nbass\ncrane\nbass\nheron\n")
    data = tmp_path / "x.data"
    data.write_text(f"names={names}\ntrain=t.list\n")
    with pytest.warns(DataWarning, match="2 repeated label"):
        config = read_data_file(str(data))
    assert config.names == ["crane", "bass", "crane", "bass", "heron"] and config.classes == 5


def test_an_image_matching_a_repeated_label_gets_its_first_entry(tmp_path):
    """darknet's valid: the first label whose text occurs in the path."""
    from PIL import Image

    for name in ("heron_1.png", "crane_2.png"):
        Image.new("L", (4, 4), 7).save(tmp_path / name)
    listing = tmp_path / "l.list"
    listing.write_text(f"{tmp_path / 'heron_1.png'}\n{tmp_path / 'crane_2.png'}\n")
    dataset = load_image_list(str(listing), (1, 4, 4), ["crane", "heron", "crane"], progress=False)
    assert dataset.labels.tolist() == [1, 0]


# --------------------------------------------------------- where MNIST goes
def test_download_goes_to_data_mnist_not_where_train_points(tmp_path, monkeypatch):
    stem = "t10k-labels-idx1-ubyte"
    content = idx_bytes((3,))
    monkeypatch.setitem(mnist.SHA256, stem, hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(mnist, "_fetch", lambda url, timeout, progress, s: gzip.compress(content))
    monkeypatch.delenv("MINIDARK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "etc"  # what a hostile train= names
    elsewhere.mkdir()
    found = ensure_mnist([stem], str(elsewhere), progress=False)
    assert found[stem] == os.path.join("data", "mnist", stem + ".gz")
    assert os.listdir(elsewhere) == []
    np.testing.assert_array_equal(read_idx(found[stem]), [0, 1, 2])
    # a data/mnist folder named by the .data file is the documented place
    project = tmp_path / "project" / "data" / "mnist"
    project.mkdir(parents=True)
    found = ensure_mnist([stem], str(project), progress=False)
    assert found[stem] == str(project / (stem + ".gz"))
    # $MINIDARK_DATA wins
    monkeypatch.setenv("MINIDARK_DATA", str(tmp_path / "env"))
    os.remove(found[stem])
    found = ensure_mnist([stem], str(project), progress=False)
    assert found[stem] == str(tmp_path / "env" / (stem + ".gz"))
    # found there next time, without a download
    monkeypatch.delenv("MINIDARK_DATA")
    monkeypatch.setattr(mnist, "_fetch", lambda *args: pytest.fail("downloaded again"))
    found = ensure_mnist([stem], str(elsewhere), progress=False)
    assert found[stem] == os.path.join("data", "mnist", stem + ".gz")


# ------------------------------------------ a network input unlike the data's
def test_a_different_input_size_is_converted_and_said_once(tmp_path, monkeypatch):
    from PIL import Image

    from minidark.data import dataset

    monkeypatch.setattr(dataset, "_FITS_REPORTED", set())
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    images = tmp_path / "x-images-idx3-ubyte"
    images.write_bytes(idx_bytes((5, 6, 6))[:16] + pixels.tobytes())
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(idx_bytes((5,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb = dataset.load_dataset(str(images), (3, 8, 8), progress=False)
        again = dataset.load_dataset(str(images), (3, 8, 8), progress=False)  # valid= too
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(said) == 1, said
    assert (
        "images are 6x6x1, the network takes 8x8x3: every image is converted to RGB and "
        "resized (bilinear) to 8x8 at load"
    ) in said[0]
    assert rgb.images.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(rgb.images, again.images)
    pillow = np.asarray(
        Image.fromarray(pixels[2], "L").convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
    ).transpose(2, 0, 1)
    np.testing.assert_array_equal(rgb.images[2], pillow)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgba = dataset.load_dataset(str(images), (4, 6, 6), progress=False)
    assert "every image is converted to RGBA at load" in str(caught[0].message)
    np.testing.assert_array_equal(rgba.images[:, :3], np.repeat(pixels[:, None], 3, axis=1))
    assert (rgba.images[:, 3] == 255).all()


def test_image_list_conversions_are_said_once(tmp_path):
    from PIL import Image

    lines = []
    for name, size in (("cat_1.png", (10, 10)), ("dog_2.png", (8, 8)), ("cat_3.png", (12, 9))):
        Image.new("RGB", size, (200, 10, 10)).save(tmp_path / name)
        lines.append(str(tmp_path / name))
    listing = tmp_path / "l.list"
    listing.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image_list(str(listing), (1, 8, 8), ["cat", "dog"], progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(said) == 1 and loaded.images.shape == (3, 1, 8, 8)
    assert said[0].endswith(
        "l.list: the network takes 8x8x1 images: of 3, 3 RGB converted to "
        "L, 2 resized (bilinear) to 8x8 at load (darknet resizes its "
        "inputs too)"
    )


def test_a_tree_file_is_refused_by_type(tmp_path, fifo):
    from minidark.errors import ConfigError

    cfg = tmp_path / "tree.cfg"
    cfg.write_text(f"[net]\ninputs=4\n\n[softmax]\ntree={fifo}\n")
    error = finishes(lambda: minidark.load_network(str(cfg)))
    assert isinstance(error, ConfigError), repr(error)
    assert f"{fifo}: tree file is a named pipe (FIFO), not a regular file" in str(error)
    assert "[softmax]" in str(error) and "key 'tree'" in str(error)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_data_file_text_parses_or_gives_a_data_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("d") / "any.data"
    path.write_text(text, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = read_data_file(str(path))
        except DataError as exc:
            assert "\n" not in str(exc) and "\x1b" not in str(exc)
            return
    assert config.top >= 1 and (config.classes is None or config.classes >= 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_have_a_kind_or_none(tmp_path_factory, data):
    from minidark.commands.base import file_kind

    path = tmp_path_factory.mktemp("k") / "any"
    path.write_bytes(data)
    assert file_kind(str(path)) in (None, "cfg", "data", "weights", "image", "binary")


@pytest.mark.parametrize(
    "text", ["classes=\x1b[2J\n", "top=\x07\n", "train\x1b\n", "names=\x1bnone.names\n"]
)
def test_data_file_errors_escape_values(tmp_path, text):
    path = tmp_path / "x.data"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_data_file(str(path))
    assert not any(c in str(error.value) for c in "\x1b\x07")
