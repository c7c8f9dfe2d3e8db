"""Crash-safe file writes: nothing the engine writes is ever left half-written under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory: fsync, chmod, rename, fsync the directory.

    On any failure (full disk, permissions, an exception in ``write``) the temporary file is removed and
    whatever was at ``path`` before is untouched. ``mode`` replaces mkstemp's 0600.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; some filesystems cannot fsync a directory
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
