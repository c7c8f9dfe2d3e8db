"""The toy experiment (spec §9, ``engine.eval.toy.experiment``): problem, references, distances, and the DAMC claim."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.eval import distances
from engine.eval.toy import experiment, study


def test_pinwheel_has_two_arms_of_equal_size() -> None:
    z = experiment.pinwheel(4000, torch.Generator().manual_seed(0))
    assert z.shape == (4000, 2)
    r = z.norm(dim=1)
    assert 1.0 < float(r.median()) < 4.0  # radius 2·r with r ≈ 1 ± 0.3
    # The two arms are point reflections of each other (angles c·π apart): the mean is near the origin and
    # the arms split the plane into two halves of equal mass along the arms' axis.
    assert float(z.mean(0).norm()) < 0.15
    g = experiment.likelihood_net(torch.Generator().manual_seed(1))
    assert not any(p.requires_grad for p in g.parameters())
    linears = [m for m in g if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(128, 2), (128, 128), (128, 128), (2, 128)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    biases = torch.cat([m.bias.flatten() for m in linears])
    assert abs(float(weights.std()) - 0.2) < 0.01 and abs(float(biases.std()) - 0.1) < 0.02


def test_sample_distances() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3000, 2, generator=gen), torch.randn(3000, 2, generator=gen)
    assert distances.sliced_wasserstein(a, a) == 0.0
    assert distances.sliced_wasserstein(a, b) < 0.06
    shift = torch.tensor([3.0, 4.0])
    # SW2 of a translation: E_θ (θ·t)² = ‖t‖²/2 in 2-D, so SW2 = ‖t‖/√2.
    assert distances.sliced_wasserstein(a, a + shift, n_projections=2000) == pytest.approx(5 / math.sqrt(2), rel=0.03)
    assert distances.sliced_wasserstein(a, b[:1000]) < 0.08  # unequal sizes: quantile interpolation
    assert abs(distances.mmd_rbf(a[:1000], b[:1000])) < 5e-3 and distances.mmd_rbf(a[:1000], b[:1000] + 1) > 0.1


def test_exact_posterior_and_long_run_langevin_agree_with_the_gaussian_closed_form() -> None:
    """For a linear G(z) = Az + c the posterior is Gaussian: Σ = (AᵀA/σ² + I)⁻¹, μ = Σ Aᵀ(x − c)/σ²."""
    torch.manual_seed(0)
    g = nn.Linear(2, 2).requires_grad_(False)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([[1.5, 0.3], [-0.2, 0.4]]))
        g.bias.copy_(torch.tensor([0.1, -0.2]))
    sigma = 0.25
    x = torch.tensor([[0.8, 0.1]])
    a, c = g.weight.double(), g.bias.double()
    cov = torch.linalg.inv(a.T @ a / sigma**2 + torch.eye(2, dtype=torch.float64))
    mean = cov @ a.T @ (x[0].double() - c) / sigma**2
    gen = torch.Generator().manual_seed(0)
    exact = experiment.exact_posterior(g, x, 20000, sigma, gen)[0].double()
    assert torch.allclose(exact.mean(0), mean, atol=0.01)
    assert torch.allclose(torch.cov(exact.T), cov, atol=0.01)
    ld = experiment.posterior_langevin(g, x.expand(4000, 2), torch.randn(4000, 2, generator=gen), 2000, 0.1, sigma, gen)
    assert distances.sliced_wasserstein(ld, exact[:4000].float()) < 0.05  # Langevin (s 0.1) converges here


@pytest.fixture(scope="module")
def fast_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:  # type: ignore[type-arg]
    """The references of the fast setting (8 fixed x, problem seed 0) after one training iteration: the facts
    tested with it are training-free (~15 s on 2 CPU cores)."""
    out = tmp_path_factory.mktemp("toy")
    return experiment.run(experiment.fast_config(iterations=1, n_pooled_x=0), out), out


def test_cli_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every output of ``python -m engine.toy`` on a few iterations (seconds)."""
    assert study.main(["--out", str(tmp_path), "--fast", "--iterations", "3", "--eval-samples", "100",
                           "--gt-steps", "50", "--train-seed", "3", "--obs-sigma", "0.5", "--pooled-x", "300",
                           "--grid-cells", "201"]) == 0
    report = json.loads((tmp_path / "toy.json").read_text())
    assert report["config"]["iterations"] == 3 and len(report["x"]) == 8
    assert report["config"]["train_seed"] == 3 and report["config"]["obs_sigma"] == 0.5
    for ref in ("exact", "long_run"):
        for metric in ("swd", "mmd"):
            for values in report["distances"][ref][metric].values():
                assert len(values) == 8 and all(math.isfinite(v) for v in values)
    with Image.open(tmp_path / "toy_density.png") as im:
        assert im.size[0] > 600 and im.size[1] > 600
    assert "DAMC" in capsys.readouterr().out
    assert (tmp_path / "toy_kde.png").is_file() and (tmp_path / "samples.npz").is_file()
    assert set(report["pooled"]["swd"]["long_run"]) == {"damc", "short_run", "long_run_b", "exact", "prior"}
    assert study.main(["--out", str(tmp_path), "--iterations", "0"]) == 2
    assert study.main(["--out", str(tmp_path), "--obs-sigma", "0"]) == 2
    assert study.main(["--out", str(tmp_path), "--setup", "authors", "--train-seed", "3"]) == 2
    assert study.main(["--out", str(tmp_path), "--setup", "authors", "--pooled-x", "700"]) == 2
    assert study.main(["--out", str(tmp_path), "--seeds", "3-1"]) == 2
    assert "error: " in capsys.readouterr().err


