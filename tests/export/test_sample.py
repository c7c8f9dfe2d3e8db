"""``python -m engine.sample``: deterministic per (seed, image index), the three output formats, LEBM and DAMC as
the engine computes them, ``--from-export`` agreeing with the engine, and one-line refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_support import export
from PIL import Image

from engine.export import sample as sample_module
from engine.export.build import reference_images
from engine.export.graphs import decode
from engine.export.sample import main
from engine.run import checkpoint
from engine.run.images import to_uint8
from engine.sampling.langevin import energy_grad, langevin_chain, prior_energy
from engine.sampling.noise import NoiseStream, langevin_noise, prior_noise

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _rc(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _npz(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return np.asarray(f["images"])


def test_damc_npz_is_the_engines_reference_draw_and_batch_independent(damc_run: Path, tmp_path: Path) -> None:
    assert main([str(damc_run), "--n", "7", "--out", str(tmp_path / "a"), "--format", "npz", "--quiet"]) == 0
    assert main([str(damc_run), "--n", "5", "--batch", "2", "--out", str(tmp_path / "b"), "--format", "npz",
                 "--quiet"]) == 0
    a, b = _npz(tmp_path / "a" / "damc_s0.npz"), _npz(tmp_path / "b" / "damc_s0.npz")
    assert a.shape == (7, 8, 8, 1) and a.dtype == np.uint8
    assert np.array_equal(a[:5], b)  # image i depends on (seed, i) only: not on --batch or --n
    learner = checkpoint.load_run(damc_run, CPU)
    noise = prior_noise(NoiseStream(0, 8, learner.table.n_steps + 1), 7)
    want = to_uint8(reference_images(learner, noise)).transpose(0, 2, 3, 1)
    assert np.array_equal(a, want)
    manifest = json.loads((tmp_path / "a" / "damc_s0.json").read_text())
    assert manifest["n"] == 7 and manifest["seed"] == 0 and manifest["path"] == "reference (eager fp32)"
    assert manifest["iteration"] == 3 and manifest["files"] == ["damc_s0.npz"]
    assert main([str(damc_run), "--n", "7", "--seed", "1", "--out", str(tmp_path / "a"), "--format", "npz",
                 "--quiet"]) == 0
    assert not np.array_equal(_npz(tmp_path / "a" / "damc_s1.npz"), a)


def test_png_files_and_grid(damc_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    assert main([str(damc_run), "--n", "3", "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["damc_s0.json", "damc_s0_000000.png", "damc_s0_000001.png", "damc_s0_000002.png"]
    assert main([str(damc_run), "--n", "3", "--out", str(out), "--format", "npz", "--quiet"]) == 0
    first = _npz(out / "damc_s0.npz")[1]
    with Image.open(out / "damc_s0_000001.png") as im:
        assert im.mode == "L" and im.size == (8, 8)
        assert np.array_equal(np.asarray(im), first[:, :, 0])
    assert main([str(damc_run), "--n", "5", "--out", str(out), "--format", "grid"]) == 0  # with the progress bar
    with Image.open(out / "damc_s0_grid.png") as im:  # 3 columns x 2 rows of 32x32 cells (8x8 drawn 4x)
        assert im.size == (3 * 34 + 2, 2 * 34 + 2)
    assert not list(out.glob(".*"))  # no temporary files


def test_lebm_is_langevin_from_the_same_stream(lebm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "l"
    assert main([str(lebm_run), "--n", "4", "--out", str(out), "--format", "npz", "--lebm-steps", "5",
                 "--lebm-step-size", "0.3", "--quiet"]) == 0
    learner = checkpoint.load_run(lebm_run, CPU)
    z0, eps = langevin_noise(NoiseStream(0, 8, 6), 4)
    z = langevin_chain(z0, lambda zz: energy_grad(prior_energy(learner.nets.energy), zz), 5, 0.3, noise=eps)
    with torch.no_grad():
        want = to_uint8(decode(learner.nets.generator, z)).transpose(0, 2, 3, 1)
    assert np.array_equal(_npz(out / "lebm_s0.npz"), want)
    manifest = json.loads((out / "lebm_s0.json").read_text())
    assert manifest["method"] == "lebm" and manifest["lebm_steps"] == 5  # the default method of an LEBM run


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_from_export_agrees_with_the_engine(damc_run: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    art = export(damc_run, fmt, "per-step", tmp_path / "art", batch=4)
    assert main([str(damc_run), "--n", "6", "--out", str(tmp_path / "o"), "--format", "npz", "--quiet"]) == 0
    assert main([str(damc_run), "--n", "6", "--out", str(tmp_path / "o"), "--format", "npz", "--from-export",
                 str(art), "--quiet"]) == 0
    engine_images = _npz(tmp_path / "o" / "damc_s0.npz").astype(int)
    exported = _npz(tmp_path / "o" / f"export-{fmt}_s0.npz").astype(int)
    # Same noise: pt2 is bit-equal; onnxruntime differs by < 1e-5 in [-1, 1], at most one uint8 step.
    assert np.abs(engine_images - exported).max() <= (0 if fmt == "pt2" else 1)
    manifest = json.loads((tmp_path / "o" / f"export-{fmt}_s0.json").read_text())
    assert manifest["batch"] == 4 and manifest["path"].startswith(f"export: {fmt} per-step")


BASE = ["{run}", "--n", "4", "--out", "{out}", "--quiet"]
BAD: dict[str, tuple[list[str], str, str]] = {
    "n 0": ([*BASE, "--n", "0"], "", "--n 0: must be between 1 and 10,000,000"),
    "n negative": ([*BASE, "--n", "-5"], "", "--n -5: must be between 1"),
    "n absurd": ([*BASE, "--n", "99999999999"], "", "--n 99999999999: must be between 1 and 10,000,000"),
    "batch 0": ([*BASE, "--batch", "0"], "", "--batch 0: must be between 1 and 65536"),
    "unknown format": ([*BASE, "--format", "jpeg"], "", "--format 'jpeg': choose one of png, npz, grid"),
    "unknown method": ([*BASE, "--method", "gan"], "", "--method 'gan': choose one of damc, lebm"),
    "damc on an lebm run": (["{lebm}", *BASE[1:], "--method", "damc"], "", "is an LEBM run, which draws lebm; use "
                            "--method lebm"),
    "seed negative": ([*BASE, "--seed", "-1"], "", "--seed -1: must be between 0 and 2**63 - 1"),
    "grid too big": ([*BASE, "--n", "5000", "--format", "grid"], "", "one grid holds at most 1024 images"),
    "npz too big": ([*BASE, "--n", "900", "--format", "npz"], "small-npz", "too much for one .npz in memory; use "
                    "--format png"),
    "disk too small": ([*BASE, "--n", "900"], "full-disk", "MiB needed; free space or choose another place"),
    "lebm step size": (["{lebm}", *BASE[1:], "--lebm-step-size", "nan"], "", "--lebm-step-size nan: must be a finite"),
    "no such run": (["{tmp}/nope", *BASE[1:]], "", "no such run directory"),
    "missing checkpoint": ([*BASE, "--checkpoint", "{tmp}/x.pt"], "", "--checkpoint {tmp}/x.pt: no such file"),
    "corrupt checkpoint": ([*BASE, "--checkpoint", "{tmp}/ckpt-0000009.pt"], "corrupt",
                           "checkpoint {tmp}/ckpt-0000009.pt: "),
    "out is a file": (BASE, "out-file", "exists and is not a directory"),
    "export missing": ([*BASE, "--from-export", "{tmp}/none"], "", "--from-export {tmp}/none: no such file"),
    "export without sidecar": ([*BASE, "--from-export", "{tmp}"], "", "no sampler.json there"),
    "export sidecar corrupt": ([*BASE, "--from-export", "{tmp}/art"], "bad-sidecar", "unreadable sampler.json"),
    "export of a DRL sampler": ([*BASE, "--from-export", "{tmp}/art"], "own-sidecar",
                                "holds a DRL run's sampler, not a DAMC prior sampler; pass the run it was exported"),
    "export on an lebm run": (["{lebm}", *BASE[1:], "--from-export", "{tmp}/art"], "sidecar",
                              "is an LEBM run (no exportable sampler); pass the run the artifact was exported from"),
    "export and lebm": ([*BASE, "--from-export", "{tmp}/art", "--method", "lebm"], "sidecar",
                        "drop --method lebm"),
    "cuda without a GPU": ([*BASE, "--device", "cuda"], "", "no CUDA device is visible"),
    "perf": ([*BASE, "--perf", "turbo"], "", "--perf 'turbo': choose fast or reference"),
    "n not a number": ([*BASE, "--n", "many"], "", "argument --n: invalid int value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_one_line_and_write_nothing(case: str, damc_run: Path, lebm_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    template, setup, message = BAD[case]
    out = tmp_path / "out"
    if setup == "corrupt":
        (tmp_path / "ckpt-0000009.pt").write_bytes(b"not a checkpoint")
    elif setup == "out-file":
        out.write_text("x")
    elif setup == "small-npz":
        monkeypatch.setattr(sample_module, "MAX_NPZ_BYTES", 900 * 64 - 1)  # 900 8x8 images: one byte too many
    elif setup == "full-disk":
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    elif setup in ("sidecar", "bad-sidecar", "own-sidecar"):
        (tmp_path / "art").mkdir()
        text = {"sidecar": "{}", "bad-sidecar": "{", "own-sidecar": '{"sampler": "drl", "sidecar_version": 1}'}
        (tmp_path / "art" / "sampler.json").write_text(text[setup])
    fill = {"run": str(damc_run), "lebm": str(lebm_run), "out": str(out), "tmp": str(tmp_path)}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _rc([a.format(**fill) for a in template]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.format(**fill) in err and "\n" not in err and "Traceback" not in err
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before or (after == sorted([*before, "out"]) and not list(out.iterdir()))


def test_an_export_of_another_checkpoint_is_refused(damc_run: Path, damc_run_100: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    art = export(damc_run_100, "pt2", "per-step", tmp_path / "art", batch=2)
    capsys.readouterr()
    assert _rc([str(damc_run), "--n", "2", "--out", str(tmp_path / "o"), "--from-export", str(art), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "was exported from" in err and "pass that --checkpoint or export this one" in err and "\n" not in err
    assert _rc([str(damc_run_100), "--n", "3", "--batch", "5", "--out", str(tmp_path / "o"), "--from-export",
                str(art), "--quiet"]) == 2
    assert "the artifact's static batch is 2" in capsys.readouterr().err


def test_ctrl_c_keeps_the_complete_files_and_says_so(damc_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    real, calls = sample_module._batch, []

    def interrupted_second_batch(*a: object, **k: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(sample_module, "_batch", interrupted_second_batch)
    out = tmp_path / "o"
    assert main([str(damc_run), "--n", "6", "--batch", "2", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "error: interrupted after 2 of 6 images; the 2 PNG files written are complete"
    assert sorted(p.name for p in out.iterdir()) == ["damc_s0_000000.png", "damc_s0_000001.png"]
    calls.clear()
    assert main([str(damc_run), "--n", "6", "--batch", "2", "--out", str(out), "--format", "npz", "--quiet"]) == 130
    assert "nothing was written" in capsys.readouterr().err and not (out / "damc_s0.npz").exists()


def test_module_entry_point(damc_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine.sample", str(damc_run), "--n", "2", "--out",
                           str(tmp_path / "s"), "--format", "grid"], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s" / "damc_s0_grid.png").is_file() and "wrote 2 DAMC images" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_fast_path_matches_the_reference_within_bf16(damc_run: Path, tmp_path: Path) -> None:
    common = [str(damc_run), "--n", "10", "--batch", "4", "--format", "npz", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "f")]) == 0
    assert main([*common, "--out", str(tmp_path / "r"), "--perf", "reference"]) == 0
    fast, ref = _npz(tmp_path / "f" / "damc_s0.npz"), _npz(tmp_path / "r" / "damc_s0.npz")
    assert json.loads((tmp_path / "f" / "damc_s0.json").read_text())["path"].startswith("fast")
    # bf16 networks over 3 steps on [-1, 1] images: a few uint8 steps at most, same noise.
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 16
