"""Evaluation command: ``python -m engine.eval RUN_DIR --metrics fid,mse,auprc,chains``.

Protocols are spec ``damc.md`` §4, with the authors' code values as defaults:

* **FID** (``fid`` = every sample kind of the run's learner, or one ``fid_<kind>``, e.g. ``fid_damc``, ``fid_lebm``,
  ``fid_ebm``): 2048-d pool3 features of the pytorch-fid Inception
  (:mod:`engine.eval.fid`), ``--fid-samples`` (50,000) generated images in batches of ``--batch`` (500), clamped to
  [−1, 1] then (x+1)/2, against the statistics of the first 50,000 training images (test transform, cached
  per dataset; an image folder, read class by class, gives a fixed random subset when it holds more).
  DAMC: the online amortizer's unconditional draw (random null token, 100 steps), then G.
  LEBM: N(0, I) followed by 100 Langevin steps on E(z) + ½‖z‖² (noise on) at ``eval.lebm_step_size``
  of the run (``--lebm-step-size``; the README passes 0.4, and 1.6 for CIFAR-10, spec §5.6).
* **MSE**: test split; z from the online amortizer's conditional draw (N(0, I) for an LEBM run), then 10
  noise-free Langevin steps on the posterior, s 0.1, σ = the run's ``langevin.likelihood_sigma``
  (``--sigma``; the README uses 1.0 for CelebA-HQ); per-image mean over C·H·W of (G(z) − x)² in [−1, 1]
  units, averaged over the test set.
* **AUPRC** (MNIST anomaly runs): z as for MSE but 5 noise-free steps (``eval_anomaly_det.py``; 10 in the
  training-time eval: ``--auprc-steps 10``); score = Σ_pix (G(z) − x)² + E(z) + ½‖z‖²;
  ``sklearn.metrics.auc(recall, precision)`` of ``precision_recall_curve`` (trapezoidal, not average
  precision); labels 1 = the held-out digit.
* **chains** (paper Fig. 4): Langevin on E(z) + ½‖z‖² from N(0, I) for 200 and 2,500 steps; a PNG strip per
  length (one row per chain, columns along the chain) and a PNG of the mean energy per step.

Results go to ``RUN_DIR/eval-<iteration>.json`` (written atomically; metrics already in that file from an
earlier call for the same checkpoint are kept unless recomputed) and a table beside the paper's figures.
The file is strict JSON: a non-finite metric (a diverged checkpoint) is written as ``null`` with a note, never
as ``NaN``. Every argument is checked (integers bounded, floats finite and in range), the output location is
checked for writability and the memory estimate is made before any network runs; every failure is one
``error:`` line (:mod:`engine.errors`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import learners
from engine.config import SEED_MAX, Config, SystemConfig, from_dict
from engine.data import load_images, load_mnist_anomaly
from engine.errors import OneLineParser, describe_os_error, run_cli
from engine.eval import fid
from engine.eval.chains import long_run_chains
from engine.eval.metrics import EvalError, eval_auprc, eval_mse
from engine.eval.table import format_table
from engine.files import atomic_write, strict_json
from engine.learners import Learner, SampleKind
from engine.learners.damc import DamcLearner
from engine.models import IMAGE_SHAPES
from engine.run import checkpoint
from engine.run.budget import check_fits
from engine.run.checkpoint import CheckpointError
from engine.runtime import system

__all__ = ["METRICS", "PAPER", "EvalError", "dataset_copy", "evaluate", "format_table", "main", "paper_figure"]

# ``fid`` and one ``fid_<kind>`` per sample kind of any registered learner (a run accepts its own kinds).
METRICS = ("fid", *dict.fromkeys(f"fid_{k}" for m in learners.METHODS.values() for k in m.kinds), "mse", "auprc",
           "chains")
PAPER = learners.get(Config().method).paper  # the DAMC paper's (spec §4); each learner has its own (Method.paper)

PAPER_AUPRC: dict[int, float] = {1: 0.684, 4: 0.911, 5: 0.939, 7: 0.801, 9: 0.705}

_PAPER_DATA = {"cifar10": "CIFAR-10", "svhn": "SVHN", "celeba64": "CelebA 64x64", "celebahq256": "CelebA-HQ 256",
               "mnist": "MNIST"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dataset_copy(cfg: Config) -> str:
    """Human name of the data the run uses, e.g. 'CIFAR-10, JPEG copy' (FIDs against it must say so)."""
    d, arch = cfg.data, cfg.model.arch
    root = d.root.replace("\\", "/").rstrip("/")
    if d.source == "digits":
        return "scikit-learn 8x8 digits (quickstart)"
    if d.source == "mnist":
        return f"MNIST (IDX files), digit {d.heldout_digit} held out"
    if d.source == "cifar10":
        return "CIFAR-10 (original python batches)"
    if d.source == "svhn":
        return "SVHN (train_32x32.mat / test_32x32.mat)"
    low = root.lower()
    if "cifar" in low and "jpeg" in low:
        return "CIFAR-10, JPEG copy"
    name = _PAPER_DATA.get(arch, arch)
    return f"image folder {root!r} ({d.train_subdir}/ and {d.test_subdir}/), {name} architecture"


def paper_figure(cfg: Config, metric: str) -> float | None:
    """The paper's number for this metric and setup, or None (e.g. the quickstart digits)."""
    method = learners.get(cfg.method)
    if metric == "auprc":
        return PAPER_AUPRC.get(cfg.data.heldout_digit) if cfg.model.arch == "mnist" and "auprc" in method.metrics \
            else None
    return method.paper.get(cfg.model.arch, {}).get(metric)


