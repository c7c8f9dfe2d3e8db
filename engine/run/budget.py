"""Will the configured sizes fit in memory? An estimate made before any work (no tensor is allocated).

The sizes that decide memory are the network widths (``model.*``: parameters, gradients, Adam moments and the
EMA copy), ``train.batch_size`` (activations kept for the backward passes of the chains and updates),
``eval.n_samples`` (the grids), ``diffusion.n_steps`` (the sampler table) and, for evaluation, the batch of
generated images. The networks are built on PyTorch's ``meta`` device (shapes only, no memory, no RNG draws)
and run once on a one-image meta batch, with forward hooks summing every layer's output size: that is the
activation memory per image. The estimate is a floor (it leaves out allocator slack, the data set and
library workspaces), so it refuses only what certainly cannot run; it compares with the memory available
now (``MemAvailable`` and the cgroup limit on CPU, free memory on the GPU).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from engine import learners
from engine.config import Config, ConfigError
from engine.learners.memory import Estimate, human_bytes

__all__ = ["Estimate", "available_bytes", "check_fits", "estimate", "human_bytes"]


def estimate(cfg: Config, batch: int | None = None) -> Estimate:
    """Memory floor for training with ``cfg`` (``batch``: the evaluation batch instead of train.batch_size), as
    the run's learner estimates it (:mod:`engine.learners.memory`)."""
    est = learners.get(cfg.method).estimate(cfg, batch)
    assert isinstance(est, Estimate)
    return est


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a run can use now on ``device``; None when it cannot be told."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:
            return None
        return int(free)
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_limit()
    return min(avail, limit) if limit is not None else avail


def check_fits(cfg: Config, device: torch.device, batch: int | None = None, what: str = "this run") -> Estimate:
    """Raise :class:`ConfigError` (one line) when the estimate exceeds the memory available on ``device``."""
    est = estimate(cfg, batch)
    avail = available_bytes(device)
    if avail is not None and est.total > avail:
        need = human_bytes(est.total)
        raise ConfigError(
            f"{what} needs at least {need} of memory ({est.describe()}) but {human_bytes(avail)} is available on "
            f"{device.type}; lower the sizes that decide memory (model widths such as model.nz / model.ngf, "
            f"train.batch_size, eval.n_samples)"
        )
    if not math.isfinite(est.total):  # pragma: no cover - integers only
        raise ConfigError(f"{what}: sizes too large to estimate")
    return est
