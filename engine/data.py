"""Data input for the DAMC training engine (spec ``damc.md`` §3 "Data").

The reference loader is torchvision's ``RandomHorizontalFlip(0.5) -> ToTensor -> Normalize(0.5, 0.5)``
with ``batch_size=128, shuffle=True, drop_last=True``; images reach the model as float32 in [-1, 1] and
there is no dequantisation. This module reproduces that pipeline without torchvision:

* :func:`load_images` decodes a whole split once into a uint8 ``(N, C, H, W)`` tensor. Sources are the
  8x8 handwritten digits shipped inside scikit-learn (the CPU quickstart) and image folders laid out like
  torchvision's ``ImageFolder`` (CIFAR-10 JPEG copy, CelebA-64, ...; class labels are ignored).
* :class:`BatchStream` is an infinite, exactly resumable iterator of fixed-shape training batches: a
  per-epoch shuffle with its own generator, drop_last, optional per-image horizontal flip, and the
  uint8 -> [-1, 1] conversion done on the target device.
* :func:`fixed_batch` gives the first ``n`` images (no flip) for reconstruction grids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["IMAGE_EXTENSIONS", "BatchStream", "fixed_batch", "load_images"]

#: File suffixes (compared case-insensitively) that the folder source accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Fixed train/test split of sklearn's 1,797 digits: RandomState(0) permutation, first 1,497 train.
_DIGITS_N_TRAIN = 1497
_DIGITS_SHAPE = (1, 8, 8)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_images(
    data_cfg: Any,
    image_shape: Sequence[int],
    split: str,
    limit: int | None = None,
) -> torch.Tensor:
    """Decode one split into a contiguous CPU uint8 tensor of shape ``(N, C, H, W)``.

    ``data_cfg`` is any object with the attributes ``source`` ("digits" | "folder"), ``root``,
    ``train_subdir`` (default "train"), ``test_subdir`` (default "test"); ``flip`` is not used here
    (augmentation belongs to :class:`BatchStream`). ``limit`` caps the number of images (the first
    ``limit`` in the deterministic order), which keeps smoke runs and tests cheap.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    shape = _check_shape(image_shape)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    source = getattr(data_cfg, "source", None)
    if source == "digits":
        images = _load_digits(shape, split)
        if limit is not None:
            images = images[:limit]
    elif source == "mnist":
        root = getattr(data_cfg, "root", None)
        if not root:
            raise ValueError("data.root must be set for source='mnist' (the folder with the four IDX files)")
        images, _ = load_mnist_anomaly(root, int(getattr(data_cfg, "heldout_digit", 1)), split)
        if limit is not None:
            images = images[:limit]
    elif source == "folder":
        subdir = getattr(data_cfg, f"{split}_subdir", split) or split
        root = getattr(data_cfg, "root", None)
        if not root:
            raise ValueError("data.root must be set for source='folder'")
        images = _load_folder(Path(root) / subdir, shape, limit)
    else:
        raise ValueError(f"unknown data source {source!r}; expected 'digits', 'mnist' or 'folder'")
    return images.contiguous()


# MNIST in its distributed IDX format (gzipped or not) and the anomaly-detection protocol of spec §4.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw): big-endian header, magic 0x0000 08 <ndim>, uint8 payload."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"could not read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes of data "
                         f"for shape {tuple(dims)}, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"MNIST: looked for {stem} or {stem}.gz in {root} and found neither; the four IDX files "
        f"({', '.join(MNIST_FILES.values())}) are distributed at http://yann.lecun.com/exdb/mnist/"
    )


