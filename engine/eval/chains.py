"""Long-run prior Langevin chains from N(0, I) (paper Fig. 4): image strips and energy traces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.eval.plots import line_plot_png
from engine.learner import Learner
from engine.models import IMAGE_SHAPES
from engine.run.images import save_grid
from engine.sampling.draws import prior_chain

__all__ = ["long_run_chains"]


def long_run_chains(learner: Learner, out_dir: Path, *, steps: Sequence[int] = (200, 2500), n_chains: int = 8,
                    n_snapshots: int = 10, step_size: float = 0.4, rng: torch.Generator,
                    tag: str = "") -> dict[str, Any]:
    """Prior Langevin from N(0, I) (noise on), paper Fig. 4: image strips and the energy trace per length.

    Writes ``chains_<T>steps<tag>.png`` (row = chain, columns = evenly spaced points from step 0 to T) and
    ``energy_<T>steps<tag>.png`` (mean over chains of E(z) + ½‖z‖² at every step). Returns the file names,
    the snapshot steps and the traces.
    """
    nets, nz = learner.nets, learner.cfg.model.nz
    height = IMAGE_SHAPES[learner.cfg.model.arch][1]
    style = {"scale": max(1, 32 // height), "pad_value": 128}
    out: dict[str, Any] = {"files": [], "snapshot_steps": {}, "energy_trace": {}, "final_energy": {}}

    def energy(z: Tensor) -> Tensor:
        with torch.no_grad():
            return (nets.energy(z) + 0.5 * z.pow(2).sum(dim=1)).mean()

    for total in steps:
        marks = sorted({round(total * j / max(n_snapshots - 1, 1)) for j in range(n_snapshots)})
        z = torch.randn(n_chains, nz, generator=rng, device=learner.device)
        trace = [energy(z)]  # device scalars: read once at the end, not per step
        frames = []
        with torch.no_grad():
            if 0 in marks:
                frames.append(nets.generator(z))
        for t in range(1, total + 1):
            # One step of the engine's prior chain; its draw order equals one call with total steps.
            z = prior_chain(nets, z, 1, step_size, True, rng)
            trace.append(energy(z))
            if t in marks:
                with torch.no_grad():
                    frames.append(nets.generator(z))
        grid = torch.stack(frames, dim=1).flatten(0, 1)  # chain-major: row i = chain i along the chain
        strip = save_grid(grid, out_dir / f"chains_{total}steps{tag}.png", nrow=len(frames), **style)
        values = torch.stack(trace).tolist()
        plot = line_plot_png(values, out_dir / f"energy_{total}steps{tag}.png",
                             f"mean E(z) + |z|^2/2 over {n_chains} chains, Langevin s={step_size:g}",
                             xlabel="Langevin step", ylabel="energy")
        out["files"] += [str(strip), str(plot)]
        out["snapshot_steps"][str(total)] = marks
        out["energy_trace"][str(total)] = [round(v, 6) for v in values]
        out["final_energy"][str(total)] = values[-1]
    return out
