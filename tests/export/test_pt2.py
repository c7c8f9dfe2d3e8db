"""``--format pt2``: the saved ExportedProgram equals the engine exactly for the same noise, per-step and whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_support import export

from engine.export.artifact import SIDECAR, read_sidecar
from engine.export.build import reference_images
from engine.export.runner import load_artifact
from engine.run import checkpoint
from engine.sampling.noise import NoiseStream, prior_noise

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def artifacts(damc_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pt2")
    return {s: export(damc_run, "pt2", s, root / s) for s in ("per-step", "whole")}


@pytest.mark.parametrize("structure", ["per-step", "whole"])
def test_pt2_equals_the_engine_exactly_for_two_noise_draws(damc_run: Path, artifacts: dict[str, Path],
                                                           structure: str) -> None:
    learner = checkpoint.load_run(damc_run, CPU)
    sampler = load_artifact(artifacts[structure], CPU)
    outs = []
    for seed in (11, 12):  # noise really is an input: two draws, two different outputs, both exact
        noise = prior_noise(NoiseStream(seed, 8, learner.table.n_steps + 1), 4)
        got = sampler.images(noise)
        assert torch.equal(got, reference_images(learner, noise)), seed
        outs.append(got)
    assert not torch.equal(outs[0], outs[1])


def test_per_step_and_whole_exports_agree_and_partial_batches_pad(artifacts: dict[str, Path]) -> None:
    noise = prior_noise(NoiseStream(3, 8, 4), 3)  # 3 rows into a batch-4 artifact: padded, then cut
    a = load_artifact(artifacts["per-step"], CPU).images(noise)
    b = load_artifact(artifacts["whole"], CPU).images(noise)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)


def test_the_sidecar_says_how_to_feed_the_artifact(artifacts: dict[str, Path], damc_run: Path) -> None:
    raw = json.loads((artifacts["per-step"] / SIDECAR).read_text())
    assert raw["format"] == "pt2" and raw["structure"] == "per-step" and raw["batch"] == 4
    assert raw["precision"] == "fp32" and raw["n_steps"] == 3 and raw["engine_version"]
    assert len(raw["run"]["config_hash"]) == 16 and len(raw["run"]["weights_sha256"]) == 16
    step = raw["graphs"]["step"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in step["inputs"]] == [
        ("k", [1], "int64"), ("z", [4, 8], "float32"), ("xemb", [4, 32], "float32"), ("eps", [4, 8], "float32")]
    assert raw["graphs"]["generator"]["outputs"][0]["shape"] == [4, 1, 8, 8]
    assert {"xi", "z_T", "eps", "stream"} <= set(raw["noise"]) and "for k in 0..T-1" in raw["driver"]
    assert raw["verification"]["max_abs_diff"] == 0.0
    assert set(raw["files"]) == {"null_embedding.pt2", "step.pt2", "generator.pt2"}
    whole = read_sidecar(artifacts["whole"])[1]
    assert [i.name for i in whole.graphs["sampler"].inputs] == ["xi", "z_T", "eps"]
    assert whole.graphs["sampler"].inputs[2].shape == [2, 4, 8]  # (T-1, B, nz)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_graph_driver_replays_the_eager_loop_exactly(damc_run: Path, tmp_path: Path) -> None:
    from engine.export.build import ExportSpec, export_sampler

    cuda = torch.device("cuda")
    learner = checkpoint.load_run(damc_run, cuda)
    export_sampler(learner, ExportSpec("pt2", "per-step", 4, "fp32", cuda), tmp_path / "a", run_info={})
    graphed, eager = load_artifact(tmp_path / "a", cuda), load_artifact(tmp_path / "a", cuda, cuda_graph=False)
    for seed in (1, 2):  # the second call replays the captured graph with new inputs
        noise = prior_noise(NoiseStream(seed, 8, 4), 4)
        assert torch.equal(graphed.images(noise), eager.images(noise))
    assert graphed.captured and graphed.note is None
