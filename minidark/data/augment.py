"""darknet's classifier augmentation, vectorized over a batch (data.c, image.c).

Per image, with the ``[net]`` keys ``min_crop``/``max_crop`` (pixels, via
``min_ratio``/``max_ratio`` x ``w``), ``angle`` (degrees), ``aspect``,
``hue``, ``saturation``, ``exposure`` and ``flip``:

1. ``random_augment_image``: ``a = rand_scale(aspect)``; a target short side
   ``r = rand_int(min_crop, max_crop)``; ``s = r / min(H, W * a)``; rotation
   ``U(-angle, angle)``; shifts ``dx = U(+-(W s / a - w) / 2)``,
   ``dy = U(+-(H s - h) / 2)``. Output pixel (x, y) samples the source at::

       u = ((x - w/2) + dx) a / s,   v = ((y - h/2) + dy) / s
       (sx, sy) = R(angle) (u, v) + (W/2, H/2)

   bilinearly, zero outside (``rotate_crop_image``).
2. With ``flip`` (darknet: always; AlexeyAB's ``flip=0`` turns it off), a
   horizontal flip with probability 1/2.
3. ``random_distort_image``: ``dhue = U(-hue, hue)``, ``dsat =
   rand_scale(saturation)``, ``dexp = rand_scale(exposure)``; in HSV, hue
   shifted (wrapping), saturation and value scaled; clamped to [0, 1].
   One-channel images get only the value scaling (AlexeyAB's behaviour).

``rand_scale(s)`` is ``U(1, s)``, inverted with probability 1/2. Images are
already ``w x h`` here (minidark resizes when it loads them; darknet crops
from the original size), so the default ``min_crop=w, max_crop=2w`` zooms in
up to 2x. Deviation: darknet's ``dy`` uses the width (a bug for non-square
inputs); minidark uses the height. A step that is the identity with the
cfg's values (e.g. ``min_crop=max_crop=w``, ``angle=0``, ``aspect=1``) is
skipped; the shipped MNIST cfgs turn everything off.
"""

import numpy as np


class Augmenter:
    """Applies the cfg's augmentation to float32 batches ``(n, c*h*w)`` in place."""

    def __init__(self, net, source_shape):
        c, h, w = source_shape
        self.c, self.h, self.w = c, h, w
        size = net.w or w
        self.low = round(getattr(net, "min_ratio", 1.0) * size)
        self.high = round(getattr(net, "max_ratio", 1.0) * size)
        self.angle, self.aspect = float(net.angle), float(net.aspect)
        self.hue, self.saturation = float(net.hue), float(net.saturation)
        self.exposure, self.flip = float(net.exposure), bool(net.flip)
        self.geometry = not (
            self.low == self.high == min(h, w) and self.angle == 0 and self.aspect == 1
        )
        self.distort = self.hue != 0 or self.saturation != 1 or self.exposure != 1
        if c < 3:
            self.distort = self.exposure != 1

    @property
    def active(self):
        return self.geometry or self.flip or self.distort

    def describe(self):
        parts = []
        if self.geometry:
            parts.append(
                f"crop {self.low}..{self.high}, angle {self.angle:g}, aspect {self.aspect:g}"
            )
        if self.flip:
            parts.append("flip")
        if self.distort:
            parts.append(
                f"hue {self.hue:g}, saturation {self.saturation:g}, exposure {self.exposure:g}"
            )
        return "; ".join(parts) or "off"

    def __call__(self, x, rng):
        n = x.shape[0]
        images = x.reshape(n, self.c, self.h, self.w)
        if self.geometry:
            images[...] = self._geometry(images, rng)
        if self.flip:
            flipped = rng.random(n) < 0.5
            images[flipped] = images[flipped, :, :, ::-1]
        if self.distort:
            self._distort(images, rng)
        return x

    # ---------------------------------------------------------------- geometry
    def _geometry(self, images, rng):
        n, _, H, W = images.shape
        h, w = H, W
        aspect = rand_scale(rng, self.aspect, n)
        r = rng.integers(min(self.low, self.high), max(self.low, self.high) + 1, n)
        scale = r / np.minimum(H, W * aspect)
        rad = rng.uniform(-self.angle, self.angle, n) * np.pi / 180
        dx = (W * scale / aspect - w) / 2
        dy = (H * scale - h) / 2
        dx = rng.uniform(-1, 1, n) * dx
        dy = rng.uniform(-1, 1, n) * dy
        return rotate_crop(images, rad, scale, h, w, dx, dy, aspect)

    # ----------------------------------------------------------------- colour
    def _distort(self, images, rng):
        n = images.shape[0]
        dexp = rand_scale(rng, self.exposure, n).astype(np.float32)[:, None, None]
        if self.c >= 3:
            dhue = rng.uniform(-self.hue, self.hue, n).astype(np.float32)[:, None, None]
            dsat = rand_scale(rng, self.saturation, n).astype(np.float32)[:, None, None]
            hsv = rgb_to_hsv(images[:, :3])
            hsv[:, 1] *= dsat
            hsv[:, 2] *= dexp
            hue = hsv[:, 0] + dhue
            hue[hue > 1] -= 1
            hue[hue < 0] += 1
            hsv[:, 0] = hue
            images[:, :3] = hsv_to_rgb(hsv)
        else:
            images *= dexp[:, None]
        np.clip(images, 0, 1, out=images)


