"""``python -m engine.study digits``: does LEBM learned with DAMC generate better than short-run LEBM? (Table 1)

The paper's headline (Table 1): the EBM prior trained with DAMC samples, sampled either with the amortizer
("Ours-DAMC") or with short-run Langevin from N(0, I) ("Ours-LEBM"), generates better than the EBM trained with
short-run Langevin ("LEBM"), and reconstructs at least as well. This study measures that where a CPU can:
the quickstart digits (``configs/quickstart.yaml``: 1,797 real 8×8 digits, the full DAMC iteration), several
seeds, DAMC and ``method=lebm`` trained for the same number of iterations by the engine's own training loop
(:func:`engine.run.train.train`, one run directory each), then for every run:

* prior samples: the amortizer's (DAMC run only) and 100-step Langevin from N(0, I) at ``eval.lebm_step_size``
  (both runs), decoded by G; n = 1,497 each (the size of the training split they are compared with);
* reconstructions of the 300 held-out test digits (amortizer draw, or N(0, I) for LEBM, then
  ``eval.recon_steps`` noise-free posterior steps), with their per-pixel MSE;
* KID and FID in the features of a digit classifier trained once on the training split
  (:mod:`engine.eval.digits_features` says why), against the training split; the real test split gives the floor.

Outputs in ``--out`` (default ``results/digits``): ``summary.json`` (every seed's numbers), ``table.md`` (mean ±
standard deviation over seeds, paired DAMC-vs-LEBM differences), ``grids/seed<s>_*.png`` and the classifier.
Run directories go to ``--runs`` (default ``runs/study-digits``); a rerun reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import ConfigError, load_config
from engine.data.digits import DIGITS_SHAPE, load_digits_split
from engine.data.pixels import u8_to_float
from engine.eval.digits_features import DigitFeatures, FeatureSet, fid, kid, load_or_train_classifier
from engine.eval.toy.study import parse_seeds
from engine.files import atomic_write
from engine.learner import Learner, damc_prior_latents, lebm_prior_latents, reconstruct
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.run.images import save_grid
from engine.run.train import TrainingStopped, train
from engine.runtime import system

__all__ = ["KINDS", "evaluate_run", "main", "study_digits", "write_table"]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# (key, label, paper name) in table order
KINDS = (("damc_prior", "DAMC prior samples (DAMC run)", "Ours-DAMC"),
         ("lebm_prior_damc_run", "LEBM prior samples, EBM trained with DAMC", "Ours-LEBM"),
         ("lebm_prior_lebm_run", "LEBM prior samples, EBM trained with short-run LD", "LEBM"),
         ("recon_damc_run", "reconstructions of the test split, DAMC run", "Ours (MSE)"),
         ("recon_lebm_run", "reconstructions of the test split, short-run LEBM run", "LEBM (MSE)"))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _metrics(fs: FeatureSet, features: DigitFeatures) -> dict[str, Any]:
    counts = np.bincount(fs.labels, minlength=10)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {"kid": kid(fs.feats, features.train.feats), "fid": fid(fs.feats, features.train.feats), "n": len(fs.labels),
            "class_counts": counts.tolist(), "class_entropy": entropy}


def evaluate_run(learner: Learner, features: DigitFeatures, n: int, seed: int, grids: Path | None,
                 tag: str) -> dict[str, Any]:
    """Prior samples and reconstructions of one trained run, measured; grids of the first 64 when asked."""
    cfg = learner.cfg
    rng = system.make_generator(learner.device, 10_000 + seed)
    g = learner.nets.generator
    out: dict[str, Any] = {"iteration": learner.iteration}
    sets: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if learner.nets.amortizer is not None:
            sets["damc_prior"] = g(damc_prior_latents(learner, n, rng)).clamp(-1, 1)
    z = lebm_prior_latents(learner, n, cfg.eval.lebm_steps, cfg.eval.lebm_step_size, rng)
    with torch.no_grad():
        sets["lebm_prior"] = g(z).clamp(-1, 1)
    x_test = u8_to_float(load_digits_split(DIGITS_SHAPE, "test"))
    recon = reconstruct(learner, x_test, cfg.eval.recon_steps, cfg.eval.recon_step_size, rng).clamp(-1, 1)
    for key, images in sets.items():
        out[key] = _metrics(features.of(images), features)
    out["recon"] = _metrics(features.of(recon), features)
    out["recon"]["mse"] = float((recon - x_test).pow(2).mean())  # per pixel, [−1, 1] units (spec §4)
    if grids is not None:
        style = {"scale": 4, "pad_value": 128}
        for key, images in sets.items():
            save_grid(images[:64], grids / f"{tag}_{key}.png", nrow=8, **style)
        pairs = [t for i in range(0, 32, 8) for t in (x_test[i:i + 8], recon[i:i + 8])]
        save_grid(torch.cat(pairs), grids / f"{tag}_recon.png", nrow=8, **style)
    return out


def _train_or_reuse(config: Path, method: str, seed: int, iterations: int, runs: Path,
                    overrides: list[str]) -> Path:
    run_dir = runs / f"{method}-seed{seed}"
    cfg = load_config(config, [f"method={method}", f"train.seed={seed}", f"train.iterations={iterations}",
                               f"log.run_dir={run_dir}", "log.progress=false", f"log.sample_every={iterations}",
                               f"log.checkpoint_every={max(1, iterations // 4)}", *overrides])
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None and int(checkpoint.load(latest)["iteration"]) >= iterations:
        _say(f"{run_dir}: finished earlier, reused")
        return run_dir
    _say(f"training {method}, seed {seed}, {iterations} iterations -> {run_dir}")
    train(cfg)
    return run_dir


def _write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2).encode()
    atomic_write(path, lambda fh: fh.write(data))


def _row_of(per_seed: dict[str, Any], kind: str) -> dict[str, Any] | None:
    if kind == "damc_prior":
        return per_seed["damc"].get("damc_prior")
    run = "damc" if kind.endswith("damc_run") else "lebm"
    return per_seed[run]["recon" if kind.startswith("recon") else "lebm_prior"]


def _ms(values: list[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.4g} ± {a.std(ddof=1) if a.size > 1 else 0.0:.2g}"


def write_table(summary: dict[str, Any], out: Path) -> str:
    """table.md: mean ± standard deviation over seeds (ddof 1) and the paired comparisons of the paper's claims."""
    seeds = summary["seeds"]
    per = summary["per_seed"]
    lines = [f"# DAMC vs short-run LEBM on the quickstart digits: {summary['iterations']} iterations, seeds {seeds}",
             "", f"KID and FID in standardised features of a digit classifier (test accuracy "
             f"{summary['classifier']['test_accuracy']:.3f}, sha256 {summary['classifier']['sha256'][:12]}…), "
             f"against the 1,497 training digits; mean ± std over {len(seeds)} seeds (lower is better).", "",
             "| samples | paper's name | KID | FID | MSE | KID per seed |", "|---|---|---|---|---|---|"]
    for kind, label, paper in KINDS:
        rows = [_row_of(per[str(s)], kind) for s in seeds]
        if any(r is None for r in rows):
            continue
        kids = [r["kid"] for r in rows if r is not None]
        fids = [r["fid"] for r in rows if r is not None]
        mse = _ms([r["mse"] for r in rows if r is not None]) if kind.startswith("recon") else ""
        lines.append(f"| {label} (n {rows[0]['n'] if rows[0] else '?'}) | {paper} | {_ms(kids)} | {_ms(fids)} | "
                     f"{mse} | {', '.join(f'{k:.3g}' for k in kids)} |")
    f = summary["floor"]
    lines.append(f"| real test split (n 300): the floor | | {f['kid']:.3g} | {f['fid']:.3g} | | |")
    lines += ["", "Paired by seed (the paper's claims; a difference < 0 agrees with the paper):", "",
              "| comparison | metric | difference, mean ± std | seeds agreeing with the paper |", "|---|---|---|---|"]
    for name, metric, a, b in summary["comparisons"]:
        d = [_row_of(per[str(s)], a)[metric] - _row_of(per[str(s)], b)[metric] for s in seeds]  # type: ignore[index]
        lines.append(f"| {name} | {metric.upper()} | {_ms(d)} | {sum(v < 0 for v in d)} of {len(d)} |")
    text = "\n".join(lines) + "\n"
    atomic_write(out / "table.md", lambda fh: fh.write(text.encode()))
    return text


