"""``--format tensorrt``: needs torch-tensorrt (NVIDIA's index) and a CUDA GPU; neither exists on this project's
machines, so the export test skips with that reason and only the one-line refusals are checked here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from engine.export.artifact import ExportError
from engine.export.to_tensorrt import require

HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None


def test_tensorrt_on_cpu_is_refused_with_the_onnx_route() -> None:
    with pytest.raises(ExportError, match="CUDA GPU.*--format onnx.*trtexec"):
        require(torch.device("cpu"))


@pytest.mark.skipif(HAS_TRT, reason="torch_tensorrt is installed here")
def test_a_missing_torch_tensorrt_names_the_install_and_the_onnx_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ExportError, match="needs torch-tensorrt built for torch .*trtexec") as info:
        require(torch.device("cuda"))
    assert "\n" not in str(info.value)


if not HAS_TRT:
    SKIP = ("torch_tensorrt is not installed: TensorRT wheels come only from NVIDIA's index (unreachable here); the "
            "ONNX artifact is the TensorRT route (trtexec --onnx=...)")
elif not torch.cuda.is_available():
    SKIP = "TensorRT needs a CUDA GPU"
else:
    SKIP = ""


@pytest.mark.gpu
@pytest.mark.skipif(bool(SKIP), reason=SKIP)
@pytest.mark.parametrize("structure", ["per-step", "whole"])
def test_tensorrt_engine_matches_the_engine(damc_run: Path, tmp_path: Path, structure: str) -> None:
    from engine.export.build import ExportSpec, export_sampler, reference_images
    from engine.export.runner import load_artifact
    from engine.run import checkpoint
    from engine.sampling.noise import NoiseStream, prior_noise

    cuda = torch.device("cuda")
    learner = checkpoint.load_run(damc_run, cuda)
    export_sampler(learner, ExportSpec("tensorrt", structure, 4, "fp32", cuda), tmp_path / "trt", run_info={})
    sampler = load_artifact(tmp_path / "trt", cuda)
    noise = prior_noise(NoiseStream(41, 8, 4), 4)
    # TensorRT picks its own kernels (TF32 may be on): a looser bound than onnxruntime's.
    assert (sampler.images(noise) - reference_images(learner, noise.to(cuda))).abs().max() <= 1e-2
