"""Draws on given noise: the DAMC prior draw and G with every random number passed in (spec ``damc.md`` §2, eq. 5).

:func:`prior_latents` is :func:`engine.sampling.draws.amortizer_sample` with its draws replaced by a
:class:`~engine.sampling.noise.PriorNoise`; ``python -m engine.sample``, the exported graphs
(:mod:`engine.export.graphs`) and the learners' seeded sample streams all run it, so an fp32 artifact and the
engine compute the same arithmetic on the same noise.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.sampling.diffusion import SamplerTable, ancestral_sample
from engine.sampling.noise import PriorNoise

__all__ = ["PriorNet", "decode", "precision_autocast", "prior_latents"]


class PriorNet(Protocol):
    """What the prior draw needs of an amortizer (:class:`engine.models.Amortizer` has both)."""

    def null_embedding(self, xi: Tensor) -> Tensor:
        """ξ (B, nz) -> xemb (B, nemb)."""
        ...

    def __call__(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        """ε̂ (B, nz) for z (B, nz), λ (B,), xemb (B, nemb)."""
        ...


def precision_autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def prior_latents(net: PriorNet, table: SamplerTable, noise: PriorNoise, *, with_noise: bool = True,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """ẑ0 (B, nz) of the unconditional draw on given noise: xemb = null(ξ), then the ancestral sampler from z_T.

    The same computation as :func:`engine.sampling.draws.amortizer_sample` with its random draws replaced by
    ``noise`` (for fp32 it is the same arithmetic, op for op). ``with_noise=False`` is the config's
    ``diffusion.sampler_noise: false`` (ε is then ignored).
    """
    device_type = noise.z.device.type
    with precision_autocast(device_type, dtype):
        xemb = net.null_embedding(noise.xi).float()

    def denoise(z: Tensor, lam: Tensor) -> Tensor:
        with precision_autocast(device_type, dtype):
            return net(z, lam, xemb).float()

    return ancestral_sample(denoise, noise.z, table, noise=noise.eps, with_noise=with_noise)


def decode(generator: nn.Module, z: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """G(z): (B, nz) -> (B, C, H, W) fp32 in [−1, 1]."""
    with precision_autocast(z.device.type, dtype):
        return generator(z).float()
