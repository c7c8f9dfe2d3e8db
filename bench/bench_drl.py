"""Diffusion recovery likelihood (``method: drl``): its whole iteration, one level's conditional chain (the K
Langevin steps from x̃, every example at its own level) and the T-level sampler from noise, reference and fast side
by side in one process on one device.

Run: ``pytest bench/bench_drl.py --benchmark-only`` (GPU: configs/drl_cifar10.yaml's network, T6, K 30, at a
batch of 64 for the iteration and the chain and 16 for the sampler, so that the reference rows fit the stage; CPU:
configs/drl_quickstart.yaml's digits at smoke sizes). The fast mode resolves ``perf.preset: fast`` for the device
(bf16 network forward, compiled energy, fused Langevin update on flattened rows, the K-step chain as one CUDA graph
per shape); on a CPU that preset keeps the reference, so the two rows measure the same code there. Rows carry
``suite: drl``; ``bench/gpu_all.sh`` runs this file beside CoopVAEBM's.
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
from engine.learners.drl import DRLLearner
from engine.runtime import system

REPO = Path(__file__).resolve().parents[1]
SUITE = "drl"
MODES = ("reference", "fast")
PHASES = ("drl_iteration", "drl_chain", "drl_sampler")
GPU_SIZES = {"batch": 64, "sampler_batch": 16}
CPU_SIZES = {"batch": 16, "sampler_batch": 8}


def drl_config(device: torch.device) -> tuple[Config, dict[str, int]]:
    if device.type == "cuda":
        cfg = load_config(REPO / "configs" / "drl_cifar10.yaml", ["data.root=unused",
                                                                   f"train.batch_size={GPU_SIZES['batch']}"])
        return cfg, GPU_SIZES
    return load_config(REPO / "configs" / "drl_quickstart.yaml", [f"train.batch_size={CPU_SIZES['batch']}"]), CPU_SIZES


def build(cfg: Config, device: torch.device, mode: str, sizes: dict[str, int]) -> dict[str, Callable[[], object]]:
    """The three phases on a learner whose chains follow ``mode``'s preset (as engine.run.train installs them)."""
    learner, x, g = learner_on_preset(cfg, device, mode)
    assert isinstance(learner, DRLLearner)
    b = cfg.train.batch_size
    t = torch.randint(cfg.drl.levels, (b,), generator=g).to(device)
    x_tilde = torch.randn(x.shape, generator=g).to(device)
    rng = system.make_generator(device, 1)
    return {"drl_iteration": lambda: learner.train_step(x),
            "drl_chain": lambda: learner.recover(x_tilde, t, ema=False, noise_scale=cfg.drl.noise_scale, rng=rng),
            "drl_sampler": lambda: learner.sample("drl", sizes["sampler_batch"], rng)}


CASES = [(p, m) for p in PHASES for m in MODES]


@pytest.mark.parametrize(("phase", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_drl_phase(benchmark: Any, device: torch.device, env_info: dict[str, Any], phase: str, mode: str) -> None:
    cfg, sizes = drl_config(device)
    benchmark.group = phase
    t0 = time.perf_counter()
    fn = build(cfg, device, mode, sizes)[phase]
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device, heavy=phase != "drl_chain")
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    c = cfg.drl
    benchmark.extra_info.update(suite=SUITE, phase=phase, mode=mode, build_s=build_s, env=env_info,
                                size={"arch": cfg.model.arch, "batch": cfg.train.batch_size, "levels": c.levels,
                                      "langevin_steps": c.langevin_steps,
                                      "sampler_batch": sizes["sampler_batch"]}, **timing)
