"""Data files, image lists vs IDX, the label rule, MNIST download/offline, augmentation."""

import gzip
import http.server
import os
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidark.data.augment import Augmenter, bilinear, hsv_to_rgb, rgb_to_hsv, rotate_crop
from minidark.data.datafile import DataWarning, read_data_file, resolve_path
from minidark.data.dataset import label_from_path, load_dataset, load_image_list, read_list
from minidark.data.export import NAMES, export_mnist
from minidark.data.mnist import SHA256, ensure_mnist, read_idx
from minidark.errors import DataError

from conftest import MNIST  # the MNIST folder (data/mnist, $MINIDARK_DATA or ../shared)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ .data files
def test_data_file_reads_darknet_keys(tmp_path):
    names = write(tmp_path / "x.names", "cat\n\n  dog  \nbird\n")
    data = write(
        tmp_path / "x.data",
        f"""# a comment
; another
classes = 3
train  = {tmp_path}/train list.txt
valid={tmp_path}/valid.txt
names={names}
backup = {tmp_path}/out/
top=2
""",
    )
    config = read_data_file(data)
    assert config.classes == 3 and config.top == 2
    assert config.train == f"{tmp_path}/train list.txt"  # inner spaces kept
    assert config.names == ["cat", "dog", "bird"] and config.labels == config.names
    assert config.backup == f"{tmp_path}/out/"


def test_data_file_defaults_and_classes_from_names(tmp_path):
    write(tmp_path / "a.names", "x\ny\n")
    config = read_data_file(write(tmp_path / "a.data", "names=a.names\ntrain=t.list\n"))
    assert config.classes == 2 and config.top == 1 and config.valid is None
    assert config.backup == "backup/"
    with pytest.raises(DataError, match="key 'valid' is missing"):
        config.require("valid")


def test_yaml_data_file_matches_cfg_form():
    cfg = read_data_file(os.path.join(ROOT, "cfg", "mnist.data"))
    yaml = read_data_file(os.path.join(ROOT, "cfg", "mnist.data.yaml"))
    for key in ("classes", "train", "valid", "names", "backup", "top"):
        assert getattr(cfg, key) == getattr(yaml, key), key
    assert cfg.names == [f"digit{i}" for i in range(10)]


