"""Long-run chains of a learner's own sampler (DAMC / LEBM: prior Langevin from N(0, I), paper Fig. 4): image
strips and energy traces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.eval.plots import line_plot_png
from engine.learners import Learner
from engine.models import IMAGE_SHAPES
from engine.run.images import save_grid

__all__ = ["long_run_chains"]


def long_run_chains(learner: Learner, out_dir: Path, *, steps: Sequence[int] = (200, 2500), n_chains: int = 8,
                    n_snapshots: int = 10, step_size: float | None = None, rng: torch.Generator,
                    tag: str = "") -> dict[str, Any]:
    """The learner's long-run chain (:meth:`Learner.long_run`) per length: image strips and the energy trace.

    Writes ``chains_<T>steps<tag>.png`` (row = chain, columns = evenly spaced points from step 0 to T) and
    ``energy_<T>steps<tag>.png`` (the mean energy over chains at every step). Returns the file names, the
    snapshot steps and the traces. ``step_size`` None: the learner's default for its chain.
    """
    height = IMAGE_SHAPES[learner.cfg.model.arch][1]
    style = {"scale": max(1, 32 // height), "pad_value": 128}
    out: dict[str, Any] = {"files": [], "snapshot_steps": {}, "energy_trace": {}, "final_energy": {}}
    run = None
    for total in steps:
        marks = sorted({round(total * j / max(n_snapshots - 1, 1)) for j in range(n_snapshots)})
        run = learner.long_run(n_chains, total, marks, step_size, rng)
        grid = run.frames.flatten(0, 1)  # chain-major: row i = chain i along the chain
        strip = save_grid(grid, out_dir / f"chains_{total}steps{tag}.png", nrow=run.frames.shape[1], **style)
        values = run.energy.tolist()
        plot = line_plot_png(values, out_dir / f"energy_{total}steps{tag}.png", run.describe,
                             xlabel="Langevin step", ylabel="energy")
        out["files"] += [str(strip), str(plot)]
        out["snapshot_steps"][str(total)] = marks
        out["energy_trace"][str(total)] = [round(v, 6) for v in values]
        out["final_energy"][str(total)] = values[-1]
    if run is not None:
        out["step_size"], out["describe"] = run.step_size, run.describe
    return out
