"""Data input for the DAMC training engine (spec ``damc.md`` §3 "Data", §4 MNIST anomaly protocol).

The reference loader is torchvision's ``RandomHorizontalFlip(0.5) -> ToTensor -> Normalize(0.5, 0.5)``
with ``batch_size=128, shuffle=True, drop_last=True``; images reach the model as float32 in [-1, 1] and
there is no dequantisation. This module reproduces that pipeline without torchvision:

* :func:`load_images` decodes a whole split once into a uint8 ``(N, C, H, W)`` tensor. Sources:

  - ``digits``: the 8x8 handwritten digits shipped inside scikit-learn (the CPU quickstart);
  - ``folder``: image folders laid out like torchvision's ``ImageFolder`` (CelebA-64, CelebA-HQ, a JPEG
    export of CIFAR-10, ...; class labels are ignored), resized like ``Resize(int)``;
  - ``cifar10``: the official python pickle batches (``cifar-10-batches-py/``) or their ``.tar.gz``;
  - ``svhn``: the official ``train_32x32.mat`` / ``test_32x32.mat`` (needs scipy);
  - ``mnist``: the four IDX files (gzipped or not) with the anomaly split of spec §4.

  ``cifar10`` / ``svhn`` / ``mnist`` fetch the official files when they are absent and downloading is
  allowed (:func:`download`: checksum verified before the file appears under its final name).
* :class:`BatchStream` is an infinite, exactly resumable iterator of fixed-shape training batches: a
  per-epoch shuffle with its own generator, drop_last, optional per-image horizontal flip, and the
  uint8 -> [-1, 1] conversion done on the target device.
* :func:`fixed_batch` gives the first ``n`` images (no flip) for reconstruction grids.

Every data problem surfaces as one exception whose message names the file: missing data as
:class:`DatasetNotFoundError` (a ``FileNotFoundError``: where we looked, what we expected, how to get
it), unreadable or malformed files as ``ValueError``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from engine.files import atomic_write

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_DIR",
    "IMAGE_EXTENSIONS",
    "MNIST_FILES",
    "SVHN_FILES",
    "BatchStream",
    "DatasetNotFoundError",
    "DownloadError",
    "RemoteFile",
    "download",
    "fixed_batch",
    "load_cifar10",
    "load_images",
    "load_mnist_anomaly",
    "load_svhn",
    "read_cifar_batch",
    "read_idx",
    "read_svhn_mat",
]

#: File suffixes (compared case-insensitively) that the folder source accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Fixed train/test split of sklearn's 1,797 digits: RandomState(0) permutation, first 1,497 train.
_DIGITS_N_TRAIN = 1497
_DIGITS_SHAPE = (1, 8, 8)
_RGB32 = (3, 32, 32)
_MNIST_SHAPE = (1, 28, 28)


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

    ``data_cfg`` is any object with the attributes ``source`` ("digits" | "folder" | "mnist" |
    "cifar10" | "svhn"), ``root``, ``train_subdir`` / ``test_subdir`` (folder source, default
    "train" / "test"), ``heldout_digit`` (mnist, default 1) and ``download`` (cifar10 / svhn / mnist:
    fetch the official files when absent). A missing ``download`` attribute counts as False, so a
    hand-made config never reaches for the network by surprise (the engine's ``DataConfig`` defaults
    to True). ``flip`` is not used here (augmentation belongs to :class:`BatchStream`). ``limit`` caps
    the number of images (the first ``limit`` in the deterministic order), which keeps smoke runs and
    tests cheap.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    shape = _check_shape(image_shape)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    source = getattr(data_cfg, "source", None)
    root = getattr(data_cfg, "root", None)
    fetch = bool(getattr(data_cfg, "download", False))
    if source == "digits":
        images = _load_digits(shape, split)
        if limit is not None:
            images = images[:limit]
    elif source == "folder":
        subdir = getattr(data_cfg, f"{split}_subdir", split) or split
        images = _load_folder(Path(_need_root(root, source, "the folder with the train/test image folders")) / subdir,
                              shape, limit)
    elif source == "mnist":
        _expect_shape(shape, _MNIST_SHAPE, "mnist", "28x28 grayscale")
        where = _need_root(root, source, "the folder with the four IDX files")
        images, _ = load_mnist_anomaly(where, int(getattr(data_cfg, "heldout_digit", 1)), split, download=fetch)
        if limit is not None:
            images = images[:limit]
    elif source == "cifar10":
        _expect_shape(shape, _RGB32, "cifar10", "32x32 RGB")
        where = _need_root(root, source, f"the folder holding {CIFAR10_DIR}/ or {CIFAR10_ARCHIVE}")
        images, _ = load_cifar10(where, split, download=fetch, limit=limit)
    elif source == "svhn":
        _expect_shape(shape, _RGB32, "svhn", "32x32 RGB")
        where = _need_root(root, source, "the folder holding train_32x32.mat / test_32x32.mat")
        images, _ = load_svhn(where, split, download=fetch, limit=limit)
    else:
        raise ValueError(
            f"unknown data source {source!r}; expected 'digits', 'folder', 'mnist', 'cifar10' or 'svhn'"
        )
    return images.contiguous()


def _need_root(root: Any, source: str, what: str) -> str:
    if not root:
        raise ValueError(f"data.root must be set for source={source!r} ({what})")
    return str(root)


def _expect_shape(shape: tuple[int, int, int], want: tuple[int, int, int], source: str, what: str) -> None:
    if shape != want:
        raise ValueError(f"source={source!r} gives {what} images: image_shape must be {want}, got {shape}")


# --------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------

#: Seconds urllib waits on any one socket operation (connect or read) before giving up.
DOWNLOAD_TIMEOUT_S = 30.0


class DownloadError(OSError):
    """A download failed (network, HTTP, short read) or did not match its published checksum.

    Whatever was received has been deleted: nothing is ever left under the destination name.
    """


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are absent and could not (or were not allowed to) be downloaded.

    The message says where we looked, which files were expected and where to get them.
    """


