"""Detection data: label paths and parsing, darknet's load_data_detection augmentation and
the truth rows each head reads."""
import colorsys
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import minidark
from minidark.data.detection import (
    DetectionDataset,
    DetectionLoader,
    LabelWarning,
    augment_image,
    correct_boxes,
    distort_image,
    fill_truth,
    hsv_to_rgb,
    label_path,
    parse_labels,
    place_image,
    rgb_to_hsv,
)
from minidark.errors import DataError
from minidark.layer import Layer


# ------------------------------------------------------------------ label files
@pytest.mark.parametrize("image, label", [
    ("data/voc/VOCdevkit/VOC2007/JPEGImages/000001.jpg",
     "data/voc/VOCdevkit/VOC2007/labels/000001.txt"),
    ("coco/images/train2014/COCO_1.jpg", "coco/labels/train2014/COCO_1.txt"),
    ("x/raw/a.png", "x/labels/a.txt"),
    ("/home/drawings/a.jpg", "/home/dlabelsings/a.txt"),        # darknet's substring quirk
    ("a.jpg.d/images/b.jpg", "a.txt.d/labels/b.txt"),   # first .jpg only; then the extension
    ("images/a.JPEG", "labels/a.txt"),
    ("images/a.jpeg", "labels/a.txt"),                          # darknet: the image itself
    ("images/a.bmp", "labels/a.txt"),
])
def test_label_path(image, label):
    assert label_path(image) == label


def test_parse_labels():
    rows = parse_labels("3 .5 .5 .2 .1\n\n  0 0.1 0.2 0.3 0.4  \n", "l.txt", classes=4)
    np.testing.assert_allclose(rows, [[3, .5, .5, .2, .1], [0, .1, .2, .3, .4]], rtol=1e-6)
    assert parse_labels("", "l.txt").shape == (0, 5)


@pytest.mark.parametrize("line, message", [
    ("1 .5 .5 .2", "5 fields), got 4"),
    ("1 .5 .5 .2 .2 7", "5 fields), got 6"),
    ("x .5 .5 .2 .2", "class must be an integer, got 'x'"),
    ("1.5 .5 .5 .2 .2", "class must be an integer"),
    ("1 .5 abc .2 .2", "must be numbers"),
    ("4 .5 .5 .2 .2", "class 4 is outside 0..3"),
    ("-1 .5 .5 .2 .2", "class -1 is outside 0..3"),
    ("1 .5 .5 0 .2", "must be > 0"),
    ("1 .5 .5 .2 -.1", "must be > 0"),
    ("1 nan .5 .2 .2", "must be finite"),
    ("1 .5 .5 inf .2", "must be finite"),
])
def test_bad_label_lines_name_file_and_line(line, message):
    with pytest.raises(DataError) as info:
        parse_labels(f"0 .5 .5 .1 .1\n{line}\n", "labels/a.txt", classes=4)
    text = str(info.value)
    assert text.startswith("labels/a.txt:2: ") and message in text and "\n" not in text


def write_dataset(root, boxes_per_image, size=(40, 30), missing=()):
    paths = []
    for i, rows in enumerate(boxes_per_image):
        image = root / "images" / f"{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size[::-1] + (3,), 60 + i, np.uint8)).save(image)
        if i not in missing:
            label = root / "labels" / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
        paths.append(str(image))
    (root / "train.txt").write_text("\n".join(paths) + "\n")
    return root / "train.txt"


def test_dataset_counts_unlabelled_files(tmp_path):
    listing = write_dataset(tmp_path, [[(1, .5, .5, .2, .2)], [], [(0, .2, .2, .1, .1)]],
                            missing={1})
    with pytest.warns(LabelWarning, match=r"1 of 3 images have no label file"):
        data = DetectionDataset.from_list(listing, classes=2)
    assert len(data) == 3 and data.objects == 2 and data.boxes[1].shape == (0, 5)


def test_dataset_bad_label_is_one_line(tmp_path):
    listing = write_dataset(tmp_path, [[(1, .5, .5, .2, .2)], [(5, .5, .5, .2, .2)]])
    with pytest.raises(DataError, match=r"labels/1.txt:1: class 5 is outside 0..1"):
        DetectionDataset.from_list(listing, classes=2)


# ----------------------------------------------------------------------- boxes
def darknet_correct_boxes(rows, dx, dy, sx, sy, flip):
    """darknet's correct_boxes, box by box, as the C reads."""
    out = []
    for cls, x, y, w, h in rows.tolist():
        if x == 0 and y == 0:
            out.append([cls, 999999, 999999, 999999, 999999])
            continue
        left, right, top, bottom = x - w / 2, x + w / 2, y - h / 2, y + h / 2
        left, right = left * sx - dx, right * sx - dx
        top, bottom = top * sy - dy, bottom * sy - dy
        if flip:
            left, right = 1 - right, 1 - left
        left, right = min(max(left, 0), 1), min(max(right, 0), 1)
        top, bottom = min(max(top, 0), 1), min(max(bottom, 0), 1)
        x, y, w, h = (left + right) / 2, (top + bottom) / 2, right - left, bottom - top
        out.append([cls, x, y, min(max(w, 0), 1), min(max(h, 0), 1)])
    return np.array(out).reshape(-1, 5)


