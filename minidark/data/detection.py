"""darknet's detection data: label files, ``load_data_detection`` augmentation, truth rows.

Layout (darknet's): ``train=``/``valid=`` in the .data file name text files
of image paths, one per line. An image's label file is found by darknet's
substitutions, each replacing only the **first** occurrence anywhere in the
path: ``images`` -> ``labels``, ``JPEGImages`` -> ``labels``, ``raw`` ->
``labels``, then ``.jpg``, ``.png``, ``.JPG``, ``.JPEG`` -> ``.txt``. Each
line is ``class x_center y_center width height``, relative to the image.

Augmentation (``load_data_detection``, for [yolo] and [region] nets), per
image, with ``W, H`` the image size, ``w, h`` the network's, ``j`` the last
head's ``jitter``::

    new_ar = (W + U(-jW, jW)) / (H + U(-jH, jH))
    new_ar < 1:  nh = h, nw = h new_ar        else: nw = w, nh = w / new_ar
    dx = U(0, w - nw), dy = U(0, h - nh)
    canvas (w x h, 0.5); pixel (x + dx, y + dy) samples the image bilinearly at
    (x W / nw, y H / nh), 0 outside it   (nw, nh, dx, dy truncated to int)
    HSV distortion of the whole canvas: hue + U(-hue, hue), saturation and
    exposure scaled by S(s) (U(1, s) or its inverse, one coin each)
    flip with probability 1/2 (one draw; none with [net] flip=0, which darknet ignores here)

Boxes (``fill_truth_detection``): shuffled (darknet's naive swap shuffle),
edges mapped ``e -> e nw/w + dx/w`` (the unrounded floats, as darknet), then
mirrored ``(l, r) -> (1 - r, 1 - l)`` when flipped, edges clamped to [0, 1];
the list is cut to the head's ``max`` *before* boxes under .001 of the
image in width or height are dropped (darknet's order), and packed as
``x y w h class`` rows ending at the first x == 0. A [detection] (YOLOv1)
head gets darknet's ``fill_truth_region`` grid instead (side x side cells of
``obj, one-hot class, x, y (in the cell), w, h``; first box in a cell wins,
boxes under .005 dropped).

Randomness comes from a numpy Generator the caller passes (the trainer's,
saved in its checkpoints): the same seed gives the same batches, and a
resumed run continues the same stream. Images are read per batch; only the
label boxes (a few floats per image) are kept in memory.

Deliberate deviations from darknet: a label line that is not five numbers,
a class outside ``[0, classes)``, a non-finite value or a width/height <= 0
is an error naming file and line (darknet stops reading at the first bad
token and accepts any class); an image without a label file trains as
background and one warning counts them (pjreddie's darknet exits); an image
extension darknet does not replace (``.jpeg``, ``.bmp``, ``.PNG``) has its
trailing extension replaced by ``.txt`` (darknet would read the image
itself as labels); darknet's class-only sentinel (x = y = 0, YOLO9000) is
kept only for a [region] head with a tree and dropped otherwise (darknet's
[yolo] writes out of bounds on it); images are drawn from a fresh
permutation each epoch by the trainer (darknet draws with replacement).
"""
import math
import os
import warnings

import numpy as np

from ..errors import DataError, printable
from .image import load_image

F32 = np.float32
SUBSTITUTIONS = (("images", "labels"), ("JPEGImages", "labels"), ("raw", "labels"),
                 (".jpg", ".txt"), (".png", ".txt"), (".JPG", ".txt"), (".JPEG", ".txt"))
SENTINEL = 999999.0      # darknet's class-only box (x = y = 0 in the label file)
MIN_SIZE = .001          # fill_truth_detection drops boxes narrower or lower than this
MIN_SIZE_REGION = .005   # fill_truth_region's limit


class LabelWarning(UserWarning):
    """Images without a label file (trained as background)."""


def label_path(image_path):
    """darknet's label file of an image: first-occurrence substitutions."""
    path = os.fspath(image_path)
    for old, new in SUBSTITUTIONS:
        path = path.replace(old, new, 1)
    if not path.endswith(".txt"):            # an extension darknet does not handle
        path = os.path.splitext(path)[0] + ".txt"
    return path


