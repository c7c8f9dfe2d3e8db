"""What the run loop, evaluation, sampling, export and the benchmarks ask of a learner.

A *learner* is one method of the family (DAMC, its short-run LEBM baseline, CoopVAEBM, ...): its networks, its
optimizers and one training iteration, plus the draws evaluation and sampling need. Everything above this layer
(:mod:`engine.run`, :mod:`engine.eval`, :mod:`engine.export`, ``bench/``) talks to a learner only through
:class:`Learner` and the registry's :class:`Method` (:mod:`engine.learners`), never by method name, so a new
method is a new module, its config and one registry line.

Conventions every learner keeps:

* **Randomness passed in.** Training draws come from ``learner.rng`` (the run's device generator, saved in every
  checkpoint), evaluation draws from the generator the caller passes, so drawing grids never moves training.
* **No host syncs in the iteration.** :meth:`Learner.train_step` returns device tensors; the caller reads them at
  log intervals.
* **Checkpoint keys.** :meth:`Learner.networks` and :meth:`Learner.optimizers` name what a checkpoint holds (the
  names are the checkpoint's keys); :meth:`Method.state_keys` says the same from a config alone, so a checkpoint
  is checked before a learner is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.learners.memory import Estimate
from engine.runtime.perf import PerfPlan
from engine.runtime.updates import GradSync
from engine.sampling.noise import NoiseStream

__all__ = ["GraphSpec", "Grid", "Learner", "LongRun", "Method", "SampleKind", "SamplerGraphs", "article",
           "paired_rows"]


@dataclass(frozen=True)
class SampleKind:
    """One way a learner draws images from its model (an FID, ``engine.sample``, a grid).

    ``chain``: the draw ends in a Langevin chain of ``steps`` steps of size ``step_size`` (its defaults), with or
    without ``noise``; ``override``: the command-line flags of the LEBM prior sampler (``engine.eval
    --lebm-steps / --lebm-step-size``, the same in ``engine.sample``) set that chain; ``deterministic``: image i of
    a seeded stream depends on (seed, i) alone, not on the batch it is drawn in (batch statistics break that).
    """

    name: str
    describe: str
    chain: bool = False
    steps: int = 0
    step_size: float = 0.0
    noise: bool = True
    override: bool = False
    deterministic: bool = True

    def settings(self, steps: int | None = None, step_size: float | None = None) -> str:
        """How the images are drawn, with the chain's length and step size (the evaluation table's text)."""
        if not self.chain:
            return self.describe
        n = self.steps if steps is None else steps
        s = self.step_size if step_size is None else step_size
        return f"{self.describe} + {n} Langevin steps, s {s:g}, noise {'on' if self.noise else 'off'}"


@dataclass(frozen=True)
class Grid:
    """A PNG grid written during training: ``<name>_<iteration>.png``, ``nrow`` images per row (None: square)."""

    name: str
    images: Tensor  # (N, C, H, W) in [-1, 1]
    nrow: int | None = None


@dataclass(frozen=True)
class LongRun:
    """A long-run chain for ``engine.eval --metrics chains``: frames (n_chains, n_marks, C, H, W) at the marked
    steps, and the mean energy over chains after every step (steps + 1,) — device tensors."""

    frames: Tensor
    energy: Tensor
    describe: str  # what the chain samples and what the energy is (the plot's title)
    step_size: float  # the chain's step size


@dataclass(frozen=True)
class GraphSpec:
    """One graph of an exported sampler: the module, example inputs, their names and the output's name."""

    module: nn.Module
    example: tuple[Tensor, ...]
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class SamplerGraphs:
    """A method's sampler as graphs that export (every random number an input), with how to drive them.

    ``stream(seed)``: the ``engine.sample`` noise stream of ``seed``; ``drive(graphs, stream, rows)``: the next
    ``rows`` (≤ the export's static batch) images (rows, C, H, W) the graphs (name -> callable, e.g. an onnxruntime
    session) give on that stream's next ``rows`` draws, as ``engine.sample --from-export`` runs them;
    ``reference(stream, rows)``: the engine's own eager fp32 images on the same draws (what an artifact is verified
    against). ``driver`` and ``noise`` say the same in words for ``sampler.json``; ``info``: plain-JSON constants a
    driver needs (levels, step counts, scales).
    """

    graphs: dict[str, GraphSpec]
    stream: Callable[[int], NoiseStream]
    drive: Callable[[dict[str, Callable[..., Tensor]], NoiseStream, int], Tensor]
    reference: Callable[[NoiseStream, int], Tensor]
    driver: str
    noise: dict[str, str]
    info: dict[str, Any]
    weights: dict[str, Tensor]  # what the graphs carry (hashed into the sidecar)


