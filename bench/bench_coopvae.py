"""CoopVAEBM (``method: coopvae``): its whole iteration and its EBM chain (the K Langevin steps x̂ → x̃), reference and
fast side by side in one process on one device.

Run: ``pytest bench/bench_coopvae.py --benchmark-only`` (GPU: the authors' CIFAR-10 sizes, 900 chains, batch 250,
configs/coopvae_cifar10.yaml; CPU: configs/coopvae_quickstart.yaml's digits at smoke sizes). The fast mode resolves
``perf.preset: fast`` for the device (bf16 energy forward, compiled energy, fused Langevin kernel on flattened rows,
the 15-step chain as one CUDA graph); on a CPU that preset keeps the reference, so the two rows measure the same
code there. Rows carry ``suite: coopvae``; ``bench/gpu_all.sh`` runs this file beside the DAMC phases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.conftest import learner_on_preset, measure, plan, sync
from engine.config import Config, load_config
from engine.learners.coopvae import CoopVAELearner

REPO = Path(__file__).resolve().parents[1]
SUITE = "coopvae"
MODES = ("reference", "fast")
PHASES = ("coopvae_iteration", "coopvae_chain")
SMOKE = ["coopvae.n_chains=64", "train.batch_size=32"]


def coopvae_config(device: torch.device) -> Config:
    if device.type == "cuda":
        return load_config(REPO / "configs" / "coopvae_cifar10.yaml", ["data.root=unused"])
    return load_config(REPO / "configs" / "coopvae_quickstart.yaml", SMOKE)


def build(cfg: Config, device: torch.device, mode: str) -> dict[str, Callable[[], object]]:
    """The two phases on a learner whose chains follow ``mode``'s preset (as engine.run.train installs them)."""
    learner, x, g = learner_on_preset(cfg, device, mode)
    assert isinstance(learner, CoopVAELearner)
    x_hat = learner.draw(cfg.coopvae.n_chains, learner.rng)
    return {"coopvae_iteration": lambda: learner.train_step(x), "coopvae_chain": lambda: learner.revise(x_hat, None)}


CASES = [(p, m) for p in PHASES for m in MODES]


@pytest.mark.parametrize(("phase", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_coopvae_phase(benchmark: Any, device: torch.device, env_info: dict[str, Any], phase: str,
                       mode: str) -> None:
    cfg = coopvae_config(device)
    benchmark.group = phase
    t0 = time.perf_counter()
    fn = build(cfg, device, mode)[phase]
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device, heavy=phase == "coopvae_iteration")
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    c = cfg.coopvae
    benchmark.extra_info.update(suite=SUITE, phase=phase, mode=mode, build_s=build_s, env=env_info,
                                size={"arch": cfg.model.arch, "n_chains": c.n_chains, "batch": cfg.train.batch_size,
                                      "langevin_steps": c.langevin.n_steps}, **timing)
