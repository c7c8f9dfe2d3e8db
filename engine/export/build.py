"""Export a trained run's DAMC prior sampler: build the graphs, ``torch.export`` them, save in one format,
verify against the engine, write the sidecar; all into a temporary directory renamed into place at the end.

Checks on every export (an exporter surprise fails the export, it never ships):
* after ``run_decompositions()`` every op is an ATen op: no ``damc::`` custom op, no random op;
* the artifact, loaded back through :mod:`engine.export.runner` exactly as a user loads it, is run on a fresh
  noise draw and compared with the engine's eager fp32 sampler (:func:`engine.export.graphs.prior_latents` +
  G) on the same noise; the largest difference is recorded in the sidecar.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import ExportedProgram

import engine
from engine.export.artifact import (
    SIDECAR,
    ExportError,
    GraphIO,
    Sidecar,
    TensorSpec,
    atomic_directory,
    config_hash,
    prior_weights_hash,
    write_sidecar,
)
from engine.export.graphs import GeneratorGraph, NullEmbeddingGraph, StepGraph, WholeGraph, decode, prior_latents
from engine.export.runner import FORMAT_MODULES, load_artifact
from engine.learners.damc import DamcLearner as Learner  # the exported prior sampler is DAMC's
from engine.sampling.noise import NoiseStream, PriorNoise, prior_noise

__all__ = ["ExportSpec", "GraphBundle", "build_graphs", "export_sampler", "non_aten_ops", "reference_images"]

NOISE_RECIPE = {
    "xi": "N(0, I), (B, nz): the null token's noise, one row per sample, used by every step",
    "z_T": "N(0, I), (B, nz): the sampler's starting point",
    "eps": "N(0, I), (T-1, B, nz): eps[k] is the noise of sampling step k; the final step (an x-prediction) "
           "takes none (per-step graph: feed zeros, its coefficient is 0)",
    "stream": "python -m engine.sample draws them per sample from torch.Generator(cpu).manual_seed(seed): one "
              "randn((T+1)*nz) per sample = [xi | z_T | eps_0 .. eps_(T-2)] (engine/export/noise.py)",
    "partial_batch": "pad with zero rows to the static batch and drop those outputs (rows are independent)",
}
DRIVER = ("xemb = null_embedding(xi); z = z_T; for k in 0..T-1: z = step(k=[k] int64, z, xemb, "
          "eps[k] if k < T-1 else zeros); images = generator(z)  # images in [-1, 1], (B, C, H, W)")
VERIFY_SEED = 1  # the noise of the verification draw (the example inputs of the export use seed 0)


@dataclass(frozen=True)
class ExportSpec:
    format: str
    structure: str  # "per-step" | "whole"
    batch: int
    precision: str
    device: torch.device


@dataclass
class GraphBundle:
    """One graph to export: module, example inputs, interface."""

    module: nn.Module
    example: tuple[Tensor, ...]
    io: GraphIO


def _spec(name: str, t: Tensor) -> TensorSpec:
    return TensorSpec(name, [int(s) for s in t.shape], str(t.dtype).removeprefix("torch."))


def _bundle(module: nn.Module, file: str, names: list[str], example: tuple[Tensor, ...], out_name: str) -> GraphBundle:
    with torch.no_grad():
        out = module(*example)
    io = GraphIO(file, [_spec(n, t) for n, t in zip(names, example, strict=True)], [_spec(out_name, out)])
    return GraphBundle(module, example, io)


def build_graphs(learner: Learner, spec: ExportSpec) -> dict[str, GraphBundle]:
    """The graph modules of ``spec.structure`` with example inputs from seed 0, on ``spec.device``."""
    amortizer, generator = learner.nets.amortizer, learner.nets.generator
    if amortizer is None:
        raise ExportError("this run has no amortizer (method lebm): only a DAMC run's prior sampler can be exported")
    cfg, table = learner.cfg, learner.table
    ext = FORMAT_MODULES[spec.format].EXT
    noise = prior_noise(NoiseStream(0, cfg.model.nz, table.n_steps + 1), spec.batch).to(spec.device)
    with_noise = cfg.diffusion.sampler_noise
    if spec.structure == "whole":
        whole = WholeGraph(amortizer, generator, table, with_noise, spec.precision).eval()
        return {"sampler": _bundle(whole, f"sampler{ext}", ["xi", "z_T", "eps"], (noise.xi, noise.z, noise.eps),
                                   "images")}
    null = NullEmbeddingGraph(amortizer, spec.precision).eval()
    step = StepGraph(amortizer, table, with_noise, spec.precision).eval()
    gen = GeneratorGraph(generator, spec.precision).eval()
    with torch.no_grad():
        xemb = null(noise.xi)
    k = torch.zeros(1, dtype=torch.int64, device=spec.device)
    return {
        "null_embedding": _bundle(null, f"null_embedding{ext}", ["xi"], (noise.xi,), "xemb"),
        "step": _bundle(step, f"step{ext}", ["k", "z", "xemb", "eps"], (k, noise.z, xemb, noise.eps[0]), "z_next"),
        "generator": _bundle(gen, f"generator{ext}", ["z"], (noise.z,), "images"),
    }


def non_aten_ops(ep: ExportedProgram) -> list[str]:
    """Ops left after ``run_decompositions()`` that are not ATen (a custom ``damc::`` op, a Python callable)."""
    decomposed = ep.run_decompositions()
    bad = set()
    for node in decomposed.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        ns = getattr(target, "namespace", None)
        if ns != "aten":
            bad.add(str(target))
    return sorted(bad)


def reference_images(learner: Learner, noise: PriorNoise) -> Tensor:
    """The engine's eager fp32 prior draw + G on given noise (what every artifact is compared with)."""
    assert learner.nets.amortizer is not None
    with torch.no_grad():
        z = prior_latents(learner.nets.amortizer, learner.table, noise, with_noise=learner.cfg.diffusion.sampler_noise)
        return decode(learner.nets.generator, z)


