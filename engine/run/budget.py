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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.config import Config, ConfigError
from engine.models import IMAGE_SHAPES, build_networks

__all__ = ["Estimate", "available_bytes", "check_fits", "estimate", "human_bytes"]

_F32 = 4


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.50 KiB'``: three significant figures, so two different sizes never print the same."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


@dataclass(frozen=True)
class Estimate:
    """Bytes per part; ``total`` is their sum."""

    parameters: int  # weights + gradients + Adam moments of G, E, Q, and the EMA copy of Q
    activations: int  # the training iteration's peak at train.batch_size (or the evaluation batch)
    grids: int  # the grids of eval.n_samples images
    sampler_table: int  # diffusion.n_steps coefficients (fp32 on the device, float64 while built)

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.grids + self.sampler_table

    def describe(self) -> str:
        parts = {"parameters and optimizer state (model.*)": self.parameters,
                 "activations (train.batch_size / evaluation batch)": self.activations,
                 "grids (eval.n_samples)": self.grids, "sampler table (diffusion.n_steps)": self.sampler_table}
        biggest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
        return ", ".join(f"{k} {human_bytes(v)}" for k, v in biggest)


def _activation_bytes(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(sum, largest)`` of the leaf layers' output sizes (bytes, fp32) for one input of ``shape`` (no batch).

    Shapes are propagated through the layers in registration order (the forward order of these stacks) with
    the convolution formulas, so nothing is allocated or run; a layer of another kind keeps the shape.
    """
    total = largest = 0
    cur = shape
    for m in module.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.ConvTranspose2d):
            h, w = cur[-2:] if len(cur) == 3 else (1, 1)
            k, s, p = m.kernel_size, m.stride, m.padding
            assert isinstance(p, tuple)  # ConvTranspose2d padding is always a pair
            cur = (m.out_channels, (h - 1) * s[0] - 2 * p[0] + k[0], (w - 1) * s[1] - 2 * p[1] + k[1])
        elif isinstance(m, nn.Conv2d):
            h, w = cur[-2:]
            k, s, p = m.kernel_size, m.stride, m.padding
            if not isinstance(p, tuple):  # padding="same" / "valid" are not used by these stacks
                p = (0, 0)
            cur = (m.out_channels, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)
        elif isinstance(m, nn.Linear):
            cur = (m.out_features,)
        elif not any(True for _ in m.parameters(recurse=False)) and not isinstance(
                m, (nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.SiLU, nn.Identity)):
            continue  # a parameter-free helper that is not a layer of the stack (e.g. a flatten): no new tensor
        size = _F32 * math.prod(cur)
        total += size
        largest = max(largest, size)
    return total, largest


def estimate(cfg: Config, batch: int | None = None) -> Estimate:
    """Memory floor for training with ``cfg`` (``batch``: the evaluation batch instead of train.batch_size)."""
    damc = cfg.method == "damc"
    c, h, w = IMAGE_SHAPES[cfg.model.arch]
    nz = cfg.model.nz
    with torch.device("meta"):  # shapes only: no memory, no RNG draws
        nets = build_networks(cfg.model, with_amortizer=damc)
    act_g, layer_g = _activation_bytes(nets.generator, (nz, 1, 1))
    act_e, _ = _activation_bytes(nets.energy, (nz,))
    act_enc = act_q = 0
    if nets.amortizer is not None:
        act_enc, _ = _activation_bytes(nets.amortizer.encoder, (c, h, w))
        # The U-Net is a stack of linear blocks on latents: count its linear outputs and one activation each.
        act_q = 2 * _F32 * sum(m.out_features for m in nets.amortizer.unet.modules() if isinstance(m, nn.Linear))
    n_g = sum(p.numel() for p in nets.generator.parameters())
    n_e = sum(p.numel() for p in nets.energy.parameters())
    n_q = sum(p.numel() for p in nets.amortizer.parameters()) if nets.amortizer is not None else 0
    # weight + gradient + two Adam moments for every trained network, plus the EMA copy of Q.
    params = _F32 * (4 * (n_g + n_e + n_q) + n_q)
    b = batch if batch is not None else cfg.train.batch_size
    # A step with a backward pass keeps its forward's activations: G on B images in the posterior chain and
    # the G update, E on 2B latents in the prior chain, encoder + U-Net in the amortizer update.
    image = c * h * w * _F32
    activations = max(b * (act_g + image), 2 * b * act_e, b * (act_enc + act_q + image))
    # Grids: sampling without gradients holds about two layers at a time; reconstructions (n/2 test images)
    # take gradients through G.
    n = cfg.eval.n_samples
    grids = max(n * 2 * layer_g, max(1, n // 2) * (act_g + image))
    table = cfg.diffusion.n_steps * (6 * _F32 + 10 * 8)
    return Estimate(params, activations, grids, table)


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
