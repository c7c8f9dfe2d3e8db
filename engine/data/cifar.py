"""CIFAR-10 in its python distribution: the pickle batches (``cifar-10-batches-py/``) or their ``.tar.gz``.

Batches are read with a restricted unpickler (numpy arrays, dicts, lists, bytes and ints only); the archive is
read by exact member names and extracted atomically; a missing archive is downloaded (md5 checked) when allowed.
"""

from __future__ import annotations

import codecs
import functools
import io
import pickle
import sys
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from engine.data.download import RemoteFile, _obtain
from engine.files import atomic_write

__all__ = ["CIFAR10_ARCHIVE", "CIFAR10_DIR", "load_cifar10", "read_cifar_batch"]

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
        allowed[(mod, "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]  # pickle protocol 5
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


def _write_bytes(f: IO[bytes], data: bytes) -> None:
    f.write(data)


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
            atomic_write(folder / name, functools.partial(_write_bytes, data=data))
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