def export_sampler(learner: Learner, spec: ExportSpec, out: Path, *, run_info: dict[str, Any], force: bool = False,
                   log: Callable[[str], None] = lambda s: None) -> Sidecar:
    """Export, verify and write the artifact directory ``out`` (see :mod:`engine.export.artifact`)."""
    fmt = FORMAT_MODULES[spec.format]
    fmt.require(spec.device)
    amortizer = learner.nets.amortizer
    if amortizer is None:
        raise ExportError("this run has no amortizer (method lebm): only a DAMC run's prior sampler can be exported")
    cfg = learner.cfg
    for m in (amortizer, learner.nets.generator):
        m.eval().requires_grad_(False)
    t0 = time.perf_counter()
    bundles = build_graphs(learner, spec)
    sidecar = Sidecar(
        format=spec.format, structure=spec.structure, batch=spec.batch, precision=spec.precision,
        device=spec.device.type, n_steps=learner.table.n_steps, nz=cfg.model.nz, nemb=cfg.model.nemb,
        image_shape=list(bundles["generator" if spec.structure == "per-step" else "sampler"].io.outputs[0].shape[1:]),
        sampler_noise=cfg.diffusion.sampler_noise, graphs={n: b.io for n, b in bundles.items()},
        run={**run_info, "config_hash": config_hash(cfg),
             "weights_sha256": prior_weights_hash(amortizer.state_dict(), learner.nets.generator.state_dict())},
        engine_version=engine.__version__, torch_version=torch.__version__, noise=dict(NOISE_RECIPE),
        driver=DRIVER if spec.structure == "per-step" else "images = sampler(xi, z_T, eps)",
    )
    with atomic_directory(out, force=force) as tmp, warnings.catch_warnings():
        # torch.export's pytree pickling warns about a deprecated LeafSpec check inside torch itself.
        warnings.simplefilter("ignore", FutureWarning)
        for name, b in bundles.items():
            log(f"torch.export {name} ({len(b.example)} inputs) ...")
            ep = torch.export.export(b.module, b.example, strict=False)
            bad = non_aten_ops(ep)
            if bad:
                raise ExportError(f"graph {name} holds non-ATen ops after run_decompositions(): {', '.join(bad)}")
            log(f"{spec.format}: writing {b.io.file} ...")
            fmt.save(ep, tmp / b.io.file, b.io, b.example)
        sidecar.export_seconds = round(time.perf_counter() - t0, 2)
        sidecar.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != SIDECAR}
        write_sidecar(tmp, sidecar)
        sidecar.verification = verify(learner, tmp, spec)
        write_sidecar(tmp, sidecar)
    return sidecar


def verify(learner: Learner, directory: Path, spec: ExportSpec) -> dict[str, Any]:
    """Run the artifact on a fresh draw (seed VERIFY_SEED) and compare with the engine's eager fp32 images."""
    noise = prior_noise(NoiseStream(VERIFY_SEED, learner.cfg.model.nz, learner.table.n_steps + 1), spec.batch)
    want = reference_images(learner, noise.to(spec.device))
    entry: dict[str, Any] = {"noise_seed": VERIFY_SEED, "reference": "engine eager fp32 prior draw + G, same noise"}
    try:
        sampler = load_artifact(directory, spec.device, cuda_graph=False)
        got = sampler.images(noise)
    except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime's CPU provider has no bf16 Gemm
        entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return entry
    diff = (got.float() - want).abs()
    entry.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                 finite=bool(torch.isfinite(got).all()))
    # fp32 pt2 / onnx / aoti measure <= 3e-6 at 100 steps: far above that is a broken export, not rounding.
    # (TensorRT enables TF32 for fp32 layers by default: its difference is recorded, not judged.)
    if spec.precision == "fp32" and spec.format != "tensorrt" and not entry["max_abs_diff"] <= 1e-3:
        raise ExportError(f"the {spec.format} artifact differs from the engine by {entry['max_abs_diff']:.3g} "
                          "(fp32; expected <= 1e-3): not written")
    return entry
