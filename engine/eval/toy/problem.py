"""The toy problem of paper App. E.1 (spec ``damc.md`` §9): its settings, data, likelihood network, exact posterior
and the amortizer used on it. The experiment (training, evaluation, CLI) is :mod:`engine.eval.toy.experiment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from engine.models import LatentUNet, NullToken
from engine.sampling.langevin import energy_grad, langevin_chain, posterior_energy

__all__ = ["ToyConfig", "ToyModel", "exact_posterior", "fast_config", "likelihood_net", "pinwheel",
           "posterior_langevin"]


@dataclass
class ToyConfig:
    """Spec §9 values by default; ``fast_config()`` shortens training for tests and CPU smoke runs."""

    setup: str = "engine"  # "engine" (this engine's toy) or "authors" (their toy_example.py; engine.eval.toy.authors)
    seed: int = 0  # the problem (G, the fixed x, the references); with setup "authors" also Q's init and the draws
    train_seed: int | None = None  # engine setup: the amortizer's init and training draws; None = seed
    obs_sigma: float = 0.25  # x = G(z) + N(0, σ²I), and the likelihood of the posterior
    # Training (spec §9)
    iterations: int = 3000
    batch_size: int = 500
    post_steps: int = 50  # posterior Langevin steps per iteration
    post_step_size: float = 0.1
    n_steps: int = 100  # ancestral sampler steps
    logsnr_min: float = -5.1
    logsnr_max: float = 9.8
    unet_nf: int = 4  # U-Net width factor (widths 32·nf, 64·nf), as the image runs
    ntemb: int = 128  # time embedding
    nemb: int = 128  # x-embedding (and null-token) width
    p_uncond: float = 0.1
    updates_per_iter: int = 6
    lr: float = 2e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: float = 100.0
    ema_decay: float = 0.75  # weight of the old target: target ← d·target + (1 − d)·online (authors: d = 0.25)
    ema_every: int = 10
    lr_decay: float = 0.99  # as spec §3: ×0.99 every 1,000 iterations, floored
    lr_decay_every: int = 1000
    lr_min: float = 1e-5
    # Evaluation
    n_eval_x: int = 8  # fixed observations x = G(z) + noise, z from the pinwheel (seeded)
    eval_x: tuple[tuple[float, float], ...] = ()  # explicit observations instead (overrides n_eval_x)
    n_eval_samples: int = 2000  # per x and per method
    gt_steps: int = 2000  # long-run Langevin ("1K-3K steps until convergence", paper App. E.1)
    short_steps: int = 50  # short-run Langevin baseline, from N(0, I)
    eval_step_size: float = 0.1
    n_projections: int = 1000  # sliced Wasserstein
    grid_cells: int = 601  # exact posterior: cells per axis of the grid over [−6, 6]²
    # Pooled evaluation (the authors' protocol): one sample per x over many x; 0 turns it off. With setup "authors"
    # it must be a multiple of the batch size (their 10 × 500 x: ten noise draws of one set of 500 latents).
    n_pooled_x: int = 5000
    eval_every: int = 0  # pooled distances of the amortizer every this many iterations (0: at the end only)
    # Langevin convergence profile: one more set of chains from N(0, I), compared with the exact posterior and
    # with the long-run set after each of these step counts (those ≤ gt_steps are used; gt_steps is added).
    profile_steps: tuple[int, ...] = (0, 10, 25, 50, 100, 200, 500, 1000, 2000)
    log_every: int = 100


def fast_config(**overrides: Any) -> ToyConfig:
    """The shortened run of the test (~2 min on 2 CPU cores): 500 iterations, batches of 200, a 20-step sampler,
    U-Net width factor 2, EMA every 5 iterations, 500 evaluation samples, 1,000 long-run steps.

    Everything else (problem, chains, loss, optimiser, EMA rate, comparison) is as spec §9.
    """
    base = ToyConfig(iterations=500, batch_size=200, n_steps=20, unet_nf=2, ema_every=5,
                     n_eval_samples=500, gt_steps=1000, log_every=100)
    return replace(base, **overrides)


def pinwheel(n: int, generator: torch.Generator) -> Tensor:
    """n latents (n, 2) from the 2-arm pinwheel of spec §9 (equal class counts, shuffled)."""
    c = (torch.arange(n) % 2).float()
    r = torch.randn(n, generator=generator) * 0.3 + 1.0  # radial feature
    t = torch.randn(n, generator=generator) * 0.1  # tangential feature
    a = c * math.pi + 0.25 * torch.exp(r)
    z = 2.0 * torch.stack([r * torch.cos(a) + t * torch.sin(a), -r * torch.sin(a) + t * torch.cos(a)], dim=1)
    return z[torch.randperm(n, generator=generator)]


def likelihood_net(generator: torch.Generator) -> nn.Sequential:
    """The fixed random G: MLP 2→128→128→128→2 with ReLU, weights N(0, 0.2²), biases N(0, 0.1²); never trained."""
    widths = [2, 128, 128, 128, 2]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=generator) * 0.2)
            lin.bias.copy_(torch.randn(b, generator=generator) * 0.1)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).requires_grad_(False)


class _NoEnergy(nn.Module):
    """E ≡ 0: the toy's prior is N(0, I) alone, whose ½‖z‖² the Langevin update already folds in."""

    def forward(self, z: Tensor) -> Tensor:
        return z.new_zeros(z.shape[0])