def parse_labels(text, path, classes=None):
    """(n, 5) float32 rows ``class x y w h`` of a label file's text; a bad line is a
    DataError naming file and line."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = printable(f"{path}:{number}")
        if len(fields) != 5:
            raise DataError(f"{where}: expected 'class x_center y_center width height' "
                            f"(5 fields), got {len(fields)}: '{printable(line.strip())}'")
        try:
            cls = int(fields[0])
        except ValueError:
            raise DataError(f"{where}: the class must be an integer, got "
                            f"'{printable(fields[0])}'") from None
        try:
            with np.errstate(over="ignore"):           # 1e300 becomes inf: refused below
                x, y, w, h = (float(np.float32(float(f))) for f in fields[1:])   # as stored
        except ValueError:
            raise DataError(f"{where}: x, y, width and height must be numbers, got "
                            f"'{printable(' '.join(fields[1:]))}'") from None
        if classes is not None and not 0 <= cls < classes:
            raise DataError(f"{where}: class {cls} is outside 0..{classes - 1} "
                            f"(classes={classes})")
        if cls < 0:
            raise DataError(f"{where}: class {cls} is negative")
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise DataError(f"{where}: x, y, width and height must be finite, got "
                            f"{x:g} {y:g} {w:g} {h:g}")
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: width and height must be > 0 (relative to the "
                            f"image), got {w:g} x {h:g}")
        rows.append((cls, x, y, w, h))
    return np.array(rows, F32).reshape(-1, 5)


def read_labels(image_path, classes=None):
    """The label rows of an image, or None when it has no label file."""
    path = label_path(image_path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 24)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"{printable(path)}: cannot read label file: {exc.strerror}") from None
    return parse_labels(text, path, classes)


def read_image_list(path):
    """Image paths of a darknet list file, relative ones against the cwd, then the
    list's folder (as the classifier's image lists)."""
    from .datafile import read_stripped_lines
    folder = os.path.dirname(os.path.abspath(path))
    paths = []
    for _, line in read_stripped_lines(path, "image list"):
        if not os.path.isabs(line) and not os.path.exists(line):
            line = os.path.join(folder, line)
        paths.append(line)
    if not paths:
        raise DataError(f"{printable(path)}: no image paths")
    return paths


class DetectionDataset:
    """Image paths and their label boxes; images are read when a batch asks.

    ``boxes[i]``: (n, 5) float32 ``class x y w h`` rows of image i (possibly 0).
    """

    def __init__(self, paths, classes, source):
        self.paths, self.classes, self.source = list(paths), classes, source
        self.boxes, missing = [], 0
        for path in self.paths:
            rows = read_labels(path, classes)
            if rows is None:
                missing += 1
                rows = np.zeros((0, 5), F32)
            self.boxes.append(rows)
        self.missing = missing
        if missing:
            warnings.warn(f"{printable(source)}: {missing} of {len(self.paths)} images have "
                          f"no label file (e.g. {printable(label_path(self._first_missing()))})"
                          f": they train as images without objects", LabelWarning,
                          stacklevel=2)

    def _first_missing(self):
        return next(p for p in self.paths if not os.path.exists(label_path(p)))

    @classmethod
    def from_list(cls, path, classes):
        return cls(read_image_list(path), classes, os.fspath(path))

    def __len__(self):
        return len(self.paths)

    @property
    def objects(self):
        return sum(len(b) for b in self.boxes)

    def __repr__(self):
        return f"<DetectionDataset {self.source}: {len(self)} images, {self.objects} objects>"


# ------------------------------------------------------------------ the boxes
def naive_shuffle(count, rng):
    """darknet's randomize_boxes order: swap i with R(n) for i = 0..n-1."""
    order = np.arange(count)
    for i, j in enumerate(rng.integers(0, count, count) if count else ()):
        order[i], order[j] = order[j], order[i]
    return order


def correct_boxes(rows, dx, dy, sx, sy, flip):
    """darknet's correct_boxes on ``class x y w h`` rows (returns new rows): edges
    ``e sx - dx`` (likewise y), mirrored when ``flip``, clamped to [0, 1];
    class-only rows (x = y = 0) become the 999999 sentinel."""
    rows = rows.astype(np.float64)
    out = rows.copy()
    x, y, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
    left, right = (x - w / 2) * sx - dx, (x + w / 2) * sx - dx
    top, bottom = (y - h / 2) * sy - dy, (y + h / 2) * sy - dy
    if flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (np.clip(v, 0, 1) for v in (left, right, top, bottom))
    out[:, 1], out[:, 2] = (left + right) / 2, (top + bottom) / 2
    out[:, 3], out[:, 4] = np.clip(right - left, 0, 1), np.clip(bottom - top, 0, 1)
    sentinel = (x == 0) & (y == 0)
    out[sentinel, 1:] = SENTINEL
    return out


