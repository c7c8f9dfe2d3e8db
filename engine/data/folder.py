"""Image folders laid out like torchvision's ``ImageFolder`` (class labels ignored), decoded with PIL.

Files are listed recursively in sorted relative-path order (independent of the file system), decoded on a
thread pool (PIL releases the GIL) and resized like ``Resize(int)`` plus a centre crop. A file that is not a
decodable image (zero bytes, truncated, a text file named ``.jpg``) or that declares more than
:data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb: a few KB that decode to gigabytes) is a ``ValueError``
naming the file, raised before it is decoded.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.pixels import check_shape

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "FolderSpec", "cover_geometry", "decode_image", "list_images",
           "load_folder", "read_header", "resize_cover", "spread_indices"]

#: File suffixes (compared case-insensitively) that the folder source accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: Largest image accepted (width x height): 64 megapixels, 8000 x 8000, far above any training image. PIL's own
#: guard only warns up to twice its limit; we refuse from the header, before anything is decoded.
MAX_IMAGE_PIXELS = 64 * 2**20
_HEADER_LOCK = threading.Lock()


class _TooLarge(ValueError):
    """Our own size refusal (its message already names the file)."""


def _open_checked(path: Path, data: Any = None) -> Any:
    """``PIL.Image.open`` of ``path`` (or of the bytes ``data``) after checking the declared size; lazy decode."""
    import io

    from PIL import Image

    with _HEADER_LOCK, warnings.catch_warnings():
        # We check the size ourselves below; PIL's warning would add a second stderr line for the same problem.
        # catch_warnings swaps process-wide state, hence the lock (only the header is parsed under it).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data) if data is not None else path)
        except Image.DecompressionBombError as exc:  # PIL's own refusal above twice its limit
            raise _TooLarge(f"image file {path}: {exc} (a decompression bomb or a wrong file); remove or shrink "
                            "it") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise _TooLarge(f"image file {path} declares {w}x{h} pixels, over the {MAX_IMAGE_PIXELS // 2**20} "
                         "megapixel limit (a decompression bomb or a wrong file); remove or shrink it")
    return im


def read_header(path: Path, data: bytes | None = None, verify: bool = False) -> tuple[int, int]:
    """``(width, height)`` from the image header; a ``ValueError`` naming the file if it is not an image.

    ``verify``: also run PIL's integrity check without decoding (PNG: every chunk and its CRC, so a truncated
    PNG is found; for JPEG it checks little).
    """
    try:
        with _open_checked(path, data) as im:
            size = im.size
            if verify:
                im.verify()
            return size
    except _TooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed files; each means "not an image"
        raise ValueError(f"could not decode image file {path}: {_why(path, e)}") from None


def _why(path: Path, exc: BaseException) -> str:
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        pass
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def list_images(directory: Path) -> list[Path]:
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


def decode_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    try:
        with _open_checked(path) as im:
            img = im.convert("RGB" if c == 3 else "L")  # convert() forces the full decode here
    except _TooLarge:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed files; each means "not an image"
        raise ValueError(f"could not decode image file {path}: {_why(path, e)}") from None
    if img.size != (w, h):
        img = resize_cover(img, h, w)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def cover_geometry(iw: int, ih: int, h: int, w: int) -> tuple[int, int, int, int]:
    """``(nh, nw, top, left)`` taking an ``iw x ih`` image to ``w x h`` like torchvision's ``Resize(int)`` + crop.

    The shorter side (relative to the target) goes to the target and the other side is floored, like
    torchvision's ``int(size * long / short)``; the crop offsets are torchvision's CenterCrop rounding (Python's
    round). Shared by the PIL path (:func:`resize_cover`) and the DALI folder pipeline, so both crop alike.
    """
    if (iw, ih) == (w, h):
        return h, w, 0, 0
    if iw * h <= ih * w:  # relatively taller than the target: width fits, crop height
        nw, nh = w, (ih * w) // iw
    else:
        nw, nh = (iw * h) // ih, h
    return nh, nw, int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))


def resize_cover(img: Any, h: int, w: int) -> Any:
    """Resize a PIL image to ``h x w`` the way torchvision's ``Resize(int)`` does, plus a centre crop.

    For square images and a square target this is exactly ``Resize(h)`` (PIL bilinear with antialiasing, as
    torchvision uses for PIL inputs). For other aspect ratios, ``Resize(int)`` alone would give a non-square
    image that cannot be batched, so we resize the shorter side (relative to the target) and centre-crop the
    longer one to ``h x w`` (:func:`cover_geometry`).
    """
    from PIL import Image

    iw, ih = img.size
    nh, nw, top, left = cover_geometry(iw, ih, h, w)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if (nw, nh) != (w, h):
        img = img.crop((left, top, left + w, top + h))
    return img


def spread_indices(n_files: int, n: int, seed: int) -> list[int]:
    """``n`` of ``n_files`` indices drawn without replacement by a generator seeded with ``seed``, sorted.

    Reconstruction grids use it on the test split: the first files of a class-sorted folder are one class.
    """
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_files, generator=g)[: min(n, n_files)].tolist())


def load_folder(directory: Path, shape: tuple[int, int, int], limit: int | None,
                pick: list[int] | None = None) -> torch.Tensor:
    """Decode the folder's images (the first ``limit``, or the files at the indices ``pick``)."""
    files = list_images(directory)
    if pick is not None:
        files = [files[i] for i in pick]
    elif limit is not None:
        files = files[:limit]
    c, h, w = shape
    out = np.empty((len(files), h, w, c), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(files[i], shape)

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


@dataclass(frozen=True)
class FolderSpec:
    """An image folder to train on (``torchvision.ImageFolder`` layout, labels ignored), not yet decoded.

    ``directory`` is the split folder itself (e.g. ``<root>/train``); files are ordered like
    :func:`engine.data.load_images` orders them, and ``limit`` keeps the first ``limit`` of them. Loaders
    that need the pixels in memory call :meth:`decode`; the DALI folder pipeline reads the files per batch.
    """

    directory: Path
    image_shape: tuple[int, int, int]
    limit: int | None = None

    @cached_property
    def files(self) -> list[Path]:
        """The image files in loading order (listed once; a folder of 160k files takes ~1 s to walk)."""
        files = list_images(Path(self.directory))
        return files if self.limit is None else files[: self.limit]

    def check_headers(self) -> None:
        """Read every file's header and run PIL's verify (no decode); a ``ValueError`` names the first file that
        is not an image, is a truncated PNG or is a decompression bomb. The DALI loader decodes per batch, so
        this is its start-up check (a JPEG truncated after its header is only found when DALI decodes it)."""
        files = self.files
        workers = max(1, min(32, os.cpu_count() or 1, len(files)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda p: read_header(p, verify=True), files))

    def decode(self) -> torch.Tensor:
        """All images as a uint8 ``(N, C, H, W)`` CPU tensor, exactly as ``load_images`` gives them."""
        return load_folder(Path(self.directory), check_shape(self.image_shape), self.limit)

    def decoded_bytes(self) -> int:
        """Size of the decoded uint8 set (what a memory-resident loader would hold)."""
        c, h, w = self.image_shape
        return len(self.files) * c * h * w
