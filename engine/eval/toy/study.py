"""Does the amortizer learn long-run posteriors? The pre-registered toy study and ``python -m engine.toy``.

Pre-registration (written and committed before the multi-seed runs; every seed run is reported):

* **Instance**: one seed of a setup. With ``--setup authors`` the seed is their ``--seed``: it fixes G, the 500
  training latents, Q's initial weights and the training draws. Evaluation uses their pooled protocol: M = 5,000
  observations (``sample_z(500, seed + 3000)`` ten times, fresh noise), one sample per x and method.
* **Distance**: sliced Wasserstein-2 with 1,000 random directions (a fixed set per seed) between pooled sets.
  Long-run LD = 1,000 Langevin steps (s 0.1) from N(0, I), their ground truth; two independent sets A and B.
  The **floor** is SW2(B, A): two draws of the same law are that far apart.
* **Qualifying criterion** (before any training): the instance qualifies when 50-step LD from N(0, I) is at
  least 3× the floor away from long-run LD: SW2(short-run, A) ≥ 3 · SW2(B, A). Elsewhere 50 steps have already
  done what 1,000 do, and no sampler can be measurably closer to long-run LD than short-run LD is.
* **Claim criterion** (the paper's App. E.1 claim, made testable): on a qualifying instance the claim holds when
  the amortizer after **3,000 training iterations** (the online Q, as their figure) is closer to long-run LD than
  50-step LD by more than the floor: SW2(DAMC, A) < SW2(short-run, A) − SW2(B, A).
* Reported beside it, not part of the criterion: the same against the exact posterior (a grid, two exact draws
  for its floor), MMD, per-x distances for 8 observations, their reconstruction error, and the distance of
  the amortizer to long-run LD every ``eval_every`` iterations.

Commands (``results/README.md`` has the measured outcome):

    # the CPU run: the authors' toy at 20 sampler steps and U-Net width 2; planned with these criteria for
    # seeds 1-6, of which seeds 1-2 ran (CPU time) and are committed
    python -m engine.toy --setup authors --fast --seeds 1-2 --eval-every 250 --out results/toy/authors-cpu
    # the full-size run (their 100 steps, nf 4; ~2.5 s per iteration on one CPU core: a GPU job)
    python -m engine.toy --setup authors --seeds 1-10 --eval-every 250 --out results/toy/authors-full

Each seed is written to ``OUT/seed-<s>/`` as it finishes (a rerun skips finished seeds, so disjoint ``--seeds``
lists can run as parallel processes on one ``--out``); ``OUT/summary.{json,md}``, ``OUT/kde.png`` and
``OUT/curves.png`` cover every finished seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.eval.distances import sliced_wasserstein
from engine.eval.plots import Series, line_panels_png
from engine.eval.toy.authors import authors_config, authors_cpu_config
from engine.eval.toy.experiment import check_config, pooled_kde_png, pooled_reference, problem, run
from engine.eval.toy.problem import ToyConfig, fast_config
from engine.files import atomic_write

__all__ = ["CLAIM_ITERATIONS", "QUALIFY_RATIO", "main", "parse_seeds", "qualification", "run_seeds", "same_config",
           "summarize", "verdict"]

QUALIFY_RATIO = 3.0  # short-run LD at least this many floors away from long-run LD
CLAIM_ITERATIONS = 3000  # the amortizer is judged after this many training iterations


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered criteria applied to one instance's report (pooled SW2 to long-run LD set A)."""
    d = report["pooled"]["swd"]["long_run"]
    floor, short, damc = d["long_run_b"], d["short_run"], d["damc"]
    qualifies = short >= QUALIFY_RATIO * floor
    holds = damc < short - floor
    out = {"floor": floor, "short_run": short, "damc": damc, "ratio": short / floor, "qualifies": qualifies,
           "margin": short - floor - damc, "pre_registered": report["config"]["iterations"] == CLAIM_ITERATIONS}
    out["claim"] = ("holds" if holds else "does not hold") if qualifies else "not qualifying"
    return out


def qualification(cfg: ToyConfig) -> dict[str, float]:
    """The qualifying test alone (training-free, no exact posterior): pooled SW2 of short-run LD and of the
    second long-run set to long-run set A, and their ratio."""
    pref = pooled_reference(problem(cfg), cfg, exact=False)
    a = pref.sets["long_run"]
    short, floor = (sliced_wasserstein(pref.sets[k], a, cfg.n_projections, seed=cfg.seed)
                    for k in ("short_run", "long_run_b"))
    return {"short_run": short, "floor": floor, "ratio": short / floor}


