"""The toy experiment of paper App. E.1 (spec ``damc.md`` §9): does the amortizer learn long-run posteriors?

Setup (spec §9):
    z ∈ R² from a 2-arm pinwheel;  x = G(z) + N(0, 0.25²·I) with G a fixed random MLP 2→128→128→128→2;
    target posterior p(z|x) ∝ N(x; G(z), 0.25²·I)·N(z; 0, I)   (the N(0, I) prior, not the pinwheel).
The amortizer is the engine's latent diffusion sampler (``LatentUNet`` with nz = 2, the random null token)
with a small MLP embedding of x in place of the image encoder. Each iteration draws a fresh batch of x,
initialises the posterior chains from the EMA amortizer, runs 50 Langevin steps (s 0.1) and distils the result
back (6 AdamW updates). Sampler, ε-loss, chains and EMA are the engine's own (``engine.diffusion``,
``engine.langevin``, ``engine.learner``), so this exercises exactly the code the image runs use.

Evaluation (the "stronger check" of spec §9), for several fixed x: the amortizer's conditional draws and
short-run Langevin (50 steps from N(0, I)) are compared by sliced Wasserstein-2 distance and by MMD with two
references: long-run Langevin from N(0, I) (the authors' ground truth) and, because the latent is 2-D, the
**exact** posterior tabulated on a grid. 2-D histograms of all four sample sets are written as one PNG.

A Langevin convergence profile (one more set of chains from N(0, I), measured after 0, 10, 25, 50, ... steps)
shows how far "short-run" is from "long-run" on this problem; its last entry is a second, independent long-run
set, whose distance to the first is the noise floor of any "distance to long-run LD".

What these show (problem seed 0, the 8 fixed x; measured on a 2-core CPU, see the issue 8 note):
* x is 2-D, so G(z) = x has isolated solutions: most posteriors have separated modes, each sharp (σ 0.25).
  Langevin (s 0.1) converges within a mode in 25-50 steps and hardly crosses between modes in thousands.
  Its distance to the exact posterior is flat from 25 to 3,000 steps (mean SW2 0.85 → 0.82), and 50-step LD
  is 0.27 from a 3,000-step set while two independent 3,000-step sets are 0.12 apart.
* So on this problem 50 steps already do nearly all that 3,000 do, and long-run LD is no ground truth (it
  agrees with the exact posterior only on the few x where the modes overlap). A sampler can only be "closer to
  long-run LD than short-run LD" by copying the mode weights of N(0, I)-started chains.
* The amortizer does not copy them. Against long-run LD it is 3-5x farther than short-run LD; against the
  exact posterior its SW2 ratio to short-run LD was 0.95, 0.57, 1.13, 0.79, 0.73 over training seeds 0-4
  (500 iterations of the fast setting): it finds mode weights Langevin misses on some x and loses them on
  others. Where Langevin mixes, it matches the exact posterior far better than its N(0, I) start (though less
  closely than 50-step LD, which has converged there).

    python -m engine.toy --out runs/toy            # spec settings (3,000 iterations; long on a CPU)
    python -m engine.toy --out runs/toy --fast     # the shortened setting of the test (CPU, ~2-3 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.checkpoint import atomic_write
from engine.diffusion import SamplerTable, sampler_table
from engine.langevin import energy_grad, langevin_chain, posterior_energy
from engine.learner import amortizer_loss, amortizer_sample, ema_update
from engine.models import LatentUNet, NullToken

__all__ = [
    "Reference",
    "ToyConfig",
    "ToyModel",
    "ToyResult",
    "density_png",
    "evaluate",
    "exact_posterior",
    "fast_config",
    "likelihood_net",
    "main",
    "mmd_rbf",
    "pinwheel",
    "posterior_langevin",
    "reference",
    "run",
    "sliced_wasserstein",
    "train",
]


@dataclass
class ToyConfig:
    """Spec §9 values by default; ``fast_config()`` shortens training for tests and CPU smoke runs."""

    seed: int = 0  # the problem (G, the fixed x, the references)
    train_seed: int | None = None  # the amortizer's init and training draws; None = seed
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
    ema_decay: float = 0.75  # much faster than the image runs' 0.995
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
    n_projections: int = 256  # sliced Wasserstein
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


# ---------------------------------------------------------------------------------------------------------
# The generative problem


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


# ---------------------------------------------------------------------------------------------------------
# The amortizer


class ToyModel(nn.Module):
    """Q for 2-D latents: x-embedding MLP (x → nemb) + null token + ``LatentUNet(nz=2)``.

    Same interface as ``engine.models.Amortizer`` (``cond_embedding``, ``null_embedding``, ``forward``), so
    ``engine.learner.amortizer_sample`` / ``amortizer_loss`` drive it unchanged.
    """

    def __init__(self, nemb: int = 128, ntemb: int = 128, nf: int = 4, x_dim: int = 2, nz: int = 2) -> None:
        super().__init__()
        self.x_embed = nn.Sequential(nn.Linear(x_dim, nemb), nn.SiLU(), nn.Linear(nemb, nemb))
        self.null_token = NullToken(nz, nemb)
        self.unet = LatentUNet(nz, nemb, ntemb, nf)

    def cond_embedding(self, x: Tensor) -> Tensor:
        return self.x_embed(x)

    def null_embedding(self, xi: Tensor) -> Tensor:
        return self.null_token(xi)

    def forward(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        return self.unet(z, logsnr, xemb)


@dataclass
class ToyState:
    cfg: ToyConfig
    g: nn.Sequential
    model: ToyModel
    ema: ToyModel
    table: SamplerTable
    history: list[dict[str, float]]
    seconds: float


def train(cfg: ToyConfig, log: Callable[[str], None] | None = None,
          callback: Callable[[int, ToyModel, SamplerTable], None] | None = None) -> ToyState:
    """Train the amortizer as spec §9 (fixed seeds: the same config gives the same network).

    ``callback(iteration, online_model, table)`` runs every ``log_every`` iterations (learning curves).
    """
    seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    gen = torch.Generator().manual_seed(seed)
    g = likelihood_net(torch.Generator().manual_seed(cfg.seed + 1))  # the same G as ``run`` builds
    with torch.random.fork_rng(devices=[]):  # seeded default init, without touching the caller's global RNG
        torch.manual_seed(seed)
        model = ToyModel(cfg.nemb, cfg.ntemb, cfg.unet_nf)
    ema = copy.deepcopy(model).requires_grad_(False)  # the EMA target starts as a copy (spec §2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    table = sampler_table(cfg.n_steps, cfg.logsnr_min, cfg.logsnr_max)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for it in range(cfg.iterations):
        # LR schedule of spec §3 (closed form of the authors' ×0.99 every 1,000 iterations, floored).
        lr = max(cfg.lr * cfg.lr_decay ** (it // cfg.lr_decay_every), cfg.lr_min)
        for group in opt.param_groups:
            group["lr"] = lr
        z_true = pinwheel(cfg.batch_size, gen)
        with torch.no_grad():
            x = g(z_true) + cfg.obs_sigma * torch.randn(cfg.batch_size, 2, generator=gen)  # fresh batch
        keep = (torch.rand(cfg.batch_size, generator=gen) >= cfg.p_uncond).float()
        z0 = amortizer_sample(ema, table, gen, x=x, nz=2)  # chains start from the EMA amortizer (spec §9)
        z_pos = posterior_langevin(g, x, z0, cfg.post_steps, cfg.post_step_size, cfg.obs_sigma, gen)
        losses = []
        for _ in range(cfg.updates_per_iter):
            loss = amortizer_loss(model, z_pos, x, keep, gen, cfg.logsnr_min, cfg.logsnr_max)  # type: ignore[arg-type]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        if (it + 1) % cfg.ema_every == 0:
            ema_update(ema, model, cfg.ema_decay)
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            rec = {"iteration": it + 1, "loss": sum(losses) / len(losses), "lr": lr,
                   "time_s": round(time.perf_counter() - t0, 2)}
            history.append(rec)
            if log is not None:
                log(f"iteration {it + 1}/{cfg.iterations}: loss {rec['loss']:.4f} ({rec['time_s']:.1f} s)")
            if callback is not None:
                callback(it + 1, model, table)
    return ToyState(cfg, g, model, ema, table, history, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# Sample distances


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two sample sets (n, d), (m, d).

    SW₂² = E_θ W₂²(θᵀa, θᵀb) over random unit directions θ; each 1-D W₂² is the mean squared difference of
    the sorted projections, evaluated at the same quantile levels when n ≠ m (linear interpolation).
    """
    d = a.shape[1]
    theta = torch.randn(d, n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double() @ theta, dim=0).values  # (n, P)
    pb = torch.sort(b.double() @ theta, dim=0).values  # (m, P)
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        pa, pb = _quantiles(pa, n), _quantiles(pb, n)
    return float((pa - pb).pow(2).mean().sqrt())


