"""darknet's per-command classifier preprocessing, on float32 ``(c, h, w)`` planes.

* **train** (``load_data_augment`` -> ``random_augment_image``, flip,
  ``random_distort_image``), from the image at its own size ``H x W``:
  ``a = rand_scale(aspect)``, ``r = rand_int(min_crop, max_crop)``,
  ``s = r / int(min(H, W a))``, rotation ``U(-angle, angle)``, shifts
  ``dx = U(+-max(0, (W s / a - w) / 2))``, ``dy = U(+-max(0, (H s - h) / 2))``,
  then ``rotate_crop_image`` to ``w x h`` (bilinear, zero outside); a
  horizontal flip with probability 1/2 (``flip=1``); hue/saturation/exposure
  in HSV. darknet's ``dy`` uses the width (a bug for non-square inputs);
  here it uses the height, as data/augment.py.
* **valid** (``validate_classifier_single``): ``resize_min`` -- the short side
  to ``w``, the other ``long * w / short`` (integer division) -- then
  ``crop_image`` of ``w x h`` at ``((W' - w) / 2, (H' - h) / 2)``, edge pixels
  repeated where the crop leaves the image.
* **predict** (``predict_classifier``): ``letterbox_image`` to ``w x h``.
* **valid --multi** (``validate_classifier_multi``): at each of darknet's
  scales 224, 288, 320, 352, 384 (here as multiples 1, 9/7, 10/7, 11/7, 12/7
  of the network's width), ``resize_max`` and predict with the network
  resized to that image, then on the mirrored image; the ten outputs summed.

Resizing is darknet's bilinear ``resize_image`` (data/image.py). Decoding is
Pillow's (libjpeg / libjpeg-turbo), not stb_image: JPEG pixels may differ by
a unit in the last place from darknet's.
"""

import numpy as np

from .augment import rand_scale, rgb_to_hsv
from .image import letterbox_image, resize_image

F32 = np.float32


def resize_min(im, size):
    """darknet's resize_min: the short side to ``size``, keeping the aspect ratio."""
    _, h, w = im.shape
    return _resize_side(im, size, width=w < h)


def resize_max(im, size):
    """darknet's resize_max: the long side to ``size``, keeping the aspect ratio."""
    _, h, w = im.shape
    return _resize_side(im, size, width=w > h)


