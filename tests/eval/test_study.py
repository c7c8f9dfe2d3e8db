"""``python -m engine.study digits`` (engine.eval.study) and its distances (engine.eval.digits_features): the
committed classifier, KID/FID facts, and a smoke run of the study command at tiny sizes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.eval import study
from engine.eval.digits_features import DigitFeatures, digit_labels, fid, kid, load_or_train_classifier

pytest.importorskip("sklearn")
RESULTS = Path(__file__).resolve().parents[2] / "results" / "digits"


@pytest.fixture(scope="module")
def features() -> DigitFeatures:
    net, meta = load_or_train_classifier(RESULTS)  # the committed network: never retrained here
    assert meta["sha256"] == hashlib.sha256((RESULTS / "classifier.pt").read_bytes()).hexdigest()
    return DigitFeatures(net)


def test_the_committed_classifier_recognises_the_test_digits(features: DigitFeatures) -> None:
    acc = float((features.test.labels == digit_labels("test").numpy()).mean())
    meta = json.loads((RESULTS / "classifier.json").read_text())
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-6) and acc > 0.98
    assert features.train.feats.shape == (1497, int(features.live.sum()))
    np.testing.assert_allclose(features.train.feats.mean(0), 0, atol=1e-9)  # standardised on the train split


def test_kid_is_unbiased_and_sees_degraded_digits(features: DigitFeatures) -> None:
    train, test = features.train.feats, features.test.feats
    assert abs(kid(test, train)) < 0.02  # real held-out digits: the floor, ≈ 0 at n = 300
    assert fid(train, train) == pytest.approx(0.0, abs=1e-6)
    x = study.u8_to_float(study.load_digits_split(study.DIGITS_SHAPE, "test"))
    noisy = features.of(x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    blurred = features.of(torch.nn.functional.avg_pool2d(x, 3, 1, 1))
    assert kid(noisy.feats, train) > 0.05 and kid(blurred.feats, train) > 0.5
    assert fid(blurred.feats, train) > fid(test, train) + 10
    gen = np.random.default_rng(0)
    a, b = gen.normal(size=(400, 8)), gen.normal(size=(400, 8))
    assert abs(kid(a, b)) < 0.05 and kid(a, b + 1) > 1


def test_study_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two iterations per method, one seed, short chains and sampler (the plumbing, not the sizes): run
    directories, grids, summary and table (seconds)."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    for name in ("classifier.pt", "classifier.json"):
        shutil.copy(RESULTS / name, out / name)
    small = ["diffusion.n_steps=4", "diffusion.updates_per_iter=1", "langevin.posterior.n_steps=2",
             "langevin.prior.n_steps=2", "eval.lebm_steps=2", "eval.recon_steps=1", "train.batch_size=16"]
    args = ["digits", "--out", str(out), "--runs", str(runs), "--seeds", "0", "--iterations", "2", "--samples", "32",
            *small]
    assert study.main(args) == 0
    table = capsys.readouterr().out
    for _, label, paper in study.KINDS:
        assert label in table and paper in table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["iterations"] == 2 and summary["overrides"] == small
    damc, lebm = summary["per_seed"]["0"]["damc"], summary["per_seed"]["0"]["lebm"]
    assert damc["iteration"] == lebm["iteration"] == 2 and "damc_prior" not in lebm
    assert damc["damc_prior"]["n"] == 32 and damc["recon"]["n"] == 300 and 0 < damc["recon"]["mse"] < 4
    assert (runs / "damc-seed0" / "config.yaml").is_file() and (runs / "lebm-seed0" / "config.yaml").is_file()
    assert len(list((out / "grids").glob("seed0_*.png"))) == 5
    assert study.main(args) == 0  # a rerun reuses the measured seed
    assert "measured earlier" in capsys.readouterr().err
    for bad in (["--iterations", "0"], ["--samples", "5"], ["--seeds", "x"], ["train.batch_size=-1"],
                ["--config", str(Path(study.REPO) / "configs" / "mnist_anomaly.yaml")]):
        assert study.main([*args, *bad]) == 2
    assert "error: " in capsys.readouterr().err