def test_relative_paths_cwd_then_data_folder_then_parent(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "cfg").mkdir(parents=True)
    (project / "data").mkdir()
    write(project / "data" / "n.names", "a\nb\n")
    write(project / "cfg" / "local.names", "a\nb\n")
    data = write(
        project / "cfg" / "x.data",
        "names=data/n.names\nlabels=local.names\ntrain=data/missing.list\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = read_data_file(data)
    assert config.names_file == str(project / "data" / "n.names")  # parent of cfg/
    assert config.labels_file == str(project / "cfg" / "local.names")  # the .data folder
    assert config.train == str(project / "data" / "missing.list")  # where data/ is
    assert resolve_path("nowhere/x.list", str(project / "cfg")) == "nowhere/x.list"
    (elsewhere / "data").mkdir()
    write(elsewhere / "data" / "n.names", "c\nd\n")
    assert read_data_file(data).names == ["c", "d"]  # cwd first (darknet)
    assert resolve_path("/abs/x") == "/abs/x"


@pytest.mark.parametrize(
    "text, message",
    [
        ("classes=10\ntrain\n", r"x.data:2: malformed line 'train'"),
        ("classes=ten\n", r"x.data:1: key 'classes': expected an integer, got 'ten'"),
        ("\n\ntop=0\n", r"x.data:3: key 'top': must be >= 1"),
        ("classes=\n", r"x.data:1: key 'classes': empty value"),
        ("classes=3\nnames=n.names\n", r"x.data:2: key 'names': .*has 2 entries but classes=3"),
        ("names=empty.names\n", r"has no labels"),
        ("names=nothere.names\n", r"x.data:1: key 'names': nothere.names: cannot read names file"),
    ],
)
def test_bad_data_files_name_file_line_key(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "n.names", "a\nb\n")
    write(tmp_path / "empty.names", "\n \n")
    with pytest.raises(DataError, match=message):
        read_data_file(write(tmp_path / "x.data", text))


def test_bad_yaml_data_file(tmp_path):
    with pytest.raises(DataError, match=r"x.yaml:1: expected a mapping"):
        read_data_file(write(tmp_path / "x.yaml", "- a\n- b\n"))
    with pytest.raises(DataError, match=r"x.yaml:2: key 'top': expected an integer"):
        read_data_file(write(tmp_path / "x.yaml", "classes: 2\ntop: two\n"))


def test_missing_data_file():
    with pytest.raises(DataError, match=r"nope.data: cannot read data file"):
        read_data_file("nope.data")


def test_unknown_and_repeated_keys_warn_or_fail_strict(tmp_path):
    data = write(tmp_path / "x.data", "classes=2\nclases=3\ntest=t.list\nclasses=5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = read_data_file(data)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert config.classes == 2  # first duplicate wins
    assert any("x.data:2: key 'clases': is not a data-file key" in m for m in messages)
    assert any("x.data:3: key 'test'" in m and "does not use" in m for m in messages)
    assert any("x.data:4: key 'classes' repeats line 1" in m for m in messages)
    with pytest.raises(DataError, match=r"x.data:2: key 'clases'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_data_file(data, strict=True)


# ------------------------------------------------------------------ label rule
def test_label_from_path_is_darknets_substring_rule():
    labels = ["digit0", "digit1", "digit2"]
    assert label_from_path("train/img_00012_digit1.png", labels) == 1
    with pytest.raises(ValueError) as none:
        label_from_path("train/img_00012.png", labels)
    assert none.value.args[0] == []
    with pytest.raises(ValueError) as two:
        label_from_path("digit2/img_digit0.png", labels)
    assert two.value.args[0] == [0, 2]


def test_image_list_label_errors_name_the_file(tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    labels = ["cat", "bobcat", "dog"]
    good = write(tmp_path / "good.list", f"{tmp_path}/dog_1.png\n")
    assert read_list(good) == [(1, f"{tmp_path}/dog_1.png")]
    ambiguous = write(tmp_path / "a.list", "\n/x/dog_1.png\n/x/bobcat_2.png\n")
    with pytest.raises(
        DataError,
        match=r"a.list:3: '/x/bobcat_2.png' contains 2 labels "
        r"\('cat', 'bobcat'\)",
    ):
        load_image_list(ambiguous, (1, 4, 4), labels, progress=False)
    nomatch = write(tmp_path / "n.list", "/x/horse.png\n")
    with pytest.raises(
        DataError,
        match=r"n.list:1: '/x/horse.png' contains none of the "
        r"3 labels",
    ):
        load_image_list(nomatch, (1, 4, 4), labels, progress=False)


# ------------------------------------------------------- image lists == IDX arrays
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist_png")
    data = export_mnist(out, MNIST, limit=300, progress=False)
    return out, data


@pytest.mark.mnist
def test_exported_pngs_load_as_the_idx_arrays(exported):
    _out, data = exported
    config = read_data_file(data)
    assert config.names == list(NAMES) and config.classes == 10
    for split, stem in (("train", "train"), ("valid", "t10k")):
        pngs = load_dataset(getattr(config, split), (1, 28, 28), config.labels, progress=False)
        idx = load_dataset(
            os.path.join(MNIST, f"{stem}-images-idx3-ubyte.gz"), (1, 28, 28), progress=False
        )
        assert len(pngs) == 300
        np.testing.assert_array_equal(pngs.images, idx.images[:300])
        np.testing.assert_array_equal(pngs.labels, idx.labels[:300])
        rows = np.arange(0, 300, 7)
        np.testing.assert_array_equal(pngs.batch(rows), idx.batch(rows))
    # the float rows are exactly the foundation's load_mnist scaling
    from minidark.data.mnist import load_mnist

    x, _y = load_mnist(MNIST, "test")
    np.testing.assert_array_equal(idx.batch(np.arange(300)), x[:300])


@pytest.mark.mnist
def test_image_list_converts_channels_and_resizes(exported, monkeypatch):
    from minidark.data import dataset

    monkeypatch.setattr(dataset, "_FITS_REPORTED", set())  # said once per process
    _out, data = exported
    config = read_data_file(data)
    gray = load_dataset(config.valid, (1, 28, 28), config.labels, progress=False)
    with pytest.warns(DataWarning, match=r"of 300, 300 L converted to RGB at load"):
        rgb = load_dataset(config.valid, (3, 28, 28), config.labels, progress=False)
    assert rgb.images.shape == (300, 3, 28, 28)
    for c in range(3):
        np.testing.assert_array_equal(rgb.images[:, c], gray.images[:, 0])
    with pytest.warns(DataWarning, match=r"300 resized \(bilinear\) to 14x14"):
        small = load_dataset(config.valid, (1, 14, 14), config.labels, progress=False)
    assert small.images.shape == (300, 1, 14, 14) and small.inputs == 196
    with pytest.warns(DataWarning, match=r"every image is converted to RGB at load"):
        idx_rgb = load_dataset(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"), (3, 28, 28))
    np.testing.assert_array_equal(idx_rgb.images[:300], rgb.images)


@pytest.mark.mnist
def test_broken_and_missing_images_are_skipped_with_one_warning(exported, tmp_path):
    out, _data = exported
    broken = tmp_path / "img_broken_digit3.png"
    broken.write_bytes(b"not a png at all")
    entries = read_list(os.path.join(out, "valid.list"))[:5]
    lines = [os.path.join(out, e) for _, e in entries]
    lines += [str(broken), str(tmp_path / "img_missing_digit4.png")]
    listing = write(tmp_path / "mixed.list", "\n".join(lines) + "\n")
    with pytest.warns(
        DataWarning,
        match=r"mixed.list: skipped 2 unreadable image\(s\): "
        r"line 6: .*img_broken_digit3.png: cannot read "
        r"image.*line 7: .*no such file",
    ):
        dataset = load_image_list(listing, (1, 28, 28), list(NAMES), progress=False)
    assert len(dataset) == 5 and dataset.paths == lines[:5]


# ------------------------------------------------------------- MNIST download
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_gives_one_message_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDARK_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv(
        "MINIDARK_MNIST_MIRRORS",
        f"http://127.0.0.1:{closed_port()}/,http://127.0.0.1:{closed_port()}/",
    )
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        load_dataset(str(tmp_path / "data" / "train-images-idx3-ubyte.gz"), progress=False)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "\n" not in message
    assert "MNIST is missing and could not be downloaded" in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "$MINIDARK_DATA" in message and str(tmp_path / "data") in message


def test_silent_server_times_out_within_the_budget(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections (backlog) but never answers
    try:
        monkeypatch.setenv("MINIDARK_DATA", str(tmp_path))
        monkeypatch.setenv("MINIDARK_MNIST_MIRRORS", f"http://127.0.0.1:{server.getsockname()[1]}/")
        monkeypatch.setenv("MINIDARK_DOWNLOAD_TIMEOUT", "1.5")
        start = time.monotonic()
        with pytest.raises(DataError, match="could not be downloaded"):
            ensure_mnist(["t10k-labels-idx1-ubyte"], None, progress=False)
        assert time.monotonic() - start < 10
    finally:
        server.close()


@pytest.fixture
def local_mirror(tmp_path):
    """A local HTTP server (never a real host) serving MNIST files."""
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.mnist
def test_download_verifies_sha256_of_the_content(tmp_path, monkeypatch, local_mirror):
    root, url = local_mirror
    stem = "t10k-labels-idx1-ubyte"
    content = gzip.decompress(Path(MNIST, stem + ".gz").read_bytes())
    (root / (stem + ".gz")).write_bytes(gzip.compress(content[:-1] + b"\x07"))  # corrupt
    target = tmp_path / "target"
    monkeypatch.setenv("MINIDARK_DATA", str(target))
    monkeypatch.setenv("MINIDARK_MNIST_MIRRORS", url)
    with pytest.raises(DataError, match="does not match the pinned"):
        ensure_mnist([stem], None, progress=False)
    assert not target.exists() or not os.listdir(target)
    (root / (stem + ".gz")).write_bytes(gzip.compress(content, mtime=0))
    found = ensure_mnist([stem], None, progress=False)
    assert found[stem] == str(target / (stem + ".gz"))
    np.testing.assert_array_equal(
        read_idx(found[stem]), read_idx(os.path.join(MNIST, stem + ".gz"))
    )


@pytest.mark.mnist
def test_pinned_hashes_match_the_shared_files():
    import hashlib

    for stem, digest in SHA256.items():
        with gzip.open(os.path.join(MNIST, stem + ".gz"), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest, stem


@pytest.mark.mnist
def test_mnist_found_in_minidark_data(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(os.path.join(MNIST, stem + ".gz"), tmp_path / "mnist")
    monkeypatch.setenv("MINIDARK_DATA", str(tmp_path))
    monkeypatch.setenv("MINIDARK_MNIST_MIRRORS", f"http://127.0.0.1:{closed_port()}/")
    dataset = load_dataset("nowhere/t10k-images-idx3-ubyte.gz", progress=False)
    assert len(dataset) == 10000 and dataset.shape == (1, 28, 28)


# -------------------------------------------------------------- augmentation
class NetOptions:
    """The [net] augmentation fields Augmenter reads, with darknet defaults."""

    def __init__(self, w=8, **fields):
        self.w = self.h = w
        self.c = 1
        self.min_ratio, self.max_ratio = 1.0, 2.0
        self.angle, self.aspect, self.hue, self.saturation, self.exposure = 0, 1, 0, 1, 1
        self.flip = 1
        self.__dict__.update(fields)


def naive_rotate_crop(image, rad, s, w, h, dx, dy, aspect):
    """darknet's rotate_crop_image + bilinear_interpolate, pixel by pixel."""
    c, H, W = image.shape

    def pixel(x, y, k):
        return image[k, y, x] if 0 <= x < W and 0 <= y < H else 0.0

    out = np.zeros((c, h, w))
    for k in range(c):
        for y in range(h):
            for x in range(w):
                rx = (
                    np.cos(rad) * ((x - w / 2) / s * aspect + dx / s * aspect)
                    - np.sin(rad) * ((y - h / 2) / s + dy / s)
                    + W / 2
                )
                ry = (
                    np.sin(rad) * ((x - w / 2) / s * aspect + dx / s * aspect)
                    + np.cos(rad) * ((y - h / 2) / s + dy / s)
                    + H / 2
                )
                ix, iy = int(np.floor(rx)), int(np.floor(ry))
                fx, fy = rx - ix, ry - iy
                out[k, y, x] = (
                    (1 - fy) * (1 - fx) * pixel(ix, iy, k)
                    + fy * (1 - fx) * pixel(ix, iy + 1, k)
                    + (1 - fy) * fx * pixel(ix + 1, iy, k)
                    + fy * fx * pixel(ix + 1, iy + 1, k)
                )
    return out


def test_rotate_crop_matches_darknets_pixel_loop():
    rng = np.random.default_rng(3)
    images = rng.random((3, 2, 9, 7)).astype(np.float32)
    rad, scale = np.array([0.3, -1.0, 0.0]), np.array([1.3, 0.8, 2.0])
    dx, dy, aspect = np.array([0.5, -2, 1]), np.array([1.5, 0, -3]), np.array([1, 1.4, 0.7])
    out = rotate_crop(images, rad, scale, 6, 5, dx, dy, aspect)
    assert out.shape == (3, 2, 6, 5)
    for i in range(3):
        ref = naive_rotate_crop(images[i], rad[i], scale[i], 5, 6, dx[i], dy[i], aspect[i])
        np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_identity_settings_leave_images_alone():
    x = np.random.default_rng(0).random((4, 64)).astype(np.float32)
    net = NetOptions(min_ratio=1.0, max_ratio=1.0, flip=0)
    augment = Augmenter(net, (1, 8, 8))
    assert not augment.active and augment.describe() == "off"
    same = rotate_crop(
        x.reshape(4, 1, 8, 8), np.zeros(4), np.ones(4), 8, 8, np.zeros(4), np.zeros(4), np.ones(4)
    )
    np.testing.assert_array_equal(same.reshape(4, 64), x)


def test_flip_mirrors_about_half_the_images():
    x = np.random.default_rng(0).random((200, 3 * 5 * 5)).astype(np.float32)
    net = NetOptions(w=5, min_ratio=1.0, max_ratio=1.0)
    augment = Augmenter(net, (3, 5, 5))
    assert augment.describe() == "flip"
    y = augment(x.copy(), np.random.default_rng(1)).reshape(200, 3, 5, 5)
    flipped = np.all(y == x.reshape(200, 3, 5, 5)[..., ::-1], axis=(1, 2, 3))
    unchanged = np.all(y == x.reshape(200, 3, 5, 5), axis=(1, 2, 3))
    assert np.all(flipped | unchanged) and 60 < flipped.sum() < 140


def test_default_crop_zooms_in_and_colour_stays_in_range():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3 * 8 * 8)).astype(np.float32)
    net = NetOptions(angle=10, aspect=1.2, hue=0.1, saturation=1.5, exposure=1.5)
    net.c = 3
    augment = Augmenter(net, (3, 8, 8))
    assert augment.geometry and augment.distort
    y = augment(x.copy(), np.random.default_rng(2))
    assert y.min() >= 0 and y.max() <= 1 and not np.allclose(y, x)


def test_hsv_round_trip_and_grey():
    rgb = np.random.default_rng(0).random((5, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)
    grey = np.full((1, 3, 2, 2), 0.4, np.float32)
    hsv = rgb_to_hsv(grey)
    assert np.all(hsv[:, 1] == 0) and np.allclose(hsv[:, 2], 0.4)


def test_bilinear_is_zero_outside():
    image = np.ones((1, 1, 2, 2), np.float32)
    out = bilinear(image, np.array([[[-5.0, 0.5, 1.5]]]), np.array([[[0.0, 0.0, 0.0]]]))
    np.testing.assert_allclose(out[0, 0, 0], [0, 1, 0.5])
