"""Evaluation command: ``python -m engine.eval RUN_DIR --metrics fid,mse,auprc,chains``.

Protocols are spec ``damc.md`` §4, with the authors' code values as defaults:

* **FID** (``fid`` = both, or ``fid_damc`` / ``fid_lebm``): 2048-d pool3 features of the pytorch-fid Inception
  (``engine.fid``), ``--fid-samples`` (50,000) generated images in batches of ``--batch`` (500), clamped to
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
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine import checkpoint, system
from engine.checkpoint import CheckpointError
from engine.config import Config, ConfigError, SystemConfig, from_dict
from engine.data import _u8_to_float
from engine.files import atomic_write
from engine.images import save_grid
from engine.learner import (
    Learner,
    amortizer_sample,
    damc_prior_latents,
    lebm_prior_latents,
    posterior_chain,
    prior_chain,
)
from engine.models import IMAGE_SHAPES

__all__ = [
    "METRICS",
    "PAPER",
    "EvalError",
    "anomaly_scores",
    "auprc",
    "dataset_copy",
    "eval_auprc",
    "eval_fid",
    "eval_mse",
    "line_plot_png",
    "long_run_chains",
    "main",
    "paper_figure",
    "posterior_latents",
]

METRICS = ("fid", "fid_damc", "fid_lebm", "mse", "auprc", "chains")

# Spec §4 tables: paper figures per architecture (Table 1/2 of the paper) and per held-out MNIST digit (Table 3).
PAPER: dict[str, dict[str, float]] = {
    "cifar10": {"mse": 0.015, "fid_damc": 57.72, "fid_lebm": 60.89},
    "svhn": {"mse": 0.002, "fid_damc": 18.76, "fid_lebm": 21.17},
    "celeba64": {"mse": 0.005, "fid_damc": 30.83, "fid_lebm": 35.67},
    "celebahq256": {"mse": 0.023, "fid_damc": 85.88, "fid_lebm": 89.54},
}
PAPER_AUPRC: dict[int, float] = {1: 0.684, 4: 0.911, 5: 0.939, 7: 0.801, 9: 0.705}
_PAPER_DATA = {"cifar10": "CIFAR-10", "svhn": "SVHN", "celeba64": "CelebA 64x64", "celebahq256": "CelebA-HQ 256",
               "mnist": "MNIST"}


class EvalError(RuntimeError):
    """Bad input or an evaluation that cannot run; the message is one line."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# What was evaluated


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
    if metric == "auprc":
        return PAPER_AUPRC.get(cfg.data.heldout_digit) if cfg.model.arch == "mnist" else None
    return PAPER.get(cfg.model.arch, {}).get(metric)


# ---------------------------------------------------------------------------------------------------------
# Posterior inference, MSE and anomaly scores


def _to_unit(x_u8: Tensor, device: torch.device) -> Tensor:
    # x/127.5 − 1, the engine's ToTensor + Normalize(0.5, 0.5) (bitwise on every device, see engine.data).
    return _u8_to_float(x_u8.to(device))


def posterior_latents(learner: Learner, x: Tensor, n_steps: int, step_size: float, sigma: float,
                      rng: torch.Generator) -> Tensor:
    """Spec §4: the online amortizer's conditional draw (N(0, I) for an LEBM run), then noise-free Langevin."""
    nz = learner.cfg.model.nz
    amortizer = learner.nets.amortizer
    if amortizer is not None:
        z = amortizer_sample(amortizer, learner.table, rng, x=x, nz=nz,
                             with_noise=learner.cfg.diffusion.sampler_noise)
    else:
        z = torch.randn(x.shape[0], nz, generator=rng, device=x.device)
    return posterior_chain(learner.nets, x, z, sigma, n_steps, step_size, False, rng)


def eval_mse(learner: Learner, images_u8: Tensor, *, batch_size: int, n_steps: int, step_size: float,
             sigma: float, rng: torch.Generator) -> float:
    """Mean over images of the per-image mean over C·H·W of (G(z) − x)², [−1, 1] units (spec §4)."""
    total, n = 0.0, 0
    for chunk in images_u8.split(batch_size):
        x = _to_unit(chunk, learner.device)
        z = posterior_latents(learner, x, n_steps, step_size, sigma, rng)
        with torch.no_grad():
            per_image = (learner.nets.generator(z) - x).flatten(1).pow(2).mean(dim=1)
        total += float(per_image.double().sum())
        n += x.shape[0]
    return total / n