unit = st.floats(0, 1, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), unit, unit, unit, unit), max_size=8),
       st.floats(-.4, .4), st.floats(-.4, .4), st.floats(.5, 1.5), st.floats(.5, 1.5),
       st.booleans())
def test_correct_boxes_equals_darknet(rows, dx, dy, sx, sy, flip):
    rows = np.array(rows, np.float32).reshape(-1, 5)
    np.testing.assert_allclose(correct_boxes(rows, dx, dy, sx, sy, flip),
                               darknet_correct_boxes(rows.astype(np.float64), dx, dy, sx, sy,
                                                     flip), atol=1e-12)


def yolo_head(max_boxes=4, **fields):
    return Layer(type="yolo", coords=4, max_boxes=max_boxes, truths=5 * max_boxes, classes=10,
                 **fields)


def test_fill_truth_cuts_before_dropping_tiny_boxes():
    rows = np.array([[1, .5, .5, .2, .2], [2, .3, .3, .0005, .2], [3, .6, .6, .1, .1],
                     [4, .1, .1, .1, .0009], [5, .8, .8, .3, .3], [6, .2, .8, .1, .1]])
    out = np.full(20, 7.0, np.float32)
    written = fill_truth(rows, yolo_head(max_boxes=4), out)
    # the first 4 are kept for filtering (darknet's order); 2 of them are tiny
    assert written == 2
    np.testing.assert_allclose(out.reshape(4, 5), [[.5, .5, .2, .2, 1], [.6, .6, .1, .1, 3],
                                                   [0] * 5, [0] * 5], rtol=1e-6)


def test_fill_truth_drops_class_only_boxes_for_yolo_and_maps_classes():
    rows = correct_boxes(np.array([[1, 0, 0, .2, .2], [2, .5, .5, .2, .2]]), 0, 0, 1, 1, False)
    out = np.zeros(20, np.float32)
    head = yolo_head(map=np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]))
    assert fill_truth(rows, head, out) == 1
    np.testing.assert_allclose(out[:5], [.5, .5, .2, .2, 7])


def test_fill_truth_region_grid_for_detection_heads():
    head = Layer(type="detection", side=2, classes=3, coords=4, n=1)
    out = np.zeros(4 * (1 + 3 + 4), np.float32)
    rows = np.array([[2, .75, .25, .2, .3], [1, .7, .3, .1, .1], [0, .25, .75, .004, .5]])
    assert fill_truth(rows, head, out) == 1        # same cell: first wins; .004 < .005 dropped
    grid = out.reshape(4, 8)
    np.testing.assert_allclose(grid[1], [1, 0, 0, 1, .5, .5, .2, .3], rtol=1e-6)
    assert not grid[[0, 2, 3]].any()


# ---------------------------------------------------------------------- images
def darknet_place_image(im, w, h, dx, dy, canvas):
    """place_image + bilinear_interpolate with get_pixel_extend, pixel by pixel."""
    c, H, W = im.shape

    def pixel(k, x, y):
        return im[k, y, x] if 0 <= x < W and 0 <= y < H else 0.0

    for k in range(c):
        for y in range(h):
            for x in range(w):
                rx, ry = np.float32(x) / np.float32(w) * np.float32(W), \
                    np.float32(y) / np.float32(h) * np.float32(H)
                ix, iy = int(np.floor(rx)), int(np.floor(ry))
                fx, fy = rx - ix, ry - iy
                value = ((1 - fy) * (1 - fx) * pixel(k, ix, iy)
                         + fy * (1 - fx) * pixel(k, ix, iy + 1)
                         + (1 - fy) * fx * pixel(k, ix + 1, iy)
                         + fy * fx * pixel(k, ix + 1, iy + 1))
                if 0 <= x + dx < canvas.shape[2] and 0 <= y + dy < canvas.shape[1]:
                    canvas[k, y + dy, x + dx] = value


@pytest.mark.parametrize("nw, nh, dx, dy", [(20, 14, 3, 5), (31, 9, -4, 0), (12, 25, 10, -3),
                                            (7, 7, 0, 0)])
def test_place_image_equals_darknet(nw, nh, dx, dy):
    rng = np.random.default_rng(0)
    im = rng.random((3, 11, 17), np.float32)
    ours, theirs = np.full((3, 20, 24), .5, np.float32), np.full((3, 20, 24), .5, np.float32)
    place_image(im, nw, nh, dx, dy, ours)
    darknet_place_image(im, nw, nh, dx, dy, theirs)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_hsv_matches_colorsys_and_round_trips():
    rng = np.random.default_rng(1)
    im = rng.random((3, 6, 7)).astype(np.float32)
    im[:, 0, 0] = .4                     # grey: hue 0, saturation 0
    im[:, 0, 1] = 0                      # black
    hsv = rgb_to_hsv(im)
    for y in range(6):
        for x in range(7):
            expected = colorsys.rgb_to_hsv(*im[:, y, x].astype(float))
            np.testing.assert_allclose(hsv[:, y, x], expected, atol=1e-6)
    np.testing.assert_allclose(hsv_to_rgb(hsv), im, atol=1e-6)


