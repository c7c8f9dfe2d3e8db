"""Helpers shared by the export tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.run import checkpoint


def export(run: Path, fmt: str, structure: str, out: Path, *, batch: int = 4, precision: str = "fp32") -> Path:
    """Export through the library entry (the CLI is tested on its own); returns the artifact directory."""
    from engine.export.build import ExportSpec, export_sampler

    learner = checkpoint.load_run(run, torch.device("cpu"))
    export_sampler(learner, ExportSpec(fmt, structure, batch, precision, torch.device("cpu")), out,
                   run_info={"run_dir": str(run), "checkpoint": "latest", "iteration": learner.iteration})
    return out
