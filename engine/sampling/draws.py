"""The draws of the DAMC iteration bound to the engine's networks, as pure functions (spec ``damc.md`` §2-§3).

* :func:`amortizer_sample`: z ~ Q(z | x) (conditional) or Q(z | null token ξ) (unconditional) with the 100-step
  ancestral sampler (paper eq. 5);
* :func:`posterior_chain` / :func:`prior_chain`: Langevin on paper eq. 16 / eq. 3 from a given start;
* :func:`amortizer_loss`: the ε-loss that distils refined samples back into Q (Algorithm 1, line 7).

Networks enter as arguments and every random draw comes from the ``torch.Generator`` passed in, in the authors'
order (spec §3 "RNG order"), so the same call with the same generator state gives the same result.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from engine.models import Networks
from engine.sampling.diffusion import SamplerTable, ancestral_sample, diffusion_loss
from engine.sampling.langevin import energy_grad, langevin_chain, posterior_energy, prior_energy

__all__ = ["AmortizerNet", "amortizer_loss", "amortizer_loss_given", "amortizer_sample", "draw_loss_noise",
           "posterior_chain", "prior_chain"]


class AmortizerNet(Protocol):
    """What the draws need from an amortizer: :class:`engine.models.Amortizer`, or the toy's small model."""

    def cond_embedding(self, x: Tensor) -> Tensor:
        """Image (or observation) embedding (B, nemb)."""
        ...

    def null_embedding(self, xi: Tensor) -> Tensor:
        """Embedding of the random null token ξ ~ N(0, I) (B, nz) -> (B, nemb)."""
        ...

    def __call__(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        """ε̂(z_λ, λ, xemb): z (B, nz), λ (B,), xemb (B, nemb) -> (B, nz)."""
        ...


def amortizer_sample(amortizer: AmortizerNet, table: SamplerTable, rng: torch.Generator, *,
                     x: Tensor | None = None, n: int | None = None, nz: int,
                     with_noise: bool = True) -> Tensor:
    """Draw z (B, nz) with the ancestral sampler: conditional on images x, or unconditional (n rows).

    The unconditional branch embeds a random null token ξ ~ N(0, I), drawn once per sample and kept for
    all steps (spec §1.4). Draw order: [ξ], z_T, then one ε per step.
    """
    with torch.no_grad():
        if x is not None:
            xemb = amortizer.cond_embedding(x)  # (B, nemb), computed once for all steps
            b, device = x.shape[0], x.device
        else:
            assert n is not None
            device = table.logsnr.device
            xi = torch.randn(n, nz, generator=rng, device=device)
            xemb = amortizer.null_embedding(xi)
            b = n
        z = torch.randn(b, nz, generator=rng, device=device)
        return ancestral_sample(lambda zt, lam: amortizer(zt, lam, xemb), z, table, generator=rng,
                                with_noise=with_noise)


def amortizer_loss(amortizer: AmortizerNet, z0: Tensor, x: Tensor, keep: Tensor, rng: torch.Generator,
                   logsnr_min: float, logsnr_max: float) -> Tensor:
    """ε-loss on targets z0 (B, nz); row i is conditional where keep[i] = 1, else the random null token.

    Draw order per call (spec §3 RNG order): ξ (B, nz), u (B,), ε (B, nz).
    """
    b, nz = z0.shape
    xi, u, eps = draw_loss_noise(rng, b, nz, z0.device)
    return amortizer_loss_given(amortizer, z0, x, keep, xi, u, eps, logsnr_min, logsnr_max)


def draw_loss_noise(rng: torch.Generator, b: int, nz: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The randomness of one ε-loss in the authors' order: ξ (B, nz) ~ N(0, I), u (B,) ~ U(0, 1), ε (B, nz)."""
    xi = torch.randn(b, nz, generator=rng, device=device)
    u = torch.rand(b, generator=rng, device=device)
    eps = torch.randn(b, nz, generator=rng, device=device)
    return xi, u, eps


def amortizer_loss_given(amortizer: AmortizerNet, z0: Tensor, x: Tensor, keep: Tensor, xi: Tensor, u: Tensor,
                         eps: Tensor, logsnr_min: float, logsnr_max: float) -> Tensor:
    """:func:`amortizer_loss` with its randomness passed in: ξ (B, nz) null-token noise, u (B,) times, ε (B, nz).

    Pure: the same inputs give the same loss, bit for bit, whichever way the draws were made.
    """
    k = keep[:, None]
    xemb = k * amortizer.cond_embedding(x) + (1 - k) * amortizer.null_embedding(xi)
    return diffusion_loss(amortizer, z0, xemb, u, eps, logsnr_min, logsnr_max)


def posterior_chain(nets: Networks, x: Tensor, z: Tensor, sigma: float, n_steps: int, step_size: float,
                    with_noise: bool, rng: torch.Generator) -> Tensor:
    """Langevin on ‖x − G(z)‖²/(2σ²) + E(z) + ½‖z‖² (eq. 16) from z (B, nz)."""
    fn = posterior_energy(nets.generator, nets.energy, x, sigma)
    return langevin_chain(z, lambda zz: energy_grad(fn, zz), n_steps, step_size, generator=rng,
                          with_noise=with_noise)


def prior_chain(nets: Networks, z: Tensor, n_steps: int, step_size: float, with_noise: bool,
                rng: torch.Generator) -> Tensor:
    """Langevin on E(z) + ½‖z‖² (eq. 3) from z (B, nz)."""
    fn = prior_energy(nets.energy)
    return langevin_chain(z, lambda zz: energy_grad(fn, zz), n_steps, step_size, generator=rng,
                          with_noise=with_noise)