def parse_seeds(text: str) -> list[int]:
    """'1-6' or '1,3,5' or '1-3,7' -> sorted unique seeds; ValueError with the reason."""
    seeds: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"--seeds {text!r}: use non-negative integers and ranges, e.g. 1-6 or 1,3,5")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a or b - a > 10_000:
            raise ValueError(f"--seeds {text!r}: range {a}-{b} is empty or too long")
        seeds.update(range(a, b + 1))
    return sorted(seeds)


# ---------------------------------------------------------------------------------------------------------
# Several instances


def same_config(saved: dict[str, Any], cfg: ToyConfig) -> bool:
    """Whether a saved config is ``cfg``; a field the saved one lacks (added later) must hold its default."""
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as saved
    defaults = json.loads(json.dumps(asdict(ToyConfig())))
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in now.items()) and set(saved) <= set(now)


def _seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def run_seeds(cfg: ToyConfig, seeds: list[int], out: Path, log: Any = None) -> dict[str, Any]:
    """Run every seed not already finished in ``out`` (a finished seed with another config is an error), then
    summarise all finished seeds."""
    for s in seeds:
        c = replace(cfg, seed=s)
        path = _seed_dir(out, s) / "toy.json"
        if path.is_file():
            if not same_config(json.loads(path.read_text()).get("config", {}), c):
                raise ValueError(f"{path} holds a run with another config; choose another --out")
            if log is not None:
                log(f"seed {s}: already done ({path})")
            continue
        if log is not None:
            log(f"seed {s}: training {c.iterations} iterations ({c.setup} setup)")
        run(c, _seed_dir(out, s), log=log)
    return summarize(out)


