"""The toy experiment of paper App. E.1 (spec ``damc.md`` §9): does the amortizer learn long-run posteriors?

Setup (spec §9):
    z ∈ R² from a 2-arm pinwheel;  x = G(z) + N(0, 0.25²·I) with G a fixed random MLP 2→128→128→128→2;
    target posterior p(z|x) ∝ N(x; G(z), 0.25²·I)·N(z; 0, I)   (the N(0, I) prior, not the pinwheel).
The amortizer is the engine's latent diffusion sampler (``LatentUNet`` with nz = 2, the random null token)
with a small MLP embedding of x in place of the image encoder. Each iteration draws a batch of x, initialises
the posterior chains from the EMA amortizer, runs 50 Langevin steps (s 0.1) and distils the result back
(6 AdamW updates). Sampler, ε-loss, chains and EMA are the engine's own (``engine.sampling.diffusion``,
``engine.sampling.langevin``, ``engine.learners.damc``), so this exercises exactly the code the image runs use.

Two setups share this loop: ``setup="engine"`` (the default: fresh pinwheel latents every iteration, the
engine's x-encoder, G from its own generator) and ``setup="authors"``, the authors' ``toy_example.py`` exactly
(:mod:`engine.eval.toy.authors` lists every difference with their file and line).

Evaluation (:mod:`engine.eval.toy.evaluate`): per x, for several fixed x, the amortizer's conditional draws and
short-run Langevin (50 steps from N(0, I)) against long-run Langevin (the authors' ground truth) and, because the
latent is 2-D, the **exact** posterior tabulated on a grid (sliced W2 and MMD; 2-D histograms in one PNG); and
pooled over many x as the authors' figure (one sample per x; their kernel-density panels, sliced W2 and MMD
against two long-run sets and two exact draws, their reconstruction error). The pre-registered criteria and the
multi-seed study are :mod:`engine.eval.toy.study`.

A Langevin convergence profile (one more set of chains from N(0, I), measured after 0, 10, 25, 50, ... steps)
shows how far "short-run" is from "long-run" on this problem; its last entry is a second, independent long-run
set, whose distance to the first is the noise floor of any "distance to long-run LD".

What these show for the engine setup (problem seed 0, the 8 fixed x; measured on a 2-core CPU, see the issue 8
note):
* x is 2-D, so G(z) = x has isolated solutions: most posteriors have separated modes, each sharp (σ 0.25).
  Langevin (s 0.1) converges within a mode in 25-50 steps and hardly crosses between modes in thousands.
  Its distance to the exact posterior is flat from 25 to 3,000 steps (mean SW2 0.85 → 0.82), and 50-step LD
  is 0.27 from a 3,000-step set while two independent 3,000-step sets are 0.12 apart.
* So on this instance 50 steps already do nearly all that 3,000 do, and long-run LD is no ground truth (it
  agrees with the exact posterior only on the few x where the modes overlap). A sampler can only be "closer to
  long-run LD than short-run LD" by copying the mode weights of N(0, I)-started chains.
* The amortizer does not copy them. Against long-run LD it is 3-5x farther than short-run LD; against the
  exact posterior its SW2 ratio to short-run LD was 0.95, 0.57, 1.13, 0.79, 0.73 over training seeds 0-4
  (500 iterations of the fast setting): it finds mode weights Langevin misses on some x and loses them on
  others.
Whether an instance can show anything is the qualifying test of :mod:`engine.eval.toy.study`; the authors'
setup, measured on several instances, is in ``results/toy/``.

    python -m engine.toy --out runs/toy                    # spec settings (3,000 iterations; long on a CPU)
    python -m engine.toy --out runs/toy --fast             # the shortened engine setting (CPU, ~2-3 min)
    python -m engine.toy --out runs/toy --setup authors    # the authors' toy_example.py (see toy.study for seeds)
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.eval.plots import density_grid_png, kde_panels_png
from engine.eval.toy.authors import authors_init, authors_pinwheel
from engine.eval.toy.evaluate import (
    AUTHORS_EVAL_BATCH,
    PooledReference,
    Reference,
    ToyResult,
    evaluate,
    pooled_distances,
    pooled_draw,
    pooled_reference,
    reference,
)
from engine.eval.toy.problem import (
    ToyConfig,
    ToyModel,
    exact_posterior,
    fast_config,
    likelihood_net,
    pinwheel,
    posterior_langevin,
)
from engine.files import atomic_write
from engine.learners.damc import ema_update
from engine.sampling.diffusion import SamplerTable, sampler_table
from engine.sampling.draws import amortizer_loss, amortizer_sample

__all__ = [
    "PooledReference",
    "Reference",
    "ToyConfig",
    "ToyModel",
    "ToyResult",
    "check_config",
    "density_png",
    "evaluate",
    "pooled_distances",
    "pooled_draw",
    "pooled_kde_png",
    "exact_posterior",
    "fast_config",
    "likelihood_net",
    "pinwheel",
    "pooled_reference",
    "posterior_langevin",
    "problem",
    "reference",
    "run",
    "train",
]

# ---------------------------------------------------------------------------------------------------------
# The problem instance and the amortizer


def check_config(cfg: ToyConfig) -> str | None:
    """One line naming what is wrong with ``cfg`` and what is allowed, or None."""
    if cfg.setup not in ("engine", "authors"):
        return f"setup = {cfg.setup!r}: must be 'engine' or 'authors'"
    if cfg.setup == "authors" and cfg.train_seed is not None:
        return "train_seed: the authors' setup has one seed for everything (their --seed); use seed"
    if cfg.setup == "authors" and cfg.n_pooled_x % AUTHORS_EVAL_BATCH:
        return f"n_pooled_x = {cfg.n_pooled_x}: the authors' setup evaluates batches of 500 x (a multiple of 500)"
    if cfg.setup == "authors" and cfg.batch_size % 2:
        return f"batch_size = {cfg.batch_size}: their pinwheel has two equal arms (an even batch)"
    for name, minimum in (("iterations", 1), ("batch_size", 2), ("n_steps", 2), ("n_eval_x", 1),
                          ("n_eval_samples", 10), ("gt_steps", 1), ("n_projections", 1), ("n_pooled_x", 0),
                          ("eval_every", 0), ("grid_cells", 11)):
        if getattr(cfg, name) < minimum:
            return f"{name} = {getattr(cfg, name)}: must be >= {minimum}"
    if not cfg.obs_sigma > 0 or not np.isfinite(cfg.obs_sigma):
        return f"obs_sigma = {cfg.obs_sigma}: must be a finite number > 0"
    return None


def problem(cfg: ToyConfig) -> nn.Sequential:
    """The fixed likelihood network G of the instance: the engine's draw, or exactly the authors' (``toy:106``)."""
    if cfg.setup == "authors":
        return authors_init(cfg).g
    return likelihood_net(torch.Generator().manual_seed(cfg.seed + 1))


@dataclass
class ToyState:
    cfg: ToyConfig
    g: nn.Sequential
    model: ToyModel
    ema: ToyModel
    table: SamplerTable
    history: list[dict[str, float]]
    seconds: float


def _start(cfg: ToyConfig) -> tuple[nn.Sequential, ToyModel, torch.Generator, Tensor | None]:
    """G, the initial Q, the training generator and (authors) the fixed training latents."""
    if cfg.setup == "authors":
        init = authors_init(cfg)
        gen = torch.Generator()
        gen.set_state(init.rng_state)  # their global stream, where their script leaves it after building G
        return init.g, init.model, gen, authors_pinwheel(cfg.batch_size, cfg.seed)  # toy:184: the same z's
    seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    gen = torch.Generator().manual_seed(seed)
    g = likelihood_net(torch.Generator().manual_seed(cfg.seed + 1))  # the same G as ``problem`` builds
    with torch.random.fork_rng(devices=[]):  # seeded default init, without touching the caller's global RNG
        torch.manual_seed(seed)
        model = ToyModel(cfg.nemb, cfg.ntemb, cfg.unet_nf)
    return g, model, gen, None


def train(cfg: ToyConfig, log: Callable[[str], None] | None = None,
          callback: Callable[[int, ToyModel, SamplerTable], None] | None = None) -> ToyState:
    """Train the amortizer as spec §9 / the authors' ``toy_example.py`` (fixed seeds: same config, same network).

    ``callback(iteration, online_model, table)`` runs before training (iteration 0) and every ``eval_every``
    iterations (learning curves).
    """
    g, model, gen, z_fixed = _start(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)  # the EMA target starts as a copy (spec §2; toy:84-85)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    table = sampler_table(cfg.n_steps, cfg.logsnr_min, cfg.logsnr_max)
    history: list[dict[str, float]] = []
    if callback is not None and cfg.eval_every > 0:
        callback(0, model, table)
    t0 = time.perf_counter()
    for it in range(cfg.iterations):
        # LR schedule of spec §3 (closed form of the authors' ×0.99 every 1,000 iterations, floored).
        lr = max(cfg.lr * cfg.lr_decay ** (it // cfg.lr_decay_every), cfg.lr_min)
        for group in opt.param_groups:
            group["lr"] = lr
        z_true = z_fixed if z_fixed is not None else pinwheel(cfg.batch_size, gen)
        with torch.no_grad():
            x = g(z_true) + cfg.obs_sigma * torch.randn(z_true.shape[0], 2, generator=gen)  # fresh noise
        keep = (torch.rand(x.shape[0], generator=gen) >= cfg.p_uncond).float()
        z0 = amortizer_sample(ema, table, gen, x=x, nz=2)  # chains start from the EMA amortizer (spec §9)
        z_pos = posterior_langevin(g, x, z0, cfg.post_steps, cfg.post_step_size, cfg.obs_sigma, gen)
        losses = []
        for _ in range(cfg.updates_per_iter):
            loss = amortizer_loss(model, z_pos, x, keep, gen, cfg.logsnr_min, cfg.logsnr_max)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
        if (it + 1) % cfg.ema_every == 0:
            ema_update(ema, model, cfg.ema_decay)
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            rec = {"iteration": it + 1, "loss": float(torch.stack(losses).mean()), "lr": lr,
                   "time_s": round(time.perf_counter() - t0, 2)}
            history.append(rec)
            if log is not None:
                log(f"iteration {it + 1}/{cfg.iterations}: loss {rec['loss']:.4f} ({rec['time_s']:.1f} s)")
        if callback is not None and cfg.eval_every > 0 and (it + 1) % cfg.eval_every == 0:
            callback(it + 1, model, table)
    return ToyState(cfg, g, model, ema, table, history, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# Evaluation


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
# Driver

POOLED_TITLES = {"exact": "exact posterior", "long_run": "long-run LD", "damc": "DAMC", "short_run": "short-run LD"}


def pooled_kde_png(rows: list[dict[str, Tensor]], path: Path, row_labels: list[str] | None = None,
                   captions: list[dict[str, str]] | None = None) -> Path:
    """The authors' figure (KDE of pooled samples, bandwidth 0.15 on [−4, 4]², ``toy:158-177``) for each row."""
    return kde_panels_png(rows, POOLED_TITLES, path, row_labels=row_labels, captions=captions)