@dataclass(frozen=True)
class RemoteFile:
    """One file of an official distribution: its name, the URLs to try in order, its published md5."""

    name: str
    urls: tuple[str, ...]
    md5: str


def _fetch(url: str, out: BinaryIO, timeout: float) -> None:
    """Stream ``url`` into ``out``. The only function here that touches the network (tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    # usedforsecurity=False: an integrity check against published sums, allowed on FIPS builds too.
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest`` and check it against the published ``md5``; returns ``dest``.

    The bytes go to a temporary file in ``dest``'s directory (same file system, so the final
    ``os.replace`` is atomic) and are renamed only once the checksum matches: an interrupted, truncated
    or wrong download never appears under the final name, and concurrent downloads cannot interleave.
    Raises :class:`DownloadError` on any failure.
    """
    dest = Path(dest)
    # Folders this call creates are removed again if it fails: a failed attempt leaves nothing behind.
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    tmp: Path | None = None
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise DownloadError(f"cannot write the download of {url} into {dest.parent}: {exc}") from None
        tmp = Path(tmp_name)
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f, timeout)
        # URLError/HTTPError/timeouts are OSErrors; IncompleteRead & co. are HTTPException; a malformed
        # URL is a ValueError. All mean "no usable file", which the caller reports in one message.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(f"could not download {url}: {reason}") from None
        got = _md5(tmp)
        if got != md5.lower():
            raise DownloadError(
                f"download of {url} failed its checksum (md5 {got}, published {md5}); the file was discarded"
            )
        os.replace(tmp, dest)
    except BaseException:  # also Ctrl-C: never leave a partial file or an empty folder behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for d in created:  # deepest first; stops at the first folder something else has written into
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return dest


def _by_hand(files: Sequence[RemoteFile]) -> str:
    """Where to get ``files`` from by hand: their URLs, or their names plus a common base URL."""
    bases = {f.urls[0].rsplit("/", 1)[0] + "/" for f in files}
    if len(files) > 1 and len(bases) == 1:
        return f"{', '.join(f.name for f in files)} from {bases.pop()}"
    return ", ".join(f.urls[0] for f in files)


