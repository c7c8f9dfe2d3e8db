"""``--format aoti``: an AOTInductor package compiled on this CPU (g++) matches the engine.

Inductor reorders and fuses float arithmetic, so the package is close, not bit-equal (measured 1e-7 at 3 steps).
One whole-graph compile (about 10-30 s on 2 cores, cached by Inductor afterwards) keeps the test short; the
per-step structure runs through the same save/load code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from export_support import export

from engine.export.artifact import read_sidecar
from engine.export.build import reference_images
from engine.export.runner import load_artifact
from engine.run import checkpoint
from engine.sampling.noise import NoiseStream, prior_noise

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                reason="AOTInductor on CPU compiles C++: no compiler on this machine")


@pytest.mark.slow
def test_aoti_package_matches_the_engine_for_two_noise_draws(damc_run: Path, tmp_path: Path) -> None:
    out = export(damc_run, "aoti", "whole", tmp_path / "aoti")
    _, sidecar = read_sidecar(out)
    assert sidecar.graphs["sampler"].file == "sampler.aoti.pt2" and sidecar.device == "cpu"
    learner = checkpoint.load_run(damc_run, CPU)
    sampler = load_artifact(out, CPU)
    outs = []
    for seed in (31, 32):
        noise = prior_noise(NoiseStream(seed, 8, 4), 4)
        got = sampler.images(noise)
        assert (got - reference_images(learner, noise)).abs().max() <= 1e-5
        outs.append(got)
    assert not torch.equal(outs[0], outs[1])
