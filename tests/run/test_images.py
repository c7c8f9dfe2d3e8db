"""Tests for engine/run/images.py (spec damc.md §3 "Data"): [-1, 1] -> uint8 and PNG grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.run.images import make_grid, save_grid, to_uint8


def test_to_uint8_round_trips_data_bytes() -> None:
    b = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = b.float() / 127.5 - 1  # the loader's normalisation
    assert np.array_equal(to_uint8(x), b.numpy())
    y = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("nan"), float("inf")]).view(1, 1, 1, 7)
    assert to_uint8(y).ravel().tolist() == [0, 0, 128, 255, 255, 128, 255]


def test_save_grid_size_values_and_no_temp_files(tmp_path: Path) -> None:
    imgs = torch.empty(10, 3, 8, 8)
    imgs[:5] = -1.0
    imgs[5:] = 1.0
    imgs[7, 0] = -1.0  # image 7: cyan (R=0, G=B=255)
    out = tmp_path / "sub" / "grid.png"
    assert save_grid(imgs, out, nrow=5, scale=2, padding=2) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # temp file replaced, none left

    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (5 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # (width, height) = (92, 38)
        a = np.asarray(im)
    assert (a[2:18, 2:18] == 0).all()  # first cell: all -1 -> 0
    assert (a[20:36, 2:18] == 255).all()  # second row, first cell (image 5): all +1 -> 255
    cell7 = a[20:36, 2 + 2 * 18 : 2 + 2 * 18 + 16]
    assert (cell7[..., 0] == 0).all() and (cell7[..., 1:] == 255).all()
    assert (a[:2] == 0).all() and (a[:, 18:20] == 0).all()  # padding (pad_value 0)
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o644)


def test_save_grid_grayscale_default_layout_and_scale(tmp_path: Path) -> None:
    rng = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (7, 1, 8, 8), generator=rng, dtype=torch.uint8)
    x = (u8.float() / 127.5 - 1).requires_grad_(True)  # grad-carrying tensors are accepted
    out = tmp_path / "digits.png"
    save_grid(x * 1.0, out, scale=4, padding=1, pad_value=255)
    with Image.open(out) as im:
        assert im.mode == "L"
        a = np.asarray(im)
    # default nrow = ceil(sqrt(7)) = 3 columns, 3 rows; cells 32x32 with 1-pixel padding.
    assert a.shape == (3 * 33 + 1, 3 * 33 + 1)
    for i in range(7):
        r, c = divmod(i, 3)
        cell = a[1 + 33 * r : 1 + 33 * r + 32, 1 + 33 * c : 1 + 33 * c + 32]
        assert np.array_equal(cell[::4, ::4], u8[i, 0].numpy())  # nearest-neighbour upscale
        assert np.array_equal(cell, np.kron(u8[i, 0].numpy(), np.ones((4, 4), np.uint8)))
    assert (a[0] == 255).all()
    assert (a[1 + 2 * 33 :, 1 + 33 :] == 255).all()  # the two empty cells are background


def test_save_grid_overwrites_atomically_and_cleans_up_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "g.png"
    save_grid(torch.zeros(2, 3, 4, 4), out)
    first = out.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_grid(torch.ones(2, 3, 4, 4), out)
    assert out.read_bytes() == first  # old file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temp file left behind


def test_make_grid_validation() -> None:
    assert make_grid(torch.zeros(3, 5, 5), padding=0).shape == (5, 5, 3)  # single (C, H, W) image
    assert make_grid(torch.zeros(4, 1, 2, 2), nrow=10, padding=0).shape == (2, 8, 1)  # nrow capped at N
    with pytest.raises(ValueError):
        make_grid(torch.zeros(0, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        make_grid(torch.zeros(2, 2, 4, 4))