def anomaly_scores(learner: Learner, images_u8: Tensor, *, batch_size: int, n_steps: int, step_size: float,
                   sigma: float, rng: torch.Generator) -> np.ndarray:
    """Σ_pix (G(z) − x)² + E(z) + ½‖z‖² per image (weight 1 on the reconstruction; higher = more anomalous)."""
    out = []
    for chunk in images_u8.split(batch_size):
        x = _to_unit(chunk, learner.device)
        z = posterior_latents(learner, x, n_steps, step_size, sigma, rng)
        with torch.no_grad():
            rec = (learner.nets.generator(z) - x).flatten(1).pow(2).sum(dim=1)
            score = rec + learner.nets.energy(z) + 0.5 * z.pow(2).sum(dim=1)
        out.append(score.double().cpu())
    return torch.cat(out).numpy()


def auprc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """``sklearn.metrics.auc(recall, precision)`` of ``precision_recall_curve(labels, scores)`` (spec §4)."""
    try:
        from sklearn.metrics import auc, precision_recall_curve
    except ImportError:
        raise EvalError("AUPRC needs scikit-learn: pip install scikit-learn") from None
    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores))
    return float(auc(recall, precision))


def eval_auprc(learner: Learner, images_u8: Tensor, labels: Tensor, *, batch_size: int, n_steps: int,
               step_size: float, sigma: float, rng: torch.Generator) -> float:
    scores = anomaly_scores(learner, images_u8, batch_size=batch_size, n_steps=n_steps, step_size=step_size,
                            sigma=sigma, rng=rng)
    return auprc(labels.numpy(), scores)


# ---------------------------------------------------------------------------------------------------------
# FID


def fake_batches(learner: Learner, kind: str, n: int, batch_size: int, rng: torch.Generator, *,
                 lebm_steps: int = 100, lebm_step_size: float = 0.4) -> Iterator[Tensor]:
    """n generated images in [0, 1], batch by batch: G(z) clamped to [−1, 1], then (x+1)/2 (spec §4)."""
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        if kind == "damc":
            z = damc_prior_latents(learner, b, rng)
        else:
            z = lebm_prior_latents(learner, b, lebm_steps, lebm_step_size, rng)
        with torch.no_grad():
            yield (learner.nets.generator(z).clamp(-1.0, 1.0) + 1.0) / 2.0
        done += b


def eval_fid(learner: Learner, kind: str, real: tuple[np.ndarray, np.ndarray], extractor: Any, *, n: int,
             batch_size: int, rng: torch.Generator, lebm_steps: int = 100, lebm_step_size: float = 0.4,
             progress: Callable[[int], None] | None = None) -> float:
    """FID of n DAMC (``kind='damc'``) or LEBM (``'lebm'``) samples against real statistics (μ, Σ)."""
    from engine.fid import frechet_distance, stats_of

    batches = fake_batches(learner, kind, n, batch_size, rng, lebm_steps=lebm_steps, lebm_step_size=lebm_step_size)
    mu, sigma, _ = stats_of(batches, extractor, progress)
    return frechet_distance(mu, sigma, *real)


# ---------------------------------------------------------------------------------------------------------
# Long-run chains (paper Fig. 4)


