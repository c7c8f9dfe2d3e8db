"""Benchmark fixtures: device choice, problem sizes, synchronized timing.

On a GPU the suite uses the paper's sizes (CIFAR-10 networks, batch 128); on CPU it uses tiny sizes so it
only checks that everything runs. Every timed callable ends with a device synchronize.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine import system
from engine.config import Config, load_config
from engine.learner import Learner, build_learner

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.nz=16", "model.ngf=16", "model.nif=16", "model.nemb=128", "model.unet_nf=1",
        "train.batch_size=16"]


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def bench_config(device: torch.device) -> Config:
    if device.type == "cuda":
        return load_config(REPO / "configs" / "cifar10.yaml", ["data.root=unused"])
    return load_config(REPO / "configs" / "quickstart.yaml", TINY)


def make_learner(cfg: Config, device: torch.device) -> Learner:
    system.seed_init(cfg.train.seed)
    return build_learner(cfg, device, system.make_generator(device, cfg.train.seed))


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run
