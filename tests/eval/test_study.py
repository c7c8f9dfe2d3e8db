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


SMALL = ["diffusion.n_steps=4", "diffusion.updates_per_iter=1", "langevin.posterior.n_steps=2",
         "langevin.prior.n_steps=2", "eval.lebm_steps=2", "eval.recon_steps=1", "train.batch_size=16"]


def _out_with_classifier(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("classifier.pt", "classifier.json"):
        shutil.copy(RESULTS / name, out / name)
    return out


def _rows(table: str) -> list[list[str]]:
    """The body rows of a markdown table's text, as cells (header rows left out)."""
    lines = table.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line, after in zip(lines, [*lines[1:], ""], strict=True)
            if line.startswith("| ") and not after.startswith("|---")]


def test_study_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two iterations per method, one seed, short chains and sampler (the plumbing, not the sizes): a list of
    methods, one added later (the measured one kept), run directories, grids, summary, table, errors (seconds)."""
    out, runs = _out_with_classifier(tmp_path), tmp_path / "runs"
    args = ["digits", "--out", str(out), "--runs", str(runs), "--seeds", "0", "--iterations", "2", "--samples", "32",
            *SMALL]
    assert study.main([*args, "--methods", "damc"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("# All learners on the quickstart digits: 2 iterations, seeds [0]")
    assert [r[:2] for r in _rows(table)] == [["damc", "damc"], ["damc", "lebm"], ["damc", "recon"], ["", ""],
                                                ["Ours-DAMC < Ours-LEBM", "KID"]]
    first = json.loads((out / "summary.json").read_text())
    assert first["methods"] == ["damc"] and first["configs"]["damc"]["path"] == "configs/quickstart.yaml"

    assert study.main([*args, "--methods", "damc,lebm"]) == 0  # a method added: only it is trained
    captured = capsys.readouterr()
    assert "seed 0, damc: measured earlier, kept" in captured.err and "training damc" not in captured.err
    assert "training lebm, seed 0" in captured.err
    table = captured.out
    for (method, kind), (label, paper) in study.LABELS.items():
        assert (f"| {method} | {kind} | {label} (n " in table) == (method in ("damc", "lebm"))
        assert not paper or paper in table
    names = [r[0] for r in _rows(table) if r[1] in ("KID", "FID", "MSE")]
    # only the comparisons whose two rows exist (both methods measured)
    assert names == [c[0] for c in study.COMPARISONS if {c[2][0], c[3][0]} <= {"damc", "lebm"}]
    assert "CoopVAEBM" not in table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["iterations"] == 2 and summary["overrides"] == SMALL
    assert summary["methods"] == ["damc", "lebm"]
    assert summary["configs"]["lebm"]["overrides"] == ["method=lebm"]
    damc, lebm = summary["per_seed"]["0"]["damc"], summary["per_seed"]["0"]["lebm"]
    assert damc == first["per_seed"]["0"]["damc"]  # kept, not measured again
    assert list(damc) == ["iteration", "damc_prior", "lebm_prior", "recon"] and list(lebm) == ["iteration",
                                                                                                 "lebm_prior", "recon"]
    assert damc["iteration"] == lebm["iteration"] == 2
    assert damc["damc_prior"]["n"] == 32 and damc["recon"]["n"] == 300 and 0 < damc["recon"]["mse"] < 4
    assert (runs / "damc-seed0" / "config.yaml").is_file() and (runs / "lebm-seed0" / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "grids").glob("seed0_*.png")) == [
        "seed0_damc_run_damc_prior.png", "seed0_damc_run_lebm_prior.png", "seed0_damc_run_recon.png",
        "seed0_lebm_run_lebm_prior.png", "seed0_lebm_run_recon.png"]

    summary["configs"]["lebm"]["sha256"] = "0" * 64  # as if lebm's config had changed since it was measured
    (out / "summary.json").write_text(json.dumps(summary))
    assert study.main([*args, "--methods", "lebm,damc"]) == 0
    err = capsys.readouterr().err
    assert "measuring lebm again" in err and "seed 0, damc: measured earlier, kept" in err
    assert "lebm-seed0: finished earlier, reused" in err  # its run directory is reused, only measured again
    assert json.loads((out / "summary.json").read_text())["per_seed"]["0"]["lebm"] == lebm  # the same draws

    for bad in (["--iterations", "0"], ["--samples", "5"], ["--seeds", "x"], ["train.batch_size=-1"],
                ["--config", str(Path(study.REPO) / "configs" / "mnist_anomaly.yaml")], ["method=lebm"],
                ["--methods", ","]):
        assert study.main([*args, *bad]) == 2
    assert "error: " in capsys.readouterr().err
    assert study.main([*args, "--methods", "damc,nope"]) == 2
    err = capsys.readouterr().err
    engine_has = ", ".join(study.learners.METHODS)
    assert err == f"error: --methods 'damc,nope': unknown method 'nope'; the engine has {engine_has}\n"
    assert study.parse_methods(None) == list(study.learners.METHODS)  # the default: every registered learner


def test_the_measured_seeds_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The committed summary (every learner's seeds, measured for minutes) is reused as it is: nothing trained, the
    table's numbers those of the committed table."""
    out = _out_with_classifier(tmp_path)
    shutil.copy(RESULTS / "summary.json", out / "summary.json")
    committed = json.loads((RESULTS / "summary.json").read_text())

    def no_training(*_: object) -> None:
        pytest.fail("a measured seed was trained again")

    monkeypatch.setattr(study, "_train_or_reuse", no_training)
    seeds = committed["seeds"]
    methods = ",".join(committed.get("methods", ["damc", "lebm"]))  # every method the committed table measured
    assert study.main(["digits", "--out", str(out), "--runs", str(tmp_path / "runs"), "--methods", methods,
                       "--seeds", ",".join(map(str, seeds)), "--iterations", str(committed["iterations"]),
                       "--samples", str(committed["n_samples"]), *committed["overrides"]]) == 0
    table = capsys.readouterr().out
    rows = _rows(table)
    for old in _rows((RESULTS / "table.md").read_text()):  # every row of the committed table, same numbers
        assert any(new[-len(old):] == old for new in rows), old
    assert (out / "summary.json").read_bytes() == (RESULTS / "summary.json").read_bytes()  # nothing new measured


