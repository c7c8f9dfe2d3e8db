"""SIGINT/SIGTERM during training: the first sets a flag the loop reads between iterations (a clean stop with a
checkpoint); a second stops at once."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """SIGINT/SIGTERM set a flag checked between iterations; a second signal stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: give up on the clean stop
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
