"""Crash-safe file writes: nothing the engine writes is ever left half-written under its final name.

* :func:`atomic_write`: whole files (checkpoints, config, grids, results) through a temporary file in the same
  directory, fsync, rename. A crash leaves the old file or the new one, plus at worst a stale temporary file
  (``.<name>.<random>.tmp``) that :func:`remove_stale_temporaries` deletes at the next start.
* :class:`LineLog`: an append-only JSON-lines file (``metrics.jsonl``) where every append is a whole line or
  nothing: a failed write (disk full) is truncated back, and :func:`repair_torn_tail` drops a torn last line
  that a ``kill -9`` or a power cut left behind.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["LineLog", "atomic_write", "cache_root", "remove_stale_temporaries", "repair_torn_tail", "strict_json",
           "truncate_lines"]


class _Recording:
    """A binary file wrapper that remembers the first ``OSError`` its ``write`` raised.

    Some writers swallow the error and raise their own: ``torch.save`` turns a full disk into
    ``RuntimeError: unexpected pos ...``. :func:`atomic_write` re-raises the recorded ``OSError`` instead, so the
    caller sees ``ENOSPC`` and can say "disk full".
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:  # flush, tell, seek, fileno ... go to the real file
        return getattr(self._f, name)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory: fsync, chmod, rename, fsync the directory.

    On any failure (full disk, permissions, an exception in ``write``) the temporary file is removed and
    whatever was at ``path`` before is untouched; an ``OSError`` raised inside a write is re-raised as itself
    even when the writer converted it (see :class:`_Recording`). ``mode`` replaces mkstemp's 0600.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    rec: _Recording | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)  # type: ignore[arg-type]  # duck-typed IO[bytes]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if rec is not None and rec.error is not None and exc is not rec.error and not isinstance(exc, OSError):
            err = rec.error
            raise OSError(err.errno, err.strerror, str(path)) from None
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable; some filesystems cannot fsync a directory
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def cache_root() -> Path:
    """The engine's cache directory: ``$DAMC_CACHE``, else ``~/.cache/damc`` (named after the project)."""
    root = os.environ.get("DAMC_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "damc"


def remove_stale_temporaries(directory: Path, names: Iterable[str]) -> list[str]:
    """Delete the temporary files :func:`atomic_write` left for the final names matching ``names`` (globs).

    Only call this while holding the directory's lock: a temporary file of a live writer looks the same.
    Returns the names removed.
    """
    removed: list[str] = []
    for pattern in names:
        for p in sorted(directory.glob(f".{pattern}.*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


class LineLog:
    """An append-only text file of whole lines: each :meth:`append` lands completely or not at all.

    The file is opened with ``O_APPEND``; an append is one ``os.write`` loop of the encoded line. If any part
    fails (``ENOSPC``, ``EIO``), the file is truncated back to its length before the append and the ``OSError``
    is raised, so the file never holds a partial line. Lines are flushed to the OS at once (a crash of the
    process loses nothing written; a power cut may lose the last lines, never tear the file in the middle).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, line: str) -> None:
        data = (line.rstrip("\n") + "\n").encode("utf-8")
        start = os.fstat(self._fd).st_size
        done = 0
        try:
            while done < len(data):
                n = os.write(self._fd, data[done:])
                if n <= 0:  # pragma: no cover - a regular file never returns 0 for a non-empty write
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                done += n
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_torn_tail(path: Path) -> int:
    """Drop a last line that has no newline (a write torn by a crash); returns the bytes removed (0 if none)."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Find the last newline by reading backwards in blocks.
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def truncate_lines(path: Path, keep: Callable[[bytes], bool]) -> int:
    """Cut ``path`` before the first line for which ``keep`` is false; returns the number of lines removed.

    Used on resume to drop metrics lines of iterations after the checkpoint (they are recomputed bitwise).
    The cut is a truncation at a line boundary, so the kept prefix is never rewritten.
    """
    if not path.is_file():
        return 0
    offset, cut_at, removed = 0, -1, 0
    with open(path, "rb") as f:
        for line in f:
            if cut_at < 0 and not keep(line):
                cut_at = offset
            if cut_at >= 0:
                removed += 1
            offset += len(line)
    if cut_at >= 0:
        with open(path, "rb+") as f:
            f.truncate(cut_at)
            f.flush()
            os.fsync(f.fileno())
    return removed


def strict_json(value: Any, where: str = "", found: list[str] | None = None) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN / Infinity); the paths
    of the replaced values are appended to ``found``."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(where or "value")
        return None
    if isinstance(value, dict):
        return {k: strict_json(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value
