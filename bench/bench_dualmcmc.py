"""Dual-MCMC Teaching (``method: dualmcmc``): its whole iteration, its EBM chain (the K_x Langevin steps g(z) → x̃)
and its posterior chain (the K_z steps z₀ → z̃ given data), reference and fast side by side in one process on one
device.

Run: ``pytest bench/bench_dualmcmc.py --benchmark-only`` (GPU: the authors' CIFAR-10 sizes, batch 100,
configs/dualmcmc_cifar10.yaml; CPU: configs/dualmcmc_quickstart.yaml's digits at its own sizes). The fast mode
resolves ``perf.preset: fast`` for the device (bf16 forwards of E in the x-chain and of G in the z-chain, compiled
energies, the fused Langevin kernel on flattened rows, each chain as one CUDA graph); on a CPU that preset keeps the
reference, so the two rows measure the same code there. Rows carry ``suite: dualmcmc``; ``bench/gpu_all.sh`` runs
this file beside bench_coopvae.py.
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
from engine.learners.dualmcmc import DualMCMCLearner

REPO = Path(__file__).resolve().parents[1]
SUITE = "dualmcmc"
MODES = ("reference", "fast")
PHASES = ("dualmcmc_iteration", "dualmcmc_ebm_chain", "dualmcmc_posterior_chain")


def dualmcmc_config(device: torch.device) -> Config:
    if device.type == "cuda":
        return load_config(REPO / "configs" / "dualmcmc_cifar10.yaml", ["data.root=unused"])
    return load_config(REPO / "configs" / "dualmcmc_quickstart.yaml")


def build(cfg: Config, device: torch.device, mode: str) -> dict[str, Callable[[], object]]:
    """The three phases on a learner whose chains follow ``mode``'s preset (as engine.run.train installs them)."""
    learner, x, g = learner_on_preset(cfg, device, mode)
    assert isinstance(learner, DualMCMCLearner)
    x_hat = learner.draw(cfg.train.batch_size, learner.rng)
    with torch.no_grad():
        z0 = learner.inference(x)[0].float()
    return {"dualmcmc_iteration": lambda: learner.train_step(x),
            "dualmcmc_ebm_chain": lambda: learner.ebm_chain(x_hat, learner.rng),
            "dualmcmc_posterior_chain": lambda: learner.posterior_chain(z0, x, learner.rng)}


CASES = [(p, m) for p in PHASES for m in MODES]


@pytest.mark.parametrize(("phase", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_dualmcmc_phase(benchmark: Any, device: torch.device, env_info: dict[str, Any], phase: str,
                        mode: str) -> None:
    cfg = dualmcmc_config(device)
    benchmark.group = phase
    t0 = time.perf_counter()
    fn = build(cfg, device, mode)[phase]
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device, heavy=phase == "dualmcmc_iteration")
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    c = cfg.dualmcmc
    benchmark.extra_info.update(suite=SUITE, phase=phase, mode=mode, build_s=build_s, env=env_info,
                                size={"arch": cfg.model.arch, "batch": cfg.train.batch_size,
                                      "ebm_steps": c.ebm_chain.n_steps, "posterior_steps": c.posterior.n_steps,
                                      "widths": [c.ngf, c.ndf, c.nif]}, **timing)
