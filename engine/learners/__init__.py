"""The learners, one module per method, and the registry keyed by ``cfg.method``.

Everything above this package (the run loop, evaluation, sampling, export, the benchmarks) asks the registry
for a :class:`~engine.learners.base.Method` and the learner it builds, never for a method by name: a new method
is its module, its config section and one line below.
"""

from __future__ import annotations

import torch

from engine.config import Config
from engine.learners import coopvae, damc, drl, dualmcmc, lebm
from engine.learners.base import Grid, Learner, LongRun, Method, SampleKind

__all__ = ["METHODS", "Grid", "Learner", "LongRun", "Method", "SampleKind", "build_learner", "get"]

METHODS: dict[str, Method] = {m.name: m for m in (
    damc.METHOD,
    lebm.METHOD,
    coopvae.METHOD,
    drl.METHOD,
    dualmcmc.METHOD,
)}


def get(name: str) -> Method:
    """The registry entry of ``name`` (a config's ``method``, already validated against :data:`METHODS`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method {name!r}: the engine has {', '.join(METHODS)}") from None


def build_learner(cfg: Config, device: torch.device, rng: torch.Generator) -> Learner:
    """A freshly initialised learner of ``cfg.method`` (networks from the global seed, draws from ``rng``)."""
    return get(cfg.method).build(cfg, device, rng)