def _resize_side(im, size, width):
    """The width (else the height) to ``size``, the other side in proportion."""
    _, h, w = im.shape
    h, w = (h * size // w, size) if width else (size, w * size // h)
    if (h, w) == im.shape[1:]:
        return im
    return resize_image(im, w, h)


def crop_image(im, dx, dy, w, h):
    """darknet's crop_image: a ``w x h`` window at (dx, dy), edges repeated outside."""
    _, H, W = im.shape
    rows = np.clip(np.arange(h) + dy, 0, H - 1)
    cols = np.clip(np.arange(w) + dx, 0, W - 1)
    return np.ascontiguousarray(im[:, rows][:, :, cols])


def valid_image(im, w, h):
    """validate_classifier_single's input: resize_min(w), then the centre w x h crop."""
    resized = resize_min(im, w)
    _, H, W = resized.shape
    return crop_image(resized, (W - w) // 2, (H - h) // 2, w, h)


def predict_image(im, w, h):
    """predict_classifier's input: letterboxed into w x h."""
    return letterbox_image(im, w, h)


def predict_input(path, shape):
    """One image file as predict_classifier feeds it: a float32 row (errors name the file)."""
    from .image import load_image

    c, h, w = shape
    return predict_image(load_image(path, c), w, h).reshape(1, -1)


class TrainAugment:
    """darknet's load_data_augment for one image at its own size -> ``(c, h, w)``.

    Built from the ``[net]`` options; ``__call__(im, rng)`` draws in darknet's
    order: aspect, crop size, angle, dx, dy, flip, hue, saturation, exposure.
    """

    def __init__(self, net):
        self.w, self.h, self.c = net.w, net.h, net.c
        self.min_ratio = net.config.min_ratio if net.config else 1.0
        self.max_ratio = net.config.max_ratio if net.config else 1.0
        self.angle, self.aspect = float(net.angle), float(net.aspect)
        self.hue, self.saturation = float(net.hue), float(net.saturation)
        self.exposure, self.flip = float(net.exposure), bool(net.flip)

    def __call__(self, im, rng, size=None):
        """``size``: (w, h) when multi-scale training has resized the network;
        the crop range scales with it (darknet: ``args.min = min_ratio * dim``)."""
        c, H, W = im.shape
        w, h = size or (self.w, self.h)
        low, high = int(self.min_ratio * w), int(self.max_ratio * w)
        aspect = rand_scale(rng, self.aspect, 1)
        r = rng.integers(min(low, high), max(low, high) + 1, 1)
        scale = r / np.floor(np.minimum(H, W * aspect))
        rad = rng.uniform(-self.angle, self.angle, 1) * np.pi / 180
        dx = np.maximum(0, (W * scale / aspect - w) / 2) * rng.uniform(-1, 1, 1)
        dy = np.maximum(0, (H * scale - h) / 2) * rng.uniform(-1, 1, 1)
        out = rotate_crop_image(im, rad[0], scale[0], w, h, dx[0], dy[0], aspect[0])
        if self.flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        dhue = rng.uniform(-self.hue, self.hue)
        dsat, dexp = rand_scale(rng, self.saturation, 1)[0], rand_scale(rng, self.exposure, 1)[0]
        if c >= 3 and (self.hue or self.saturation != 1 or self.exposure != 1):
            hsv = rgb_to_hsv(out[None, :3])[0]
            hsv[1] *= F32(dsat)
            hsv[2] *= F32(dexp)
            hue = hsv[0] + F32(dhue)
            hue[hue > 1] -= 1
            hue[hue < 0] += 1
            hsv[0] = hue
            out = np.concatenate([hsv_to_rgb_image(hsv), out[3:]])
        elif self.exposure != 1:
            out = out * F32(dexp)
        return np.clip(out, 0, 1).astype(F32, copy=False)


def rotate_crop_image(im, rad, scale, w, h, dx, dy, aspect):
    """darknet's rotate_crop_image for one (c, H, W) image -> (c, h, w): the pixel
    (x, y) samples ``R(rad) ((x - w/2 + dx) aspect / s, (y - h/2 + dy) / s) +
    (W/2, H/2)`` bilinearly, zero outside (data/augment.py's rotate_crop, in
    float32 with one gather per corner for all channels)."""
    c, H, W = im.shape
    u = (np.arange(w, dtype=F32) - F32(w / 2) + F32(dx)) * F32(aspect / scale)
    v = (np.arange(h, dtype=F32) - F32(h / 2) + F32(dy)) / F32(scale)
    cos, sin = F32(np.cos(rad)), F32(np.sin(rad))
    sx = cos * u[None, :] - sin * v[:, None] + F32(W / 2)
    sy = sin * u[None, :] + cos * v[:, None] + F32(H / 2)
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).ravel(), (sy - y0).ravel()
    x0, y0 = x0.astype(np.intp).ravel(), y0.astype(np.intp).ravel()
    flat = im.reshape(c, H * W)
    out = np.zeros((c, h * w), F32)
    for ox, oy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + ox, y0 + oy
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        if not inside.any():
            continue
        index = np.where(inside, yi * W + xi, 0)
        out += np.take(flat, index, axis=1) * np.where(inside, weight, F32(0))
    return out.reshape(c, h, w)


# hsv_to_rgb's sector table: which of (v, t, p, q) each of r, g, b takes
_SECTORS = np.array([(0, 1, 2), (3, 0, 2), (2, 0, 1), (2, 3, 0), (1, 2, 0), (0, 2, 3)])


def hsv_to_rgb_image(hsv):
    """darknet's hsv_to_rgb for one (3, h, w) image (data/augment.py's, by table lookup)."""
    h, s, v = hsv[0] * F32(6), hsv[1], hsv[2]
    index = np.floor(h)
    f = h - index
    sector = index.astype(np.intp) % 6
    candidates = np.stack([v, v * (1 - s * (1 - f)), v * (1 - s), v * (1 - s * f)])
    flat = candidates.reshape(4, -1)
    pixels = np.arange(flat.shape[1])
    choice = _SECTORS[sector.ravel()]  # (pixels, 3)
    out = np.stack([np.take(flat.ravel(), choice[:, k] * flat.shape[1] + pixels) for k in range(3)])
    out = out.reshape(hsv.shape)
    grey = s == 0
    if grey.any():
        out[:, grey] = v[grey]
    return out
