"""DAMC prior sampling at batch 64 (the paper's 0.3 s row) through the engine and through exported artifacts,
side by side: GPU only (skipped on CPU, where there is nothing to learn from it).

Rows (one timed call = 64 images from the CIFAR-10 networks, 100 sampler steps + G, noise already on the device):
  * ``engine-fast``: the engine's fast path (``perf.preset: fast``: bf16, CUDA graph, fused kernels), noise drawn
    inside the graph, as ``python -m engine.sample`` runs on a GPU;
  * ``pt2-per-step-{fp32,bf16}``: the per-step ``torch.export`` artifact, its loop driven by one CUDA graph
    (:mod:`engine.export.runner`);
  * ``aoti-per-step-bf16``: the same three graphs as AOTInductor packages, driven by a CUDA graph;
  * ``tensorrt-per-step-bf16``: Torch-TensorRT engines, when the ``tensorrt`` extra imports (skipped otherwise, with
    the reason: not installed, or installed without its TensorRT libraries).
Export and compile time is reported as ``build_s`` (not timed). Goal: an exported sampler ≤ 3 ms on an H100/H200,
TensorRT ≤ 1.5 ms. Budget: about a minute on an H100 (the AOTInductor compile is most of it).
Run alone: ``pytest bench/bench_export.py --benchmark-only``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.conftest import make_learner, measure, plan, sync
from bench.phases import PAPER_BATCH_SAMPLE
from engine.config import Config
from engine.export import to_tensorrt
from engine.export.build import ExportSpec, export_sampler
from engine.export.runner import load_artifact
from engine.learners.damc import damc_prior_latents
from engine.runtime import perf, system
from engine.runtime.fast import build_chains
from engine.sampling.noise import NoiseStream, prior_noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="export benchmarks need a CUDA GPU")

SUITE = "damc-export"
PAPER_S = 0.3  # the paper's DAMC prior sampling at batch 64 (A6000, fp32)
ROWS = ["engine-fast", "pt2-per-step-fp32", "pt2-per-step-bf16", "aoti-per-step-bf16", "tensorrt-per-step-bf16"]


@pytest.mark.parametrize("row", ROWS)
def test_export_sampling(benchmark: Any, bench_config: Config, device: torch.device, env_info: dict[str, Any],
                         tmp_path: Path, row: str) -> None:
    if row.startswith("tensorrt") and to_tensorrt.unavailable():
        pytest.skip(to_tensorrt.unavailable())  # not installed, or installed without its TensorRT libraries
    benchmark.group = f"DAMC prior sampling, batch {PAPER_BATCH_SAMPLE}: engine vs exports"
    cfg, n = bench_config, PAPER_BATCH_SAMPLE
    t0 = time.perf_counter()
    learner = make_learner(cfg, device)
    extra: dict[str, Any] = {}
    if row == "engine-fast":
        fast_plan, _ = perf.resolve(dataclasses.replace(cfg.perf, preset="fast"), device)
        system.apply_perf(fast_plan, device)
        learner.chains = build_chains(learner, fast_plan)
        rng = system.make_generator(device, 0)

        def fn() -> torch.Tensor:
            z = damc_prior_latents(learner, n, rng)
            with torch.no_grad(), learner.chains.autocast():
                return learner.nets.generator(z)

        extra["path"] = fast_plan.describe()
    else:
        fmt, structure, precision = row.split("-", 1)[0], "per-step", row.rsplit("-", 1)[1]
        out = tmp_path / row
        side = export_sampler(learner, ExportSpec(fmt, structure, n, precision, device), out, run_info={"bench": row})
        sampler = load_artifact(out, device)
        noise = prior_noise(NoiseStream(0, cfg.model.nz, learner.table.n_steps + 1), n).to(device)

        def fn() -> torch.Tensor:
            return sampler.images(noise)

        fn()  # capture the CUDA graph here, not in the timed warm-up
        extra.update(artifact_bytes=sum(side.files.values()), export_s=side.export_seconds,
                     verification=side.verification, graph_note=sampler.note, cuda_graph=sampler.captured)
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device)
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    benchmark.extra_info.update(suite=SUITE, row=row, batch=n, steps=learner.table.n_steps, paper_s=PAPER_S,
                                build_s=build_s, env=env_info, **extra, **timing)
