"""The streaming loader: compact image lists, darknet's per-command
preprocessing, workers that give the same bytes as a single thread, and
exact resume of a streamed training run."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import minidark
from minidark.data.image import letterbox_image, load_image, resize_image
from minidark.data.preprocess import TrainAugment, crop_image, resize_min, valid_image
from minidark.data.stream import ImageList, Preprocess, StreamingLoader
from minidark.errors import DataError
from minidark.train.stream_trainer import StreamingTrainer, evaluate_stream

LABELS = ["cat", "dog"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        w, h = int(rng.integers(12, 30)), int(rng.integers(12, 30))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"{LABELS[i % 2]}_{i}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    (folder / "train.list").write_text("\n".join(names) + "\n")
    (folder / "valid.list").write_text("\n".join(names[:7]) + "\n")
    return folder


# ------------------------------------------------------------------ the list
def test_image_list_strips_skips_blanks_and_counts_lines(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "l.list").write_bytes(b"  a.png \r\n\n\t\nsub/b c.jpg\r\n   \n/abs/x.png")
    images = ImageList(tmp_path / "l.list")
    assert len(images) == 3
    assert [images[i] for i in range(3)] == ["a.png", "sub/b c.jpg", "/abs/x.png"]
    assert [images.line_number(i) for i in range(3)] == [1, 4, 6]
    assert images.file(0) == os.path.join(str(tmp_path), "a.png")  # beside the list
    assert images.file(2) == "/abs/x.png"
    (tmp_path / "empty.list").write_bytes(b"\n  \n")
    with pytest.raises(DataError, match="image list is empty"):
        ImageList(tmp_path / "empty.list")


def test_a_million_paths_cost_about_their_bytes(tmp_path):
    line = b"data/imagenet/train/n01440764/n01440764_10026.JPEG\n"
    (tmp_path / "big.list").write_bytes(line * 1_000_000)
    images = ImageList(tmp_path / "big.list")
    assert len(images) == 1_000_000 and images[999_999] == line.decode().strip()
    assert images.nbytes < 1_000_000 * (len(line) + 17)


# ------------------------------------------------------------ preprocessing
def naive_crop(im, dx, dy, w, h):
    c, H, W = im.shape
    out = np.zeros((c, h, w), np.float32)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                r = min(max(j + dy, 0), H - 1)
                col = min(max(i + dx, 0), W - 1)
                out[k, j, i] = im[k, r, col]
    return out


@pytest.mark.parametrize("shape", [(3, 20, 30), (3, 31, 17), (1, 16, 16)])
def test_valid_is_resize_min_then_centre_crop_as_darknet(shape):
    im = np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32)
    _, h, w = shape
    resized = resize_min(im, 16)
    expected_size = (16, w * 16 // h) if w >= h else (h * 16 // w, 16)
    assert resized.shape[1:] == expected_size
    if expected_size != (h, w):
        np.testing.assert_array_equal(resized, resize_image(im, expected_size[1], expected_size[0]))
    H, W = expected_size
    np.testing.assert_array_equal(
        valid_image(im, 16, 16), naive_crop(resized, (W - 16) // 2, (H - 16) // 2, 16, 16)
    )
    np.testing.assert_array_equal(crop_image(im, -2, 3, 9, 40), naive_crop(im, -2, 3, 9, 40))


def net_for(tmp_path, text):
    path = tmp_path / "n.cfg"
    path.write_text(text)
    return minidark.load_network(str(path), seed=1)


NET = """[net]
batch=4
height=16
width=16
channels=3
learning_rate=0.05
momentum=0.9
decay=0.0005
max_batches=8
backup_every=4
{augment}
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky
[avgpool]
[connected]
output=2
activation=linear
[softmax]
"""
AUGMENT = "angle=7\naspect=1.2\nhue=.1\nsaturation=1.5\nexposure=1.5\nmin_crop=16\nmax_crop=24"


def test_train_augment_is_the_identity_when_switched_off(tmp_path):
    net = net_for(tmp_path, NET.format(augment="min_crop=16\nmax_crop=16\nflip=0"))
    im = np.random.default_rng(2).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    out = TrainAugment(net)(im, np.random.default_rng(0))
    np.testing.assert_allclose(out, im, atol=1e-6)


def test_train_augment_depends_on_the_seed_only(tmp_path):
    net = net_for(tmp_path, NET.format(augment=AUGMENT))
    im = np.random.default_rng(2).uniform(0, 1, (3, 21, 13)).astype(np.float32)
    augment = TrainAugment(net)
    a = augment(im, np.random.default_rng(5))
    assert a.shape == (3, 16, 16) and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1
    np.testing.assert_array_equal(a, augment(im, np.random.default_rng(5)))
    assert not np.array_equal(a, augment(im, np.random.default_rng(6)))


def test_predict_mode_letterboxes(image_folder):
    images = ImageList(image_folder / "train.list")
    im, label = Preprocess("predict", (3, 16, 16), LABELS)(images[1], images.file(1), "x", 0)
    np.testing.assert_array_equal(im, letterbox_image(load_image(images.file(1), 3), 16, 16))
    assert label == 1


# ------------------------------------------------------------------ workers
@pytest.mark.parametrize("kind, workers", [("thread", 3), ("process", 2)])
def test_workers_give_the_bytes_of_one_thread(tmp_path, image_folder, kind, workers):
    net = net_for(tmp_path, NET.format(augment=AUGMENT))
    images = ImageList(image_folder / "train.list")
    preprocess = Preprocess("train", (3, 16, 16), LABELS, TrainAugment(net))
    indices, seeds = np.array([5, 0, 11, 3, 3]), np.arange(5, dtype=np.uint64) * 977
    outs = []
    for k, n in (("thread", 1), (kind, workers)):
        out = np.empty((5, 768), np.float32)
        with StreamingLoader(images, preprocess, n, k) as loader:
            labels = loader.collect(loader.submit(indices, seeds), out)
        outs.append(out)
        assert labels.tolist() == [1, 0, 1, 1, 1]
    np.testing.assert_array_equal(*outs)


def test_a_bad_image_or_label_names_the_list_line(tmp_path, image_folder):
    (tmp_path / "bad.list").write_text(f"{image_folder / 'cat_0.jpg'}\n\nbird.png\n")
    images = ImageList(tmp_path / "bad.list")
    preprocess = Preprocess("valid", (3, 16, 16), LABELS)
    with (
        StreamingLoader(images, preprocess, 2) as loader,
        pytest.raises(DataError, match=r"bad.list:3: 'bird.png' contains none of the 2"),
    ):
        loader.collect(loader.submit([1], [0]), np.empty((1, 768), np.float32))
    with StreamingLoader(images, preprocess, 1, prefetch=1) as loader:
        loader.submit([0], [0])
        with pytest.raises(RuntimeError, match="in flight"):
            loader.submit([0], [0])


# ----------------------------------------------------------------- training
def trainer(tmp_path, image_folder, folder, weights=None, seed=3, workers=2, kind="thread"):
    cfg = tmp_path / "s.cfg"
    cfg.write_text(NET.format(augment=AUGMENT))
    net = minidark.load_network(str(cfg), weights, seed=seed)
    return StreamingTrainer(
        net,
        ImageList(image_folder / "train.list"),
        ImageList(image_folder / "valid.list"),
        labels=LABELS,
        workers=workers,
        kind=kind,
        backup_dir=tmp_path / folder,
        base="s",
        seed=seed,
        progress=False,
        out=io.StringIO(),
    )


def test_streamed_training_resumes_byte_identically(tmp_path, image_folder):
    straight = trainer(tmp_path, image_folder, "a", workers=1)
    assert straight.run()["iterations"] == 8
    first = trainer(tmp_path, image_folder, "b", workers=3)
    first.on_iteration = lambda t: t.request_stop() if t.net.current_batch == 3 else None
    assert first.run()["iterations"] == 3
    backup = str(tmp_path / "b" / "s.backup")
    second = trainer(tmp_path, image_folder, "b", weights=backup, seed=99, workers=2)
    assert "restored" in second.restore(backup)
    second.run()
    for t in (straight, first, second):
        t.close()
    assert (tmp_path / "a" / "s.weights").read_bytes() == (
        tmp_path / "b" / "s.weights"
    ).read_bytes()
    np.testing.assert_array_equal(straight.history["loss"], second.history["loss"])
    assert straight.valid_history == second.valid_history


def test_evaluate_stream_counts_hits(tmp_path, image_folder):
    net = net_for(tmp_path, NET.format(augment=""))
    result = evaluate_stream(net, ImageList(image_folder / "valid.list"), LABELS, top=2)
    assert result["n"] == 7 and result["topk"] == 1.0 and 0 <= result["top1"] <= 1


@pytest.mark.parametrize("seed", range(4))
def test_one_image_kernels_match_the_batch_ones(seed):
    """preprocess's float32 one-image rotate_crop and hsv_to_rgb against augment.py's."""
    from minidark.data import augment
    from minidark.data.preprocess import hsv_to_rgb_image, rotate_crop_image

    rng = np.random.default_rng(seed)
    im = rng.uniform(0, 1, (3, 23, 37)).astype(np.float32)
    rad, scale, dx, dy, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2), 3.2, -1.7, 1.1
    expected = augment.rotate_crop(im[None], [rad], [scale], 16, 20, [dx], [dy], [aspect])[0]
    got = rotate_crop_image(im, rad, scale, 20, 16, dx, dy, aspect)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    hsv = augment.rgb_to_hsv(im[None])[0]
    hsv[1, :3] = 0  # some grey pixels
    np.testing.assert_allclose(hsv_to_rgb_image(hsv), augment.hsv_to_rgb(hsv[None])[0], atol=1e-6)


def test_cli_train_streams_and_valid_predict_preprocess_as_darknet(tmp_path, image_folder, capsys):
    from minidark import cli
    from minidark.data.preprocess import predict_input

    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    (tmp_path / "s.data").write_text(
        f"classes=2\ntrain={image_folder / 'train.list'}\nvalid={image_folder / 'valid.list'}\n"
        f"labels={tmp_path / 'labels.txt'}\nbackup={tmp_path / 'backup'}\n"
    )
    (tmp_path / "s.cfg").write_text(NET.format(augment=AUGMENT))
    data, cfg = str(tmp_path / "s.data"), str(tmp_path / "s.cfg")
    args = ["classifier", "train", data, cfg, "--workers", "2", "--seed", "4", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "on 7 images" in out  # the streamed valid list
    weights = str(tmp_path / "backup" / "s.weights")
    assert cli.main(["classifier", "valid", data, cfg, weights]) == 0
    valid_out = capsys.readouterr().out
    net = minidark.load_network(cfg, weights, batch=1)
    images = ImageList(image_folder / "valid.list")
    x = np.stack([valid_image(load_image(images.file(i), 3), 16, 16).ravel() for i in range(7)])
    top1 = (net.predict(x).argmax(1) == np.arange(7) % 2).mean()
    assert f"top-1 {100 * top1:.2f}% on 7 images" in valid_out
    image = images.file(1)
    assert cli.main(["classifier", "predict", data, cfg, weights, image, "--top", "1"]) == 0
    probs = net.predict(predict_input(image, (3, 16, 16)))[0]
    assert f"{100 * probs.max():5.2f}%: {LABELS[int(probs.argmax())]}" in capsys.readouterr().out


class SmallScales(StreamingTrainer):
    """Multi-scale with sides / 8 (16..56) so the test stays small."""

    def size_at(self, iteration):
        w, h = super().size_at(iteration)
        return (w // 8, h // 8) if self.net.config.random else (w, h)


def test_random_resizes_every_40_iterations_and_resumes_exactly(
    tmp_path, image_folder, monkeypatch
):
    import minidark.train.stream_trainer as stream_trainer

    monkeypatch.setattr(stream_trainer, "RESIZE_EVERY", 2)
    text = NET.format(augment=AUGMENT + "\nrandom=1")

    def make(folder, weights=None, seed=3):
        cfg = tmp_path / "r.cfg"
        cfg.write_text(text)
        net = minidark.load_network(str(cfg), weights, seed=seed)
        return SmallScales(
            net,
            ImageList(image_folder / "train.list"),
            ImageList(image_folder / "valid.list"),
            labels=LABELS,
            workers=2,
            backup_dir=tmp_path / folder,
            base="r",
            seed=seed,
            progress=False,
            out=io.StringIO(),
        )

    straight = make("a")
    sizes = []
    straight.on_iteration = lambda t: sizes.append((t.net.w, t.net.h))
    straight.run()
    expected = [straight.size_at(i) for i in range(8)]
    assert sizes == expected and len(set(sizes)) > 1
    assert all(w == h and w % 4 == 0 and 16 <= w <= 56 for w, h in sizes)
    first = make("b")
    first.on_iteration = lambda t: t.request_stop() if t.net.current_batch == 3 else None
    first.run()
    second = make("b", weights=str(tmp_path / "b" / "r.backup"), seed=42)
    second.restore(str(tmp_path / "b" / "r.backup"))
    second.run()
    for t in (straight, first, second):
        t.close()
    assert (tmp_path / "a" / "r.weights").read_bytes() == (
        tmp_path / "b" / "r.weights"
    ).read_bytes()


@pytest.mark.slow
def test_kill_9_during_streamed_training_resumes_byte_identically(tmp_path, image_folder):
    """A streamed run killed with SIGKILL, resumed from its newest .backup, ends
    with the bytes of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    text = NET.format(augment=AUGMENT).replace("max_batches=8", "max_batches=60")
    text = text.replace("backup_every=4", "backup_every=3")
    (tmp_path / "k.cfg").write_text(text)

    def data_file(name):
        (tmp_path / f"{name}.data").write_text(
            f"classes=2\ntrain={image_folder / 'train.list'}\nlabels={tmp_path / 'labels.txt'}\n"
            f"backup={tmp_path / name}\n"
        )
        return str(tmp_path / f"{name}.data")

    def command(name, *extra):
        return [
            sys.executable,
            "-m",
            "minidark",
            "classifier",
            "train",
            data_file(name),
            str(tmp_path / "k.cfg"),
            *extra,
            "--workers",
            "2",
            "--seed",
            "8",
            "--no-progress",
        ]

    subprocess.run(command("straight"), check=True, capture_output=True)
    child = subprocess.Popen(
        command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sidecar = tmp_path / "killed" / "k.backup.state.npz"
    deadline = time.monotonic() + 120
    while not sidecar.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sidecar.exists()
    resume = command("killed", str(tmp_path / "killed" / "k.backup"))
    subprocess.run(resume, check=True, capture_output=True)
    straight = (tmp_path / "straight" / "k.weights").read_bytes()
    assert (tmp_path / "killed" / "k.weights").read_bytes() == straight


def test_streamed_training_evaluates_an_in_memory_valid_set(tmp_path, image_folder):
    from minidark.data.dataset import Dataset
    from minidark.train.trainer import evaluate

    images = np.random.default_rng(0).integers(0, 255, (6, 3, 16, 16), dtype=np.uint8)
    valid = Dataset(images, [0, 1, 0, 1, 1, 0], "memory")
    t = trainer(tmp_path, image_folder, "m")
    t.valid_set = valid
    assert t.evaluate_valid() == evaluate(t.net, valid, t.top)
    t.close()


def test_valid_multi_sums_five_scales_and_mirrors_as_darknet(tmp_path, image_folder, capsys):
    from minidark import cli
    from minidark.data.preprocess import resize_max
    from minidark.train.stream_trainer import evaluate_multi, multi_scores

    cfg = tmp_path / "m.cfg"
    cfg.write_text(NET.format(augment=""))
    net = minidark.load_network(str(cfg), seed=5, batch=2)
    minidark.save_weights(net, tmp_path / "m.weights")
    images = ImageList(image_folder / "valid.list")
    result = evaluate_multi(net, images, LABELS, top=1, confusion=True)
    assert (net.w, net.h) == (16, 16) and result["n"] == 7
    hits = 0
    for i in range(7):  # independently: a network built at each size from the same weights
        im = load_image(images.file(i), 3)
        total = 0
        for side in (16, 20, 22, 25, 27):  # 16 * (7, 9, 10, 11, 12) // 7
            r = resize_max(im, side)
            sized = tmp_path / "sized.cfg"
            sized.write_text(
                NET.format(augment="")
                .replace("height=16", f"height={r.shape[1]}")
                .replace("width=16", f"width={r.shape[2]}")
            )
            other = minidark.load_network(str(sized), tmp_path / "m.weights", batch=2)
            total = total + other.predict(np.stack([r.ravel(), r[:, :, ::-1].ravel()])).sum(0)
        hits += int(np.argmax(total) == i % 2)
        np.testing.assert_allclose(multi_scores(net, im, 16), total, rtol=1e-5)
    assert result["top1"] == hits / 7 and result["confusion"].sum() == 7
    data = tmp_path / "m.data"
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    data.write_text(
        f"classes=2\nvalid={image_folder / 'valid.list'}\nlabels={tmp_path / 'labels.txt'}\n"
    )
    assert (
        cli.main(
            ["classifier", "valid", str(data), str(cfg), str(tmp_path / "m.weights"), "--multi"]
        )
        == 0
    )
    assert f"top-1 {100 * hits / 7:.2f}% on 7 images" in capsys.readouterr().out