def rotate_crop(images, rad, scale, h, w, dx, dy, aspect):
    """darknet's rotate_crop_image for a batch: per-image (n,) parameters; output (n, c, h, w)."""
    _, _, H, W = images.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    col = lambda v: np.asarray(v, np.float64).reshape(-1, 1, 1)  # noqa: E731  (n,) -> (n,1,1)
    u = (xs - w / 2 + col(dx)) * col(np.asarray(aspect) / scale)  # (n, h, w)
    v = (ys - h / 2 + col(dy)) / col(scale)
    cos, sin = col(np.cos(rad)), col(np.sin(rad))
    return bilinear(images, cos * u - sin * v + W / 2, sin * u + cos * v + H / 2)


def rand_scale(rng, s, n):
    """darknet's rand_scale: U(1, s), inverted with probability 1/2."""
    scale = rng.uniform(min(1.0, s), max(1.0, s), n)
    invert = rng.random(n) < 0.5
    scale[invert] = 1 / scale[invert]
    return scale


def bilinear(images, sx, sy):
    """Sample ``images`` (n, c, H, W) at float coords (n, h, w); zero outside."""
    n, c, H, W = images.shape
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = images.reshape(n, c, H * W)
    out = np.zeros((n, c) + sx.shape[1:], np.float32)
    for ox, oy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + ox, y0 + oy
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        index = np.where(inside, yi * W + xi, 0).reshape(n, 1, -1)
        values = np.take_along_axis(flat, np.broadcast_to(index, (n, c, index.shape[2])), 2)
        out += values.reshape(out.shape) * (weight * inside)[:, None]
    return out


def rgb_to_hsv(rgb):
    """darknet's rgb_to_hsv on (n, 3, h, w); hue in [0, 1)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    delta = high - low
    safe = np.where(delta > 0, delta, 1)
    hue = np.where(
        r == high, (g - b) / safe, np.where(g == high, 2 + (b - r) / safe, 4 + (r - g) / safe)
    )
    hue = np.where(delta > 0, hue, 0)
    hue = np.where(hue < 0, hue + 6, hue) / 6
    sat = np.where(high > 0, delta / np.where(high > 0, high, 1), 0)
    return np.stack([hue, sat, high], axis=1).astype(np.float32)


def hsv_to_rgb(hsv):
    """darknet's hsv_to_rgb on (n, 3, h, w)."""
    h, s, v = hsv[:, 0] * 6, hsv[:, 1], hsv[:, 2]
    index = np.floor(h)
    f = h - index
    index = index.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.empty_like(hsv)
    for channel in range(3):
        out[:, channel] = np.select(
            [index == k for k in range(6)], [choice[channel] for choice in choices]
        )
    grey = s == 0
    for channel in range(3):
        out[:, channel] = np.where(grey, v, out[:, channel])
    return out