def _obtain(files: Sequence[RemoteFile], root: Path, dataset: str, looked_for: str, allow: bool) -> None:
    """Download the missing official ``files`` into ``root``, or raise one :class:`DatasetNotFoundError`."""
    if not allow:
        raise DatasetNotFoundError(
            f"{dataset} not found: looked in {root} for {looked_for}. Download {_by_hand(files)} into {root}, "
            "or set data.download=true to have it fetched automatically (checksums verified)"
        )
    for f in files:
        errors = []
        for url in f.urls:  # mirrors in order; the first one that delivers the right bytes wins
            try:
                download(url, root / f.name, f.md5)
                break
            except DownloadError as exc:
                errors.append(str(exc))
        else:
            raise DatasetNotFoundError(
                f"{dataset} not found: looked in {root} for {looked_for}, and the download failed "
                f"({'; '.join(errors)}). Fetch {_by_hand(files)} by hand into {root}, or set data.download=false "
                "to skip the download attempt"
            )


# --------------------------------------------------------------------------------------------------
# CIFAR-10: python pickle batches
# --------------------------------------------------------------------------------------------------

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "c58f30108f718f92721af3b95e74349a",
)
_CIFAR10_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# Extracted next to the batches so the folder matches the official one (other tools check for them).
_CIFAR10_EXTRAS = ("batches.meta", "readme.html")


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _pickle_allowed() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 batch may reference, mapped to the objects we hand back.

    The official batches were written by Python 2 cPickle: dict / list / str / int need no globals, the
    image array needs numpy's ``_reconstruct`` + ``ndarray`` + ``dtype``. Re-pickled copies from
    Python 3 add ``_codecs.encode`` for bytes (protocol <= 2) or numpy's ``_frombuffer`` for arrays
    (protocol 5), and may name numpy 2's ``numpy._core`` modules.
    None of these can run arbitrary code; everything else (os.system, eval, ...) is refused.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar  # numpy integer labels pickled one by one
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer  # arrays under pickle protocol 5
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals of :func:`_pickle_allowed`."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _pickle_allowed()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return obj


def _unpickle_cifar(data: bytes, where: str) -> dict[bytes, Any]:
    try:
        # encoding="bytes": the Python 2 str objects of the originals (keys, label names) become bytes.
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise ValueError(
            f"{where}: refusing to unpickle: it references {exc}, which a CIFAR-10 batch never does (only "
            "dicts, lists, bytes, ints and numpy arrays); the file is not a CIFAR-10 batch or was tampered with"
        ) from None
    except Exception as exc:  # any failure of the parser on these bytes means a bad file
        raise ValueError(f"{where} is truncated or corrupt (unpickling failed: {type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a CIFAR-10 batch: expected a pickled dict, found {type(obj).__name__}")
    # Python 3 re-pickles may use str keys; normalise to the originals' bytes keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_cifar(data, where)
    x, y = batch.get(b"data"), batch.get(b"labels")
    if x is None or y is None:
        keys = ", ".join(repr(k) for k in batch)
        raise ValueError(f"{where} is not a CIFAR-10 batch: expected keys b'data' and b'labels', found {keys}")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), found {got}")
    try:
        labels = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: b'labels' must be a list of integers") from None
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{where}: {x.shape[0]} images but b'labels' has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    # Each row is the 1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major
    # order, i.e. exactly a (3, 32, 32) CHW array.
    return x.reshape(-1, 3, 32, 32), labels


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file: (images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``).

    Unpickled with a restricted unpickler; any malformed content raises ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"could not read CIFAR-10 batch {path}: {exc}") from None
    return _parse_cifar_batch(data, str(path))


def _cifar_folder(root: Path, names: Sequence[str]) -> Path | None:
    # root may hold cifar-10-batches-py/ (the archive's layout) or be that folder itself.
    for folder in (root / CIFAR10_DIR, root):
        if all((folder / n).is_file() for n in names):
            return folder
    return None


