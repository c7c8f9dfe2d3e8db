"""Figures drawn with PIL (matplotlib is not a dependency): line plots and 2-D density panels, written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.files import atomic_write

__all__ = ["density_grid_png", "line_plot_png", "save_png"]


def save_png(img: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_plot_png(values: Sequence[float], path: Path, title: str, xlabel: str = "step", ylabel: str = "",
                  size: tuple[int, int] = (720, 400)) -> Path:
    """A line plot drawn with PIL (matplotlib is not a dependency): axes, ticks, one polyline."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 30, 45
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    n = max(len(vals) - 1, 1)
    px = lambda i: left + (w - left - right) * i / n
    py = lambda v: top + (h - top - bottom) * (hi - v) / (hi - lo)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _nice_ticks(lo, hi):
        y = py(t)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, w - right - 1, y], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{t:.4g}", fill="black")
    for t in _nice_ticks(0, n):
        x = px(t)
        draw.line([x, h - bottom, x, h - bottom + 4], fill="black")
        draw.text((x - 10, h - bottom + 6), f"{t:g}", fill="black")
    pts = [(px(i), py(v)) for i, v in enumerate(vals) if math.isfinite(v)]
    if len(pts) > 1:
        draw.line(pts, fill=(200, 30, 30), width=2)
    draw.text((left, 8), title, fill="black")
    draw.text(((w - left) // 2 + left - 20, h - 18), xlabel, fill="black")
    if ylabel:
        draw.text((4, top - 22), ylabel, fill="black")
    return save_png(img, path)


def _histogram(z: Tensor, lo: float, hi: float, bins: int) -> np.ndarray:
    h, _, _ = np.histogram2d(z[:, 0].numpy(), z[:, 1].numpy(), bins=bins, range=[[lo, hi], [lo, hi]])
    return h.T[::-1]  # rows = z₂ from top (high) to bottom, columns = z₁ left to right


def density_grid_png(samples: Mapping[str, Sequence[Tensor]], titles: Mapping[str, str], path: str | os.PathLike[str],
                     *, centre: str, captions: Mapping[str, Sequence[str]] | None = None, bins: int = 64,
                     cell: int = 3) -> Path:
    """2-D histograms (dark = dense) of 2-D sample sets, one row per case and one column per method.

    ``samples[m][i]`` is method m's (n, 2) sample set for case i; each row shares one window, centred on the
    mean of ``samples[centre][i]`` and covering 99 % of every method's samples; ``captions[m][i]`` is written
    under a panel. Columns follow the order of ``samples``.
    """
    from PIL import Image, ImageDraw

    methods = list(samples)
    k = len(samples[centre])
    side, pad, top, left = bins * cell, 8, 20, 8
    width = left + len(methods) * (side + pad)
    height = top + k * (side + pad + 12)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for j, m in enumerate(methods):
        draw.text((left + j * (side + pad) + 4, 4), titles[m], fill="black")
    for i in range(k):
        everything = torch.cat([samples[m][i] for m in methods])
        c = samples[centre][i].mean(0)
        half = float(torch.quantile((everything - c).abs().max(dim=1).values, 0.99)) * 1.15 + 0.1
        for j, m in enumerate(methods):
            h = _histogram(samples[m][i] - c, -half, half, bins)
            h = h / max(h.max(), 1.0)
            gray = (255 * (1.0 - np.sqrt(h))).astype(np.uint8)  # sqrt: make the tails visible
            tile = Image.fromarray(np.kron(gray, np.ones((cell, cell), dtype=np.uint8)), mode="L")
            x0, y0 = left + j * (side + pad), top + i * (side + pad + 12)
            img.paste(tile.convert("RGB"), (x0, y0))
            draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], outline="gray")
            if captions is not None and m in captions:
                draw.text((x0 + 2, y0 + side + 1), captions[m][i], fill="black")
    out = save_png(img, Path(path))
    return out