def _quantiles(sorted_x: Tensor, n: int) -> Tensor:
    """Empirical quantile functions of the columns of sorted_x at the n mid-point levels (i + ½)/n."""
    m = sorted_x.shape[0]
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo)[:, None]
    return sorted_x[lo] * (1 - w) + sorted_x[hi] * w


def mmd_rbf(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with a sum of Gaussian kernels exp(−‖u − v‖²/(2h²)) over the given bandwidths."""
    a, b = a.double(), b.double()

    def k(u: Tensor, v: Tensor) -> Tensor:
        d2 = torch.cdist(u, v).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)  # type: ignore[return-value]

    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    xx = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    yy = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kab.mean())


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def exact_posterior(g: nn.Module, x: Tensor, n: int, sigma: float, generator: torch.Generator,
                    half_width: float = 6.0, cells: int = 601) -> Tensor:
    """n exact samples (K, n, 2) of p(z|x_k) ∝ N(x_k; G(z), σ²I)·N(z; 0, I) for each row of x (K, 2).

    The latent is 2-D, so the posterior can be tabulated: log-density on a cells × cells grid over
    [−w, w]² (the N(0, I) prior puts < e^{-18} of its mass outside w = 6), multinomial draws of cells, uniform
    jitter within the cell. Unlike Langevin it weighs separated modes correctly however far apart they are.
    """
    u = torch.linspace(-half_width, half_width, cells, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        gz = torch.cat([g(c.float()) for c in grid.split(65536)]).double()  # (cells², 2)
    log_prior = -0.5 * grid.pow(2).sum(dim=1)
    cell = 2 * half_width / (cells - 1)
    out = []
    for xk in x.double():
        logp = -(gz - xk).pow(2).sum(dim=1) / (2 * sigma * sigma) + log_prior
        idx = torch.multinomial(torch.softmax(logp, dim=0), n, replacement=True, generator=generator)
        jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * cell
        out.append((grid[idx] + jitter).float())
    return torch.stack(out)


@dataclass
class Reference:
    """Fixed observations and the sample sets DAMC is judged against (independent of training)."""

    x: Tensor  # (K, 2)
    exact: Tensor  # (K, 2n, 2): exact posterior draws (grid); the second half measures the sampling-noise floor
    long_run: Tensor  # (K, n, 2): long-run LD from N(0, I), the authors' ground truth
    short_run: Tensor  # (K, n, 2): short-run LD from N(0, I), the baseline
    prior: Tensor  # (K, n, 2): N(0, I) itself, i.e. zero Langevin steps (the scale of "no inference at all")
    profile_steps: tuple[int, ...]  # (S,) increasing; the last is gt_steps
    profile: Tensor  # (S, K, n, 2): one further chain set from N(0, I), after each of profile_steps steps

    def long_run_valid(self, cfg: ToyConfig) -> list[bool]:
        """Per x: does long-run LD agree with the exact posterior (SW ≤ 2·floor + 0.02)? Where it does not,
        the posterior has modes Langevin does not cross and long-run LD is no ground truth."""
        n = self.short_run.shape[1]
        out = []
        for k in range(self.x.shape[0]):
            truth = self.exact[k, :n]
            floor, d_long = (sliced_wasserstein(a, truth, cfg.n_projections, seed=cfg.seed + k)
                             for a in (self.exact[k, n:], self.long_run[k]))
            out.append(d_long <= 2 * floor + 0.02)
        return out


def reference(g: nn.Module, cfg: ToyConfig) -> Reference:
    """Exact, long-run and short-run posterior samples for the fixed observations (fixed seeds)."""
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    if cfg.eval_x:
        xs = torch.tensor(cfg.eval_x, dtype=torch.float32).view(-1, 2)
    else:
        z_true = pinwheel(cfg.n_eval_x, gen)
        with torch.no_grad():
            xs = g(z_true) + cfg.obs_sigma * torch.randn(cfg.n_eval_x, 2, generator=gen)
    k_x, n = xs.shape[0], cfg.n_eval_samples
    exact = exact_posterior(g, xs, 2 * n, cfg.obs_sigma, gen)
    # All x in one batch of chains (row blocks per x): one chain call instead of one per x.
    x_n = xs.repeat_interleave(n, dim=0)
    long = posterior_langevin(g, x_n, torch.randn(n * k_x, 2, generator=gen), cfg.gt_steps, cfg.eval_step_size,
                              cfg.obs_sigma, gen).view(k_x, n, 2)
    short = posterior_langevin(g, x_n, torch.randn(n * k_x, 2, generator=gen), cfg.short_steps,
                               cfg.eval_step_size, cfg.obs_sigma, gen).view(k_x, n, 2)
    prior = torch.randn(k_x, n, 2, generator=gen)
    # Drawn last, so the sets above do not depend on the profile's steps.
    steps = tuple(sorted({s for s in cfg.profile_steps if 0 <= s < cfg.gt_steps} | {cfg.gt_steps}))
    z, done, snapshots = torch.randn(n * k_x, 2, generator=gen), 0, []
    for s in steps:
        if s > done:
            z = posterior_langevin(g, x_n, z, s - done, cfg.eval_step_size, cfg.obs_sigma, gen)
        done = s
        snapshots.append(z.view(k_x, n, 2))
    return Reference(xs, exact, long, short, prior, steps, torch.stack(snapshots))


@dataclass
class ToyResult:
    """Per fixed x: sample sets and their distances to the exact posterior and to long-run LD."""

    x: Tensor  # (K, 2)
    samples: dict[str, list[Tensor]]  # exact / damc / short_run / long_run -> K sample sets (n, 2)
    # distances[ref][metric][method] -> K values; ref "exact" or "long_run", metric "swd" or "mmd"
    distances: dict[str, dict[str, dict[str, list[float]]]]
    # Langevin from N(0, I) by chain length: {"steps": [S], "swd_vs_exact": [S][K], "swd_vs_long_run": [S][K]}.
    # Its last entry is a second, independent long-run set: its distance to the first is the noise floor of
    # "distance to long-run LD".
    profile: dict[str, list[Any]]

    def summary(self) -> dict[str, float]:
        out = {}
        for ref, by_metric in self.distances.items():
            for metric, by_method in by_metric.items():
                for method, v in by_method.items():
                    out[f"{metric}_{method}_vs_{ref}"] = float(np.mean(v))
        for ref in self.distances:
            out[f"swd_ratio_vs_{ref}"] = out[f"swd_damc_vs_{ref}"] / out[f"swd_short_run_vs_{ref}"]
        out["swd_long_run_floor"] = float(np.mean(self.profile["swd_vs_long_run"][-1]))
        return out


def evaluate(model: ToyModel, table: SamplerTable, ref: Reference, cfg: ToyConfig) -> ToyResult:
    """Draw n amortizer samples per fixed x (the online net, as every evaluation) and measure distances."""
    gen = torch.Generator().manual_seed(cfg.seed + 54321)
    k_x, n = ref.short_run.shape[:2]
    damc = amortizer_sample(model, table, gen, x=ref.x.repeat_interleave(n, dim=0), nz=2).view(k_x, n, 2)
    samples = {"exact": list(ref.exact[:, :n]), "long_run": list(ref.long_run), "damc": list(damc),
               "short_run": list(ref.short_run)}
    candidates = {"damc": damc, "short_run": ref.short_run, "long_run": ref.long_run, "prior": ref.prior,
                  "exact_split": ref.exact[:, n:]}
    distances: dict[str, dict[str, dict[str, list[float]]]] = {}
    for ref_name, truth in (("exact", ref.exact[:, :n]), ("long_run", ref.long_run)):
        d: dict[str, dict[str, list[float]]] = {"swd": {}, "mmd": {}}
        for method, s in candidates.items():
            if method == ref_name:
                continue
            d["swd"][method] = [sliced_wasserstein(s[k], truth[k], cfg.n_projections, seed=cfg.seed + k)
                                for k in range(k_x)]
            d["mmd"][method] = [mmd_rbf(s[k], truth[k]) for k in range(k_x)]
        distances[ref_name] = d
    profile: dict[str, list[Any]] = {"steps": list(ref.profile_steps), "swd_vs_exact": [], "swd_vs_long_run": []}
    for snap in ref.profile:
        for key, truth in (("swd_vs_exact", ref.exact[:, :n]), ("swd_vs_long_run", ref.long_run)):
            profile[key].append([sliced_wasserstein(snap[k], truth[k], cfg.n_projections, seed=cfg.seed + k)
                                 for k in range(k_x)])
    return ToyResult(ref.x, samples, distances, profile)


# ---------------------------------------------------------------------------------------------------------
# Density plots (PIL; matplotlib is not a dependency)


def _histogram(z: Tensor, lo: float, hi: float, bins: int) -> np.ndarray:
    h, _, _ = np.histogram2d(z[:, 0].numpy(), z[:, 1].numpy(), bins=bins, range=[[lo, hi], [lo, hi]])
    return h.T[::-1]  # rows = z₂ from top (high) to bottom, columns = z₁ left to right


def density_png(result: ToyResult, path: str | os.PathLike[str], bins: int = 64, cell: int = 3) -> Path:
    """One PNG: a row per fixed x; columns exact | long-run LD | DAMC | short-run LD (2-D histograms, dark =
    dense), each labelled with its sliced W2 distance to the exact posterior."""
    from PIL import Image, ImageDraw

    methods = ["exact", "long_run", "damc", "short_run"]
    titles = {"exact": "exact posterior", "long_run": "long-run LD", "damc": "DAMC", "short_run": "short-run LD"}
    k = result.x.shape[0]
    side, pad, top, left = bins * cell, 8, 20, 8
    width = left + len(methods) * (side + pad)
    height = top + k * (side + pad + 12)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for j, m in enumerate(methods):
        draw.text((left + j * (side + pad) + 4, 4), titles[m], fill="black")
    swd = result.distances["exact"]["swd"]
    for i in range(k):
        # A common window per row, centred on the exact posterior and covering every method's bulk.
        everything = torch.cat([result.samples[m][i] for m in methods])
        c = result.samples["exact"][i].mean(0)
        half = float(torch.quantile((everything - c).abs().max(dim=1).values, 0.99)) * 1.15 + 0.1
        for j, m in enumerate(methods):
            h = _histogram(result.samples[m][i] - c, -half, half, bins)
            h = h / max(h.max(), 1.0)
            gray = (255 * (1.0 - np.sqrt(h))).astype(np.uint8)  # sqrt: make the tails visible
            tile = Image.fromarray(np.kron(gray, np.ones((cell, cell), dtype=np.uint8)), mode="L")
            x0, y0 = left + j * (side + pad), top + i * (side + pad + 12)
            img.paste(tile.convert("RGB"), (x0, y0))
            draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], outline="gray")
            if m != "exact":
                draw.text((x0 + 2, y0 + side + 1), f"SW2 {swd[m][i]:.3f}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    os.chmod(path, 0o644)
    return path


# ---------------------------------------------------------------------------------------------------------
# Driver and CLI


def run(cfg: ToyConfig, out_dir: Path | None = None, log: Callable[[str], None] | None = None,
        curve: bool = False) -> dict[str, Any]:
    """Train, evaluate, and (with ``out_dir``) write ``toy.json`` and ``toy_density.png``. Returns the report.

    ``curve`` also evaluates the distances every ``log_every`` iterations (a learning curve in the report).
    """
    g = likelihood_net(torch.Generator().manual_seed(cfg.seed + 1))
    t0 = time.perf_counter()
    ref = reference(g, cfg)
    ref_seconds = time.perf_counter() - t0
    points: list[dict[str, float]] = []

    def on_log(it: int, model: ToyModel, table: SamplerTable) -> None:
        r = evaluate(model, table, ref, cfg)
        points.append({"iteration": it, **{f"swd_damc_vs_{k}": v["swd"]["damc"] for k, v in r.distances.items()}})
        if log is not None:
            s = r.summary()
            log(f"  SW2 to exact: DAMC {s['swd_damc_vs_exact']:.4f} (short-run {s['swd_short_run_vs_exact']:.4f}); to "
                f"long-run LD: DAMC {s['swd_damc_vs_long_run']:.4f} (short-run {s['swd_short_run_vs_long_run']:.4f})")

    state = train(cfg, log, on_log if curve else None)
    t1 = time.perf_counter()
    result = evaluate(state.model, state.table, ref, cfg)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "reference_seconds": round(ref_seconds, 2),
        "train_seconds": round(state.seconds, 2),
        "eval_seconds": round(time.perf_counter() - t1, 2),
        "x": result.x.tolist(),
        "long_run_valid": ref.long_run_valid(cfg),
        "distances": result.distances,
        "langevin_profile": result.profile,
        "summary": result.summary(),
        "history": state.history,
        "curve": points,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        density_png(result, out_dir / "toy_density.png")
        text = json.dumps(report, indent=2)
        atomic_write(out_dir / "toy.json", lambda f: f.write(text.encode()))
        report["files"] = [str(out_dir / "toy.json"), str(out_dir / "toy_density.png")]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.toy", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory for toy.json and toy_density.png")
    p.add_argument("--fast", action="store_true", help="the shortened CPU setting of the test (~2-3 min)")
    p.add_argument("--iterations", type=int, help="training iterations (default: 3000, or 500 with --fast)")
    p.add_argument("--seed", type=int, default=0, help="the problem: G, the fixed x and the references")
    p.add_argument("--train-seed", type=int, help="the amortizer's init and training draws (default: --seed)")
    p.add_argument("--obs-sigma", type=float, default=0.25,
                   help="observation noise σ of x = G(z) + N(0, σ²I) and of the posterior (spec §9: 0.25)")
    p.add_argument("--eval-x", type=int, help="number of fixed observations x (default 8)")
    p.add_argument("--eval-samples", type=int, help="samples per x and method (default 2000, or 500 with --fast)")
    p.add_argument("--gt-steps", type=int, help="long-run Langevin steps (default 2000, or 1000 with --fast)")
    p.add_argument("--curve", action="store_true", help="also evaluate every 100 iterations (learning curve)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = p.parse_args(argv)
    if not args.obs_sigma > 0:
        print(f"error: --obs-sigma = {args.obs_sigma}: must be > 0", file=sys.stderr)
        return 2
    cfg = replace(fast_config() if args.fast else ToyConfig(), seed=args.seed, train_seed=args.train_seed,
                  obs_sigma=args.obs_sigma)
    for flag, field_name, minimum in (("iterations", "iterations", 1), ("eval_x", "n_eval_x", 1),
                                      ("eval_samples", "n_eval_samples", 10), ("gt_steps", "gt_steps", 1)):
        value = getattr(args, flag)
        if value is None:
            continue
        if value < minimum:
            print(f"error: --{flag.replace('_', '-')} = {value}: must be >= {minimum}", file=sys.stderr)
            return 2
        cfg = replace(cfg, **{field_name: value})
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = run(cfg, args.out, log=lambda s: print(s, file=sys.stderr, flush=True), curve=args.curve)
    e, s = report["distances"]["exact"]["swd"], report["summary"]
    cols = [("DAMC", "damc"), ("short-run", "short_run"), ("long-run", "long_run"), ("N(0,I)", "prior"),
            ("floor", "exact_split")]
    print(f"sliced W2 distance to the exact posterior ({cfg.n_eval_samples} samples per x and method; short-run "
          f"{cfg.short_steps} and long-run {cfg.gt_steps} Langevin steps; floor: a second exact draw):")
    print(f"{'x':>16}  " + "".join(f"{c:>10}" for c, _ in cols) + "  long-run LD valid")
    for k, x in enumerate(report["x"]):
        print(f"({x[0]:6.2f}, {x[1]:6.2f})  " + "".join(f"{e[m][k]:10.3f}" for _, m in cols)
              + f"  {'yes' if report['long_run_valid'][k] else 'no (modes it does not cross)'}")
    print(f"{'mean':>16}  " + "".join(f"{s[f'swd_{m}_vs_exact']:10.3f}" for _, m in cols))
    print(f"ratio DAMC / short-run LD: {s['swd_ratio_vs_exact']:.3f} against the exact posterior, "
          f"{s['swd_ratio_vs_long_run']:.3f} against long-run LD")
    prof = report["langevin_profile"]
    print("Langevin from N(0,I), mean sliced W2 by chain length (to the exact posterior / to the long-run set; the "
          "last column is a second long-run set, i.e. the noise floor of the long-run reference):")
    print("  " + "  ".join(f"{st:>11}" for st in prof["steps"]))
    print("  " + "  ".join(f"{np.mean(a):5.3f}/{np.mean(b):5.3f}"
                           for a, b in zip(prof["swd_vs_exact"], prof["swd_vs_long_run"], strict=True)))
    print(f"wrote {args.out / 'toy.json'} and {args.out / 'toy_density.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
