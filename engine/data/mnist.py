"""MNIST in its four IDX files (gzipped or not), and the anomaly-detection split of spec §4."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from engine.data.download import RemoteFile, _obtain

__all__ = ["MNIST_FILES", "MNIST_SHAPE", "load_mnist_anomaly", "read_idx"]

MNIST_SHAPE = (1, 28, 28)
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# torchvision's mirror first (the historical origin now often refuses scripted downloads). The md5s are
# those of the published .gz files; they are checked only on files we download, never on a user's own
# files (a re-compressed .gz holds the same IDX bytes but differs as a container).
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_MNIST_GZ_MD5 = {
    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
    "test_images": "9fb629c4189551a2d022fa330f9573f3",
    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
}
_MNIST_REMOTE = {
    key: RemoteFile(f"{stem}.gz", tuple(m + stem + ".gz" for m in _MNIST_MIRRORS), _MNIST_GZ_MD5[key])
    for key, stem in MNIST_FILES.items()
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw): big-endian header, magic 0x0000 08 <ndim>, uint8 payload."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    # Truncated gzip: EOFError; bad gzip header/CRC: OSError (BadGzipFile); damaged deflate data: zlib.error.
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"could not read IDX file {path} (truncated or corrupt?): {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path} is truncated or corrupt: {len(data)} bytes, shorter than its {offset}-byte header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims) if dims else 0  # Python ints: a corrupt header cannot overflow
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes of data "
                         f"for shape {tuple(dims)}, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _mnist_paths(root: Path, download: bool) -> dict[str, Path]:
    """The four IDX files under ``root`` (raw preferred over ``.gz``), downloading missing ones if allowed."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in MNIST_FILES.items():
        path = next((root / n for n in (stem, stem + ".gz") if (root / n).is_file()), None)
        if path is None:
            missing.append(key)
        else:
            found[key] = path
    if missing:
        looked_for = ", ".join(f"{MNIST_FILES[k]}[.gz]" for k in MNIST_FILES)
        if len(missing) < len(MNIST_FILES):
            looked_for += f" (missing: {', '.join(MNIST_FILES[k] for k in missing)})"
        _obtain([_MNIST_REMOTE[k] for k in missing], root, "MNIST", looked_for, download)
        found.update({k: root / _MNIST_REMOTE[k].name for k in missing})
    return found


def _read_mnist(root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images (train then t10k) ``(N, 28, 28)`` and their labels, each file validated."""
    paths = _mnist_paths(root, download)
    xs, ys = [], []
    for part in ("train", "test"):
        ipath, lpath = paths[f"{part}_images"], paths[f"{part}_labels"]
        x, y = read_idx(ipath), read_idx(lpath)
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{ipath}: expected images of shape (N, 28, 28), found {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{lpath}: expected {x.shape[0]} labels (one per image in {ipath.name}), "
                             f"found shape {y.shape}")
        if y.size and y.max() > 9:
            raise ValueError(f"{lpath}: labels must be digits 0..9, found {int(y.max())}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_mnist_anomaly(
    root: str | Path, heldout_digit: int, split: str, *, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The anomaly split of spec §4: (images uint8 (N, 1, 28, 28), labels (N,) with 1 = anomaly).

    All 70,000 images (train then t10k) are pooled; the normals (every digit but ``heldout_digit``) are
    permuted with ``RandomState(42)``; train = the first 80 % of them; test = the remaining normals plus
    every held-out image, permuted again with the same RandomState object. The authors pool a
    ``mnist.npz`` (train/valid/test) instead, so the pooled order, and hence the exact split, differs.
    With ``download`` missing files are fetched (as ``.gz``, md5 checked) from the official mirrors.
    """
    if not 0 <= heldout_digit <= 9:
        raise ValueError(f"heldout_digit must be 0..9, got {heldout_digit}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = _read_mnist(Path(root), download)
    normal, anomal = x[y != heldout_digit], x[y == heldout_digit]
    rng = np.random.RandomState(42)
    normal = normal[rng.permutation(len(normal))]
    n_train = int(0.8 * len(normal))
    if split == "train":
        imgs, labels = normal[:n_train], np.zeros(n_train, dtype=np.int64)
    else:
        imgs = np.concatenate([normal[n_train:], anomal])
        labels = np.concatenate([np.zeros(len(normal) - n_train, np.int64), np.ones(len(anomal), np.int64)])
        perm = rng.permutation(len(imgs))
        imgs, labels = imgs[perm], labels[perm]
    return torch.from_numpy(np.ascontiguousarray(imgs[:, None])), torch.from_numpy(labels)
