"""Image-grid output for samples and reconstructions (spec ``damc.md`` §3 "Data").

Models work on images in [-1, 1] (``ToTensor -> Normalize(0.5, 0.5)``); this module maps them back to
bytes and writes torchvision-``make_grid``-style PNG grids without requiring torchvision.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from engine.files import atomic_write
from engine.learners import Learner
from engine.runtime import system

__all__ = ["make_grid", "save_grid", "to_uint8", "write_grids"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Map float images in [-1, 1] to a uint8 numpy array of the same layout.

    Values are clamped first; -1 -> 0 and +1 -> 255 with round-to-nearest (the inverse of
    ``x / 127.5 - 1``, so data images round-trip exactly). NaNs (a diverged run) become mid-grey rather
    than undefined bytes, so a grid can still be written for inspection.
    """
    x = images.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    return (x.add(1.0).mul(127.5).add(0.5)).floor().clamp(0, 255).to(torch.uint8).numpy()


def make_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    scale: int = 1,
    padding: int = 2,
    pad_value: int = 0,
) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one ``(rows, cols, C)`` uint8 array.

    Layout follows torchvision's ``make_grid``: ``nrow`` images per row (default ``ceil(sqrt(N))``)
    with ``padding`` pixels between cells and around the border. Each cell is first upscaled by the
    integer factor ``scale`` (nearest neighbour, so pixels stay sharp); ``padding`` is in output pixels.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected images of shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got C={c}")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got scale={scale}, padding={padding}")
    ncol = min(n, int(nrow)) if nrow is not None else math.ceil(math.sqrt(n))
    if ncol < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    nrows = math.ceil(n / ncol)

    cells = to_uint8(images).transpose(0, 2, 3, 1)  # (N, H, W, C)
    if scale > 1:
        cells = cells.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = h * scale, w * scale
    grid = np.full(
        (nrows * (ch + padding) + padding, ncol * (cw + padding) + padding, c), pad_value, dtype=np.uint8
    )
    for i in range(n):
        r, k = divmod(i, ncol)
        y = padding + r * (ch + padding)
        x = padding + k * (cw + padding)
        grid[y : y + ch, x : x + cw] = cells[i]
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    scale: int = 1,
    padding: int = 2,
    pad_value: int = 0,
) -> Path:
    """Write images in [-1, 1] as one PNG grid (see :func:`make_grid`); returns the path.

    Grayscale images are saved as an 8-bit ``L`` PNG. The file is written to a temporary file in the
    same directory and then ``os.replace``-d into place, so an interrupted run never leaves a truncated
    PNG behind (the rename is atomic on one filesystem).
    """
    from PIL import Image

    grid = make_grid(images, nrow=nrow, scale=scale, padding=padding, pad_value=pad_value)
    # A 2-D uint8 array becomes an "L" image, (H, W, 3) becomes "RGB".
    img = Image.fromarray(np.ascontiguousarray(grid[:, :, 0] if grid.shape[2] == 1 else grid))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path


def _grid_style(height: int) -> dict[str, int]:
    # 8×8 digits are drawn 4× so that a grid is legible; grey separators between black-background cells.
    return {"scale": max(1, 32 // height), "pad_value": 128}


def write_grids(learner: Learner, x_test: torch.Tensor, run_dir: Path, seed: int) -> None:
    """The learner's PNG grids (:meth:`Learner.grids`) with a fixed eval RNG, so successive grids differ only because
    the model changed; ``<name>_<iteration>.png`` each."""
    rng = system.make_generator(learner.device, seed)
    tag = f"{learner.iteration:07d}"
    style = _grid_style(x_test.shape[-1])
    for grid in learner.grids(x_test, rng):
        save_grid(grid.images, run_dir / f"{grid.name}_{tag}.png", nrow=grid.nrow, **style)
