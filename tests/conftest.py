"""Root test configuration.

Without a GPU, Triton kernels can only run through Triton's CPU interpreter, and ``TRITON_INTERPRET=1`` must be
in the environment before ``triton`` is first imported anywhere in the session; the root conftest is the one
file pytest always imports first, so the kernel tests never depend on collection order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Single-threaded torch for the test, restored after it. Small tensors on a loaded 2-core runner: OpenMP
    threads spin-waiting cost 10-100× more than they save (measured: 76 s → 6 s for tests/runtime/test_sampler.py).
    tests/runtime and tests/kernels use it for every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def stub_inception(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """``install(dim=16, check_range=False)``: a cheap stand-in for Inception in :mod:`engine.eval.fid` (ReLU of a
    fixed random projection of the pixels to ``dim`` features; ``check_range`` asserts images in [0, 1]), with the
    real-statistics cache under tmp_path, so the FID path runs end to end without the weights."""
    from engine.eval import fid

    def install(dim: int = 16, check_range: bool = False) -> None:
        proj = torch.randn(64, dim, generator=torch.Generator().manual_seed(0))

        class Stub:
            sha256, device = "stub", torch.device("cpu")

            def __init__(self, *args: object, **kwargs: object) -> None:
                pass

            def __call__(self, images: torch.Tensor) -> torch.Tensor:
                if check_range:
                    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
                return torch.relu(images.flatten(1) @ proj)

        monkeypatch.setattr(fid, "inception_path", lambda: tmp_path / "default_1.pt")
        monkeypatch.setattr(fid, "InceptionFeatures", Stub)
        monkeypatch.setenv("DAMC_CACHE", str(tmp_path / "cache"))

    return install


@pytest.fixture
def small_eval(stub_inception: Callable[..., None], tmp_path: Path) -> Callable[[Path], dict[str, Any]]:
    """``evaluate(run)``: ``engine.eval RUN --metrics fid,mse,chains`` at toy sizes (20 FID samples, 2 chains of 4
    steps, 3 snapshots) with the stub Inception; returns the report's metrics."""
    from engine.eval import cli as ev

    stub_inception()

    def evaluate(run: Path) -> dict[str, Any]:
        out_json = tmp_path / "eval.json"
        assert ev.main([str(run), "--metrics", "fid,mse,chains", "--fid-samples", "20", "--batch", "10",
                        "--chain-steps", "4", "--chains", "2", "--snapshots", "3", "--out", str(out_json),
                        "--quiet"]) == 0
        metrics: dict[str, Any] = json.loads(out_json.read_text())["metrics"]
        return metrics

    return evaluate