def load_mnist_anomaly(root: str | Path, heldout_digit: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The anomaly split of spec §4: (images uint8 (N, 1, 28, 28), labels (N,) with 1 = anomaly).

    All 70,000 images (train then t10k) are pooled; the normals (every digit but ``heldout_digit``) are
    permuted with ``RandomState(42)``; train = the first 80 % of them; test = the remaining normals plus
    every held-out image, permuted again with the same RandomState object. The authors pool a
    ``mnist.npz`` (train/valid/test) instead, so the pooled order, and hence the exact split, differs.
    """
    if not 0 <= heldout_digit <= 9:
        raise ValueError(f"heldout_digit must be 0..9, got {heldout_digit}")
    root = Path(root)
    parts = {k: read_idx(_find_idx(root, v)) for k, v in MNIST_FILES.items()}
    x = np.concatenate([parts["train_images"], parts["test_images"]])  # (70000, 28, 28)
    y = np.concatenate([parts["train_labels"], parts["test_labels"]])
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"MNIST in {root}: {x.shape[0]} images but {y.shape[0]} labels")
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


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive entries, got {tuple(image_shape)!r}")
    if shape[0] not in (1, 3):
        raise ValueError(f"image_shape channels must be 1 (grayscale) or 3 (RGB), got C={shape[0]}")
    return shape  # type: ignore[return-value]


def _load_digits(shape: tuple[int, int, int], split: str) -> torch.Tensor:
    if shape != _DIGITS_SHAPE:
        raise ValueError(
            f"source='digits' gives 8x8 grayscale images: image_shape must be (1, 8, 8), got {shape}"
        )
    try:
        # Imported lazily: scikit-learn is only needed for the quickstart data set.
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "source='digits' needs scikit-learn: `pip install scikit-learn` "
            "(or install the project's extra: `pip install 'damc-engine[quickstart]'`)"
        ) from e
    raw = load_digits().images  # (1797, 8, 8) float64, integer values 0..16, bundled with sklearn
    u8 = np.round(raw * (255.0 / 16.0)).astype(np.uint8)
    perm = np.random.RandomState(0).permutation(len(u8))
    idx = perm[:_DIGITS_N_TRAIN] if split == "train" else perm[_DIGITS_N_TRAIN:]
    return torch.from_numpy(np.ascontiguousarray(u8[idx][:, None]))


def _list_images(directory: Path) -> list[Path]:
    exts = ", ".join(IMAGE_EXTENSIONS)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {directory} (expected image files with extensions {exts}, "
            "optionally inside class subfolders)"
        )
    # Sort by the relative POSIX path so the order (and hence fixed_batch / limit) does not depend on
    # the filesystem's directory order; for ImageFolder layouts this matches class-then-file order.
    files = sorted(
        (p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(directory).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no image files found under {directory} (searched recursively for {exts})")
    return files


def _decode(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as im:
            img = im.convert("RGB" if c == 3 else "L")  # convert() forces the full decode here
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ValueError(f"could not decode image file {path}: {e}") from e
    if img.size != (w, h):
        img = _resize_cover(img, h, w)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _resize_cover(img: Any, h: int, w: int) -> Any:
    """Resize to ``h x w`` the way torchvision's ``Resize(int)`` does, plus a centre crop.

    For square images and a square target this is exactly ``Resize(h)`` (PIL bilinear with
    antialiasing, as torchvision uses for PIL inputs). For other aspect ratios, ``Resize(int)`` alone
    would give a non-square image that cannot be batched, so we resize the shorter side (relative to
    the target) and centre-crop the longer one to ``h x w`` with torchvision's CenterCrop rounding.
    """
    from PIL import Image

    iw, ih = img.size
    if iw * h <= ih * w:  # relatively taller than the target: width fits, crop height
        nw, nh = w, (ih * w) // iw  # floor, like torchvision's int(size * long / short)
    else:
        nw, nh = (iw * h) // ih, h
    img = img.resize((nw, nh), Image.BILINEAR)
    if (nw, nh) != (w, h):
        top = int(round((nh - h) / 2.0))
        left = int(round((nw - w) / 2.0))
        img = img.crop((left, top, left + w, top + h))
    return img


def _load_folder(directory: Path, shape: tuple[int, int, int], limit: int | None) -> torch.Tensor:
    files = _list_images(directory)
    if limit is not None:
        files = files[:limit]
    c, h, w = shape
    out = np.empty((len(files), h, w, c), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(files[i], shape)

    # PIL releases the GIL while decoding, so threads give a real speed-up on ~50k small JPEGs.
    workers = max(1, min(32, os.cpu_count() or 1, len(files)))
    if workers == 1:
        for i in range(len(files)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first decode error in the caller (it names the file).
            list(pool.map(work, range(len(files))))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


def _u8_to_float(x: torch.Tensor) -> torch.Tensor:
    # x / 127.5 - 1 is bitwise equal to ToTensor() + Normalize(0.5, 0.5) for all 256 byte values in fp32.
    return x.float().div_(127.5).sub_(1.0)


def _check_u8(images_u8: torch.Tensor) -> None:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        got = (
            f"{images_u8.dtype} {tuple(images_u8.shape)}"
            if isinstance(images_u8, torch.Tensor)
            else type(images_u8)
        )
        raise ValueError(f"expected a uint8 tensor of shape (N, C, H, W), got {got}")


class BatchStream:
    """Infinite iterator of ``(batch_size, C, H, W)`` float32 batches in [-1, 1] on ``device``.

    Each epoch is a fresh ``torch.randperm`` drawn from the stream's own CPU generator (seeded with
    ``seed``, so the global RNG used by the sampler is untouched); incomplete final batches are dropped
    (the reference uses ``drop_last=True``). With ``flip=True`` every image is mirrored horizontally with
    probability 0.5, drawn from the same generator right after the batch's indices are taken.

    ``epoch`` is the 0-based index of the epoch the next batch comes from (until a rollover happens
    lazily on the next call) and ``position`` is how many entries of the current permutation have been
    consumed. :meth:`state_dict` / :meth:`load_state_dict` capture both plus the permutation and the
    generator state, so a restored stream continues bitwise identically.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        flip: bool,
        device: torch.device | str,
    ) -> None:
        _check_u8(images_u8)
        n = images_u8.shape[0]
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if n < batch_size:
            raise ValueError(
                f"data set has {n} images but batch_size is {batch_size}: with drop_last no full batch "
                "can be formed (use a smaller batch_size or more data)"
            )
        self.images = images_u8
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.device = torch.device(device)
        # Pinned host memory + non_blocking lets the small uint8 copy overlap with GPU work; only
        # meaningful (and only allowed) when copying from CPU to CUDA.
        self._pin = self.device.type == "cuda" and images_u8.device.type == "cpu"
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self.epoch = 0
        self.position = 0
        self.permutation = torch.randperm(n, generator=self.generator)

    def __len__(self) -> int:
        """Number of batches per epoch (drop_last)."""
        return self.images.shape[0] // self.batch_size

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        n = self.images.shape[0]
        if self.position + self.batch_size > n:
            self.epoch += 1
            self.position = 0
            self.permutation = torch.randperm(n, generator=self.generator)
        idx = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        flip_mask = torch.rand(self.batch_size, generator=self.generator) < 0.5 if self.flip else None

        batch = self.images.index_select(0, idx.to(self.images.device))
        if self._pin:
            batch = batch.pin_memory()
        # Transfer the uint8 batch (4x smaller than fp32) and do flip + normalisation on the device.
        batch = batch.to(self.device, non_blocking=self._pin)
        if flip_mask is not None:
            mask = flip_mask.to(self.device, non_blocking=False).view(-1, 1, 1, 1)
            batch = torch.where(mask, batch.flip(-1), batch)
        return _u8_to_float(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "permutation": self.permutation.clone(),
            "generator": self.generator.get_state().clone(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_images": int(self.images.shape[0]),
            "flip": self.flip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(self.images.shape[0])
        perm = torch.as_tensor(state["permutation"], dtype=torch.int64).cpu()
        if perm.shape != (n,):
            raise ValueError(f"stream state is for {perm.numel()} images but this stream has {n}")
        for key, mine in (("num_images", n), ("batch_size", self.batch_size), ("flip", self.flip)):
            if key in state and state[key] != mine:
                raise ValueError(f"stream state has {key}={state[key]!r} but this stream has {key}={mine!r}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.permutation = perm.clone()
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu().clone())


def fixed_batch(images_u8: torch.Tensor, n: int, device: torch.device | str) -> torch.Tensor:
    """The first ``n`` images as float32 in [-1, 1] on ``device``, no augmentation.

    Used for reconstruction grids (on the test split), so the same images are shown every time.
    """
    _check_u8(images_u8)
    if not 1 <= n <= images_u8.shape[0]:
        raise ValueError(f"fixed_batch needs 1 <= n <= {images_u8.shape[0]} (number of images), got n={n}")
    return _u8_to_float(images_u8[:n].to(torch.device(device)))
