"""One entry point for every data source: :func:`load_images` decodes a split into uint8 ``(N, C, H, W)``.

:func:`resolve_source` reads a ``cifar10`` / ``svhn`` root that holds ``train/`` and ``test/`` image folders (a
common export of those sets) as ``folder``, with a notice; when neither layout is there, the not-found error
names both (``data.source=folder`` for image folders).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.data.cifar import CIFAR10_ARCHIVE, CIFAR10_DIR, load_cifar10
from engine.data.digits import load_digits_split
from engine.data.download import DatasetNotFoundError
from engine.data.folder import IMAGE_EXTENSIONS, list_images, load_folder, spread_indices
from engine.data.mnist import MNIST_SHAPE, load_mnist_anomaly
from engine.data.pixels import check_shape
from engine.data.svhn import SVHN_FILES, load_svhn

__all__ = ["load_images", "resolve_source"]

_RGB32 = (3, 32, 32)


def load_images(
    data_cfg: Any,
    image_shape: Sequence[int],
    split: str,
    limit: int | None = None,
    spread_seed: int | None = None,
) -> torch.Tensor:
    """Decode one split into a contiguous CPU uint8 tensor of shape ``(N, C, H, W)``.

    ``data_cfg`` is any object with the attributes ``source`` ("digits" | "folder" | "mnist" |
    "cifar10" | "svhn"), ``root``, ``train_subdir`` / ``test_subdir`` (folder source, default
    "train" / "test"), ``heldout_digit`` (mnist, default 1) and ``download`` (cifar10 / svhn / mnist:
    fetch the official files when absent). A missing ``download`` attribute counts as False, so a
    hand-made config never reaches for the network by surprise (the engine's ``DataConfig`` defaults
    to True). ``flip`` is not used here (augmentation belongs to :class:`BatchStream`). ``limit`` caps
    the number of images (the first ``limit`` in the deterministic order), which keeps smoke runs and
    tests cheap. With ``spread_seed``, a folder source instead gives ``limit`` images drawn over the whole
    split by that seed (a class-sorted folder's first files are all one class; reconstruction grids use it).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    shape = check_shape(image_shape)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    source = getattr(data_cfg, "source", None)
    root = getattr(data_cfg, "root", None)
    fetch = bool(getattr(data_cfg, "download", False))
    if source == "digits":
        images = load_digits_split(shape, split)
        if limit is not None:
            images = images[:limit]
    elif source == "folder":
        subdir = getattr(data_cfg, f"{split}_subdir", split) or split
        folder = Path(_need_root(root, source, "the folder with the train/test image folders")) / subdir
        if spread_seed is not None and limit is not None:
            pick = spread_indices(len(list_images(folder)), limit, spread_seed)
            images = load_folder(folder, shape, None, pick=pick)
        else:
            images = load_folder(folder, shape, limit)
    elif source == "mnist":
        _expect_shape(shape, MNIST_SHAPE, "mnist", "28x28 grayscale")
        where = _need_root(root, source, "the folder with the four IDX files")
        images, _ = load_mnist_anomaly(where, int(getattr(data_cfg, "heldout_digit", 1)), split, download=fetch)
        if limit is not None:
            images = images[:limit]
    elif source == "cifar10":
        _expect_shape(shape, _RGB32, "cifar10", "32x32 RGB")
        where = _need_root(root, source, f"the folder holding {CIFAR10_DIR}/ or {CIFAR10_ARCHIVE}")
        try:
            images, _ = load_cifar10(where, split, download=fetch, limit=limit)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc}. {_FOLDER_HINT}") from None
    elif source == "svhn":
        _expect_shape(shape, _RGB32, "svhn", "32x32 RGB")
        where = _need_root(root, source, "the folder holding train_32x32.mat / test_32x32.mat")
        try:
            images, _ = load_svhn(where, split, download=fetch, limit=limit)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc}. {_FOLDER_HINT}") from None
    else:
        raise ValueError(
            f"unknown data source {source!r}; expected 'digits', 'folder', 'mnist', 'cifar10' or 'svhn'"
        )
    return images.contiguous()


_FOLDER_HINT = "If data.root holds train/ and test/ image folders instead, set data.source=folder"


def _has_images(directory: Path) -> bool:
    """Whether ``directory`` holds at least one image file (stops at the first one found)."""
    if not directory.is_dir():
        return False
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in directory.rglob("*"))


def resolve_source(data_cfg: Any) -> tuple[str, str | None]:
    """``(source, notice)``: the source to read ``data.root`` with, and a one-line notice when it is not the
    configured one.

    A ``cifar10`` or ``svhn`` root without the distributed files (``cifar-10-batches-py/`` or its archive;
    ``train_32x32.mat``) but with an image folder ``<root>/<train_subdir>`` is an image-folder export of the
    data set: it is read as ``folder``. MNIST is never switched (its anomaly split needs the labels).
    """
    source = getattr(data_cfg, "source", None)
    root = getattr(data_cfg, "root", None)
    if source not in ("cifar10", "svhn") or not root:
        return str(source), None
    base = Path(root)
    if source == "cifar10":
        official = (base / CIFAR10_DIR).is_dir() or (base / CIFAR10_ARCHIVE.name).is_file()
    else:
        official = any((base / f.name).is_file() for f in SVHN_FILES.values())
    train = getattr(data_cfg, "train_subdir", "train") or "train"
    test = getattr(data_cfg, "test_subdir", "test") or "test"
    if official or not _has_images(base / train):
        return str(source), None
    return "folder", (f"data.root {str(base)!r} holds image folders ({train}/, {test}/) rather than the {source} "
                      f"files: reading it as data.source=folder")


def _need_root(root: Any, source: str, what: str) -> str:
    if not root:
        raise ValueError(f"data.root must be set for source={source!r} ({what})")
    return str(root)


def _expect_shape(shape: tuple[int, int, int], want: tuple[int, int, int], source: str, what: str) -> None:
    if shape != want:
        raise ValueError(f"source={source!r} gives {what} images: image_shape must be {want}, got {shape}")
