"""The toy experiment of paper App. E.1 (spec ``damc.md`` §9): does the amortizer learn long-run posteriors?

Setup (spec §9):
    z ∈ R² from a 2-arm pinwheel;  x = G(z) + N(0, 0.25²·I) with G a fixed random MLP 2→128→128→128→2;
    target posterior p(z|x) ∝ N(x; G(z), 0.25²·I)·N(z; 0, I)   (the N(0, I) prior, not the pinwheel).
The amortizer is the engine's latent diffusion sampler (``LatentUNet`` with nz = 2, the random null token)
with a small MLP embedding of x in place of the image encoder. Each iteration draws a fresh batch of x,
initialises the posterior chains from the EMA amortizer, runs 50 Langevin steps (s 0.1) and distils the result
back (6 AdamW updates). Sampler, ε-loss, chains and EMA are the engine's own (``engine.sampling.diffusion``,
``engine.sampling.langevin``, ``engine.learner``), so this exercises exactly the code the image runs use.

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

from engine.eval.distances import mmd_rbf, sliced_wasserstein
from engine.eval.plots import density_grid_png
from engine.eval.toy_problem import (
    ToyConfig,
    ToyModel,
    exact_posterior,
    fast_config,
    likelihood_net,
    pinwheel,
    posterior_langevin,
)
from engine.files import atomic_write
from engine.learner import ema_update
from engine.sampling.diffusion import SamplerTable, sampler_table
from engine.sampling.draws import amortizer_loss, amortizer_sample

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
    "pinwheel",
    "posterior_langevin",
    "reference",
    "run",
    "train",
]


# ---------------------------------------------------------------------------------------------------------
# The generative problem


# ---------------------------------------------------------------------------------------------------------
# The amortizer


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
            loss = amortizer_loss(model, z_pos, x, keep, gen, cfg.logsnr_min, cfg.logsnr_max)
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
# Evaluation


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
# Density plots


def density_png(result: ToyResult, path: str | os.PathLike[str], bins: int = 64, cell: int = 3) -> Path:
    """One PNG: a row per fixed x; columns exact | long-run LD | DAMC | short-run LD (2-D histograms, dark =
    dense), each labelled with its sliced W2 distance to the exact posterior."""
    methods = ["exact", "long_run", "damc", "short_run"]
    titles = {"exact": "exact posterior", "long_run": "long-run LD", "damc": "DAMC", "short_run": "short-run LD"}
    swd = result.distances["exact"]["swd"]
    captions = {m: [f"SW2 {v:.3f}" for v in swd[m]] for m in methods if m != "exact"}
    return density_grid_png({m: result.samples[m] for m in methods}, titles, path, centre="exact",
                            captions=captions, bins=bins, cell=cell)


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
    points: list[dict[str, Any]] = []

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
