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

Resizing is darknet's bilinear ``resize_image`` (data/image.py). Decoding is
Pillow's (libjpeg / libjpeg-turbo), not stb_image: JPEG pixels may differ by
a unit in the last place from darknet's.
"""

import numpy as np

from .augment import hsv_to_rgb, rand_scale, rgb_to_hsv, rotate_crop
from .image import letterbox_image, resize_image

F32 = np.float32


def resize_min(im, size):
    """darknet's resize_min: the short side to ``size``, keeping the aspect ratio."""
    _, h, w = im.shape
    if w < h:
        h, w = h * size // w, size
    else:
        w, h = w * size // h, size
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


class TrainAugment:
    """darknet's load_data_augment for one image at its own size -> ``(c, h, w)``.

    Built from the ``[net]`` options; ``__call__(im, rng)`` draws in darknet's
    order: aspect, crop size, angle, dx, dy, flip, hue, saturation, exposure.
    """

    def __init__(self, net):
        self.w, self.h, self.c = net.w, net.h, net.c
        self.low = round(net.config.min_ratio * net.w) if net.config else net.w
        self.high = round(net.config.max_ratio * net.w) if net.config else net.w
        self.angle, self.aspect = float(net.angle), float(net.aspect)
        self.hue, self.saturation = float(net.hue), float(net.saturation)
        self.exposure, self.flip = float(net.exposure), bool(net.flip)

    def __call__(self, im, rng):
        c, H, W = im.shape
        w, h = self.w, self.h
        aspect = rand_scale(rng, self.aspect, 1)
        r = rng.integers(min(self.low, self.high), max(self.low, self.high) + 1, 1)
        scale = r / np.floor(np.minimum(H, W * aspect))
        rad = rng.uniform(-self.angle, self.angle, 1) * np.pi / 180
        dx = np.maximum(0, (W * scale / aspect - w) / 2) * rng.uniform(-1, 1, 1)
        dy = np.maximum(0, (H * scale - h) / 2) * rng.uniform(-1, 1, 1)
        out = rotate_crop(im[None], rad, scale, h, w, dx, dy, aspect)[0]
        if self.flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        dhue = rng.uniform(-self.hue, self.hue)
        dsat, dexp = rand_scale(rng, self.saturation, 1)[0], rand_scale(rng, self.exposure, 1)[0]
        if c >= 3 and (self.hue or self.saturation != 1 or self.exposure != 1):
            hsv = rgb_to_hsv(out[None, :3])[0]
            hsv[1] *= F32(dsat)
            hsv[2] *= F32(dexp)
            hsv[0] = (hsv[0] + F32(dhue)) % 1
            out = np.concatenate([hsv_to_rgb(hsv[None])[0], out[3:]])
        elif self.exposure != 1:
            out = out * F32(dexp)
        return np.clip(out, 0, 1).astype(F32, copy=False)
