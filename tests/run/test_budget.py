"""The memory estimate made before any work (engine/run/budget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.learners import build_learner
from engine.run import budget
from engine.run.train import main
from engine.runtime import system

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_is_estimated_without_allocating_or_drawing(path: Path) -> None:
    cfg = load_config(path, ["data.root=x"] if "quickstart" not in path.stem else [])
    rng = torch.get_rng_state()
    est = budget.estimate(cfg)
    assert torch.equal(rng, torch.get_rng_state())  # meta-device build: the run's RNG stream is untouched
    assert 0 < est.total < 64 * 2**30  # every shipped config fits a 64 GB machine by the estimate


def test_parameter_part_matches_the_real_networks() -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    nets = learner.nets
    n = sum(p.numel() for m in (nets.generator, nets.energy, nets.amortizer) if m is not None for p in m.parameters())
    n_q = sum(p.numel() for p in nets.amortizer.parameters())  # type: ignore[union-attr]
    assert budget.estimate(cfg).parameters == 4 * (4 * n + n_q)


@pytest.mark.parametrize(
    ("override", "part"),
    [
        ("model.ngf=4096", "parameters and optimizer state"),
        ("model.ndf=65536", "parameters and optimizer state"),
        ("train.batch_size=65536", "activations"),
        ("eval.n_samples=4096", "grids"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_with_one_line(override: str, part: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(REPO / "configs" / "cifar10.yaml", [override])
    monkeypatch.setattr(budget, "available_bytes", lambda device: 2**30)  # a 1 GiB machine
    with pytest.raises(ConfigError) as info:
        budget.check_fits(cfg, torch.device("cpu"))
    msg = str(info.value)
    assert "\n" not in msg and "needs at least" in msg and part in msg and "1 GiB is available on cpu" in msg


def test_the_trainer_refuses_before_writing(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(budget, "available_bytes", lambda device: 1_000_000)
    run = tmp_path / "run"
    assert main([str(REPO / "configs" / "quickstart.yaml"), f"log.run_dir={run}", "train.iterations=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this run needs at least") and "\n" not in err and not run.exists()


def test_human_bytes_never_rounds_two_sizes_to_the_same_text() -> None:
    assert budget.human_bytes(1000) == "1000 B" and budget.human_bytes(1536) == "1.5 KiB"
    assert budget.human_bytes(3.47 * 2**20) == "3.47 MiB" and budget.human_bytes(459 * 2**20) == "459 MiB"
    assert budget.human_bytes(2**40 * 3) == "3 TiB"
    assert budget.available_bytes(torch.device("cpu")) is None or budget.available_bytes(torch.device("cpu")) > 0
