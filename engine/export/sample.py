"""``python -m engine.sample RUN_DIR --n N --out DIR``: images from a trained run's prior, or from an export.

Methods (``--method``: the run learner's sample kinds, as ``engine.eval`` draws its FID samples; the first is the
default):
* a DAMC run: ``damc``, the online amortizer's unconditional draw (random null token ξ, the run's T-step ancestral
  sampler, paper eq. 5), then G; or ``lebm``;
* an LEBM run: ``lebm``, z_0 ~ N(0, I), then ``--lebm-steps`` Langevin steps on E(z) + ½‖z‖² (paper eq. 3, noise
  on) at ``--lebm-step-size`` (defaults: the run's ``eval.lebm_steps`` / ``eval.lebm_step_size``), then G;
* a CoopVAEBM run: ``ebm`` (the VAE's draw revised by the EBM's Langevin chain) or ``vae`` (the VAE's draw alone);
* a Dual-MCMC run: ``ebm`` (the generator's draw revised by the EBM's chain) or ``gen``;
* a DRL run: ``drl``, the T-level sampler from N(0, I).

Paths: on a GPU the engine's fast path (``perf.preset: fast`` through the learner's chains: bf16, CUDA graphs,
fused kernels); on CPU (or ``--perf reference``) the eager fp32 reference; with ``--from-export DIR`` an
artifact of ``python -m engine.export``: a DAMC prior sampler's, driven by :mod:`engine.export.runner`, or a
method's own sampler graphs (DRL's step graph), driven by the method's loop (:mod:`engine.export.own`); either
is refused, before any work, unless it was exported from the checkpoint being sampled.

Determinism: all noise comes from :mod:`engine.sampling.noise` (one seeded CPU stream, one draw per sample), so
image i depends only on (``--seed``, i), whatever ``--batch``, ``--n``, device or path (except where a network
uses batch statistics, as CoopVAEBM's generator does: then on its batch too, said in the manifest). The reference
and an
fp32 export therefore give the same images up to float rounding (tests/export), and the fast path the same
images up to bf16 rounding.

Outputs in ``--out`` (created if missing), named ``<tag>_s<seed>``: one PNG per image (``png``, native
resolution), one ``.npz`` with ``images`` uint8 (N, H, W, C) (``npz``), or one grid PNG (``grid``); and a
``.json`` manifest. Every file is written atomically; bad requests are one line and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import engine
from engine import learners
from engine.config import from_dict
from engine.export.artifact import ExportError, check_writable, prior_weights_hash, read_sidecar
from engine.export.cli import MAX_BATCH, OneLineParser, one_line, resolve_checkpoint, resolve_device
from engine.export.own import OwnArtifact, open_artifact, read_own_artifact
from engine.export.runner import ArtifactSampler, check_loadable, load_artifact
from engine.files import atomic_write
from engine.learners import Learner
from engine.learners.base import article
from engine.models import IMAGE_SHAPES
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.run.images import save_grid, to_uint8
from engine.runtime import perf, system
from engine.sampling.noise import MAX_SEED, NoiseStream

__all__ = ["FORMATS", "MAX_GRID", "MAX_N", "main", "sample"]

FORMATS = ("png", "npz", "grid")
MAX_N = 10_000_000
MAX_GRID = 1024  # images in one grid PNG
MAX_NPZ_BYTES = 4 * 2**30  # an .npz is assembled in memory


class Interrupted(RuntimeError):
    """Ctrl-C while drawing; the message says what was kept."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m engine.sample", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by python -m engine.train")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--method", help="the samples to draw, one of the run learner's kinds (DAMC run: damc (default) "
                   "or lebm; LEBM run: lebm; CoopVAEBM run: ebm (default) or vae)")
    p.add_argument("--format", default="png", help="png (one file per image, default), npz or grid")
    p.add_argument("--batch", type=int, help="images per forward pass (default 64; an export's own batch)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0): image i depends on (seed, i) only")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the run's latest)")
    p.add_argument("--from-export", dest="from_export", metavar="ARTIFACT",
                   help="sample through an artifact of python -m engine.export (its directory)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--perf", default="fast", help="fast (default; the fast path on a GPU) or reference (eager fp32)")
    p.add_argument("--lebm-steps", type=int, help="Langevin steps for --method lebm (default: the run's "
                   "eval.lebm_steps)")
    p.add_argument("--lebm-step-size", type=float, help="Langevin step size for --method lebm (default: the run's "
                   "eval.lebm_step_size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass
class _Plan:
    run_dir: Path
    ckpt: Path
    method: str
    out: Path
    tag: str
    batch: int
    device: torch.device
    image_shape: tuple[int, int, int]
    lebm_steps: int
    lebm_step_size: float
    artifact: Path | None


def _plan(args: argparse.Namespace) -> _Plan:
    """Every check that needs no network evaluation; raises ExportError with the fix."""
    if args.format not in FORMATS:
        raise ExportError(f"--format {args.format!r}: choose one of {', '.join(FORMATS)}")
    known = [k for m in learners.METHODS.values() for k in m.kinds]
    if args.method is not None and args.method not in known:
        raise ExportError(f"--method {args.method!r}: choose one of {', '.join(dict.fromkeys(known))}")
    if args.perf not in ("fast", "reference"):
        raise ExportError(f"--perf {args.perf!r}: choose fast or reference")
    if not 1 <= args.n <= MAX_N:
        raise ExportError(f"--n {args.n}: must be between 1 and {MAX_N:,}")
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise ExportError(f"--batch {args.batch}: must be between 1 and {MAX_BATCH}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ExportError(f"--seed {args.seed}: must be between 0 and 2**63 - 1")
    if args.lebm_steps is not None and not 0 <= args.lebm_steps <= 100_000:
        raise ExportError(f"--lebm-steps {args.lebm_steps}: must be between 0 and 100000")
    if args.lebm_step_size is not None and not (math.isfinite(args.lebm_step_size) and args.lebm_step_size > 0):
        raise ExportError(f"--lebm-step-size {args.lebm_step_size}: must be a finite number > 0")
    if args.format == "grid" and args.n > MAX_GRID:
        raise ExportError(f"--n {args.n}: one grid holds at most {MAX_GRID} images; use --format png or npz")
    run_dir = Path(args.run_dir)
    ckpt = resolve_checkpoint(run_dir, args.checkpoint)
    state = checkpoint.load(ckpt)  # CheckpointError on a corrupt file: before anything is written
    cfg = from_dict(state["config"])
    run = learners.get(cfg.method)
    a_run = f"{article(run.name)} {run.name.upper()} run"
    if args.from_export and not run.exportable:
        raise ExportError(f"--from-export: {run_dir} is {a_run} (no exportable sampler); pass the run the artifact "
                          "was exported from")
    method = args.method or run.kinds[0]
    if method not in run.kinds:
        raise ExportError(f"--method {method}: {run_dir} is {a_run}, which draws {', '.join(run.kinds)}; use "
                          f"--method {run.kinds[0]}")
    shape = IMAGE_SHAPES[cfg.model.arch]
    batch = args.batch or 64
    artifact = None
    tag = method
    device = resolve_device(args.device)
    if args.from_export:
        if method != run.kinds[0]:
            raise ExportError(f"--from-export samples an exported {run.kinds[0].upper()} prior sampler; drop "
                              f"--method {method}")
        artifact = Path(args.from_export)
        if run.export_graphs is not None:  # the method's own graphs: checked against the weights once loaded
            _, own_sidecar = read_own_artifact(artifact, run.name)
            static, fmt = own_sidecar.batch, own_sidecar.format
        else:
            _, sidecar = read_sidecar(artifact)
            r = sidecar.run
            if (prior_weights_hash(state["amortizer"], state["generator"]) != r.get("weights_sha256")
                    or sidecar.n_steps != cfg.diffusion.n_steps):
                raise ExportError(f"--from-export {artifact} was exported from {r.get('run_dir')}/"
                                  f"{r.get('checkpoint')} (iteration {r.get('iteration')}), not from {ckpt}; pass "
                                  "that --checkpoint or export this one")
            check_loadable(sidecar, device)
            static, fmt = sidecar.batch, sidecar.format
        if args.batch is not None and args.batch > static:
            raise ExportError(f"--batch {args.batch}: the artifact's static batch is {static}; omit --batch")
        batch = args.batch or static
        tag = f"export-{fmt}"
    if args.format == "npz" and args.n * math.prod(shape) > MAX_NPZ_BYTES:
        raise ExportError(f"--n {args.n}: {args.n * math.prod(shape) / 2**30:.1f} GiB of uint8 images is too much "
                          "for one .npz in memory; use --format png")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory; choose a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    per_image = math.prod(shape) + 200  # PNG: pixels plus header, an upper bound for these small images
    check_writable(out, "--out", need_bytes=args.n * per_image if args.format != "grid" else 0)
    del state
    lebm_steps = args.lebm_steps if args.lebm_steps is not None else cfg.eval.lebm_steps
    lebm_s = args.lebm_step_size if args.lebm_step_size is not None else cfg.eval.lebm_step_size
    return _Plan(run_dir, ckpt, method, out, f"{tag}_s{args.seed}", min(batch, args.n), device, shape, lebm_steps,
                 lebm_s, artifact)


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _use_fast_path(learner: Learner, device: torch.device, mode: str) -> str:
    """Install the fast chains on a GPU (``--perf fast``); returns how the draws run, for the manifest."""
    if device.type != "cuda" or mode == "reference":
        return "reference (eager fp32)"
    plan, note = perf.resolve(dataclasses.replace(learner.cfg.perf, preset="fast"), device)
    if note:
        _say(note)
    system.apply_perf(plan, device)
    learner.set_plan(plan)
    return plan.describe()


def _batch(learner: Learner, kind: str, stream: NoiseStream, b: int, sampler: ArtifactSampler | OwnArtifact | None,
           steps: int | None, step_size: float | None) -> Tensor:
    """The next b images: through the artifact when one is loaded, else the learner's own seeded draw."""
    if sampler is not None:
        return sampler.draw(stream, b)
    return learner.sample_from(kind, stream, b, steps=steps, step_size=step_size)


# ---------------------------------------------------------------------------------------------------------
# Writing


def _png_bytes(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 -> PNG bytes (grey "L" for one channel, else RGB)."""
    from PIL import Image

    hwc = image.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def sample(args: argparse.Namespace) -> dict[str, Any]:
    """Draw and write the images; returns the manifest (also written next to them)."""
    plan = _plan(args)
    learner = checkpoint.load_run(plan.run_dir, plan.device, plan.ckpt)
    sampler: ArtifactSampler | OwnArtifact | None = None
    if plan.artifact is not None:
        method = learners.get(learner.method)
        sampler = (open_artifact(method, learner, plan.artifact, plan.device) if method.export_graphs is not None
                   else load_artifact(plan.artifact, plan.device))
        path = f"export: {sampler.sidecar.format} {sampler.sidecar.structure}, {sampler.sidecar.precision}"
    else:
        path = _use_fast_path(learner, plan.device, args.perf)
    for net in learner.networks().values():
        net.eval()
    kind = next(k for k in learner.sample_kinds() if k.name == plan.method)
    # The LEBM prior sampler's flags set its chain; another learner's chain keeps its own settings.
    steps, step_size = (plan.lebm_steps, plan.lebm_step_size) if kind.override else (None, None)
    nz = learner.cfg.model.nz
    stream = NoiseStream(args.seed, nz, learner.noise_width(plan.method, steps))
    n, fmt = args.n, args.format
    digits = max(6, len(str(n - 1)))
    kept: list[np.ndarray] = []
    files: list[str] = []
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc=f"{plan.tag} ({path.split(':')[0]})", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    done = 0
    try:
        while done < n:
            b = min(plan.batch, n - done)
            images = _batch(learner, plan.method, stream, b, sampler, steps, step_size)
            u8 = to_uint8(images)  # (b, C, H, W); the one device->host copy per batch
            if fmt == "png":
                for i in range(b):
                    name = f"{plan.tag}_{done + i:0{digits}d}.png"
                    _write_bytes(plan.out / name, _png_bytes(u8[i]))
                    files.append(name)
            else:
                kept.append(u8)
            done += b
            if bar is not None:
                bar.update(b)
    except KeyboardInterrupt:
        kept_note = f"the {len(files)} PNG files written are complete" if fmt == "png" else "nothing was written"
        raise Interrupted(f"interrupted after {done} of {n} images; {kept_note}") from None
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if fmt == "npz":
        name = f"{plan.tag}.npz"
        stacked = np.concatenate(kept).transpose(0, 2, 3, 1)  # (N, H, W, C)
        atomic_write(plan.out / name, lambda f: np.savez(f, images=stacked))
        files.append(name)
    elif fmt == "grid":
        name = f"{plan.tag}_grid.png"
        h = plan.image_shape[1]
        grid = torch.from_numpy(np.concatenate(kept)).float() / 127.5 - 1.0
        save_grid(grid, plan.out / name, scale=max(1, 32 // h), pad_value=128)
        files.append(name)
    manifest: dict[str, Any] = {
        "engine_version": engine.__version__, "run_dir": str(plan.run_dir), "checkpoint": plan.ckpt.name,
        "iteration": learner.iteration, "method": plan.method, "n": n, "batch": plan.batch, "seed": args.seed,
        "device": plan.device.type, "path": path, "format": fmt, "image_shape": list(plan.image_shape),
        "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1),
        "files": files if len(files) <= 4 else [files[0], "...", files[-1]],
        "noise": "engine/export/noise.py: torch.Generator(cpu).manual_seed(seed), one randn per sample",
    }
    if kind.override:
        manifest.update(lebm_steps=plan.lebm_steps, lebm_step_size=plan.lebm_step_size)
    elif kind.chain:
        manifest.update(chain_steps=kind.steps, chain_step_size=kind.step_size)
    if not kind.deterministic:
        manifest["batch_dependent"] = ("the networks use batch statistics: image i depends on (seed, i) and on the "
                                       "other images of its batch (--batch)")
    if plan.artifact is not None:
        manifest["artifact"] = str(plan.artifact)
    if sampler is not None and sampler.note:
        manifest["note"] = sampler.note
    atomic_write(plan.out / f"{plan.tag}.json", lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    _say(f"wrote {n} {plan.method.upper()} images ({path}) to {plan.out} as {fmt} in {seconds:.1f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sample(args)
    except (ExportError, CheckpointError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    return 0
