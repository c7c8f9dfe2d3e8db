"""Evaluation of the toy experiment (:mod:`engine.eval.toy.experiment`): reference sample sets and distances.

Two protocols, on the same trained amortizer:

* **Per x** (spec §9's "stronger check"): for K fixed observations, n samples each from the amortizer, from
  short-run LD (50 steps from N(0, I)), from long-run LD (``gt_steps`` from N(0, I); two independent sets) and
  from the exact posterior tabulated on a grid (two independent draws); sliced W2 and MMD per x.
* **Pooled** (the authors' figure, ``toy_example.py:251-302``): one sample per x over M observations (their
  10 × 500), so the sets are draws of the aggregate posterior ∫ p(z|x) p(x) dx; the same methods, sliced W2
  (``n_projections`` ≥ 1,000 directions) and MMD, plus their reconstruction error mean ‖G(z) − x‖². The second
  long-run set and the second exact draw give the noise floors: two sets of the same law are that far apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.eval.distances import mmd_rbf, sliced_wasserstein
from engine.eval.toy.authors import authors_pinwheel
from engine.eval.toy.problem import ToyConfig, ToyModel, exact_posterior, pinwheel, posterior_langevin
from engine.sampling.diffusion import SamplerTable
from engine.sampling.draws import amortizer_sample

__all__ = ["AUTHORS_EVAL_BATCH", "PooledReference", "Reference", "ToyResult", "evaluate", "pooled_distances",
           "pooled_draw", "pooled_reference", "reference"]

AUTHORS_EVAL_BATCH = 500  # their figure uses batches of 500 x (toy:252)


# ---------------------------------------------------------------------------------------------------------
# Per x


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


def reference(g: nn.Module, cfg: ToyConfig, xs: Tensor | None = None) -> Reference:
    """Exact, long-run and short-run posterior samples for the fixed observations (fixed seeds).

    The observations: ``xs`` (K, 2) when given (the authors' setup passes the first x of its pooled set), else
    ``cfg.eval_x``, else ``n_eval_x`` draws x = G(z) + noise with z from the engine's pinwheel.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    if xs is not None:
        pass
    elif cfg.eval_x:
        xs = torch.tensor(cfg.eval_x, dtype=torch.float32).view(-1, 2)
    else:
        z_true = pinwheel(cfg.n_eval_x, gen)
        with torch.no_grad():
            xs = g(z_true) + cfg.obs_sigma * torch.randn(cfg.n_eval_x, 2, generator=gen)
    k_x, n = xs.shape[0], cfg.n_eval_samples
    exact = exact_posterior(g, xs, 2 * n, cfg.obs_sigma, gen, cells=cfg.grid_cells)
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
                  "exact_split": ref.exact[:, n:], "long_run_b": ref.profile[-1]}
    distances: dict[str, dict[str, dict[str, list[float]]]] = {}
    for ref_name, truth in (("exact", ref.exact[:, :n]), ("long_run", ref.long_run)):
        d: dict[str, dict[str, list[float]]] = {"swd": {}, "mmd": {}}
        for method, s in candidates.items():
            if method == ref_name or (ref_name == "exact" and method == "long_run_b"):
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
# Pooled over many x (the authors' protocol)


@dataclass
class PooledReference:
    """M observations and, per observation, one draw of each reference sampler (all independent of training)."""

    x: Tensor  # (M, 2)
    # exact / exact_b: two exact draws; long_run / long_run_b: two independent gt_steps chains from N(0, I);
    # short_run: short_steps chains from N(0, I); prior: N(0, I). Each (M, 2), row i for x[i].
    sets: dict[str, Tensor]
    seconds: float


def pooled_reference(g: nn.Module, cfg: ToyConfig, exact: bool = True) -> PooledReference:
    """The pooled reference sets. Observations: the authors' setup repeats their ``sample_z(500, seed +
    iterations)`` (the latents of their figure at the final iteration, ``toy:262``) M/500 times with fresh noise;
    the engine setup draws M pinwheel latents. ``exact=False`` skips the grid posterior (then the Langevin sets
    are other draws of the same laws: they follow the exact draws in the generator's stream)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed + 23456)
    m = cfg.n_pooled_x
    if cfg.setup == "authors":
        z = authors_pinwheel(AUTHORS_EVAL_BATCH, cfg.seed + cfg.iterations).repeat(m // AUTHORS_EVAL_BATCH, 1)
    else:
        z = pinwheel(m, gen)
    with torch.no_grad():
        x = g(z) + cfg.obs_sigma * torch.randn(m, 2, generator=gen)
    sets: dict[str, Tensor] = {}
    if exact:
        e = exact_posterior(g, x, 2, cfg.obs_sigma, gen, cells=cfg.grid_cells)  # (M, 2, 2)
        sets.update(exact=e[:, 0], exact_b=e[:, 1])

    def chains(steps: int) -> Tensor:
        return posterior_langevin(g, x, torch.randn(m, 2, generator=gen), steps, cfg.eval_step_size, cfg.obs_sigma,
                                  gen)

    sets.update(long_run=chains(cfg.gt_steps), long_run_b=chains(cfg.gt_steps), short_run=chains(cfg.short_steps),
                prior=torch.randn(m, 2, generator=gen))
    return PooledReference(x, sets, time.perf_counter() - t0)


def pooled_draw(model: ToyModel, table: SamplerTable, pref: PooledReference, cfg: ToyConfig) -> Tensor:
    """One amortizer sample per pooled x (M, 2): the online Q, as their figure (``toy:267``); own generator."""
    gen = torch.Generator().manual_seed(cfg.seed + 65432)
    return torch.cat([amortizer_sample(model, table, gen, x=xc, nz=2) for xc in pref.x.split(AUTHORS_EVAL_BATCH)])


def pooled_distances(samples: dict[str, Tensor], pref: PooledReference, cfg: ToyConfig, g: nn.Module | None = None,
                     mmd: bool = True) -> dict[str, Any]:
    """{"swd" | "mmd": {ref: {method: d}}, "recon": {method: mean ‖G(z) − x‖²}} for refs long_run and exact.

    ``samples`` maps method names to (M, 2) sets aligned with ``pref.x``; a method is never compared with itself,
    and ``exact_b`` only with ``exact``, ``long_run_b`` only with ``long_run`` (the floors). ``g`` adds the
    reconstruction error (the authors' g_loss, summed over the 2 coordinates, averaged over x).
    """
    out: dict[str, Any] = {"swd": {}, "mmd": {}}
    skip = {"long_run": {"long_run", "exact_b"}, "exact": {"exact", "long_run_b"}}
    for ref in ("long_run", "exact"):
        truth = pref.sets[ref]
        todo = {k: v for k, v in samples.items() if k not in skip[ref]}
        out["swd"][ref] = {k: sliced_wasserstein(v, truth, cfg.n_projections, seed=cfg.seed) for k, v in todo.items()}
        if mmd:
            out["mmd"][ref] = {k: mmd_rbf(v, truth) for k, v in todo.items()}
    if g is not None:
        with torch.no_grad():
            out["recon"] = {k: float((g(v) - pref.x).pow(2).sum(dim=1).mean()) for k, v in samples.items()}
    return out
