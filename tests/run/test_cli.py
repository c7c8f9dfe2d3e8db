"""``python -m engine.train``: the quickstart config runs through the CLI and leaves a usable run dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from engine.run.train import main

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
SMALL = ["model.ngf=8", "model.nif=8", "diffusion.n_steps=10", "eval.n_samples=16", "eval.lebm_steps=5"]


def test_quickstart_runs_a_few_iterations(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rc = main([QUICK, f"log.run_dir={run}", "train.iterations=4", "log.log_every=2", "log.sample_every=2",
               "log.progress=false", *SMALL])
    assert rc == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["iterations"] == 4 and saved["model"]["arch"] == "digits"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4]
    assert all({"loss_g", "loss_e", "loss_q", "it_per_s"} <= set(r) for r in lines)
    for kind in ("samples_damc", "samples_lebm", "recon"):
        for it in (2, 4):
            with Image.open(run / f"{kind}_{it:07d}.png") as im:
                assert im.size[0] > 32 and im.size[1] > 32
    ckpt = torch.load(run / "ckpt-0000004.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    assert {"generator", "energy", "amortizer", "amortizer_ema", "opt_g", "opt_e", "opt_q", "rng", "data"} <= set(ckpt)
    assert not list(run.glob(".*tmp"))
    # an existing finished run is never overwritten
    assert main([QUICK, f"log.run_dir={run}", "train.iterations=4", "log.progress=false", *SMALL]) == 2
    assert torch.load(run / "ckpt-0000004.pt", weights_only=True)["iteration"] == 4


def test_lebm_method_through_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "lebm"
    assert main([QUICK, "method=lebm", f"log.run_dir={run}", "train.iterations=2", "log.progress=false",
                 *SMALL]) == 0
    assert (run / "samples_lebm_0000002.png").exists() and not (run / "samples_damc_0000002.png").exists()


def test_module_entry_rejects_bad_override_before_any_work(tmp_path: Path) -> None:
    run = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run.train", QUICK, "langevin.prior.step_size=-1", f"log.run_dir={run}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: langevin.prior.step_size = -1.0: must be >= 1e-06 and <= 10.0"
    assert not run.exists()


def test_dry_run_prints_resolved_config(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--dry-run", "train.iterations=9"]) == 0  # default config = quickstart
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["iterations"] == 9 and printed["data"]["source"] == "digits"


def test_missing_data_is_one_clear_error_and_writes_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    missing = tmp_path / "no_such_dataset"
    for source in ("cifar10", "folder"):
        rc = main([str(REPO / "configs" / "cifar10.yaml"), f"data.source={source}", f"data.root={missing}",
                   "data.download=false", f"log.run_dir={run}"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"error: data ({source}") and str(missing) in err and "\n" not in err
        assert not run.exists()