def posterior_langevin(g: nn.Module, x: Tensor, z: Tensor, n_steps: int, step_size: float, sigma: float,
                       generator: torch.Generator) -> Tensor:
    """Langevin (noise on) on ‖x − G(z)‖²/(2σ²) + ½‖z‖² from z (B, 2); x (B, 2). The engine's chain."""
    fn = posterior_energy(g, _NoEnergy(), x, sigma)
    return langevin_chain(z, lambda zz: energy_grad(fn, zz), n_steps, step_size, generator=generator)


class ToyModel(nn.Module):
    """Q for 2-D latents: x-embedding MLP (x → nemb) + null token + ``LatentUNet(nz=2)``.

    ``x_encoder``: "engine" (Linear-SiLU-Linear) or "authors" (4 Linear layers 2→128→128→128→nemb with ReLU).

    Same interface as ``engine.models.Amortizer`` (``cond_embedding``, ``null_embedding``, ``forward``), so
    ``engine.sampling.draws.amortizer_sample`` / ``amortizer_loss`` drive it unchanged.
    """

    def __init__(self, nemb: int = 128, ntemb: int = 128, nf: int = 4, x_dim: int = 2, nz: int = 2,
                 x_encoder: str = "engine") -> None:
        super().__init__()
        if x_encoder == "engine":
            self.x_embed = nn.Sequential(nn.Linear(x_dim, nemb), nn.SiLU(), nn.Linear(nemb, nemb))
        elif x_encoder == "authors":  # their _netQ_U_toy.encoder (diffusion_net.py:166-174)
            self.x_embed = nn.Sequential(nn.Linear(x_dim, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, nemb))
        else:
            raise ValueError(f"x_encoder = {x_encoder!r}: must be 'engine' or 'authors'")
        self.null_token = NullToken(nz, nemb)
        self.unet = LatentUNet(nz, nemb, ntemb, nf)

    def cond_embedding(self, x: Tensor) -> Tensor:
        return self.x_embed(x)

    def null_embedding(self, xi: Tensor) -> Tensor:
        return self.null_token(xi)

    def forward(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        return self.unet(z, logsnr, xemb)


def exact_posterior(g: nn.Module, x: Tensor, n: int, sigma: float, generator: torch.Generator,
                    half_width: float = 6.0, cells: int = 601, chunk: int = 16) -> Tensor:
    """n exact samples (K, n, 2) of p(z|x_k) ∝ N(x_k; G(z), σ²I)·N(z; 0, I) for each row of x (K, 2).

    The latent is 2-D, so the posterior can be tabulated: log-density on a cells × cells grid over
    [−w, w]² (the N(0, I) prior puts < e^{-18} of its mass outside w = 6), cells drawn by inverse CDF (one
    uniform per sample), uniform jitter within the cell. Unlike Langevin it weighs separated modes correctly
    however far apart they are. ``chunk`` rows of x share one (chunk, cells²) float64 table.
    """
    u = torch.linspace(-half_width, half_width, cells, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        gz = torch.cat([g(c.float()) for c in grid.split(65536)]).double()  # (cells², 2)
    log_prior = -0.5 * grid.pow(2).sum(dim=1)
    gz2 = gz.pow(2).sum(dim=1)
    cell = 2 * half_width / (cells - 1)
    out = []
    for xc in x.double().split(chunk):
        # ‖x − G(z)‖² = ‖x‖² − 2 x·G(z) + ‖G(z)‖²; (c, cells²)
        d2 = xc.pow(2).sum(dim=1, keepdim=True) - 2 * xc @ gz.T + gz2
        cdf = torch.softmax(-d2 / (2 * sigma * sigma) + log_prior, dim=1).cumsum_(dim=1)
        cdf /= cdf[:, -1:].clone()
        r = torch.rand(xc.shape[0], n, generator=generator, dtype=torch.float64)
        idx = torch.searchsorted(cdf, r).clamp_(max=grid.shape[0] - 1)  # (c, n)
        jitter = (torch.rand(xc.shape[0], n, 2, generator=generator, dtype=torch.float64) - 0.5) * cell
        out.append((grid[idx] + jitter).float())
    return torch.cat(out)
