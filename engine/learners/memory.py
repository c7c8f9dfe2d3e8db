"""Memory floors made before any work (no tensor is allocated): the parts of an estimate and the activation sizes
of a layer stack, for each learner's :meth:`Method.estimate <engine.learners.base.Method>`.

The networks are built on PyTorch's ``meta`` device (shapes only, no memory, no RNG draws) and their layers'
output sizes summed: the activation memory per image. An estimate is a floor (it leaves out allocator slack, the
data set and library workspaces), so :mod:`engine.run.budget` refuses only what certainly cannot run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.config import Config
from engine.models import IMAGE_SHAPES, build_networks

__all__ = ["F32", "Estimate", "activation_bytes", "human_bytes", "latent_ebm_estimate"]

F32 = 4


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

    parameters: int  # weights + gradients + Adam moments of every trained network, and EMA copies
    activations: int  # the training iteration's peak at train.batch_size (or the evaluation batch)
    grids: int  # the grids of eval.n_samples images
    sampler_table: int  # DAMC: diffusion.n_steps coefficients (fp32 on the device, float64 while built); else 0

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.grids + self.sampler_table

    def describe(self) -> str:
        parts = {"parameters and optimizer state (model.*)": self.parameters,
                 "activations (train.batch_size / evaluation batch)": self.activations,
                 "grids (eval.n_samples)": self.grids, "sampler table (diffusion.n_steps)": self.sampler_table}
        biggest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
        return ", ".join(f"{k} {human_bytes(v)}" for k, v in biggest)


def activation_bytes(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
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
        size = F32 * math.prod(cur)
        total += size
        largest = max(largest, size)
    return total, largest


def latent_ebm_estimate(cfg: Config, batch: int | None = None, with_amortizer: bool = True) -> Estimate:
    """DAMC's (and, without Q, LEBM's) memory floor for training with ``cfg`` (``batch``: the evaluation batch
    instead of train.batch_size)."""
    c, h, w = IMAGE_SHAPES[cfg.model.arch]
    nz = cfg.model.nz
    with torch.device("meta"):  # shapes only: no memory, no RNG draws
        nets = build_networks(cfg.model, with_amortizer=with_amortizer)
    act_g, layer_g = activation_bytes(nets.generator, (nz, 1, 1))
    act_e, _ = activation_bytes(nets.energy, (nz,))
    act_enc = act_q = 0
    if nets.amortizer is not None:
        act_enc, _ = activation_bytes(nets.amortizer.encoder, (c, h, w))
        # The U-Net is a stack of linear blocks on latents: count its linear outputs and one activation each.
        act_q = 2 * F32 * sum(m.out_features for m in nets.amortizer.unet.modules() if isinstance(m, nn.Linear))
    n_g = sum(p.numel() for p in nets.generator.parameters())
    n_e = sum(p.numel() for p in nets.energy.parameters())
    n_q = sum(p.numel() for p in nets.amortizer.parameters()) if nets.amortizer is not None else 0
    # weight + gradient + two Adam moments for every trained network, plus the EMA copy of Q.
    params = F32 * (4 * (n_g + n_e + n_q) + n_q)
    b = batch if batch is not None else cfg.train.batch_size
    # A step with a backward pass keeps its forward's activations: G on B images in the posterior chain and
    # the G update, E on 2B latents in the prior chain, encoder + U-Net in the amortizer update.
    image = c * h * w * F32
    activations = max(b * (act_g + image), 2 * b * act_e, b * (act_enc + act_q + image))
    # Grids: sampling without gradients holds about two layers at a time; reconstructions (n/2 test images)
    # take gradients through G.
    n = cfg.eval.n_samples
    grids = max(n * 2 * layer_g, max(1, n // 2) * (act_g + image))
    table = cfg.diffusion.n_steps * (6 * F32 + 10 * 8)
    return Estimate(params, activations, grids, table)
