"""``<base>_chart.png``: loss, running average and validation accuracy vs iterations.

Drawn with Pillow only. The loss axis (left) is logarithmic when the loss
spans more than a factor of 20, else linear from 0; the accuracy axis
(right) runs up to 100%. Long runs are averaged per pixel column.
"""

import math

import numpy as np

WIDTH, HEIGHT = 960, 560
LEFT, RIGHT, TOP, BOTTOM = 78, 84, 52, 58
COLORS = {
    "loss": (160, 190, 230),
    "avg": (20, 70, 160),
    "top1": (200, 40, 40),
    "topk": (235, 140, 30),
    "grid": (225, 225, 225),
    "axis": (60, 60, 60),
    "text": (30, 30, 30),
}


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def nice_ticks(low, high, count=6):
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def log_ticks(low, high):
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _label(value):
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def _columns(x, y, to_px, width):
    """Average points falling in the same pixel column (keeps long runs readable)."""
    px = np.round(to_px(x)).astype(np.int64)
    if len(px) <= width:
        return list(zip(px.tolist(), y.tolist(), strict=True))
    order = np.unique(px, return_index=True, return_counts=True)
    columns, starts, counts = order
    sums = np.add.reduceat(y, starts)
    return list(zip(columns.tolist(), (sums / counts).tolist(), strict=True))


def draw_chart(path, history, valid=None, title="", k=1, names=None):
    """Write the chart PNG. ``history``: {"iteration", "loss", "avg"} lists;
    ``valid``: {"iteration", "top1", "topk"} lists (may be empty). ``names``:
    (axis, first curve, second curve) labels for other figures than top-1/top-k
    (a detector's mAPs); the second curve is then always drawn."""
    axis_name, first_name, second_name = names or (
        "valid accuracy",
        "valid top-1",
        f"valid top-{k}",
    )
    both = k > 1 or names is not None
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(14), _font(12), _font(17)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM  # plot box (y0 top)
    iterations = np.asarray(history.get("iteration", []), np.float64)
    loss = np.asarray(history.get("loss", []), np.float64)
    avg = np.asarray(history.get("avg", []), np.float64)
    valid = valid or {}
    v_iter = np.asarray(valid.get("iteration", []), np.float64)
    top1 = 100 * np.asarray(valid.get("top1", []), np.float64)
    topk = 100 * np.asarray(valid.get("topk", []), np.float64)

    last = max([1.0] + [float(a.max()) for a in (iterations, v_iter) if a.size])
    first = min([0.0] + [float(a.min()) for a in (iterations, v_iter) if a.size])
    to_x = lambda it: x0 + (np.asarray(it, np.float64) - first) / (last - first) * (x1 - x0)  # noqa: E731

    finite = np.concatenate([loss[np.isfinite(loss)], avg[np.isfinite(avg)]])
    positive = finite[finite > 0]
    log_scale = positive.size > 1 and positive.max() / positive.min() > 20
    if log_scale:
        lo, hi = math.log10(positive.min()), math.log10(positive.max())
        pad = (hi - lo) * 0.04
        lo, hi = lo - pad, hi + pad
        ticks = log_ticks(10**lo, 10**hi)

        def to_y(v):
            v = np.log10(np.maximum(np.asarray(v, np.float64), 1e-30))
            return y1 - (v - lo) / (hi - lo) * (y1 - y0)
    else:
        top = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0
        ticks = nice_ticks(0, top)
        top = max(top, ticks[-1])

        def to_y(v):
            return y1 - np.asarray(v, np.float64) / top * (y1 - y0)

    # grid and loss axis
    for tick in ticks:
        y = float(to_y(tick))
        draw.line([(x0, y), (x1, y)], fill=COLORS["grid"])
        text = _label(tick)
        draw.text(
            (x0 - 8 - draw.textlength(text, font=small), y - 7),
            text,
            fill=COLORS["text"],
            font=small,
        )
    for tick in nice_ticks(first, last, 8):
        x = float(to_x(tick))
        if x0 <= x <= x1 + 0.5:
            draw.line([(x, y1), (x, y1 + 5)], fill=COLORS["axis"])
            text = _label(tick)
            draw.text(
                (x - draw.textlength(text, font=small) / 2, y1 + 8),
                text,
                fill=COLORS["text"],
                font=small,
            )
    draw.text(((x0 + x1) / 2 - 30, HEIGHT - 24), "iteration", fill=COLORS["text"], font=font)
    draw.text(
        (8, TOP - 24), "loss" + (" (log)" if log_scale else ""), fill=COLORS["avg"], font=font
    )

    # accuracy axis (right)
    if top1.size:
        acc_lo = max(
            0.0, math.floor((min(top1.min(), topk.min() if topk.size else 100) - 2) / 10) * 10
        )
        acc_ticks = nice_ticks(acc_lo, 100, 5)

        def to_acc(v):
            return y1 - (np.asarray(v, np.float64) - acc_lo) / (100 - acc_lo) * (y1 - y0)

        for tick in acc_ticks:
            y = float(to_acc(tick))
            draw.line([(x1, y), (x1 + 5, y)], fill=COLORS["axis"])
            draw.text((x1 + 8, y - 7), f"{tick:g}%", fill=COLORS["text"], font=small)
        draw.text((x1 - 40, TOP - 24), axis_name, fill=COLORS["top1"], font=font)

    draw.rectangle([x0, y0, x1, y1], outline=COLORS["axis"])

    # curves
    for values, color, width in ((loss, COLORS["loss"], 1), (avg, COLORS["avg"], 2)):
        keep = np.isfinite(values)
        if keep.sum() >= 1:
            points = _columns(iterations[keep], values[keep], to_x, x1 - x0)
            points = [(px, float(to_y(v))) for px, v in points]
            if len(points) > 1:
                draw.line(points, fill=color, width=width, joint="curve")
            else:
                px, py = points[0]
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
    if top1.size:
        series = [(top1, COLORS["top1"], "top-1")]
        if both and topk.size:
            series.append((topk, COLORS["topk"], f"top-{k}"))
        for values, color, _ in series:
            points = [
                (float(to_x(i)), float(to_acc(v))) for i, v in zip(v_iter, values, strict=True)
            ]
            if len(points) > 1:
                draw.line(points, fill=color, width=2)
            for px, py in points:
                draw.rectangle([px - 3, py - 3, px + 3, py + 3], fill=color)
            px, py = points[-1]
            text = f"{values[-1]:.2f}%"
            draw.text(
                (px - draw.textlength(text, font=small) - 6, py - 18), text, fill=color, font=small
            )

    # title and legend
    heading = title or "training"
    if loss.size:
        heading += f"   iteration {int(iterations[-1])}, avg loss {avg[-1]:.4f}"
    draw.text((x0, 14), heading, fill=COLORS["text"], font=big)
    legend = [("loss", COLORS["loss"]), ("avg loss", COLORS["avg"])]
    if top1.size:
        legend.append((first_name, COLORS["top1"]))
        if both and topk.size:
            legend.append((second_name, COLORS["topk"]))
    lx, ly = x0 + 18, y1 - 20 * len(legend) - 12  # bottom left: loss falls away
    draw.rectangle(
        [lx - 8, ly - 6, lx + 122, ly + 20 * len(legend)], fill="white", outline=COLORS["grid"]
    )
    for i, (name, color) in enumerate(legend):
        y = ly + 20 * i + 7
        draw.line([(lx, y), (lx + 24, y)], fill=color, width=3)
        draw.text((lx + 32, y - 8), name, fill=COLORS["text"], font=small)

    import io

    from ..weights import atomic_write

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    return path