def test_references_long_run_langevin_is_no_ground_truth_for_multimodal_posteriors(
        fast_report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    """Training-free facts about the problem (fixed seeds): most posteriors of the random G have modes that
    Langevin does not cross, so long-run LD keeps its start's mode weights and is barely better than short-run."""
    report, _ = fast_report
    s = report["summary"]
    floor = s["swd_exact_split_vs_exact"]  # two exact draws: the sampling noise of the distance
    assert s["swd_short_run_vs_exact"] > 3 * floor
    assert s["swd_long_run_vs_exact"] > 0.7 * s["swd_short_run_vs_exact"]
    valid = report["long_run_valid"]
    assert any(valid) and not all(valid)


def test_langevin_profile_short_run_has_already_done_what_long_run_does(
        fast_report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    """Why spec §9's "DAMC clearly closer to long-run LD than short-run LD" cannot be asserted on this problem:
    past ~25 steps more Langevin steps do not bring the chains closer to the exact posterior, and 50-step LD is
    already within a small multiple of the distance between two independent long-run sets."""
    report, _ = fast_report
    prof = report["langevin_profile"]
    assert prof["steps"] == [0, 10, 25, 50, 100, 200, 500, 1000]  # fast setting: gt_steps 1000
    k_x = len(report["x"])
    assert all(len(v) == k_x for key in ("swd_vs_exact", "swd_vs_long_run") for v in prof[key])
    to_exact = {st: float(np.mean(v)) for st, v in zip(prof["steps"], prof["swd_vs_exact"], strict=True)}
    to_long = {st: float(np.mean(v)) for st, v in zip(prof["steps"], prof["swd_vs_long_run"], strict=True)}
    # Langevin does pull toward the posterior (measured 1.00 -> 0.85; what remains is mostly mode weights) ...
    assert to_exact[50] < to_exact[0]
    assert to_exact[1000] > 0.9 * to_exact[50]  # ... but 20x more steps gain at most 10 % (measured 1 %)
    floor = report["summary"]["swd_long_run_floor"]  # second long-run set vs the first
    assert floor == pytest.approx(to_long[1000])
    assert to_long[50] < 2.5 * floor < to_long[0]


def test_authors_setup_smoke_over_two_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--setup authors --seeds``: each seed's outputs, the summary table and both figures (tiny sizes)."""
    args = ["--setup", "authors", "--fast", "--iterations", "2", "--eval-every", "1", "--pooled-x", "500",
            "--gt-steps", "20", "--eval-samples", "50", "--eval-x", "2", "--grid-cells", "121", "--seeds", "1-2",
            "--out", str(tmp_path)]
    assert study.main(args) == 0
    out = capsys.readouterr().out
    assert "instances run" in out and "| seed |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["config"]["setup"] == "authors"
    for row in summary["rows"]:
        assert row["claim"] in ("holds", "does not hold", "not qualifying") and not row["pre_registered"]
    rep = json.loads((tmp_path / "seed-2" / "toy.json").read_text())
    assert [p["iteration"] for p in rep["curve"]] == [0, 1, 2]
    assert rep["config"]["batch_size"] == 500 and rep["config"]["ema_decay"] == 0.25
    for name in ("kde.png", "curves.png", "summary.md"):
        assert (tmp_path / name).is_file()
    # A rerun reuses finished seeds; a different config in the same directory is refused.
    assert study.main(args) == 0
    assert "already done" in capsys.readouterr().err
    assert study.main([*args[:-2], "--obs-sigma", "0.3", "--out", str(tmp_path)]) == 2


def test_pre_registered_verdict() -> None:
    def report(short: float, floor: float, damc: float, iterations: int = 3000) -> dict:  # type: ignore[type-arg]
        return {"config": {"iterations": iterations},
                "pooled": {"swd": {"long_run": {"short_run": short, "long_run_b": floor, "damc": damc}}}}

    assert study.verdict(report(0.2, 0.1, 0.0))["claim"] == "not qualifying"  # 2× the floor
    v = study.verdict(report(0.35, 0.1, 0.24))
    assert v["qualifies"] and v["claim"] == "holds" and v["pre_registered"]
    assert study.verdict(report(0.35, 0.1, 0.26))["claim"] == "does not hold"  # closer, but not by the floor
    assert not study.verdict(report(0.35, 0.1, 0.1, iterations=500))["pre_registered"]
    assert study.parse_seeds("1-3,7,2") == [1, 2, 3, 7]
    for bad in ("", "a", "3-1", "-2"):
        with pytest.raises(ValueError):
            study.parse_seeds(bad)
    # A saved config without a field added later still matches when that field holds its default.
    saved = json.loads(json.dumps(dataclasses.asdict(experiment.fast_config())))
    del saved["grid_cells"]
    assert study.same_config(saved, experiment.fast_config())
    assert not study.same_config(saved, experiment.fast_config(grid_cells=301))


def test_qualifying_test_for_fixed_instances() -> None:
    """Training-free, pooled over 1,000 x (the committed study uses 5,000): at the authors' full size their default
    seed 1 does not qualify (50-step LD is within 1.3 floors of 1,000-step LD: measured 0.094 vs 0.070), while the
    CPU-size instance seed 2 does (5.8 floors: 0.537 vs 0.093)."""
    from engine.eval.toy.authors import authors_config, authors_cpu_config

    full = study.qualification(authors_config(seed=1, n_pooled_x=1000))
    assert full["ratio"] < 2.0 and full["short_run"] < 0.15
    cpu = study.qualification(authors_cpu_config(seed=2, n_pooled_x=1000))
    assert cpu["ratio"] > 4.0 and cpu["short_run"] > 0.4