@dataclass
class _Plan:
    """Parsed, validated request: everything checked before the first network evaluation."""

    run_dir: Path
    ckpt: Path
    cfg: Config
    metrics: list[str]
    out: Path


def _parse_metrics(text: str, kinds: tuple[str, ...] = ()) -> list[str]:
    """The requested metrics in order, ``fid`` expanded to ``fid_<kind>`` for each of ``kinds``."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise EvalError(f"--metrics {text!r}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(METRICS)}")
    out: list[str] = []
    for m in names:
        for x in ([f"fid_{k}" for k in kinds] if m == "fid" else [m]):
            if x not in out:
                out.append(x)
    return out


# Bounds of the numeric arguments: (lowest, highest). Sanity limits; memory is estimated separately.
_INT_ARGS: dict[str, tuple[int, int]] = {
    "seed": (0, SEED_MAX), "batch": (1, 65536), "limit": (1, 2**31 - 1), "fid_samples": (2, 1_000_000),
    "inception_batch": (1, 65536), "lebm_steps": (0, 100_000), "recon_steps": (0, 100_000),
    "auprc_steps": (0, 100_000), "chains": (1, 4096), "snapshots": (2, 1000),
}
_FLOAT_ARGS: dict[str, tuple[float, float]] = {
    "lebm_step_size": (1e-6, 10.0), "recon_step_size": (1e-6, 10.0), "chain_step_size": (1e-6, 10.0),
    "sigma": (1e-4, 100.0),
}
_CHAIN_STEPS_MAX = 1_000_000


def _check_args(args: argparse.Namespace) -> None:
    """Every numeric argument within its bounds (floats also finite); one line naming the flag otherwise."""
    for name, (lo, hi) in _INT_ARGS.items():
        value = getattr(args, name)
        if value is not None and not lo <= value <= hi:
            raise EvalError(f"--{name.replace('_', '-')} = {value}: must be >= {lo} and <= {hi}")
    for name, (flo, fhi) in _FLOAT_ARGS.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and flo <= value <= fhi):
            raise EvalError(f"--{name.replace('_', '-')} = {value}: must be a finite number >= {flo:g} and <= {fhi:g}")


def _check_writable(out: Path, run_dir: Path, chains: bool) -> None:
    """The JSON file (and, for chains, the run directory's PNGs) can be written: checked before any metric runs."""
    if out.is_dir():
        raise EvalError(f"--out {out}: is a directory; give a file name (e.g. {out / 'eval.json'})")
    if out.exists() and not os.access(out, os.W_OK):
        raise EvalError(f"--out {out}: not writable")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EvalError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvalError(f"--out {out}: cannot write in {parent} (permission denied or read-only)")
    if chains and not os.access(run_dir, os.W_OK | os.X_OK):
        raise EvalError(f"--metrics chains: cannot write the chain PNGs in {run_dir} (permission denied or "
                        "read-only)")


def _plan(args: argparse.Namespace) -> _Plan:
    _check_args(args)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise EvalError(f"--checkpoint {ckpt}: no such file")
    else:
        found = checkpoint.latest_checkpoint(run_dir)
        if found is None:
            raise EvalError(f"{run_dir}: no checkpoint (ckpt-*.pt); train first with python -m engine.train")
        ckpt = found
    try:
        state = checkpoint.load(ckpt)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        raise CheckpointError(f"{exc}{checkpoint.describe_fallback(run_dir, ckpt)}") from None
    cfg, iteration = from_dict(state["config"]), int(state["iteration"])
    del state
    method = learners.get(cfg.method)
    metrics = _parse_metrics(args.metrics, method.kinds)
    own = [f"fid_{k}" for k in method.kinds]
    for m in metrics:
        if m.startswith("fid_") and m not in own:
            raise EvalError(f"--metrics {m}: this {cfg.method.upper()} run draws {', '.join(method.kinds)} samples; "
                            f"use {' or '.join(own)} (or fid for all)")
        if m in ("mse", "auprc", "chains") and m not in method.metrics:
            raise EvalError(f"--metrics {m}: not defined for a {cfg.method.upper()} run; it has "
                            f"{', '.join(['fid', *method.metrics])}")
    if "auprc" in metrics and cfg.data.source != "mnist":
        raise EvalError(f"--metrics auprc: anomaly detection needs an MNIST anomaly run (data.source mnist); this "
                        f"run uses {cfg.data.source!r} ({dataset_copy(cfg)})")
    if any(m.startswith("fid") for m in metrics):
        try:
            fid.inception_path()
        except fid.InceptionUnavailableError as exc:
            raise EvalError(str(exc)) from None
    try:
        args.chain_steps = [int(s) for s in args.chain_steps.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--chain-steps {args.chain_steps!r}: expected comma-separated integers") from None
    if not args.chain_steps or min(args.chain_steps) < 1 or max(args.chain_steps) > _CHAIN_STEPS_MAX:
        raise EvalError(f"--chain-steps {args.chain_steps!r}: expected integers from 1 to {_CHAIN_STEPS_MAX}")
    out = Path(args.out) if args.out else run_dir / f"eval-{iteration:07d}.json"
    _check_writable(out, run_dir, "chains" in metrics)
    return _Plan(run_dir, ckpt, cfg, metrics, out)


def _load_data(plan: _Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Every data set a requested metric needs, loaded before any network work (errors are one line)."""
    cfg, data = plan.cfg, dict[str, Any]()
    shape = IMAGE_SHAPES[cfg.model.arch]
    try:
        if "mse" in plan.metrics:
            data["mse"] = load_images(cfg.data, shape, "test", limit=args.limit)
        if "auprc" in plan.metrics:
            images, labels = load_mnist_anomaly(cfg.data.root, cfg.data.heldout_digit, "test")
            if args.limit is not None:
                images, labels = images[: args.limit], labels[: args.limit]
            if labels.min() == labels.max():
                raise EvalError(f"--limit {args.limit}: the anomaly test subset has only one class; raise it")
            data["auprc"] = (images, labels)
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise EvalError(f"data ({dataset_copy(cfg)}, root {cfg.data.root!r}): {exc}") from None
    return data


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested metrics; returns the report (also written to the JSON file)."""
    plan = _plan(args)
    cfg = plan.cfg
    device = system.resolve_device(SystemConfig(device=args.device))
    check_fits(cfg, device, batch=args.batch, what=f"evaluation at --batch {args.batch}")
    data = _load_data(plan, args)
    try:
        learner = checkpoint.load_run(plan.run_dir, device, plan.ckpt)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        raise CheckpointError(f"{exc}{checkpoint.describe_fallback(plan.run_dir, plan.ckpt)}") from None
    for net in learner.networks().values():
        net.eval()  # no dropout in these networks; batch-statistics layers keep batch statistics by design
    sigma = args.sigma if args.sigma is not None else cfg.langevin.likelihood_sigma
    lebm_s = args.lebm_step_size if args.lebm_step_size is not None else cfg.eval.lebm_step_size
    chain_s = args.chain_step_size
    init, recon_how = learner.describe_reconstruct(args.recon_steps, args.recon_step_size, sigma)
    copy = dataset_copy(cfg)
    paper_data = cfg.model.arch in _PAPER_DATA
    # Real FID statistics first: a data problem there surfaces before any other metric has run.
    fid_ctx = _prepare_fid(cfg, args, device) if any(m.startswith("fid") for m in plan.metrics) else None
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def rng() -> torch.Generator:  # one fixed-seed stream per metric: results do not depend on which ran before
        return system.make_generator(device, args.seed)
    for metric in plan.metrics:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"paper": paper_figure(cfg, metric)}
        if metric == "mse":
            images = data["mse"]
            _say(f"MSE on {images.shape[0]} test images ...")
            entry["value"] = eval_mse(learner, images, batch_size=args.batch, n_steps=args.recon_steps,
                                      step_size=args.recon_step_size, sigma=sigma, rng=rng())
            entry.update(n_images=int(images.shape[0]), init=init, steps=args.recon_steps,
                         step_size=args.recon_step_size, sigma=sigma)
            entry["settings"] = f"{images.shape[0]} test images; {recon_how}"
        elif metric == "auprc":
            assert isinstance(learner, DamcLearner)  # Method.metrics: the latent-EBM learners only (checked above)
            images, labels = data["auprc"]
            _say(f"AUPRC on {images.shape[0]} test images ({int(labels.sum())} anomalous) ...")
            entry["value"] = eval_auprc(learner, images, labels, batch_size=args.batch, n_steps=args.auprc_steps,
                                        step_size=args.recon_step_size, sigma=sigma, rng=rng())
            entry.update(digit=cfg.data.heldout_digit, n_images=int(images.shape[0]),
                         n_anomalous=int(labels.sum()), init=init, steps=args.auprc_steps,
                         step_size=args.recon_step_size, sigma=sigma)
            how = learner.describe_reconstruct(args.auprc_steps, args.recon_step_size, sigma)[1]
            entry["settings"] = f"{images.shape[0]} test images ({int(labels.sum())} anomalous); {how}; auc(recall, " \
                                "precision)"
        elif metric.startswith("fid"):
            assert fid_ctx is not None
            entry.update(_run_fid(metric, learner, args, args.lebm_steps, lebm_s, rng(), fid_ctx))
            note = ("FID against the CIFAR-10 JPEG copy's statistics is biased relative to published CIFAR-10 FIDs "
                    "(lossy copy); compare with care")
            if copy == "CIFAR-10, JPEG copy" and note not in notes:
                notes.append(note)
        elif metric == "chains":
            _say(f"long-run chains {args.chain_steps} ...")
            res = long_run_chains(learner, plan.run_dir, steps=args.chain_steps, n_chains=args.chains,
                                  n_snapshots=args.snapshots, step_size=chain_s, rng=rng(),
                                  tag=f"_{learner.iteration:07d}")
            entry.update(res, steps=args.chain_steps, step_size=res["step_size"], n_chains=args.chains)
            finals = ", ".join(f"{k} steps {v:.3f}" for k, v in res["final_energy"].items())
            entry["settings"] = (f"{args.chains} chains: {res['describe']}; final mean energy {finals}; "
                                 f"{len(res['files'])} PNGs in {plan.run_dir}")
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        results[metric] = entry

    report: dict[str, Any] = {
        "run_dir": str(plan.run_dir),
        "checkpoint": str(plan.ckpt),
        "iteration": learner.iteration,
        "method": cfg.method,
        "arch": cfg.model.arch,
        "dataset": copy,
        "paper_dataset": _PAPER_DATA.get(cfg.model.arch) if paper_data else None,
        "device": str(device),
        "seed": args.seed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
        "metrics": results,
    }
    _write_report(plan.out, report)
    report["json"] = str(plan.out)
    return report


@dataclass
class _FidContext:
    """The Inception network and the real statistics, prepared once for both FIDs."""

    extractor: Any
    real: tuple[np.ndarray, np.ndarray]
    n_real: int
    ref: str  # the split folder the real statistics come from
    cache: Path | None


def _prepare_fid(cfg: Config, args: argparse.Namespace, device: torch.device) -> _FidContext:
    """Load the network and the (cached) real statistics: spec §4, training split, test transform."""
    try:
        extractor = fid.InceptionFeatures(device, batch_size=args.inception_batch)
    except fid.InceptionUnavailableError as exc:
        raise EvalError(str(exc)) from None
    try:
        mu, sig, n_real, cache = fid.real_stats(cfg.data, IMAGE_SHAPES[cfg.model.arch], args.fid_samples, extractor,
                                            split="train", subdir=args.fid_ref_subdir, batch_size=args.batch,
                                            use_cache=not args.no_fid_cache, log=_say)
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise EvalError(f"FID real statistics ({dataset_copy(cfg)}): {exc}") from None
    ref = args.fid_ref_subdir or (cfg.data.train_subdir if cfg.data.source == "folder" else "train")
    return _FidContext(extractor, (mu, sig), n_real, ref, cache)


def _run_fid(metric: str, learner: Learner, args: argparse.Namespace, lebm_steps: int, lebm_s: float,
             rng: torch.Generator, ctx: _FidContext) -> dict[str, Any]:
    name = metric[len("fid_"):]
    kind: SampleKind = next(k for k in learner.sample_kinds() if k.name == name)
    # The LEBM prior sampler's flags set its chain; another learner's chain keeps its own settings.
    steps, step_size = (lebm_steps, lebm_s) if kind.override else (None, None)
    _say(f"{metric}: {args.fid_samples} samples in batches of {args.batch} ...")
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.fid_samples, desc=metric, file=sys.stderr, dynamic_ncols=True)

    def progress(n: int) -> None:
        if bar is not None:
            bar.update(n - bar.n)

    value = fid.eval_fid(learner, name, ctx.real, ctx.extractor, n=args.fid_samples, batch_size=args.batch, rng=rng,
                         steps=steps, step_size=step_size, progress=progress)
    if bar is not None:
        bar.close()
    sampler = kind.settings(steps, step_size)
    out: dict[str, Any] = {
        "value": value, "n_fake": args.fid_samples, "n_real": ctx.n_real, "real_split": ctx.ref,
        "batch": args.batch, "sampler": sampler, "real_stats": str(ctx.cache) if ctx.cache else None,
        "network_sha256": ctx.extractor.sha256,
        "settings": f"{args.fid_samples} samples ({sampler}) vs {ctx.n_real} {ctx.ref} images",
    }
    if kind.chain:
        out.update(steps=kind.steps if steps is None else steps,
                   step_size=kind.step_size if step_size is None else step_size)
    return out


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomic write of strict JSON; metrics from an earlier evaluation of the same checkpoint are kept unless
    recomputed. A non-finite result (a diverged model) is written as null and named in the notes."""
    merged = dict(report)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("checkpoint") == report["checkpoint"] and isinstance(old.get("metrics"), dict):
                merged["metrics"] = {**old["metrics"], **report["metrics"]}
        except (OSError, ValueError):
            pass  # unreadable old file: replaced
    found: list[str] = []
    merged = strict_json(merged, "", found)
    if found:
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        merged["notes"] = [*merged.get("notes", []), f"non-finite values written as null: {shown}"]
        report["notes"] = merged["notes"]
    text = json.dumps(merged, indent=2, allow_nan=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise EvalError(f"could not write {path} ({describe_os_error(exc)}); the previous file, if any, is "
                        "intact") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m engine.eval", description=__doc__.splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by python -m engine.train")
    p.add_argument("--metrics", default="mse,chains",
                   help=f"comma-separated, from {', '.join(METRICS)} (fid = both FIDs)")
    p.add_argument("--checkpoint", help="a specific ckpt-*.pt (default: the run's latest)")
    p.add_argument("--out", help="JSON file (default: RUN_DIR/eval-<iteration>.json)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation RNG")
    p.add_argument("--batch", type=int, default=500, help="images per generation / inference batch")
    p.add_argument("--limit", type=int, help="use only the first N test images (MSE, AUPRC; smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("FID")
    g.add_argument("--fid-samples", type=int, default=50_000, help="generated images (and max real images); on a CPU "
                   "the paper's 50,000 take hours: pass e.g. --fid-samples 2000 for a quick, biased estimate")
    g.add_argument("--fid-ref-subdir", help="folder source: subfolder for the real statistics (CelebA-HQ: val)")
    g.add_argument("--inception-batch", type=int, default=100, help="images per Inception forward pass")
    g.add_argument("--no-fid-cache", action="store_true", help="recompute the real statistics, do not cache")
    g.add_argument("--lebm-steps", type=int, default=100, help="Langevin steps of the LEBM prior sampler")
    g.add_argument("--lebm-step-size", type=float, help="LEBM sampler step size (default: the run's "
                   "eval.lebm_step_size; the authors' README uses 1.6 for CIFAR-10)")
    g = p.add_argument_group("MSE / AUPRC")
    g.add_argument("--sigma", type=float, help="likelihood sigma of the posterior steps (default: the run's "
                   "langevin.likelihood_sigma; README: 1.0 for CelebA-HQ, 0.1 for MNIST digit 1)")
    g.add_argument("--recon-steps", type=int, default=10, help="noise-free posterior steps for MSE")
    g.add_argument("--recon-step-size", type=float, default=0.1)
    g.add_argument("--auprc-steps", type=int, default=5, help="noise-free posterior steps for anomaly scores "
                   "(eval_anomaly_det.py: 5; the training-time eval: 10)")
    g = p.add_argument_group("chains")
    g.add_argument("--chain-steps", default="200,2500", help="chain lengths")
    g.add_argument("--chains", type=int, default=8, help="chains per length (rows of the strip)")
    g.add_argument("--snapshots", type=int, default=10, help="points along each chain (columns)")
    g.add_argument("--chain-step-size", type=float, help="default: the learner's chain (DAMC / LEBM: the run's "
                   "eval.lebm_step_size)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    report = evaluate(args)
    print(format_table(report))
    print(f"wrote {report['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), expected=(EvalError,))