class Learner(Protocol):
    """One method's training state and draws (see the module docstring for the conventions)."""

    @property
    def method(self) -> str:
        """The registry key (``cfg.method``)."""
        ...

    cfg: Config
    iteration: int  # completed iterations
    rng: torch.Generator  # the run's device RNG: every training draw
    grad_sync: GradSync | None  # several processes: averages gradients between backward and clip

    @property
    def device(self) -> torch.device: ...

    def networks(self) -> dict[str, nn.Module]:
        """Every network a checkpoint holds (trained ones and EMA copies), by checkpoint key."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer, by checkpoint key."""
        ...

    def set_plan(self, plan: PerfPlan) -> None:
        """Run the loops as ``plan`` says (the reference, or the fast path); called after a restore."""
        ...

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        """One training iteration on the batch x (B, C, H, W) in [−1, 1]; device diagnostics."""
        ...

    def learning_rates(self) -> dict[str, float]:
        """The metrics line's learning-rate fields (host floats, no device read)."""
        ...

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        """The image draws this method has, the first the default (``fid`` evaluates all of them)."""
        ...

    def sample(self, kind: str, n: int, rng: torch.Generator, *, steps: int | None = None,
               step_size: float | None = None) -> Tensor:
        """n images (n, C, H, W) in [−1, 1] of ``kind``; ``steps`` / ``step_size`` override a chain kind's."""
        ...

    def noise_width(self, kind: str, steps: int | None = None) -> int:
        """Rows of nz a seeded stream draws per image of ``kind`` (``engine.sample``)."""
        ...

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor:
        """The next b images of ``kind`` from a seeded noise stream of :meth:`noise_width` rows per image."""
        ...

    def reconstruct(self, x: Tensor, rng: torch.Generator, *, steps: int, step_size: float,
                    sigma: float) -> Tensor:
        """Reconstructions of x (B, C, H, W) (test MSE, grids); ``steps`` / ``step_size`` / ``sigma`` are the
        posterior chain's where the method has one."""
        ...

    def describe_reconstruct(self, steps: int, step_size: float, sigma: float) -> tuple[str, str]:
        """How :meth:`reconstruct` infers: (the inference's start, the whole procedure) for the evaluation table."""
        ...

    def grids(self, x_test: Tensor, rng: torch.Generator) -> list[Grid]:
        """The PNG grids written during training, every draw from ``rng``."""
        ...

    def long_run(self, n_chains: int, steps: int, marks: list[int], step_size: float | None,
                 rng: torch.Generator) -> LongRun:
        """A long-run chain of the method's own sampler (paper figures of chain stability)."""
        ...


@dataclass(frozen=True)
class Method:
    """A registry entry: how to build a learner of this method, and what its checkpoints hold."""

    name: str
    describe: str  # one line for --show-config and errors
    build: Callable[[Config, torch.device, torch.Generator], Learner]
    state_keys: Callable[[Config], tuple[list[str], list[str]]]  # (network keys, optimizer keys)
    estimate: Callable[[Config, int | None], Estimate]  # memory floor at train.batch_size or an eval batch
    kinds: tuple[str, ...]  # the names of its learners' sample_kinds(), the default first
    exportable: bool = False  # engine.export has graphs for its prior sampler
    # The method's own sampler graphs, when it has them (engine.export exports, saves and verifies them; None: the
    # DAMC prior-sampler export of engine.export.build): (learner, batch, precision dtype, device) -> SamplerGraphs.
    export_graphs: Callable[[Learner, int, torch.dtype, torch.device], SamplerGraphs] | None = None
    metrics: tuple[str, ...] = ("mse", "chains")  # engine.eval metrics besides the FIDs of its sample kinds
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # arch -> metric -> the paper's figure
    # The digits study's presentation (engine.eval.study): kind (or "recon") -> (row label, the paper's name), and
    # the paired comparisons it introduces, (name, metric, (method, kind), (method, kind)): "A < B" is a claim (a
    # difference < 0 agrees with the paper), "A vs B" none.
    study_labels: dict[str, tuple[str, str]] = field(default_factory=dict)
    study_comparisons: tuple[tuple[str, str, tuple[str, str], tuple[str, str]], ...] = ()


def paired_rows(x: Tensor, recon: Tensor, cols: int = 8) -> Tensor:
    """Rows alternate: ``cols`` inputs, then their ``cols`` reconstructions (the recon grids' layout)."""
    return torch.cat([t for i in range(0, x.shape[0], cols) for t in (x[i:i + cols], recon[i:i + cols])])


def article(name: str) -> str:
    """'a' or 'an' before a method's name spelt in capitals ("an LEBM run", "a DAMC run", "a COOPVAE run")."""
    return "an" if name[:1].upper() in "AEFHILMNORSX" else "a"