def run(cfg: ToyConfig, out_dir: Path | None = None, log: Callable[[str], None] | None = None,
        curve: bool = False) -> dict[str, Any]:
    """Train and evaluate one instance; with ``out_dir`` write ``toy.json``, ``toy_density.png`` (per x),
    ``toy_kde.png`` (pooled, the authors' figure) and ``samples.npz`` (the pooled sets). Returns the report.

    ``curve`` (or ``cfg.eval_every``) also measures the amortizer every ``eval_every`` iterations (default 100).
    """
    problem_msg = check_config(cfg)
    if problem_msg is not None:
        raise ValueError(problem_msg)
    if curve and cfg.eval_every == 0:
        cfg = replace(cfg, eval_every=100)
    g = problem(cfg)
    t0 = time.perf_counter()
    pref = pooled_reference(g, cfg) if cfg.n_pooled_x > 0 else None
    xs = pref.x[:cfg.n_eval_x] if pref is not None and cfg.setup == "authors" else None
    ref = reference(g, cfg, xs)
    ref_seconds = time.perf_counter() - t0
    pooled_refs = {k: v for k, v in pref.sets.items()} if pref is not None else {}
    ref_pooled = pooled_distances(pooled_refs, pref, cfg, g) if pref is not None else None
    points: list[dict[str, Any]] = []

    def on_eval(it: int, model: ToyModel, table: SamplerTable) -> None:
        r = evaluate(model, table, ref, cfg)
        point: dict[str, Any] = {"iteration": it, **{f"swd_damc_vs_{k}": v["swd"]["damc"]
                                                      for k, v in r.distances.items()}}
        if pref is not None:
            d = pooled_distances({"damc": pooled_draw(model, table, pref, cfg)}, pref, cfg, mmd=False)
            point.update({f"pooled_swd_damc_vs_{k}": v["damc"] for k, v in d["swd"].items()})
        points.append(point)
        if log is not None:
            s = r.summary()
            msg = (f"  iteration {it}: per-x SW2 to exact: DAMC {s['swd_damc_vs_exact']:.4f} (short-run "
                   f"{s['swd_short_run_vs_exact']:.4f})")
            if pref is not None and ref_pooled is not None:
                msg += (f"; pooled SW2 to long-run LD: DAMC {point['pooled_swd_damc_vs_long_run']:.4f} (short-run "
                        f"{ref_pooled['swd']['long_run']['short_run']:.4f}, floor "
                        f"{ref_pooled['swd']['long_run']['long_run_b']:.4f})")
            log(msg)

    state = train(cfg, log, on_eval)
    t1 = time.perf_counter()
    result = evaluate(state.model, state.table, ref, cfg)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "reference_seconds": round(ref_seconds, 2),
        "train_seconds": round(state.seconds, 2),
        "x": result.x.tolist(),
        "long_run_valid": ref.long_run_valid(cfg),
        "distances": result.distances,
        "langevin_profile": result.profile,
        "summary": result.summary(),
        "history": state.history,
        "curve": points,
    }
    damc_pooled = None
    if pref is not None and ref_pooled is not None:
        damc_pooled = pooled_draw(state.model, state.table, pref, cfg)
        d = pooled_distances({"damc": damc_pooled}, pref, cfg, g)
        pooled: dict[str, Any] = {"n_x": cfg.n_pooled_x}
        for key in ("swd", "mmd"):
            pooled[key] = {r: {**d[key][r], **ref_pooled[key][r]} for r in ref_pooled[key]}
        pooled["recon"] = {**d["recon"], **ref_pooled["recon"]}
        report["pooled"] = pooled
    report["eval_seconds"] = round(time.perf_counter() - t1, 2)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        density_png(result, out_dir / "toy_density.png")
        files = [out_dir / "toy.json", out_dir / "toy_density.png"]
        if pref is not None and damc_pooled is not None:
            sets = {**pref.sets, "damc": damc_pooled}
            sw = report["pooled"]["swd"]["long_run"]
            pooled_kde_png([sets], out_dir / "toy_kde.png",
                           captions=[{m: f"SW2 to LD {sw[m]:.3f}" for m in ("damc", "short_run")}])
            arrays = {k: v.numpy() for k, v in sets.items()} | {"x": pref.x.numpy()}
            atomic_write(out_dir / "samples.npz", lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]
            files += [out_dir / "toy_kde.png", out_dir / "samples.npz"]
        text = json.dumps(report, indent=2)
        atomic_write(out_dir / "toy.json", lambda f: f.write(text.encode()))  # last: its presence means done
        report["files"] = [str(f) for f in files]
    return report
