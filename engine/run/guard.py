"""Divergence guard: notice non-finite losses, energies or latents without per-step host syncs.

Every iteration folds ``isfinite`` of the step's diagnostics into two device tensors (which metrics went
bad, and the first iteration each did). The host reads them only at log intervals and before a checkpoint
is written, so a checkpoint never holds a diverged state.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DivergenceGuard:
    def __init__(self) -> None:
        self.keys: list[str] | None = None
        self._bad: Tensor | None = None  # (K,) bool
        self._first: Tensor | None = None  # (K,) int64, −1 = still finite

    def update(self, metrics: dict[str, Tensor], iteration: int) -> None:
        """Device-side only: no value is read on the host here."""
        if self.keys is None:
            self.keys = sorted(metrics)
        vals = torch.stack([metrics[k].detach().float() for k in self.keys])  # (K,)
        now = ~torch.isfinite(vals)
        if self._bad is None:
            self._bad = torch.zeros_like(now)
            self._first = torch.full(now.shape, -1, dtype=torch.int64, device=now.device)
        assert self._first is not None
        self._first = torch.where(now & ~self._bad, iteration, self._first)
        self._bad = self._bad | now

    def problem(self) -> str | None:
        """Host sync: None while everything is finite, else e.g. 'loss_e (iteration 1234), energy_neg (...)'."""
        if self._bad is None or self.keys is None:
            return None
        bad, first = self._bad.tolist(), self._first.tolist()  # type: ignore[union-attr]
        items = sorted((f, k) for k, b, f in zip(self.keys, bad, first, strict=True) if b)
        if not items:
            return None
        return ", ".join(f"{k} (iteration {f})" for f, k in items)

    def reset(self) -> None:
        self._bad = self._first = None
