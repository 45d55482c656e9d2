"""MNIST detection: MNIST digits pasted onto noisy canvases, in darknet's layout.

``minidark data export-mnist-detection OUT [--images N] [--valid M] [--size S]
[--seed K]`` writes::

    OUT/images/train/000000.png ...   N canvases from MNIST's training digits
    OUT/images/valid/000000.png ...   M canvases from MNIST's test digits only
    OUT/labels/{train,valid}/*.txt    darknet labels: class x y w h (relative)
    OUT/train.txt, OUT/valid.txt      absolute image paths, one per line
    OUT/mnist_detection.names         0 ... 9
    OUT/mnist_detection.data          classes, train, valid, names, backup, eval

Each canvas (S x S, greyscale, saved as PNG) has a background of a random
grey level plus Gaussian noise and 1-6 digits. A digit is cropped to its
ink (pixels above 32), resized so its height is uniform in [S/9, S/2.3]
(14-56 px at S = 128, the width keeping the digit's aspect) and pasted at a
uniform position inside the canvas by ``max`` (white ink over the
background), with an intensity in [.6, 1]. A placement whose box overlaps
an earlier digit's with IoU > .2 (or covers more than half of either) is
redrawn (at most 30 tries; the digit is skipped after that). The label box
is the pasted ink's box. The seed fixes everything: the same arguments
write the same bytes.
"""
import os

import numpy as np

from ..errors import DataError
from .mnist import ensure_mnist, read_idx

SPLITS = (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          ("valid", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
INK = 32                # a pixel above this is ink (for the crop)
MAX_IOU, MAX_COVER = .2, .5


def ink_box(digit):
    """(top, bottom, left, right) of the pixels above INK (exclusive ends)."""
    rows, cols = np.nonzero(digit > INK)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _overlaps(box, boxes):
    """True when ``box`` (x0, y0, x1, y1) overlaps any of ``boxes`` too much."""
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        a = (box[2] - box[0]) * (box[3] - box[1])
        b = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (a + b - inter) > MAX_IOU or inter > MAX_COVER * min(a, b):
            return True
    return False


def make_canvas(digits, labels, size, rng):
    """One canvas (size, size) uint8 and its label rows (class, x, y, w, h)."""
    from PIL import Image
    canvas = rng.uniform(0, 90) + rng.normal(0, rng.uniform(4, 20), (size, size))
    placed, rows = [], []
    for _ in range(int(rng.integers(1, 7))):
        k = int(rng.integers(len(digits)))
        top, bottom, left, right = ink_box(digits[k])
        crop = digits[k][top:bottom, left:right]
        height = round(rng.uniform(size / 9, size / 2.3))
        width = max(2, round(crop.shape[1] * height / crop.shape[0]))
        width = min(width, size)
        for _try in range(30):
            x0 = int(rng.integers(0, size - width + 1))
            y0 = int(rng.integers(0, size - height + 1))
            box = (x0, y0, x0 + width, y0 + height)
            if not _overlaps(box, placed):
                break
        else:
            continue
        ink = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR),
                         np.float64) * rng.uniform(.6, 1)
        region = canvas[y0:y0 + height, x0:x0 + width]
        np.maximum(region, ink, out=region)
        placed.append(box)
        rows.append((int(labels[k]), (x0 + width / 2) / size, (y0 + height / 2) / size,
                     width / size, height / size))
    return np.clip(canvas, 0, 255).astype(np.uint8), rows


def export_mnist_detection(out, images=10000, valid=2000, size=128, seed=0, folder=None,
                           progress=True):
    """Write the dataset (see the module docstring); returns the .data path."""
    from PIL import Image
    from tqdm import tqdm
    if size < 32:
        raise DataError(f"--size must be at least 32 pixels, got {size}")
    folder = folder or os.path.join("data", "mnist")
    out = os.path.abspath(os.fspath(out))
    counts = {"train": images, "valid": valid}
    try:
        for index, (split, image_stem, label_stem) in enumerate(SPLITS):
            found = ensure_mnist([image_stem, label_stem], folder, progress)
            digits, labels = read_idx(found[image_stem]), read_idx(found[label_stem])
            rng = np.random.default_rng([seed, index])
            image_dir = os.path.join(out, "images", split)
            label_dir = os.path.join(out, "labels", split)
            os.makedirs(image_dir, exist_ok=True)
            os.makedirs(label_dir, exist_ok=True)
            paths = []
            for i in tqdm(range(counts[split]), desc=f"writing {split}", unit="img",
                          disable=not progress, leave=False):
                canvas, rows = make_canvas(digits, labels, size, rng)
                path = os.path.join(image_dir, f"{i:06d}.png")
                Image.fromarray(canvas, "L").save(path, compress_level=1)
                with open(os.path.join(label_dir, f"{i:06d}.txt"), "w",
                          encoding="utf-8") as handle:
                    handle.writelines(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                                      for c, x, y, w, h in rows)
                paths.append(path)
            with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(paths) + "\n")
        names = os.path.join(out, "mnist_detection.names")
        with open(names, "w", encoding="utf-8") as handle:
            handle.write("\n".join(str(d) for d in range(10)) + "\n")
        data = os.path.join(out, "mnist_detection.data")
        with open(data, "w", encoding="utf-8") as handle:
            handle.write(f"# MNIST detection ({size}x{size}, seed {seed}), written by minidark "
                         f"data export-mnist-detection\n"
                         f"classes=10\n"
                         f"train={os.path.join(out, 'train.txt')}\n"
                         f"valid={os.path.join(out, 'valid.txt')}\n"
                         f"names={names}\n"
                         f"backup=backup/\n"
                         f"eval=coco\n")
    except OSError as exc:
        raise DataError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return data
