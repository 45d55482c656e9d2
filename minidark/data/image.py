"""darknet's inference image path (image.c): loading, resize, letterbox, drawing.

Images are float32 planes ``(c, h, w)`` in [0, 1], RGB, as darknet's
``load_image_color`` gives them (bytes / 255).

* ``resize_image(im, w, h)``: darknet's separable bilinear resize with
  aligned corners (``scale = (W - 1)/(w - 1)``; column ``c`` samples
  ``c * scale``), first along x, then along y; no antialiasing.
* ``letterbox_image(im, w, h)``: keep the aspect ratio -- ``new_w = w,
  new_h = H w / W`` if ``w/W < h/H``, else ``new_h = h, new_w = W h / H``
  (integer division) -- resize, and paste at ``((w - new_w)/2, (h -
  new_h)/2)`` on a canvas of 0.5.
* ``draw_detections``: darknet's boxes and labels (every class above thresh
  in one label, the colour of the lowest such class), drawn with Pillow.

Deliberate deviation: in float32, ``(h - 1) * scale`` can round just below
the last source row; darknet then blends the last output row with weight
~1e-6 and skips the second term, making it nearly black. minidark adds the
second term whenever there is a next row (the bottom row is the image's).
Decoding uses Pillow (libjpeg), not stb_image: JPEG pixels may differ by a
unit in the last place.
"""
import numpy as np

from ..errors import DataError

F32 = np.float32
COLORS = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], F32)


def load_image(path, channels=3):
    """An image file as float32 ``(channels, h, w)`` in [0, 1] (RGB for 3)."""
    from PIL import Image
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if channels not in modes:
        raise DataError(f"{path}: cannot load an image with {channels} channels (1, 3 or 4)")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(modes[channels]), np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from None
    return to_planes(array)