def _save_png(img: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_plot_png(values: Sequence[float], path: Path, title: str, xlabel: str = "step", ylabel: str = "",
                  size: tuple[int, int] = (720, 400)) -> Path:
    """A line plot drawn with PIL (matplotlib is not a dependency): axes, ticks, one polyline."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 30, 45
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    n = max(len(vals) - 1, 1)
    px = lambda i: left + (w - left - right) * i / n
    py = lambda v: top + (h - top - bottom) * (hi - v) / (hi - lo)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _nice_ticks(lo, hi):
        y = py(t)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, w - right - 1, y], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{t:.4g}", fill="black")
    for t in _nice_ticks(0, n):
        x = px(t)
        draw.line([x, h - bottom, x, h - bottom + 4], fill="black")
        draw.text((x - 10, h - bottom + 6), f"{t:g}", fill="black")
    pts = [(px(i), py(v)) for i, v in enumerate(vals) if math.isfinite(v)]
    if len(pts) > 1:
        draw.line(pts, fill=(200, 30, 30), width=2)
    draw.text((left, 8), title, fill="black")
    draw.text(((w - left) // 2 + left - 20, h - 18), xlabel, fill="black")
    if ylabel:
        draw.text((4, top - 22), ylabel, fill="black")
    return _save_png(img, path)


def long_run_chains(learner: Learner, out_dir: Path, *, steps: Sequence[int] = (200, 2500), n_chains: int = 8,
                    n_snapshots: int = 10, step_size: float = 0.4, rng: torch.Generator,
                    tag: str = "") -> dict[str, Any]:
    """Prior Langevin from N(0, I) (noise on), paper Fig. 4: image strips and the energy trace per length.

    Writes ``chains_<T>steps<tag>.png`` (row = chain, columns = evenly spaced points from step 0 to T) and
    ``energy_<T>steps<tag>.png`` (mean over chains of E(z) + ½‖z‖² at every step). Returns the file names,
    the snapshot steps and the traces.
    """
    nets, nz = learner.nets, learner.cfg.model.nz
    height = IMAGE_SHAPES[learner.cfg.model.arch][1]
    style = {"scale": max(1, 32 // height), "pad_value": 128}
    out: dict[str, Any] = {"files": [], "snapshot_steps": {}, "energy_trace": {}, "final_energy": {}}

    def energy(z: Tensor) -> Tensor:
        with torch.no_grad():
            return (nets.energy(z) + 0.5 * z.pow(2).sum(dim=1)).mean()

    for total in steps:
        marks = sorted({round(total * j / max(n_snapshots - 1, 1)) for j in range(n_snapshots)})
        z = torch.randn(n_chains, nz, generator=rng, device=learner.device)
        trace = [energy(z)]  # device scalars: read once at the end, not per step
        frames = []
        with torch.no_grad():
            if 0 in marks:
                frames.append(nets.generator(z))
        for t in range(1, total + 1):
            # One step of the engine's prior chain; its draw order equals one call with total steps.
            z = prior_chain(nets, z, 1, step_size, True, rng)
            trace.append(energy(z))
            if t in marks:
                with torch.no_grad():
                    frames.append(nets.generator(z))
        grid = torch.stack(frames, dim=1).flatten(0, 1)  # chain-major: row i = chain i along the chain
        strip = save_grid(grid, out_dir / f"chains_{total}steps{tag}.png", nrow=len(frames), **style)
        values = torch.stack(trace).tolist()
        plot = line_plot_png(values, out_dir / f"energy_{total}steps{tag}.png",
                             f"mean E(z) + |z|^2/2 over {n_chains} chains, Langevin s={step_size:g}",
                             xlabel="Langevin step", ylabel="energy")
        out["files"] += [str(strip), str(plot)]
        out["snapshot_steps"][str(total)] = marks
        out["energy_trace"][str(total)] = [round(v, 6) for v in values]
        out["final_energy"][str(total)] = values[-1]
    return out


# ---------------------------------------------------------------------------------------------------------
# The command


@dataclass
class _Plan:
    """Parsed, validated request: everything checked before the first network evaluation."""

    run_dir: Path
    ckpt: Path
    cfg: Config
    metrics: list[str]
    out: Path


def _parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise EvalError(f"--metrics {text!r}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(METRICS)}")
    out: list[str] = []
    for m in names:
        for x in (["fid_damc", "fid_lebm"] if m == "fid" else [m]):
            if x not in out:
                out.append(x)
    return out


def _positive(name: str, value: int | float, minimum: float = 1) -> None:
    if not value >= minimum:
        raise EvalError(f"{name} = {value}: must be >= {minimum:g}")


def _plan(args: argparse.Namespace) -> _Plan:
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
    state = checkpoint.load(ckpt)
    cfg, iteration = from_dict(state["config"]), int(state["iteration"])
    del state
    requested = args.metrics
    metrics = _parse_metrics(requested)
    explicit = {m.strip() for m in requested.split(",")}
    if cfg.method != "damc" and "fid_damc" in metrics:
        if "fid_damc" in explicit:
            raise EvalError("--metrics fid_damc: this is an LEBM run (no amortizer); use fid_lebm")
        metrics.remove("fid_damc")  # "fid" on an LEBM run means the LEBM FID only
    if "auprc" in metrics and cfg.data.source != "mnist":
        raise EvalError(f"--metrics auprc: anomaly detection needs an MNIST anomaly run (data.source mnist); this "
                        f"run uses {cfg.data.source!r} ({dataset_copy(cfg)})")
    if any(m.startswith("fid") for m in metrics):
        from engine.fid import InceptionUnavailableError, inception_path

        try:
            inception_path()
        except InceptionUnavailableError as exc:
            raise EvalError(str(exc)) from None
    _positive("--fid-samples", args.fid_samples, 2)
    _positive("--batch", args.batch)
    _positive("--inception-batch", args.inception_batch)
    _positive("--chains", args.chains)
    _positive("--snapshots", args.snapshots, 2)
    for name in ("recon_steps", "auprc_steps", "lebm_steps"):
        _positive("--" + name.replace("_", "-"), getattr(args, name), 0)
    for name in ("recon_step_size", "lebm_step_size", "sigma", "chain_step_size"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise EvalError(f"--{name.replace('_', '-')} = {value}: must be > 0")
    if args.limit is not None:
        _positive("--limit", args.limit)
    try:
        args.chain_steps = [int(s) for s in args.chain_steps.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--chain-steps {args.chain_steps!r}: expected comma-separated integers") from None
    if not args.chain_steps or min(args.chain_steps) < 1:
        raise EvalError(f"--chain-steps {args.chain_steps!r}: expected positive integers")
    out = Path(args.out) if args.out else run_dir / f"eval-{iteration:07d}.json"
    return _Plan(run_dir, ckpt, cfg, metrics, out)


def _load_data(plan: _Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Every data set a requested metric needs, loaded before any network work (errors are one line)."""
    from engine.data import load_images, load_mnist_anomaly

    cfg, data = plan.cfg, {}
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


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "—"
    if metric.startswith("fid"):
        return f"{v:.2f}"
    return f"{v:.4f}" if metric == "auprc" else f"{v:.5f}"


_LABELS = {"mse": "MSE (test)", "fid_damc": "FID DAMC", "fid_lebm": "FID LEBM", "auprc": "AUPRC", "chains": "chains"}


def format_table(report: dict[str, Any]) -> str:
    """The printed table: metric, ours, the paper's figure, and the settings used."""
    paper_head = f"paper ({report['paper_dataset']})" if report["paper_dataset"] else "paper"
    rows = [("metric", "ours", paper_head, "settings")]
    for name, m in report["metrics"].items():
        label = _LABELS.get(name, name) + (f" (digit {m['digit']})" if name == "auprc" else "")
        ours = "PNG" if name == "chains" else _fmt(m.get("value"), name)
        paper = "—" if m.get("paper") is None else f"{m['paper']:g}"  # as printed in the paper
        rows.append((label, ours, paper, m.get("settings", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"run {report['run_dir']} ({Path(report['checkpoint']).name}, iteration {report['iteration']}, "
             f"{report['method'].upper()}, arch {report['arch']})",
             f"data: {report['dataset']}" + ("" if report["paper_dataset"] else "; the paper has no figure for it")]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    if report.get("notes"):
        lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested metrics; returns the report (also written to the JSON file)."""
    plan = _plan(args)
    cfg = plan.cfg
    data = _load_data(plan, args)
    try:
        device = system.resolve_device(SystemConfig(device=args.device))
    except RuntimeError as exc:
        raise EvalError(str(exc)) from None
    learner = checkpoint.load_run(plan.run_dir, device, plan.ckpt)
    learner.nets.generator.eval()
    sigma = args.sigma if args.sigma is not None else cfg.langevin.likelihood_sigma
    lebm_s = args.lebm_step_size if args.lebm_step_size is not None else cfg.eval.lebm_step_size
    chain_s = args.chain_step_size if args.chain_step_size is not None else cfg.eval.lebm_step_size
    init = (f"online amortizer conditional draw ({cfg.diffusion.n_steps} steps)" if cfg.method == "damc"
            else "N(0, I)")
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
            entry["settings"] = (f"{images.shape[0]} test images; {init} + {args.recon_steps} noise-free LD steps, "
                                 f"s {args.recon_step_size:g}, sigma {sigma:g}")
        elif metric == "auprc":
            images, labels = data["auprc"]
            _say(f"AUPRC on {images.shape[0]} test images ({int(labels.sum())} anomalous) ...")
            entry["value"] = eval_auprc(learner, images, labels, batch_size=args.batch, n_steps=args.auprc_steps,
                                        step_size=args.recon_step_size, sigma=sigma, rng=rng())
            entry.update(digit=cfg.data.heldout_digit, n_images=int(images.shape[0]),
                         n_anomalous=int(labels.sum()), init=init, steps=args.auprc_steps,
                         step_size=args.recon_step_size, sigma=sigma)
            entry["settings"] = (f"{images.shape[0]} test images ({int(labels.sum())} anomalous); {init} + "
                                 f"{args.auprc_steps} noise-free LD steps, s {args.recon_step_size:g}, "
                                 f"sigma {sigma:g}; auc(recall, precision)")
        elif metric.startswith("fid"):
            assert fid_ctx is not None
            entry.update(_run_fid(metric, learner, args, lebm_s, rng(), fid_ctx))
            if copy == "CIFAR-10, JPEG copy":
                note = ("FID against the CIFAR-10 JPEG copy's statistics is biased relative to published CIFAR-10 "
                        "FIDs (lossy copy); compare with care")
                if note not in notes:
                    notes.append(note)
        elif metric == "chains":
            _say(f"long-run chains {args.chain_steps} ...")
            res = long_run_chains(learner, plan.run_dir, steps=args.chain_steps, n_chains=args.chains,
                                  n_snapshots=args.snapshots, step_size=chain_s, rng=rng(),
                                  tag=f"_{learner.iteration:07d}")
            entry.update(res, steps=args.chain_steps, step_size=chain_s, n_chains=args.chains)
            finals = ", ".join(f"{k} steps {v:.3f}" for k, v in res["final_energy"].items())
            entry["settings"] = (f"{args.chains} chains from N(0, I), s {chain_s:g}; final mean energy {finals}; "
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
    from engine.fid import InceptionFeatures, InceptionUnavailableError, real_stats

    try:
        extractor = InceptionFeatures(device, batch_size=args.inception_batch)
    except InceptionUnavailableError as exc:
        raise EvalError(str(exc)) from None
    try:
        mu, sig, n_real, cache = real_stats(cfg.data, IMAGE_SHAPES[cfg.model.arch], args.fid_samples, extractor,
                                            split="train", subdir=args.fid_ref_subdir, batch_size=args.batch,
                                            use_cache=not args.no_fid_cache, log=_say)
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise EvalError(f"FID real statistics ({dataset_copy(cfg)}): {exc}") from None
    ref = args.fid_ref_subdir or (cfg.data.train_subdir if cfg.data.source == "folder" else "train")
    return _FidContext(extractor, (mu, sig), n_real, ref, cache)


def _run_fid(metric: str, learner: Learner, args: argparse.Namespace, lebm_s: float, rng: torch.Generator,
             ctx: _FidContext) -> dict[str, Any]:
    cfg = learner.cfg
    kind = "damc" if metric == "fid_damc" else "lebm"
    _say(f"{metric}: {args.fid_samples} samples in batches of {args.batch} ...")
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.fid_samples, desc=metric, file=sys.stderr, dynamic_ncols=True)

    def progress(n: int) -> None:
        if bar is not None:
            bar.update(n - bar.n)

    value = eval_fid(learner, kind, ctx.real, ctx.extractor, n=args.fid_samples, batch_size=args.batch, rng=rng,
                     lebm_steps=args.lebm_steps, lebm_step_size=lebm_s, progress=progress)
    if bar is not None:
        bar.close()
    if kind == "damc":
        sampler = f"online amortizer, unconditional (random null token), {cfg.diffusion.n_steps} steps"
    else:
        sampler = f"N(0, I) + {args.lebm_steps} Langevin steps, s {lebm_s:g}, noise on"
    out: dict[str, Any] = {
        "value": value, "n_fake": args.fid_samples, "n_real": ctx.n_real, "real_split": ctx.ref,
        "batch": args.batch, "sampler": sampler, "real_stats": str(ctx.cache) if ctx.cache else None,
        "network_sha256": ctx.extractor.sha256,
        "settings": f"{args.fid_samples} samples ({sampler}) vs {ctx.n_real} {ctx.ref} images",
    }
    if kind == "lebm":
        out.update(steps=args.lebm_steps, step_size=lebm_s)
    return out


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomic write; metrics from an earlier evaluation of the same checkpoint are kept unless recomputed."""
    merged = dict(report)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("checkpoint") == report["checkpoint"] and isinstance(old.get("metrics"), dict):
                merged["metrics"] = {**old["metrics"], **report["metrics"]}
        except (OSError, ValueError):
            pass  # unreadable old file: replaced
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(merged, indent=2, allow_nan=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    os.chmod(path, 0o644)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.eval", description=__doc__.splitlines()[0],
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
    g.add_argument("--fid-samples", type=int, default=50_000, help="generated images (and max real images)")
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
    g.add_argument("--chain-step-size", type=float, help="default: the run's eval.lebm_step_size")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args)
    except (EvalError, ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {report['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