def head_of(net):
    """The last [yolo]/[region]/[detection] layer: its truth layout, max and jitter."""
    for layer in reversed(net.layers):
        if layer.type in ("yolo", "region", "detection"):
            return layer
    raise DataError(f"{net.cfg_file}: no [yolo], [region] or [detection] layer: detection "
                    f"data needs a detection head")


def fill_truth(rows, head, out):
    """Pack corrected ``class x y w h`` rows (already shuffled) into one truth row
    ``out`` as ``head`` reads it; returns the number of boxes written."""
    out.fill(0)
    if head.type == "detection":
        return _fill_truth_region(rows, head, out)
    keep_sentinel = head.type == "region" and head.softmax_tree is not None
    rows = rows[:head.max_boxes]                        # darknet cuts before filtering
    sentinel = rows[:, 1] >= SENTINEL
    ok = ((rows[:, 3] >= MIN_SIZE) & (rows[:, 4] >= MIN_SIZE)) & (keep_sentinel | ~sentinel)
    rows = rows[ok]
    cls = rows[:, 0]
    if head.map is not None and head.type == "yolo":
        cls = head.map[cls.astype(np.int64)]
    record = head.coords + 1
    packed = out[:len(rows) * record].reshape(len(rows), record)
    packed[:, 0:4] = rows[:, 1:5]
    packed[:, 4] = cls
    return len(rows)


def _fill_truth_region(rows, head, out):
    """darknet's fill_truth_region: side x side cells of obj, one-hot, x, y, w, h."""
    side, classes = head.side, head.classes
    grid = out.reshape(side * side, 1 + classes + 4)
    written = 0
    for cls, x, y, w, h in rows:
        if w < MIN_SIZE_REGION or h < MIN_SIZE_REGION:
            continue
        col, row = min(int(x * side), side - 1), min(int(y * side), side - 1)
        cell = grid[row * side + col]
        if cell[0]:
            continue
        cell[0] = 1
        if cls < classes:
            cell[1 + int(cls)] = 1
        cell[1 + classes:] = (x * side - col, y * side - row, w, h)
        written += 1
    return written


# ---------------------------------------------------------------- the images
def place_image(im, nw, nh, dx, dy, canvas):
    """darknet's place_image: canvas pixel (x + dx, y + dy), x < nw, y < nh, is the
    source sampled bilinearly at (x W / nw, y H / nh), 0 beyond its last row/column."""
    c, H, W = im.shape
    ch, cw = canvas.shape[1:]
    xs = np.arange(max(0, -dx), min(nw, cw - dx))
    ys = np.arange(max(0, -dy), min(nh, ch - dy))
    if not xs.size or not ys.size:
        return
    padded = np.zeros((c, H + 1, W + 1), F32)           # get_pixel_extend: 0 outside
    padded[:, :H, :W] = im
    rx = xs.astype(F32) / F32(nw) * F32(W)
    ry = ys.astype(F32) / F32(nh) * F32(H)
    ix, iy = rx.astype(np.int64), ry.astype(np.int64)
    fx, fy = rx - ix, ry - iy
    top = padded[:, iy, :] * (1 - fy)[:, None] + padded[:, iy + 1, :] * fy[:, None]
    value = top[:, :, ix] * (1 - fx) + top[:, :, ix + 1] * fx
    canvas[:, ys[0] + dy:ys[-1] + dy + 1, xs[0] + dx:xs[-1] + dx + 1] = value