def to_planes(array):
    """(h, w[, c]) uint8 -> (c, h, w) float32 in [0, 1]; float (c, h, w) passes through."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            array = array[:, :, None]
        return np.ascontiguousarray(array.transpose(2, 0, 1), F32) / F32(255)
    if array.ndim != 3:
        raise ValueError(f"expected an image (h, w, c) uint8 or (c, h, w) float, got {array.shape}")
    return np.ascontiguousarray(array, F32)


def _axis_weights(size_in, size_out):
    """Source index and blend weight of each output position (darknet's rule)."""
    if size_out == 1 or size_in == 1:
        index = np.full(size_out, size_in - 1 if size_out == 1 else 0, np.int64)
        return index, np.zeros(size_out, F32)
    scale = F32(size_in - 1) / F32(size_out - 1)
    s = np.arange(size_out, dtype=F32) * scale
    index = s.astype(np.int64)
    frac = s - index.astype(F32)
    return index, frac


def resize_image(im, w, h):
    """darknet's resize_image: (c, H, W) -> (c, h, w), bilinear, aligned corners."""
    _, H, W = im.shape
    ix, fx = _axis_weights(W, w)
    if W > 1 and w > 1:          # darknet copies the last column exactly
        ix[-1], fx[-1] = W - 1, 0
    nx = np.minimum(ix + 1, W - 1)
    part = im[:, :, ix] * (1 - fx) + im[:, :, nx] * fx                  # (c, H, w)
    iy, fy = _axis_weights(H, h)
    ny = np.minimum(iy + 1, H - 1)
    out = part[:, iy, :] * (1 - fy)[:, None] + part[:, ny, :] * fy[:, None]
    return out.astype(F32, copy=False)


def letterbox_image(im, w, h):
    """darknet's letterbox_image: aspect-preserving resize into a w x h canvas of 0.5."""
    from ..kernels.boxes import letterbox_size
    c, H, W = im.shape
    new_w, new_h = letterbox_size(W, H, w, h)
    resized = resize_image(im, new_w, new_h)
    boxed = np.full((c, h, w), .5, F32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    boxed[:, dy:dy + new_h, dx:dx + new_w] = resized
    return boxed


def get_color(channel, offset, classes):
    """darknet's get_color: a point on the magenta-blue-cyan-green-yellow-red ramp."""
    ratio = offset / classes * 5
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    ratio -= i
    return float((1 - ratio) * COLORS[i][channel] + ratio * COLORS[j][channel])


def class_color(cls, classes):
    """(r, g, b) in [0, 1] of a class, as darknet draws it."""
    offset = cls * 123457 % classes
    return tuple(get_color(k, offset, classes) for k in (2, 1, 0))


def draw_detections(image, detections, classes):
    """Draw boxes and labels on a Pillow RGB image, in place, as darknet does.

    ``detections``: the list :func:`detect` returns
    (several entries of one box are drawn once, their names joined).
    """
    from PIL import ImageDraw
    draw = ImageDraw.Draw(image)
    W, H = image.size
    width = max(int(H * .006), 1)       # darknet: 0 below 167 px, i.e. no box at all
    groups = {}
    for d in detections:
        groups.setdefault(d.box, []).append(d)
    for box, group in groups.items():
        group.sort(key=lambda d: d.class_index)
        rgb = tuple(int(255 * v) for v in class_color(group[0].class_index, classes))
        x, y, w, h = box
        left, right = max(int(x - w / 2), 0), min(int(x + w / 2), W - 1)
        top, bottom = max(int(y - h / 2), 0), min(int(y + h / 2), H - 1)
        if left > right or top > bottom:        # entirely outside the image
            continue
        for k in range(min(width, (right - left) // 2 + 1, (bottom - top) // 2 + 1)):
            draw.rectangle([left + k, top + k, right - k, bottom - k], outline=rgb)
        label = ", ".join(d.label for d in group)
        text_box = draw.textbbox((0, 0), label)
        tw, th = text_box[2] - text_box[0] + 4, text_box[3] - text_box[1] + 4
        ty = top - th if top - th >= 0 else top + width
        draw.rectangle([left, ty, left + tw, ty + th], fill=rgb)
        draw.text((left + 2, ty + 2 - text_box[1]), label, fill=(0, 0, 0))
    return image


class Detection:
    """One (box, class) pair: ``class_index``, ``name`` (None without names),
    ``prob``, ``box`` = (x, y, w, h), centre and size in pixels of the
    original image; ``corners`` = (left, top, right, bottom)."""

    __slots__ = ("box", "class_index", "name", "prob")

    def __init__(self, class_index, name, prob, box):
        self.class_index, self.name, self.prob, self.box = class_index, name, prob, box

    @property
    def corners(self):
        x, y, w, h = self.box
        return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)

    @property
    def label(self):
        return self.name if self.name is not None else str(self.class_index)

    def __repr__(self):
        box = ", ".join(f"{v:.1f}" for v in self.box)
        return f"Detection({self.label}: {self.prob:.0%}, box=({box}))"


def uses_letterbox(net):
    """YOLOv2/v3 heads run on a letterboxed input; YOLOv1 on a plain resize."""
    return not any(l.type == "detection" for l in net.layers)


def prepare(net, image):
    """(planes fed to the network, original (w, h)) for a path, a Pillow image, an
    (h, w, c) uint8 array or (c, h, w) float planes."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        im = load_image(image, net.c)
    elif hasattr(image, "convert") and hasattr(image, "size"):       # a Pillow image
        im = to_planes(np.asarray(image.convert({1: "L", 3: "RGB", 4: "RGBA"}[net.c])))
    else:
        im = to_planes(image)
    if im.shape[0] != net.c:
        raise ValueError(f"the network takes {net.c}-channel images, got {im.shape[0]}")
    size = (im.shape[2], im.shape[1])
    sized = (letterbox_image(im, net.w, net.h) if uses_letterbox(net)
             else resize_image(im, net.w, net.h))
    return sized, size


def detect(net, image, thresh=.5, hier_thresh=.5, nms=.45, names=None):
    """darknet's test_detector for one image: letterbox (plain resize for
    YOLOv1), predict, get_network_boxes, do_nms_sort, then one Detection per
    box and class whose probability is above ``thresh``."""
    from ..kernels.boxes import do_nms_sort, get_network_boxes
    sized, (w, h) = prepare(net, image)
    net.predict(sized.reshape(1, -1))
    dets = get_network_boxes(net, w, h, thresh, hier_thresh, relative=True,
                             letterbox=uses_letterbox(net))
    if nms:
        do_nms_sort(dets, dets.classes, nms)
    rows, cols = np.nonzero(dets.prob > F32(thresh))
    boxes = dets.bbox[rows].astype(np.float64) * (w, h, w, h)
    probs = dets.prob[rows, cols].astype(np.float64)
    label = (lambda j: names[j] if j < len(names) else None) if names is not None else \
        (lambda j: None)
    found = [Detection(j, label(j), p, tuple(box)) for j, p, box in
             zip(cols.tolist(), probs.tolist(), boxes.tolist(), strict=True)]
    return found