def _load(out: Path) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for d in sorted(out.glob("seed-*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1):
        if d.name[5:].isdigit() and (d / "toy.json").is_file():
            found.append((int(d.name[5:]), json.loads((d / "toy.json").read_text())))
    return found


def _row(seed: int, rep: dict[str, Any]) -> dict[str, Any]:
    v = verdict(rep)
    p, r, s = rep["pooled"]["swd"], rep["pooled"]["recon"], rep["summary"]
    return {"seed": seed, **v, "damc_vs_exact": p["exact"]["damc"], "short_run_vs_exact": p["exact"]["short_run"],
            "long_run_vs_exact": p["exact"]["long_run"], "exact_floor": p["exact"]["exact_b"],
            "mmd_damc_vs_long_run": rep["pooled"]["mmd"]["long_run"]["damc"],
            "mmd_short_run_vs_long_run": rep["pooled"]["mmd"]["long_run"]["short_run"],
            "mmd_floor": rep["pooled"]["mmd"]["long_run"]["long_run_b"],
            "recon_damc": r["damc"], "recon_long_run": r["long_run"], "recon_short_run": r["short_run"],
            "recon_exact": r["exact"], "per_x_damc_vs_exact": s["swd_damc_vs_exact"],
            "per_x_short_run_vs_exact": s["swd_short_run_vs_exact"],
            "per_x_long_run_vs_exact": s["swd_long_run_vs_exact"]}


def _statement(rows: list[dict[str, Any]]) -> str:
    q = [r for r in rows if r["qualifies"]]
    held = [r["seed"] for r in q if r["claim"] == "holds"]
    pre = all(r["pre_registered"] for r in rows)
    note = "" if pre else f" (NOT at the pre-registered {CLAIM_ITERATIONS} iterations)"
    return (f"{len(rows)} instances run; {len(q)} qualify (seeds {[r['seed'] for r in q]}); the claim holds on "
            f"{len(held)} of {len(q)} qualifying instances (seeds {held}){note}.")


def summarize(out: Path) -> dict[str, Any]:
    """summary.json, summary.md, kde.png and curves.png over every finished seed in ``out``."""
    found = _load(out)
    if not found:
        raise ValueError(f"{out}: no finished seed (seed-*/toy.json)")
    rows = [_row(s, rep) for s, rep in found]
    cfg = found[0][1]["config"]
    summary = {"config": {k: v for k, v in cfg.items() if k != "seed"}, "seeds": [s for s, _ in found],
               "qualify_ratio": QUALIFY_RATIO, "claim_iterations": CLAIM_ITERATIONS, "rows": rows,
               "statement": _statement(rows)}
    text = json.dumps(summary, indent=2)
    atomic_write(out / "summary.json", lambda f: f.write(text.encode()))
    md = _markdown(rows, cfg, _statement(rows))
    atomic_write(out / "summary.md", lambda f: f.write(md.encode()))
    kde_rows, labels, captions = [], [], []
    for s, _ in found:
        npz = _seed_dir(out, s) / "samples.npz"
        if npz.is_file():
            with np.load(npz) as z:
                kde_rows.append({k: torch.from_numpy(z[k]) for k in ("exact", "long_run", "damc", "short_run")})
            r = next(r for r in rows if r["seed"] == s)
            labels.append(f"seed {s}\n{r['claim']}")
            captions.append({"damc": f"SW2 {r['damc']:.3f}", "short_run": f"SW2 {r['short_run']:.3f}",
                             "long_run": f"floor {r['floor']:.3f}"})
    if kde_rows:
        pooled_kde_png(kde_rows, out / "kde.png", row_labels=labels, captions=captions)
    panels = []
    for s, rep in found:
        pts = rep.get("curve") or []
        if not pts or "pooled_swd_damc_vs_long_run" not in pts[0]:
            continue
        its = [p["iteration"] for p in pts]
        d_ld, d_ex = rep["pooled"]["swd"]["long_run"], rep["pooled"]["swd"]["exact"]
        ends = [its[0], its[-1]]
        panels.append((f"seed {s}: pooled SW2", [
            Series("DAMC to LD", its, [p["pooled_swd_damc_vs_long_run"] for p in pts], (200, 30, 30)),
            Series("short-run to LD", ends, [d_ld["short_run"]] * 2, (200, 30, 30), dashed=True),
            Series("floor (LD B to A)", ends, [d_ld["long_run_b"]] * 2, (120, 120, 120), dashed=True),
            Series("DAMC to exact", its, [p["pooled_swd_damc_vs_exact"] for p in pts], (30, 60, 200)),
            Series("short-run to exact", ends, [d_ex["short_run"]] * 2, (30, 60, 200), dashed=True)]))
    if panels:
        line_panels_png(panels, out / "curves.png", xlabel="training iteration")
    return summary


def _markdown(rows: list[dict[str, Any]], cfg: dict[str, Any], statement: str) -> str:
    lines = [f"# Toy study: setup {cfg['setup']}, {cfg['iterations']} iterations, batch {cfg['batch_size']}, "
             f"{cfg['n_steps']} sampler steps, U-Net nf {cfg['unet_nf']}, {cfg['n_pooled_x']} pooled x",
             "", f"**{statement}**", "",
             "Pooled sliced W2 (1,000 directions) to long-run LD set A; floor = SW2(long-run B, A). Qualifies: "
             f"short-run ≥ {QUALIFY_RATIO:g} × floor. Claim: DAMC < short-run − floor.", "",
             "| seed | short-run | floor | ratio | qualifies | DAMC | margin | claim | to exact: DAMC / short / long / "
             "floor | recon DAMC / long / short | per-x to exact: DAMC / short / long |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['short_run']:.3f} | {r['floor']:.3f} | {r['ratio']:.1f} | "
            f"{'yes' if r['qualifies'] else 'no'} | {r['damc']:.3f} | {r['margin']:+.3f} | {r['claim']} | "
            f"{r['damc_vs_exact']:.3f} / {r['short_run_vs_exact']:.3f} / {r['long_run_vs_exact']:.3f} / "
            f"{r['exact_floor']:.3f} | {r['recon_damc']:.3f} / {r['recon_long_run']:.3f} / "
            f"{r['recon_short_run']:.3f} | {r['per_x_damc_vs_exact']:.3f} / {r['per_x_short_run_vs_exact']:.3f} / "
            f"{r['per_x_long_run_vs_exact']:.3f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# CLI


def _print_single(report: dict[str, Any], cfg: ToyConfig, out: Path) -> None:
    e, s = report["distances"]["exact"]["swd"], report["summary"]
    cols = [("DAMC", "damc"), ("short-run", "short_run"), ("long-run", "long_run"), ("N(0,I)", "prior"),
            ("floor", "exact_split")]
    print(f"per x: sliced W2 distance to the exact posterior ({cfg.n_eval_samples} samples per x and method; "
          f"short-run {cfg.short_steps} and long-run {cfg.gt_steps} Langevin steps; floor: a second exact draw):")
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
    if "pooled" in report:
        p = report["pooled"]
        print(f"pooled over {p['n_x']} x (one sample per x), sliced W2 to long-run LD / to the exact posterior; "
              "recon = mean ‖G(z) − x‖²:")
        for m in ("damc", "short_run", "long_run", "long_run_b", "exact", "exact_b", "prior"):
            a, b = p["swd"]["long_run"].get(m, math.nan), p["swd"]["exact"].get(m, math.nan)
            print(f"  {m:>11}  {a:8.3f}  {b:8.3f}  recon {p['recon'][m]:.3f}")
        v = verdict(report)
        print(f"qualifies: {v['qualifies']} (short-run {v['short_run']:.3f} = {v['ratio']:.1f} × floor "
              f"{v['floor']:.3f}); claim: {v['claim']}" + ("" if v["pre_registered"] else
                                                           f" (not at the pre-registered {CLAIM_ITERATIONS})"))
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.toy", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--setup", choices=("engine", "authors"), default="engine",
                   help="engine: this engine's toy (default); authors: their toy_example.py exactly")
    p.add_argument("--fast", action="store_true",
                   help="engine: 500 iterations, batch 200, 20 steps, nf 2 (~2-3 min); authors: 20 sampler steps and "
                        "nf 2, all else theirs (~0.5 s per iteration on one CPU core)")
    p.add_argument("--iterations", type=int, help="training iterations (default 3000; 500 with --fast --setup engine)")
    p.add_argument("--seed", type=int, help="the instance (default: 0, or their 1 with --setup authors)")
    p.add_argument("--seeds", help="several instances, e.g. 1-6 or 1,3,5: OUT/seed-<s>/ each, and a summary")
    p.add_argument("--train-seed", type=int, help="engine setup: the amortizer's init and training draws")
    p.add_argument("--obs-sigma", type=float, help="observation noise σ of x = G(z) + N(0, σ²I) (default 0.25)")
    p.add_argument("--eval-x", type=int, help="number of fixed observations x for the per-x distances (default 8)")
    p.add_argument("--eval-samples", type=int, help="samples per x and method (default 2000, or 500 with --fast)")
    p.add_argument("--gt-steps", type=int, help="long-run Langevin steps (engine 2000, 1000 with --fast; authors 1000)")
    p.add_argument("--pooled-x", type=int, help="observations of the pooled evaluation (default 5000; 0: off)")
    p.add_argument("--grid-cells", type=int, help="exact posterior: grid cells per axis over [−6, 6]² (default 601)")
    p.add_argument("--eval-every", type=int, help="measure the amortizer every N iterations (learning curve)")
    p.add_argument("--curve", action="store_true", help="same as --eval-every 100")
    p.add_argument("--qualify-only", action="store_true",
                   help="only the training-free qualifying test of each seed (no exact posterior): "
                        "OUT/qualification.json")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    return p


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    if args.setup == "authors":
        cfg = authors_cpu_config() if args.fast else authors_config()
    else:
        cfg = fast_config() if args.fast else ToyConfig()
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    for flag, field in (("train_seed", "train_seed"), ("obs_sigma", "obs_sigma"), ("iterations", "iterations"),
                        ("eval_x", "n_eval_x"), ("eval_samples", "n_eval_samples"), ("gt_steps", "gt_steps"),
                        ("pooled_x", "n_pooled_x"), ("eval_every", "eval_every"), ("grid_cells", "grid_cells")):
        value = getattr(args, flag)
        if value is not None:
            cfg = replace(cfg, **{field: value})
    if args.curve and cfg.eval_every == 0:
        cfg = replace(cfg, eval_every=100)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    problem = check_config(cfg)
    seeds: list[int] = []
    if problem is None and args.seeds is not None:
        try:
            seeds = parse_seeds(args.seeds)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    try:
        if args.qualify_only:
            rows = []
            for s in seeds or [cfg.seed]:
                q = {"seed": s, **qualification(replace(cfg, seed=s))}
                q["qualifies"] = q["ratio"] >= QUALIFY_RATIO
                rows.append(q)
                print(f"seed {s}: short-run {q['short_run']:.4f}, floor {q['floor']:.4f}, ratio {q['ratio']:.2f}: "
                      f"{'qualifies' if q['qualifies'] else 'does not qualify'}", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"config": asdict(cfg), "qualify_ratio": QUALIFY_RATIO, "rows": rows}, indent=2)
            atomic_write(args.out / "qualification.json", lambda f: f.write(text.encode()))
            return 0
        if seeds:
            summary = run_seeds(cfg, seeds, args.out, log)
            print((args.out / "summary.md").read_text(), end="")
            print(f"wrote {args.out}/summary.{{json,md}}, kde.png, curves.png; {summary['statement']}")
            return 0
        report = run(cfg, args.out, log=log)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_single(report, cfg, args.out)
    return 0