def _read_cifar_archive(archive: Path) -> dict[str, bytes]:
    """The batch files inside the official ``.tar.gz``, looked up by their exact member names.

    Nothing is extracted by the archive's own paths, so absolute or ``..`` members cannot write
    outside ``root``; links and other non-regular members are refused.
    """
    wanted = [*_CIFAR10_SPLITS["train"], *_CIFAR10_SPLITS["test"]]
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in [*wanted, *_CIFAR10_EXTRAS]:
                try:
                    member = tar.getmember(f"{CIFAR10_DIR}/{name}")
                except KeyError:
                    if name in _CIFAR10_EXTRAS:
                        continue
                    raise ValueError(
                        f"{archive} does not contain {CIFAR10_DIR}/{name}: not the CIFAR-10 python version "
                        f"({CIFAR10_ARCHIVE.urls[0]})"
                    ) from None
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise ValueError(f"{archive}: {member.name} is not a regular file")
                out[name] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # gzip errors are OSError/EOFError
        raise ValueError(f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return out


def _extract_cifar(archive: Path, root: Path) -> dict[str, bytes]:
    """Extract the batches into ``root/cifar-10-batches-py`` (each file atomically) and return them.

    If ``root`` is read-only the batches are still returned, so a shared read-only copy of the archive
    works (it is just decompressed again on every run).
    """
    blobs = _read_cifar_archive(archive)
    folder = root / CIFAR10_DIR
    try:
        folder.mkdir(exist_ok=True)
        for name, data in blobs.items():
            atomic_write(folder / name, lambda f, data=data: f.write(data))
    except OSError as exc:
        print(f"could not extract {archive} into {folder} ({exc}); reading the batches from the archive",
              file=sys.stderr)
    return blobs


def load_cifar10(
    root: str | Path, split: str, *, download: bool = False, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its python distribution: (images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``).

    Looks in ``root`` for ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5`` = train, 50,000
    images in that order; ``test_batch`` = test, 10,000), or for those files directly in ``root``, else
    for ``cifar-10-python.tar.gz`` (extracted into ``root``). With ``download`` the archive is fetched
    from the official URL when neither is there, and its published md5 checked first. An archive the
    user put there is not held to that md5 (a re-packed copy is legitimate); its batches are validated
    like any others. ``limit`` keeps the first ``limit`` images (and reads only the batches needed).
    """
    if split not in _CIFAR10_SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    names = _CIFAR10_SPLITS[split]
    folder = _cifar_folder(root, names)
    if folder is not None:
        blobs: dict[str, bytes] | None = None
        where = {n: str(folder / n) for n in names}
    else:
        archive = root / CIFAR10_ARCHIVE.name
        if not archive.is_file():
            looked_for = f"{CIFAR10_DIR}/ with {', '.join(names)}, or {CIFAR10_ARCHIVE.name}"
            _obtain([CIFAR10_ARCHIVE], root, "CIFAR-10", looked_for, download)
        blobs = _extract_cifar(archive, root)
        where = {n: f"{archive}:{CIFAR10_DIR}/{n}" for n in names}

    xs, ys, n = [], [], 0
    for name in names:
        if blobs is None:
            x, y = read_cifar_batch(where[name])
        else:
            x, y = _parse_cifar_batch(blobs[name], where[name])
        xs.append(x)
        ys.append(y)
        n += len(x)
        if limit is not None and n >= limit:
            break
    x, y = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------------
# SVHN: MATLAB .mat files
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# MNIST: IDX files, and the anomaly-detection protocol of spec §4
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Digits and image folders
# --------------------------------------------------------------------------------------------------


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


# x / 127.5 - 1 for each byte value, computed once on the CPU with true division: bitwise equal to ToTensor() +
# Normalize(0.5, 0.5) for all 256 values in fp32. Batches are normalised by looking this table up, which gives the
# same floats on every device: CUDA's `tensor / scalar` multiplies by the reciprocal instead, 1 ulp off for some
# bytes (found on an H100 by tests/test_data.py::test_stream_cuda_matches_cpu).
U8_TO_UNIT = torch.arange(256, dtype=torch.uint8).float().div_(127.5).sub_(1.0)  # (256,) fp32
_U8_TO_UNIT_ON: dict[torch.device, torch.Tensor] = {}


def _u8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) -> fp32 in [-1, 1] on x's device, bitwise equal on CPU and GPU."""
    lut = _U8_TO_UNIT_ON.get(x.device)
    if lut is None:  # one small copy per device, not one per batch
        lut = _U8_TO_UNIT_ON.setdefault(x.device, U8_TO_UNIT.to(x.device))
    return lut[x.long()]


def _check_u8(images_u8: torch.Tensor) -> None:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        got = (
            f"{images_u8.dtype} {tuple(images_u8.shape)}"
            if isinstance(images_u8, torch.Tensor)
            else type(images_u8)
        )
        raise ValueError(f"expected a uint8 tensor of shape (N, C, H, W), got {got}")


@dataclass(frozen=True)
class _Cursor:
    """Immutable snapshot of an :class:`EpochPlan` (cheap: tensors are shared, never mutated)."""

    epoch: int
    position: int
    permutation: torch.Tensor  # (N,) int64, CPU
    coins: torch.Tensor | None  # (N // B, B) bool, CPU; rows < base_k are unused after a restore
    base_state: torch.Tensor  # generator state after perm + base_k batches of coins (BatchStream's state then)
    base_k: int


class EpochPlan:
    """BatchStream's shuffle + flip-coin sequence, epoch by epoch, with BatchStream-compatible state.

    Generator consumption is identical to BatchStream's: ``randperm(n)``, then ``rand(batch_size)`` per batch
    (only when ``flip``), ``n // batch_size`` batches per epoch. Here the coins of an epoch are drawn right
    after its permutation (one small tensor the GPU loader ships once); the live generator therefore always
    sits at the end of the current epoch's draws, and :meth:`state_dict` rebuilds BatchStream's mid-epoch
    generator state by replaying the consumed draws from ``base_state`` (at most ``n // batch_size`` tiny
    draws, at checkpoint time only).
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, flip: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_images < batch_size:
            raise ValueError(
                f"data set has {num_images} images but batch_size is {batch_size}: with drop_last no full batch "
                "can be formed (use a smaller batch_size or more data)"
            )
        self.num_images = int(num_images)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.batches_per_epoch = self.num_images // self.batch_size
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        perm = torch.randperm(self.num_images, generator=self.generator)
        self.cursor = self._start(0, 0, perm)

    def _draw_coins(self, first: int) -> torch.Tensor | None:
        """Coins for batches ``first..`` of the epoch; one ``rand(B)`` per batch, exactly like BatchStream."""
        if not self.flip:
            return None
        coins = torch.zeros(self.batches_per_epoch, self.batch_size, dtype=torch.bool)
        for k in range(first, self.batches_per_epoch):
            coins[k] = torch.rand(self.batch_size, generator=self.generator) < 0.5
        return coins

    def _start(self, epoch: int, position: int, perm: torch.Tensor) -> _Cursor:
        base_state = self.generator.get_state()
        base_k = position // self.batch_size
        return _Cursor(epoch, position, perm, self._draw_coins(base_k), base_state, base_k)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Advance by one batch: ``(indices (B,) int64, coins (B,) bool or None, start in the permutation)``."""
        c = self.cursor
        if c.position + self.batch_size > self.num_images:  # lazy rollover, like BatchStream
            c = self.cursor = self._start(c.epoch + 1, 0, torch.randperm(self.num_images, generator=self.generator))
        start = c.position
        idx = c.permutation[start : start + self.batch_size]
        coins = None if c.coins is None else c.coins[start // self.batch_size]
        self.cursor = _Cursor(c.epoch, start + self.batch_size, c.permutation, c.coins, c.base_state, c.base_k)
        return idx, coins, start

    def state_dict(self, cursor: _Cursor | None = None) -> dict[str, Any]:
        """BatchStream's state for ``cursor`` (default: the current one)."""
        c = self.cursor if cursor is None else cursor
        g = torch.Generator(device="cpu")
        g.set_state(c.base_state)
        if self.flip:
            for _ in range(c.position // self.batch_size - c.base_k):
                torch.rand(self.batch_size, generator=g)
        return {
            "epoch": c.epoch,
            "position": c.position,
            "permutation": c.permutation.clone(),
            "generator": g.get_state(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_images": self.num_images,
            "flip": self.flip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts any BatchStream / loader state with matching data set size, batch size and flip."""
        n = self.num_images
        perm = torch.as_tensor(state["permutation"], dtype=torch.int64).cpu()
        if perm.shape != (n,):
            raise ValueError(f"stream state is for {perm.numel()} images but this stream has {n}")
        for key, mine in (("num_images", n), ("batch_size", self.batch_size), ("flip", self.flip)):
            if key in state and state[key] != mine:
                raise ValueError(f"stream state has {key}={state[key]!r} but this stream has {key}={mine!r}")
        position = int(state["position"])
        if position % self.batch_size or not 0 <= position <= n:
            raise ValueError(f"stream state has position={position}, not a multiple of batch_size within [0, {n}]")
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu().clone())
        self.cursor = self._start(int(state["epoch"]), position, perm.clone())


class BatchStream:
    """Infinite iterator of ``(batch_size, C, H, W)`` float32 batches in [-1, 1] on ``device``.

    The order and flips come from an :class:`EpochPlan` (its own CPU generator seeded with ``seed``, so the
    global RNG used by the sampler is untouched): a fresh ``randperm`` per epoch, incomplete final batches
    dropped (the reference uses ``drop_last=True``), and with ``flip=True`` each image mirrored with
    probability 0.5. Every loader in :mod:`engine.loaders` uses the same plan, so they all serve the same
    batches and their states are interchangeable.

    ``epoch`` is the 0-based index of the epoch the next batch comes from (until a rollover happens
    lazily on the next call) and ``position`` is how many entries of the current permutation have been
    consumed. :meth:`state_dict` / :meth:`load_state_dict` restore the stream bitwise.
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
        self.plan = EpochPlan(images_u8.shape[0], batch_size, seed=seed, flip=flip)
        self.images = images_u8
        self.batch_size, self.seed, self.flip = self.plan.batch_size, self.plan.seed, self.plan.flip
        self.device = torch.device(device)
        # Pinned host memory + non_blocking lets the small uint8 copy overlap with GPU work; only
        # meaningful (and only allowed) when copying from CPU to CUDA.
        self._pin = self.device.type == "cuda" and images_u8.device.type == "cpu"

    @property
    def epoch(self) -> int:
        return self.plan.cursor.epoch

    @property
    def position(self) -> int:
        return self.plan.cursor.position

    @property
    def permutation(self) -> torch.Tensor:
        return self.plan.cursor.permutation

    def __len__(self) -> int:
        """Number of batches per epoch (drop_last)."""
        return self.plan.batches_per_epoch

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        idx, coins, _ = self.plan.next_batch()
        batch = self.images.index_select(0, idx.to(self.images.device))
        if self._pin:
            batch = batch.pin_memory()
        # Transfer the uint8 batch (4x smaller than fp32) and do flip + normalisation on the device.
        batch = batch.to(self.device, non_blocking=self._pin)
        if coins is not None:
            mask = coins.to(self.device).view(-1, 1, 1, 1)
            batch = torch.where(mask, batch.flip(-1), batch)
        return _u8_to_float(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.plan.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_state_dict(state)


def fixed_batch(images_u8: torch.Tensor, n: int, device: torch.device | str) -> torch.Tensor:
    """The first ``n`` images as float32 in [-1, 1] on ``device``, no augmentation.

    Used for reconstruction grids (on the test split), so the same images are shown every time.
    """
    _check_u8(images_u8)
    if not 1 <= n <= images_u8.shape[0]:
        raise ValueError(f"fixed_batch needs 1 <= n <= {images_u8.shape[0]} (number of images), got n={n}")
    return _u8_to_float(images_u8[:n].to(torch.device(device)))
