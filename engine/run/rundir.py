"""The run directory's housekeeping: one trainer at a time, no stale temporary files, whole metrics lines.

* :class:`RunLock`: an ``fcntl.flock`` on ``RUN_DIR/.lock``. A second trainer on the same directory is refused
  with one line naming the holder (pid, host, start time, command), which the holder writes into the file once
  it has the lock. The kernel drops the lock when the holder exits in any way (``kill -9`` included), so a
  crash never leaves the directory locked; the file itself stays (it is tiny and reused).
* :func:`remove_stale_files`: the temporary files of interrupted atomic writes (``.ckpt-*.tmp``,
  ``.config.yaml.*.tmp``, grid PNGs) and the write probe, deleted at start-up while holding the lock.
* :func:`prepare_metrics`: a torn last line of ``metrics.jsonl`` (a crash mid-append) is dropped, and lines of
  iterations after the checkpoint being resumed are cut, because the resumed run recomputes them bitwise;
  the file then reads exactly like the run that was never stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from engine.errors import UserError
from engine.files import remove_stale_temporaries, repair_torn_tail, truncate_lines

__all__ = ["LOCK_NAME", "RunDirBusy", "RunLock", "prepare_metrics", "remove_stale_files"]

LOCK_NAME = ".lock"
# Final names whose atomic-write temporaries the trainer may leave behind (globs without the leading dot).
# Grids are <name>_<7-digit iteration>.png whatever the learner names them (engine.learners.base.Grid).
TRAINER_FILES = ("ckpt-*.pt", "config.yaml", "*_" + "[0-9]" * 7 + ".png")


class RunDirBusy(UserError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock``; see the module docstring."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirBusy`. Does not change the file's contents."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, UnicodeDecodeError):
                holder = os.pread(fd, 4096, 0).decode("utf-8").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"held by {' '.join(holder.split())}" if holder else "held by another process"
                raise RunDirBusy(f"log.run_dir = {str(self.path.parent)!r}: another trainer is using it ({who}); "
                                 "wait for it to finish or stop it (Ctrl-C), or choose another log.run_dir") from None
            raise
        self._fd = fd

    def claim(self, argv: list[str] | None = None) -> None:
        """Record this process as the holder (read by a refused second trainer)."""
        if self._fd < 0:
            return
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        command = " ".join(argv if argv is not None else [os.path.basename(sys.executable), *sys.argv])
        text = f"pid {os.getpid()} on {socket.gethostname()} since {started}: {command[:500]}\n"
        with contextlib.suppress(OSError):  # the note is informative only; the lock is what matters
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode("utf-8", "backslashreplace"), 0)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_files(run_dir: Path) -> list[str]:
    """Delete what interrupted writes of a trainer left behind (call while holding the lock)."""
    removed = remove_stale_temporaries(run_dir, TRAINER_FILES)
    probe = run_dir / ".write-probe"
    if probe.exists():
        probe.unlink(missing_ok=True)
        removed.append(probe.name)
    return removed


def prepare_metrics(path: Path, resumed_at: int) -> list[str]:
    """Repair ``metrics.jsonl`` before appending: drop a torn last line and the lines after ``resumed_at``.

    Returns notices (one line each) of what was changed.
    """
    notes = []
    torn = repair_torn_tail(path)
    if torn:
        notes.append(f"metrics.jsonl: dropped a torn last line ({torn} bytes, a write cut short by a crash)")

    def before(line: bytes) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return True  # an unreadable whole line is kept as it is (never ours to judge)
        it = record.get("iteration") if isinstance(record, dict) else None
        return not isinstance(it, int) or it <= resumed_at

    cut = truncate_lines(path, before)
    if cut:
        notes.append(f"metrics.jsonl: removed {cut} lines after iteration {resumed_at} (recomputed by this run)")
    return notes