def _metrics(kid: float, n: int = 32, mse: float | None = None) -> dict[str, object]:
    m: dict[str, object] = {"kid": kid, "fid": 10 * kid, "n": n, "class_counts": [n // 10] * 10, "class_entropy": 2.3}
    if mse is not None:
        m["mse"] = mse
    return m


def test_the_table_has_the_rows_and_comparisons_that_exist(tmp_path: Path) -> None:
    """Rows only for measured (method, kind), comparisons only between rows that exist, a method measured on
    fewer seeds reported for those (synthetic numbers: no training)."""
    recon = _metrics(0.01, 300, 0.02)
    damc = {"iteration": 2, "damc_prior": _metrics(0.2), "lebm_prior": _metrics(0.3), "recon": recon}
    per_seed = {"0": {"damc": damc,
                      "lebm": {"iteration": 2, "lebm_prior": _metrics(0.4), "recon": recon},
                      "coopvae": {"iteration": 2, "ebm_prior": _metrics(0.1), "vae_prior": _metrics(0.5),
                                  "recon": recon},
                      "newer": {"iteration": 2, "x_prior": _metrics(0.6), "recon": recon}},
                "1": {"lebm": {"iteration": 2, "lebm_prior": _metrics(0.45), "recon": recon}}}
    summary = {"iterations": 2, "seeds": [0, 1], "overrides": [], "per_seed": per_seed, "floor": _metrics(0.0, 300),
               "classifier": {"test_accuracy": 0.99, "sha256": "ab" * 32},
               "describe": {"newer": {"x": "N(0, I) + 3 Langevin steps"}}}
    rows = _rows(study.write_table(summary, tmp_path))
    cells = {(r[0], r[1]): r for r in rows if r[1] not in ("KID", "FID", "MSE")}
    assert list(cells) == [("damc", "damc"), ("damc", "lebm"), ("lebm", "lebm"), ("coopvae", "ebm"),
                           ("coopvae", "vae"), ("newer", "x"), ("damc", "recon"), ("lebm", "recon"),
                           ("coopvae", "recon"), ("newer", "recon"), ("", "")]
    assert cells["damc", "damc"][2] == "DAMC prior samples (DAMC run) (n 32; seeds [0] only)"
    assert cells["lebm", "lebm"][2] == "LEBM prior samples, EBM trained with short-run LD (n 32)"  # both seeds
    assert cells["lebm", "lebm"][-1] == "0.4, 0.45"
    assert cells["newer", "x"][2] == "x samples (newer run): N(0, I) + 3 Langevin steps (n 32; seeds [0] only)"
    comparisons = {(r[0], r[1]): r for r in rows if r[1] in ("KID", "FID", "MSE")}
    assert list(comparisons) == [(c[0], c[1].upper()) for c in study.COMPARISONS
                                 if {c[2][0], c[3][0]} <= {"damc", "lebm", "coopvae"}]
    assert comparisons["Ours-LEBM < LEBM", "KID"][2:] == ["-0.1 ± 0", "1 of 1 (seeds [0] only)"]
    assert comparisons["CoopVAEBM EBM samples vs DAMC prior samples", "KID"][2].startswith("-0.1 ±")
    assert comparisons["CoopVAEBM EBM samples (x̃) < VAE samples (x̂)", "FID"][2:] == ["-4 ± 0",
                                                                                     "1 of 1 (seeds [0] only)"]
    only = _rows(study.write_table(summary, tmp_path, seeds=[0, 1], methods=["lebm", "coopvae"]))
    assert [r[0] for r in only if r[1] in ("KID", "FID", "MSE")] == [
        "CoopVAEBM EBM samples (x̃) < VAE samples (x̂)"] * 2  # no DAMC row: none of its comparisons
    assert "All learners" in (tmp_path / "table.md").read_text()


def test_each_method_from_its_config(tmp_path: Path) -> None:
    """configs/<method>_quickstart.yaml when it exists, else the base config with method=<method>; checked."""
    base = Path(study.QUICKSTART)
    (tmp_path / "lebm_quickstart.yaml").write_text(base.read_text().replace("method: damc", "method: lebm"))
    assert study.config_for("lebm", base, tmp_path) == (tmp_path / "lebm_quickstart.yaml", [])
    assert study.config_for("damc", base, tmp_path) == (base, ["method=damc"])
    study.check_configs(["damc", "lebm"], base, SMALL, tmp_path)
    (tmp_path / "damc_quickstart.yaml").write_text(base.read_text().replace("method: damc", "method: lebm"))
    with pytest.raises(ValueError, match="trains method lebm, not damc"):
        study.check_configs(["damc"], base, [], tmp_path)
