"""``python -m engine.export``: one artifact directory per call, and every bad request is one line naming the fix,
exit code 2, before any work, with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.export import build
from engine.export.artifact import SIDECAR, ExportError, atomic_directory
from engine.export.cli import main

REPO = Path(__file__).resolve().parents[2]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_export_writes_one_directory_with_graphs_and_sidecar(damc_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "prior"
    assert main([str(damc_run), "--format", "pt2", "--batch", "2", "--whole", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == [SIDECAR, "sampler.pt2"]
    side = json.loads((out / SIDECAR).read_text())
    assert side["structure"] == "whole" and side["batch"] == 2 and side["run"]["checkpoint"] == "ckpt-0000003.pt"
    assert side["run"]["iteration"] == 3 and side["files"]["sampler.pt2"] > 0 and side["export_seconds"] > 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left
    # An existing artifact is kept unless --force; --force replaces it with a complete new one.
    assert main([str(damc_run), "--format", "pt2", "--batch", "2", "--out", str(out)]) == 2
    assert "already exists" in _err(capsys) and (out / "sampler.pt2").exists()
    assert main([str(damc_run), "--format", "pt2", "--batch", "3", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([SIDECAR, "null_embedding.pt2", "step.pt2", "generator.pt2"])
    assert json.loads((out / SIDECAR).read_text())["batch"] == 3


def _rc(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


BASE = ["{run}", "--format", "pt2", "--batch", "2", "--out", "{out}"]
# case: (argv, setup, the message's distinctive part)
BAD: dict[str, tuple[list[str], str, str]] = {
    "unknown format": ([*BASE, "--format", "tflite"], "", "--format 'tflite': choose one of onnx, pt2, aoti, tensorrt"),
    "batch 0": ([*BASE, "--batch", "0"], "", "--batch 0: must be between 1 and 65536"),
    "batch negative": ([*BASE, "--batch", "-3"], "", "--batch -3: must be between 1 and"),
    "batch absurd": ([*BASE, "--batch", "10000000"], "", "--batch 10000000: must be between 1 and"),
    "batch not a number": ([*BASE, "--batch", "lots"], "", "argument --batch: invalid int value: 'lots'"),
    "precision": ([*BASE, "--precision", "int8"], "", "--precision 'int8': choose one of fp32, bf16, fp16"),
    "both structures": ([*BASE, "--whole", "--per-step"], "", "not allowed with argument"),
    "no such run": (["{tmp}/nope", *BASE[1:]], "", "no such run directory"),
    "missing checkpoint": ([*BASE, "--checkpoint", "{tmp}/nope.pt"], "", "--checkpoint {tmp}/nope.pt: no such file"),
    "corrupt checkpoint": ([*BASE, "--checkpoint", "{tmp}/ckpt-0000009.pt"], "corrupt",
                           "checkpoint {tmp}/ckpt-0000009.pt: "),
    "lebm run": (["{lebm}", *BASE[1:]], "", "is an LEBM run: only the prior sampler of a DAMC run can be exported"),
    "out is a file": (BASE, "out-file", "exists and is not a directory"),
    "force on a foreign directory": ([*BASE, "--force"], "out-dir", "--force replaces only an earlier export"),
    "cuda without a GPU": ([*BASE, "--device", "cuda"], "", "no CUDA device is visible"),
    "tensorrt on cpu": ([*BASE, "--format", "tensorrt", "--device", "cpu"], "",
                        "builds TensorRT engines on a CUDA GPU"),
    "onnx without its packages": ([*BASE, "--format", "onnx"], "hide-onnxscript", "needs onnxscript: pip install"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_one_line_and_write_nothing(case: str, damc_run: Path, lebm_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    template, setup, message = BAD[case]
    out = tmp_path / "art"
    if setup == "corrupt":
        (tmp_path / "ckpt-0000009.pt").write_bytes((damc_run / "ckpt-0000003.pt").read_bytes()[:100])
    elif setup == "out-file":
        out.write_text("x")
    elif setup == "out-dir":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif setup == "hide-onnxscript":
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "onnxscript" else real(name, *a))
    fill = {"run": str(damc_run), "lebm": str(lebm_run), "out": str(out), "tmp": str(tmp_path)}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _rc([a.format(**fill) for a in template]) == 2
    err = _err(capsys)
    assert err.startswith("error: ") and message.format(**fill) in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, no temporary directory
    if setup == "out-file":
        assert out.read_text() == "x"
    if setup == "out-dir":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failed_export_leaves_no_artifact_and_keeps_the_old_one(damc_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    assert main([str(damc_run), "--format", "pt2", "--batch", "2", "--out", str(out)]) == 0
    old = (out / SIDECAR).read_text()

    def full_disk(*a: object, **k: object) -> None:
        raise ExportError("could not write step.pt2 (disk full)")

    monkeypatch.setattr(build, "write_sidecar", full_disk)
    assert main([str(damc_run), "--format", "pt2", "--batch", "2", "--out", str(out), "--force"]) == 2
    assert "disk full" in _err(capsys)
    assert (out / SIDECAR).read_text() == old  # the earlier artifact is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary directory left


def test_ctrl_c_during_an_export_leaves_nothing(damc_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "write_sidecar", interrupt)
    assert main([str(damc_run), "--format", "pt2", "--batch", "2", "--out", str(tmp_path / "a")]) == 130
    assert "interrupted; nothing was written" in _err(capsys)
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_removes_its_temporary_directory_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "x") as tmp:
        (tmp / "half").write_text("written")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_reports_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine.export", str(tmp_path), "--format", "pt2", "--batch", "0",
                           "--out", str(tmp_path / "a")], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --batch 0: must be between 1 and 65536"