def test_distort_image_scales_saturation_and_exposure_and_wraps_hue():
    im = np.array([[[.8]], [[.4]], [[.2]]], np.float32)
    h, s, v = colorsys.rgb_to_hsv(.8, .4, .2)
    out = distort_image(im.copy(), .9, 1.2, .5)
    expected = colorsys.hsv_to_rgb((h + .9) % 1, s * 1.2, v * .5)
    np.testing.assert_allclose(out[:, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(distort_image(im.copy(), 0, 1, 3)[:, 0, 0], [1, 1, .6], atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_augmented_boxes_follow_the_pixels(seed):
    """A white rectangle in the image lands where the corrected truth box says,
    through darknet's jitter, placement and flip (to a pixel: darknet truncates
    the placement but not the box)."""
    rng = np.random.default_rng(seed)
    H, W = 48, 64
    im = np.zeros((3, H, W), np.float32)
    x0, y0, x1, y1 = 10, 8, 30, 40
    im[:, y0:y1, x0:x1] = 1
    rows = np.array([[1, (x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]])
    canvas, (dx, dy, sx, sy, flip) = augment_image(im, 80, 80, .3, 0, 1, 1, rng)
    box = correct_boxes(rows, dx, dy, sx, sy, flip)[0, 1:]
    ys, xs = np.nonzero(canvas[0] > .9)
    found = np.array([(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                      xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]) / 80
    np.testing.assert_allclose(box, found, atol=2.5 / 80)


def test_augmentation_is_seeded():
    im = np.random.default_rng(0).random((3, 20, 30), np.float32)
    first = augment_image(im, 32, 32, .2, .1, 1.5, 1.5, np.random.default_rng(7))
    again = augment_image(im, 32, 32, .2, .1, 1.5, 1.5, np.random.default_rng(7))
    other = augment_image(im, 32, 32, .2, .1, 1.5, 1.5, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1] and first[1] != other[1]


YOLO_CFG = """
[net]
batch=2
width=32
height=32
channels=3
hue=.1
saturation=1.5
exposure=1.5

[convolutional]
filters=14
size=1
stride=16
pad=0
activation=linear

[yolo]
mask=0,1
anchors=8,8, 16,16
classes=2
num=2
max=3
jitter=.2
"""


def test_loader_packs_the_last_heads_truth(tmp_path):
    listing = write_dataset(tmp_path, [[(1, .5, .5, .4, .4), (0, .2, .3, .1, .2)],
                                       [(1, .7, .7, .2, .2)]])
    (tmp_path / "yolo.cfg").write_text(YOLO_CFG)
    net = minidark.load_network(tmp_path / "yolo.cfg")
    data = DetectionDataset.from_list(listing, classes=2)
    loader = DetectionLoader(data, net)
    x = np.zeros((2, net.inputs), np.float32)
    truth = np.full((2, net.truths), 9, np.float32)
    stats = loader.load([0, 1], np.random.default_rng(0), x, truth)
    assert stats == {"objects": 3, "kept": 3}
    rows = truth.reshape(2, 3, 5)
    assert sorted(rows[0, :2, 4].tolist()) == [0, 1] and rows[1, 0, 4] == 1
    assert not rows[0, 2].any() and not rows[1, 1:].any()
    assert ((rows[:, :, :4] >= 0) & (rows[:, :, :4] <= 1)).all()
    assert x.min() >= 0 and x.max() <= 1
    x2, truth2 = np.zeros_like(x), np.zeros_like(truth)
    loader.load([0, 1], np.random.default_rng(0), x2, truth2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(truth, truth2)


def test_loader_refuses_a_class_count_mismatch(tmp_path):
    listing = write_dataset(tmp_path, [[(1, .5, .5, .4, .4)]])
    (tmp_path / "yolo.cfg").write_text(YOLO_CFG)
    net = minidark.load_network(tmp_path / "yolo.cfg")
    with warnings.catch_warnings():
        data = DetectionDataset.from_list(listing, classes=5)
    with pytest.raises(DataError, match=r"classes=5 .* classes=2"):
        DetectionLoader(data, net)
    assert os.path.exists(listing)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet="0123456789 .-+eEinfa\t", max_size=30),
    st.tuples(st.integers(-2, 12), unit, unit, st.floats(-1, 2), st.floats(-1, 2)).map(
        lambda r: " ".join(map(str, r)))), max_size=6))
def test_any_label_text_parses_or_is_one_line_error(lines):
    text = "\n".join(lines)
    try:
        rows = parse_labels(text, "l.txt", classes=10)
    except DataError as exc:
        message = str(exc)
        assert message.startswith("l.txt:") and "\n" not in message
        return
    assert rows.shape[1] == 5 and np.isfinite(rows).all()
    assert ((rows[:, 0] >= 0) & (rows[:, 0] < 10)).all()
    assert ((rows[:, 3] > 0) & (rows[:, 4] > 0)).all()