COMPARISONS = (("Ours-DAMC < Ours-LEBM", "kid", "damc_prior", "lebm_prior_damc_run"),
               ("Ours-LEBM < LEBM", "kid", "lebm_prior_damc_run", "lebm_prior_lebm_run"),
               ("Ours-DAMC < LEBM", "kid", "damc_prior", "lebm_prior_lebm_run"),
               ("Ours-LEBM < LEBM", "fid", "lebm_prior_damc_run", "lebm_prior_lebm_run"),
               ("Ours-DAMC < LEBM", "fid", "damc_prior", "lebm_prior_lebm_run"),
               ("reconstruction, DAMC run < LEBM run", "mse", "recon_damc_run", "recon_lebm_run"))


def study_digits(out: Path, runs: Path, seeds: list[int], iterations: int, n_samples: int,
                 config: Path = QUICKSTART, overrides: list[str] | None = None) -> dict[str, Any]:
    overrides = list(overrides or [])
    net, meta = load_or_train_classifier(out, _say)
    features = DigitFeatures(net)
    floor = _metrics(features.test, features)
    per_seed: dict[str, Any] = {}
    summary_path = out / "summary.json"
    if summary_path.is_file():  # seeds measured earlier with the same settings are kept
        old = json.loads(summary_path.read_text())
        if old.get("iterations") == iterations and old.get("n_samples") == n_samples and \
                old.get("overrides") == overrides and old.get("classifier", {}).get("sha256") == meta["sha256"]:
            per_seed = old.get("per_seed", {})
    for s in seeds:
        if str(s) in per_seed:
            _say(f"seed {s}: measured earlier, kept")
            continue
        result: dict[str, Any] = {}
        for method in ("damc", "lebm"):
            run_dir = _train_or_reuse(config, method, s, iterations, runs, overrides)
            learner = checkpoint.load_run(run_dir, torch.device("cpu"))
            result[method] = evaluate_run(learner, features, n_samples, s, out / "grids", f"seed{s}_{method}_run")
        per_seed[str(s)] = result
        done = sorted(int(k) for k in per_seed)
        summary = {"config": str(config), "overrides": overrides, "iterations": iterations, "n_samples": n_samples,
                   "seeds": done, "classifier": meta, "floor": floor, "per_seed": per_seed,
                   "comparisons": [list(c) for c in COMPARISONS]}
        _write_json(summary_path, summary)  # after every seed: nothing is lost
    summary = json.loads(summary_path.read_text())
    summary["seeds"] = [s for s in summary["seeds"] if s in seeds] or summary["seeds"]
    write_table(summary, out)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.study", description=(__doc__ or "").splitlines()[0])
    p.add_argument("study", choices=("digits",), help="digits: the quickstart digits (8×8, CPU)")
    p.add_argument("overrides", nargs="*", help="config overrides for both methods, e.g. train.batch_size=32")
    p.add_argument("--out", type=Path, default=Path("results/digits"), help="summary, table, grids, classifier")
    p.add_argument("--runs", type=Path, default=Path("runs/study-digits"), help="the training run directories")
    p.add_argument("--seeds", default="0-4", help="training seeds, e.g. 0-4 or 0,2 (default 0-4)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations of each run (default 2000)")
    p.add_argument("--samples", type=int, default=1497, help="prior samples per run and kind (default 1497)")
    p.add_argument("--config", type=Path, default=QUICKSTART, help="base config (default configs/quickstart.yaml)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow the options
    try:
        seeds = parse_seeds(args.seeds)
        if args.iterations < 1:
            raise ValueError(f"--iterations = {args.iterations}: must be >= 1")
        if not 10 <= args.samples <= 100_000:
            raise ValueError(f"--samples = {args.samples}: must be between 10 and 100000")
        cfg = load_config(args.config, args.overrides)  # bad overrides fail here, before any training
        if cfg.data.source != "digits" or cfg.method != "damc":
            raise ValueError(f"--config {args.config}: the digits study needs data.source digits and method damc "
                             "(it trains method=lebm itself)")
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        study_digits(args.out, args.runs, seeds, args.iterations, args.samples, args.config, args.overrides)
    except (ConfigError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print((args.out / "table.md").read_text(), end="")
    return 0
