"""Tiny trained runs for the sampling and export tests (the quickstart config with tiny networks): a DAMC run with
a 3-step sampler (the ONNX/AOTInductor exports stay seconds), a DAMC run with the paper's 100 steps (per-step
exports do not grow with T) and an LEBM run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.learners.damc import DamcLearner as Learner
from engine.run import checkpoint
from engine.run.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
TINY = ["model.ngf=8", "model.nif=8", "model.nemb=32", "model.nz=8", "langevin.posterior.n_steps=4",
        "langevin.prior.n_steps=4", "diffusion.updates_per_iter=2", "train.batch_size=16", "eval.n_samples=8",
        "eval.lebm_steps=3", "log.sample_every=1000", "log.progress=false"]


def _train(root: Path, name: str, *extra: str) -> Path:
    run = root / name
    assert train_main([QUICK, *TINY, *extra, f"log.run_dir={run}", "train.iterations=3"]) == 0
    return run


@pytest.fixture(scope="session")
def damc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "damc3", "diffusion.n_steps=3")


@pytest.fixture(scope="session")
def damc_run_100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "damc100", "diffusion.n_steps=100")


@pytest.fixture(scope="session")
def lebm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "lebm", "method=lebm")


@pytest.fixture()
def learner(damc_run: Path) -> Learner:
    """A fresh learner per test: exports set eval() / requires_grad_(False) on the networks they export."""
    return checkpoint.load_run(damc_run, torch.device("cpu"))

