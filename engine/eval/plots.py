"""Figures drawn with PIL (matplotlib is not a dependency): line plots and 2-D density panels, written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.files import atomic_write

__all__ = ["Series", "density_grid_png", "gaussian_kde_grid", "kde_panels_png", "line_plot_png", "line_panels_png",
           "save_png", "viridis"]


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


# ---------------------------------------------------------------------------------------------------------
# Kernel density panels (the authors' toy figure, toy_example.py:158-177)

# matplotlib's viridis at 9 evenly spaced levels (linear interpolation in between is within a few RGB units).
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                     [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def viridis(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (…, 3) with the viridis colour map."""
    pos = np.clip(v, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    w = (pos - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - w) + _VIRIDIS[lo + 1] * w).astype(np.uint8)


def gaussian_kde_grid(samples: Tensor, low: float = -4.0, high: float = 4.0, points: int = 100,
                      bw: float = 0.15, chunk: int = 1000) -> np.ndarray:
    """``scipy.stats.gaussian_kde(samples.T, bw_method=bw)`` evaluated on ``np.mgrid[low:high:points·1j]²``.

    samples (n, 2). Kernel covariance = bw²·cov(samples) (ddof 1, as scipy); returns Z (points, points) with
    Z[i, j] the density at (u_i, u_j), u = linspace(low, high, points): the array the authors pass to imshow.
    """
    data = samples.double()
    cov = torch.cov(data.T) * bw * bw
    chol = torch.linalg.cholesky(torch.linalg.inv(cov))  # Lᵀ whitens: (p − x)ᵀ Σ⁻¹ (p − x) = ‖(p − x) L‖²
    norm = 1.0 / (2 * math.pi * float(torch.linalg.det(cov)) ** 0.5)
    u = torch.linspace(low, high, points, dtype=torch.float64)
    pos = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    wd, wp = data @ chol, pos @ chol
    dens = torch.cat([torch.exp(-0.5 * torch.cdist(c, wd).pow(2)).mean(dim=1) for c in wp.split(chunk)])
    return (norm * dens).reshape(points, points).numpy()


def kde_panels_png(rows: Sequence[Mapping[str, Tensor]], titles: Mapping[str, str], path: str | os.PathLike[str], *,
                   row_labels: Sequence[str] | None = None,
                   captions: Sequence[Mapping[str, str]] | None = None, low: float = -4.0, high: float = 4.0,
                   points: int = 100, bw: float = 0.15, scale: int = 2) -> Path:
    """A grid of kernel-density images as the authors draw them: one row per case, one column per method (the
    order of ``titles``), each panel ``imshow(Z)`` with viridis scaled to its own range, so z₁ runs down and z₂
    runs right (their orientation, comparable with their Fig. S2). ``captions[i][m]`` goes under a panel."""
    from PIL import Image, ImageDraw

    methods = list(titles)
    side, pad, top, left = points * scale, 6, 18, 8 if row_labels is None else 70
    width = left + len(methods) * (side + pad)
    height = top + len(rows) * (side + pad + 12)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for j, m in enumerate(methods):
        draw.text((left + j * (side + pad) + 4, 3), titles[m], fill="black")
    for i, row in enumerate(rows):
        y0 = top + i * (side + pad + 12)
        if row_labels is not None:
            draw.text((4, y0 + side // 2 - 6), row_labels[i], fill="black")
        for j, m in enumerate(methods):
            z = gaussian_kde_grid(row[m], low, high, points, bw)
            z = (z - z.min()) / max(float(z.max() - z.min()), 1e-300)
            tile = Image.fromarray(viridis(np.kron(z, np.ones((scale, scale)))), mode="RGB")
            x0 = left + j * (side + pad)
            img.paste(tile, (x0, y0))
            if captions is not None and m in captions[i]:
                draw.text((x0 + 2, y0 + side + 1), captions[i][m], fill="black")
    return save_png(img, Path(path))


# ---------------------------------------------------------------------------------------------------------
# Small multiples of line plots


@dataclass
class Series:
    """One line of a panel: x and y values, an RGB colour, dashed or solid, and a legend label."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: tuple[int, int, int] = (200, 30, 30)
    dashed: bool = False


def _dashed(draw: Any, pts: Sequence[tuple[float, float]], fill: tuple[int, int, int], dash: float = 6.0) -> None:
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / dash))
        for k in range(0, n, 2):
            a, b = k / n, min(k + 1, n) / n
            draw.line([x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)], fill=fill,
                      width=2)


def line_panels_png(panels: Sequence[tuple[str, Sequence[Series]]], path: str | os.PathLike[str], *,
                    xlabel: str = "", ylabel: str = "", ncols: int = 3, size: tuple[int, int] = (380, 260)) -> Path:
    """Small multiples: one titled panel per (title, series) with its own y range, axes, ticks and a legend."""
    from PIL import Image, ImageDraw

    w, h = size
    nrows = max(1, math.ceil(len(panels) / ncols))
    img = Image.new("RGB", (w * min(ncols, max(len(panels), 1)), h * nrows), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 52, 10, 22, 34
    for p, (title, series) in enumerate(panels):
        ox, oy = (p % ncols) * w, (p // ncols) * h
        ys = np.array([v for s in series for v in s.y], dtype=np.float64)
        xs = np.array([v for s in series for v in s.x], dtype=np.float64)
        ys, xs = ys[np.isfinite(ys)], xs[np.isfinite(xs)]
        ylo, yhi = (0.0, float(ys.max()) * 1.08) if ys.size and ys.min() >= 0 else (
            (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0))
        xlo, xhi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
        yhi, xhi = (yhi if yhi > ylo else ylo + 1.0), (xhi if xhi > xlo else xlo + 1.0)
        px = lambda v: ox + left + (w - left - right) * (v - xlo) / (xhi - xlo)  # noqa: B023
        py = lambda v: oy + top + (h - top - bottom) * (yhi - v) / (yhi - ylo)  # noqa: B023
        draw.rectangle([ox + left, oy + top, ox + w - right, oy + h - bottom], outline="black")
        for t in _nice_ticks(ylo, yhi, 4):
            draw.line([ox + left - 3, py(t), ox + left, py(t)], fill="black")
            draw.text((ox + 2, py(t) - 6), f"{t:.3g}", fill="black")
        for t in _nice_ticks(xlo, xhi, 4):
            draw.line([px(t), oy + h - bottom, px(t), oy + h - bottom + 3], fill="black")
            draw.text((px(t) - 12, oy + h - bottom + 5), f"{t:g}", fill="black")
        draw.text((ox + left, oy + 5), title, fill="black")
        if xlabel:
            draw.text((ox + w // 2, oy + h - 14), xlabel, fill="black")
        if ylabel and p % ncols == 0:
            draw.text((ox + 2, oy + 5), ylabel, fill="black")
        for k, s in enumerate(series):
            pts = [(px(a), py(b)) for a, b in zip(s.x, s.y, strict=True) if math.isfinite(a) and math.isfinite(b)]
            if len(pts) > 1:
                if s.dashed:
                    _dashed(draw, pts, s.colour)
                else:
                    draw.line(pts, fill=s.colour, width=2)
            ly = oy + top + 4 + 12 * k
            draw.line([ox + w - right - 120, ly + 6, ox + w - right - 104, ly + 6], fill=s.colour, width=2)
            draw.text((ox + w - right - 100, ly), s.label, fill=s.colour)
    return save_png(img, Path(path))
