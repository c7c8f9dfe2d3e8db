"""SVHN cropped digits in their distributed MATLAB files (``train_32x32.mat`` / ``test_32x32.mat``; scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.data.download import RemoteFile, _obtain

__all__ = ["SVHN_FILES", "load_svhn", "read_svhn_mat"]

SVHN_FILES = {
    "train": RemoteFile(
        "train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
        "e26dedcc434d2e4c54c9b2d4a06d8373",
    ),
    "test": RemoteFile(
        "test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
        "eb5a983be6a315427106f1b164d9cef3",
    ),
}


def read_svhn_mat(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits file: (images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)`` in 0..9).

    The file holds ``X`` of shape (32, 32, 3, N) (MATLAB's H, W, C, N) and ``y`` of shape (N, 1) with
    labels 1..10, where 10 stands for the digit 0 (mapped to 0 here).
    """
    path = Path(path)
    try:
        # Imported lazily: scipy is only needed for this source.
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(
            "source='svhn' reads MATLAB .mat files with scipy: `pip install scipy` "
            "(or the project's extra: `pip install 'damc-engine[svhn]'`)"
        ) from e
    if not path.is_file():
        raise FileNotFoundError(f"SVHN file not found: {path}")
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as exc:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: unsupported .mat version ({exc}); the official SVHN files are v5") from None
    except Exception as exc:  # scipy's parser raises many different types on bad bytes
        raise ValueError(f"{path} is truncated or corrupt (reading the .mat failed: {type(exc).__name__}: {exc})"
                         ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise ValueError(f"{path} is not an SVHN 32x32 file: expected variables X and y, found {found}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X must be uint8 of shape (32, 32, 3, N), found {x.dtype} {x.shape}")
    labels = np.asarray(y).reshape(-1)
    if labels.shape[0] != x.shape[3]:
        raise ValueError(f"{path}: {x.shape[3]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"{path}: labels outside 1..10 (min {labels.min()}, max {labels.max()})")
    if limit is not None:
        x, labels = x[..., :limit], labels[:limit]
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, (labels.astype(np.int64) % 10)  # label 10 is the digit 0


def load_svhn(
    root: str | Path, split: str, *, download: bool = False, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN (cropped digits, spec §3 uses split='train': 73,257 images; test: 26,032).

    Reads ``root/train_32x32.mat`` or ``root/test_32x32.mat``; with ``download`` a missing file is
    fetched from the official URL and checked against its published md5.
    """
    if split not in SVHN_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    remote = SVHN_FILES[split]
    path = root / remote.name
    if not path.is_file():
        _obtain([remote], root, "SVHN", remote.name, download)
    x, y = read_svhn_mat(path, limit)
    return torch.from_numpy(x), torch.from_numpy(y)
