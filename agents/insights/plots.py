"""Small PNG charts for the reports, drawn with numpy and written with zlib (no plotting
library is a dependency). Charts carry no text: titles, axis ranges and legends are in the
report around them.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["PALETTE", "bar_chart", "encode_png", "line_chart"]

PALETTE = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]
PALETTE_HEX = ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE]
_MARGIN = 12


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB image, shape (h, w, 3), uint8.

    >>> encode_png(np.zeros((2, 3, 3), np.uint8))[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _canvas(width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):  # horizontal grid
        y = round(_MARGIN + frac * (height - 2 * _MARGIN))
        img[y, _MARGIN : width - _MARGIN] = (225, 225, 225)
    img[_MARGIN : height - _MARGIN + 1, _MARGIN] = (120, 120, 120)  # y axis
    img[height - _MARGIN, _MARGIN : width - _MARGIN + 1] = (120, 120, 120)  # x axis
    return img


def _plot_point(img: np.ndarray, x: float, y: float, color: tuple[int, int, int], r: int) -> None:
    h, w, _ = img.shape
    xi, yi = round(x), round(y)
    img[max(0, yi - r) : min(h, yi + r + 1), max(0, xi - r) : min(w, xi + r + 1)] = color


def _segment(img: np.ndarray, p: tuple[float, float], q: tuple[float, float],
             color: tuple[int, int, int]) -> None:  # fmt: skip
    steps = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
    for t in np.linspace(0.0, 1.0, steps + 1):
        _plot_point(img, p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]), color, 1)


def _scale(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def line_chart(
    series: Sequence[tuple[Sequence[float], Sequence[float]]],
    width: int = 640,
    height: int = 220,
    y_range: tuple[float, float] | None = None,
) -> tuple[bytes, tuple[float, float], tuple[float, float]]:
    """Lines (one colour each from :data:`PALETTE`) over a shared x and y scale.

    Parameters
    ----------
    series : sequence of (xs, ys)
        Points of each line; NaN values break the line.
    width, height : int
        Image size in pixels.
    y_range : (float, float), optional
        Fixed y range (default: the data's, padded).

    Returns
    -------
    tuple
        PNG bytes, the x range and the y range drawn.
    """
    img = _canvas(width, height)
    xs_all = [float(x) for xs, _ in series for x in xs]
    ys_all = [float(y) for _, ys in series for y in ys if math.isfinite(float(y))]
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1.0
    y0, y1 = y_range if y_range else _scale(min(ys_all, default=0.0), max(ys_all, default=1.0))

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = _MARGIN + (x - x0) / (x1 - x0) * (width - 2 * _MARGIN)
        py = height - _MARGIN - (y - y0) / (y1 - y0) * (height - 2 * _MARGIN)
        return px, min(max(py, 0.0), height - 1.0)

    for k, (xs, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        prev = None
        for x, y in zip(xs, ys, strict=True):
            if not math.isfinite(float(y)):
                prev = None
                continue
            point = to_px(float(x), float(y))
            if prev is not None:
                _segment(img, prev, point, color)
            _plot_point(img, *point, color, 2)
            prev = point
    return encode_png(img), (x0, x1), (y0, y1)


def bar_chart(
    values: Sequence[float],
    errors: Sequence[tuple[float, float] | None] | None = None,
    width: int = 640,
    height: int = 220,
) -> tuple[bytes, tuple[float, float]]:
    """Vertical bars from zero (one colour each), with optional interval whiskers.

    Returns the PNG bytes and the y range drawn.
    """
    img = _canvas(width, height)
    vals = [float(v) if math.isfinite(float(v)) else 0.0 for v in values]
    ends = vals + [e for pair in (errors or []) if pair for e in pair if math.isfinite(e)]
    y0, y1 = _scale(min([0.0, *ends]), max([0.0, *ends]))
    n = max(1, len(vals))
    slot = (width - 2 * _MARGIN) / n

    def py(y: float) -> int:
        return round(height - _MARGIN - (y - y0) / (y1 - y0) * (height - 2 * _MARGIN))

    zero = py(0.0)
    img[zero, _MARGIN : width - _MARGIN] = (90, 90, 90)
    for i, v in enumerate(vals):
        left = int(_MARGIN + i * slot + slot * 0.2)
        right = int(_MARGIN + (i + 1) * slot - slot * 0.2)
        top, bottom = sorted((py(v), zero))
        img[top : bottom + 1, left : max(left + 1, right)] = PALETTE[i % len(PALETTE)]
        err = errors[i] if errors and i < len(errors) else None
        if err is not None and all(math.isfinite(e) for e in err):
            mid = (left + right) // 2
            a, b = sorted((py(err[0]), py(err[1])))
            img[max(0, a) : min(height, b + 1), mid] = (0, 0, 0)
            img[max(0, a), max(0, mid - 4) : mid + 5] = (0, 0, 0)
            img[min(height - 1, b), max(0, mid - 4) : mid + 5] = (0, 0, 0)
    return encode_png(img), (y0, y1)
