"""Latent diffusion amortizer maths (spec ``damc.md`` §2): schedule, ε-loss, ancestral sampler.

Continuous-time cosine log-SNR schedule (Google diffusion-distillation conventions):
    λ(u) = −2·log tan(a·u + b),   b = arctan(exp(−λ_max/2)),   a = arctan(exp(−λ_min/2)) − b,
    α² = sigmoid(λ),   σ² = sigmoid(−λ).
The ancestral sampler is the paper's eq. 5 with γ = 1 ("large" variance, σ²_{t|s}) and a deterministic
final x-prediction at λ_max. Everything here is a pure function: networks enter as callables and all
randomness as tensors or an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DenoiseFn = Callable[[Tensor, Tensor], Tensor]  # (z_t (B, nz), logsnr (B,)) -> eps_hat (B, nz)
EpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (z_t, logsnr, xemb) -> eps_hat


def logsnr_schedule(u: Tensor, logsnr_min: float = -5.1, logsnr_max: float = 9.8) -> Tensor:
    """λ(u) for u ∈ [0, 1]; λ(0) = λ_max, λ(1) = λ_min. Computed in ``u``'s dtype."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2.0 * torch.log(torch.tan(a * u + b))


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """Variance-preserving (α, σ) with α² = sigmoid(λ), σ² = sigmoid(−λ)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


@dataclass(frozen=True)
class SamplerTable:
    """Per-step coefficients of the ancestral sampler, computed once in float64, stored in fp32.

    Row k is sampling step k = 0..T−1, i.e. the authors' loop index i = T−1−k with t = i/(T−1) and
    s = max(i−1, 0)/(T−1). One step (see :func:`ddpm_step`) is
        ẑ0  = c_x0_z·z − c_x0_eps·ε̂                      (= (z − σ_t ε̂)/α_t)
        z_s = c_mean_z·z + c_mean_x0·ẑ0 + std·ε          (posterior mean + γ=1 noise)
    with r = exp(λ_t − λ_s), c_mean_z = r·α_s/α_t, c_mean_x0 = (1 − r)·α_s, std² = (1 − r)·σ_t².
    The last row is the deterministic x-prediction: c_mean_z = 0, c_mean_x0 = 1, std = 0, so the step is
    branch-free (a later fused kernel reads the row index from device memory).
    """

    logsnr: Tensor  # (T,) λ_t fed to the network
    c_x0_z: Tensor  # (T,)
    c_x0_eps: Tensor  # (T,)
    c_mean_z: Tensor  # (T,)
    c_mean_x0: Tensor  # (T,)
    std: Tensor  # (T,)

    @property
    def n_steps(self) -> int:
        return int(self.logsnr.shape[0])

    def to(self, device: torch.device | str) -> SamplerTable:
        return SamplerTable(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def sampler_table(n_steps: int = 100, logsnr_min: float = -5.1, logsnr_max: float = 9.8,
                  device: torch.device | str = "cpu") -> SamplerTable:
    if n_steps < 2:
        raise ValueError(f"n_steps = {n_steps}: the ancestral sampler needs at least 2 steps")
    i = torch.arange(n_steps - 1, -1, -1, dtype=torch.float64)  # authors' i = T-1 ... 0
    t = i / (n_steps - 1)
    s = (i - 1).clamp(min=0) / (n_steps - 1)
    lam_t = logsnr_schedule(t, logsnr_min, logsnr_max)
    lam_s = logsnr_schedule(s, logsnr_min, logsnr_max)
    alpha_t, sigma_t = alpha_sigma(lam_t)
    alpha_s, _ = alpha_sigma(lam_s)
    r = torch.exp(lam_t - lam_s)
    # The authors' form sqrt(1+e^{-λ})·(z − ε̂/sqrt(1+e^{λ})), i.e. 1/α_t and σ_t/α_t.
    c_x0_z = torch.sqrt(1 + torch.exp(-lam_t))
    c_x0_eps = c_x0_z / torch.sqrt(1 + torch.exp(lam_t))
    c_mean_z = r * alpha_s / alpha_t
    c_mean_x0 = (1 - r) * alpha_s
    std = torch.sqrt((1 - r).clamp(min=0) * sigma_t**2)
    c_mean_z[-1], c_mean_x0[-1], std[-1] = 0.0, 1.0, 0.0  # final step returns ẑ0
    cols = (lam_t, c_x0_z, c_x0_eps, c_mean_z, c_mean_x0, std)
    return SamplerTable(*(c.to(device=device, dtype=torch.float32) for c in cols))


def ddpm_step(z: Tensor, eps_hat: Tensor, k: int, table: SamplerTable, noise: Tensor | None) -> Tensor:
    """One ancestral step from z_t (B, nz) and ε̂ (B, nz) at row ``k``; ``noise`` (B, nz) or None (no noise).

    Reference for the fused ``ddpm_step`` kernel: elementwise, fp32, coefficients from the table.
    """
    x0 = table.c_x0_z[k] * z - table.c_x0_eps[k] * eps_hat
    out = table.c_mean_z[k] * z + table.c_mean_x0[k] * x0
    if noise is not None:
        out = out + table.std[k] * noise
    return out


def ancestral_sample(denoise_fn: DenoiseFn, z_init: Tensor, table: SamplerTable, *,
                     noise: Tensor | None = None, generator: torch.Generator | None = None,
                     with_noise: bool = True) -> Tensor:
    """Run the T-step sampler from z_init (B, nz) ~ N(0, I); returns ẑ0 (B, nz).

    ``noise`` (T−1, B, nz) fixes the per-step ε; otherwise one ``randn`` per step is drawn from
    ``generator`` (T−1 draws: the final x-prediction step draws none). No host syncs.
    """
    T = table.n_steps
    if noise is not None and noise.shape != (T - 1, *z_init.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {(T - 1, *z_init.shape)}")
    z = z_init
    lam = table.logsnr.to(z.dtype)
    for k in range(T):
        eps_hat = denoise_fn(z, lam[k].expand(z.shape[0]))
        eps = None
        if k < T - 1:
            if noise is not None:
                eps = noise[k]
            else:
                eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            if not with_noise:
                eps = None
        z = ddpm_step(z, eps_hat, k, table, eps)
    return z


def diffusion_loss(eps_fn: EpsFn, z0: Tensor, xemb: Tensor, u: Tensor, eps: Tensor,
                   logsnr_min: float = -5.1, logsnr_max: float = 9.8) -> Tensor:
    """ε-prediction loss ½·Σ_d (ε − ε̂(z_λ, λ, xemb))², averaged over the batch (spec §2, no λ-weighting).

    z0 (B, nz) are the targets, u (B,) ~ U(0, 1) continuous times, eps (B, nz) ~ N(0, I).
    """
    lam = logsnr_schedule(u, logsnr_min, logsnr_max)  # (B,)
    alpha, sigma = alpha_sigma(lam)
    z_t = alpha[:, None] * z0 + sigma[:, None] * eps
    eps_hat = eps_fn(z_t, lam, xemb)
    return 0.5 * (eps - eps_hat).pow(2).sum(dim=1).mean()