def rgb_to_hsv(im):
    """darknet's rgb_to_hsv on (3, h, w) planes: H in [0, 1), S = delta/max, V = max."""
    r, g, b = im
    high, low = im.max(axis=0), im.min(axis=0)
    delta = high - low
    safe = np.where(delta > 0, delta, 1)
    hue = np.where(r == high, (g - b) / safe,
                   np.where(g == high, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.where(hue < 0, hue + 6, hue) / 6
    hue = np.where((high > 0) & (delta > 0), hue, 0)
    sat = np.where(high > 0, delta / np.where(high > 0, high, 1), 0)
    return np.stack([hue, sat, high]).astype(F32)


def hsv_to_rgb(hsv):
    """darknet's hsv_to_rgb (six sectors); S = 0 gives grey V."""
    h, s, v = hsv
    h6 = h * 6
    index = np.floor(h6)
    f = h6 - index
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = [index == k for k in range(5)]
    r = np.select(sector, [v, q, p, p, t], v)
    g = np.select(sector, [t, v, v, q, p], p)
    b = np.select(sector, [p, p, t, v, v], q)
    grey = s == 0
    out = np.stack([np.where(grey, v, r), np.where(grey, v, g), np.where(grey, v, b)])
    return out.astype(F32)


def rand_scale(s, rng):
    """darknet's rand_scale: U(1, s), inverted on a coin flip (always two draws)."""
    scale = rng.uniform(*sorted((1.0, s)))
    return scale if rng.integers(2) else 1 / scale


def distort_image(im, hue, sat, exposure):
    """darknet's distort_image: S *= sat, V *= exposure (unclamped), H += hue
    wrapped once; back to RGB, then clamped to [0, 1]. Grey for 1-channel images:
    only the exposure applies."""
    if im.shape[0] != 3:
        return np.clip(im * F32(exposure), 0, 1, out=im)
    hsv = rgb_to_hsv(im)
    hsv[1] *= F32(sat)
    hsv[2] *= F32(exposure)
    hsv[0] += F32(hue)
    hsv[0] = np.where(hsv[0] > 1, hsv[0] - 1, np.where(hsv[0] < 0, hsv[0] + 1, hsv[0]))
    np.clip(hsv_to_rgb(hsv), 0, 1, out=im)
    return im


def augment_image(im, net_w, net_h, jitter, hue, saturation, exposure, rng, flip=True):
    """One image through load_data_detection: returns (canvas (c, h, w), the
    box transform (dx, dy, sx, sy, flip) for correct_boxes)."""
    c, H, W = im.shape
    dw, dh = jitter * W, jitter * H
    new_ar = (W + rng.uniform(-dw, dw)) / (H + rng.uniform(-dh, dh))
    if new_ar < 1:
        nh, nw = float(net_h), net_h * new_ar
    else:
        nw, nh = float(net_w), net_w / new_ar
    dx = rng.uniform(*sorted((0.0, net_w - nw)))
    dy = rng.uniform(*sorted((0.0, net_h - nh)))
    canvas = np.full((c, net_h, net_w), .5, F32)
    place_image(im, int(nw), int(nh), int(dx), int(dy), canvas)
    dhue = rng.uniform(-hue, hue) if hue else 0.0
    dsat, dexp = rand_scale(saturation, rng), rand_scale(exposure, rng)
    distort_image(canvas, dhue, dsat, dexp)
    flipped = bool(rng.integers(2)) and flip
    if flipped:
        canvas = canvas[:, :, ::-1]
    return canvas, (-dx / net_w, -dy / net_h, nw / net_w, nh / net_h, flipped)


class DetectionLoader:
    """Batches of augmented images and packed truth rows for ``net``."""

    def __init__(self, dataset, net):
        self.dataset, self.net = dataset, net
        self.head = head_of(net)
        if self.head.classes != dataset.classes and dataset.classes is not None:
            raise DataError(f"{dataset.source}: the data has classes={dataset.classes} but "
                            f"{net.cfg_file}'s last head has classes={self.head.classes}")
        if self.head.type == "detection" and not self.head.side:
            raise DataError(f"{net.cfg_file}: a [detection] head needs side")

    def describe(self):
        net, head = self.net, self.head
        return (f"jitter {head.jitter:g} (aspect and placement), hue {net.hue:g}, saturation "
                f"{net.saturation:g}, exposure {net.exposure:g}, flip "
                f"{'on' if net.flip else 'off'}; truth as [{head.type}] reads it")

    def load(self, indices, rng, x, truth):
        """Fill ``x`` (rows, c h w) and ``truth`` (rows, truths) for ``indices``."""
        net, head = self.net, self.head
        stats = {"objects": 0, "kept": 0}
        for row, index in enumerate(indices):
            im = load_image(self.dataset.paths[index], net.c)
            canvas, (dx, dy, sx, sy, flip) = augment_image(
                im, net.w, net.h, head.jitter, net.hue, net.saturation, net.exposure, rng,
                flip=bool(net.flip))
            x[row] = canvas.reshape(-1)
            boxes = self.dataset.boxes[index]
            boxes = boxes[naive_shuffle(len(boxes), rng)]
            corrected = correct_boxes(boxes, dx, dy, sx, sy, flip)
            stats["objects"] += len(boxes)
            stats["kept"] += fill_truth(corrected, head, truth[row])
        return stats
