"""The short-run LEBM baseline (``method: lebm``, spec ``damc.md`` §8; Pang et al., NeurIPS 2020).

The latent EBM prior and generator of DAMC, learned with short-run chains from N(0, I) instead of amortized ones:

    1. z0 ~ N(0, I) (B, nz);  z⁺ = 30 posterior Langevin steps from z0 (eq. 16)
    2. z⁻ = 60 prior Langevin steps from a fresh N(0, I) draw (B, nz) (eq. 3)
    3. G update on z⁺, then E update on (z⁺, z⁻)      (:func:`engine.learners.damc.generator_energy_updates`)
    4. LR decay every 1,000 iterations (no amortizer, no EMA).

It is the DAMC learner's state without the amortizer (:class:`~engine.learners.damc.DamcLearner`), so the run
loop, checkpoints, evaluation and the fast chains treat both alike; only the iteration and the sample kinds
differ. Draw order from ``learner.rng``: z0, the posterior chain's noise, the prior start, the prior chain's noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.config import Config
from engine.learners.base import Method, SampleKind
from engine.learners.damc import PAPER, DamcLearner, build_state, generator_energy_updates, state_keys
from engine.learners.memory import Estimate, latent_ebm_estimate

__all__ = ["METHOD", "LebmLearner", "build", "iteration_updates"]


class LebmLearner(DamcLearner):
    """DAMC's state with ``nets.amortizer``, ``amortizer_ema`` and ``opt_q`` None."""

    method = "lebm"

    def iteration_body(self, x: Tensor) -> dict[str, Tensor]:
        return iteration_updates(self, x)

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        return (self._lebm_kind(),)


def iteration_updates(learner: DamcLearner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-3 on x (B, C, H, W): both chains from N(0, I), then the G and E updates; device diagnostics."""
    rng, chains = learner.rng, learner.chains
    b, nz = x.shape[0], learner.cfg.model.nz
    z0 = torch.randn(b, nz, generator=rng, device=x.device)  # short-run: the posterior chain from N(0, I)
    z_pos = chains.posterior(x, z0)
    z_neg = chains.prior(torch.randn(b, nz, generator=rng, device=x.device))
    return generator_energy_updates(learner, x, z_pos, z_neg)


def build(cfg: Config, device: torch.device, rng: torch.Generator) -> LebmLearner:
    learner = build_state(LebmLearner, cfg, device, rng, with_amortizer=False)
    assert isinstance(learner, LebmLearner)
    return learner


def _state_keys(cfg: Config) -> tuple[list[str], list[str]]:
    return state_keys(cfg, with_amortizer=False)


def _estimate(cfg: Config, batch: int | None = None) -> Estimate:
    return latent_ebm_estimate(cfg, batch, with_amortizer=False)


# The paper figures an LEBM run is shown beside: DAMC's (as before the learners were split; the short-run baseline's
# own numbers are Pang et al.'s, not in spec §4).
METHOD = Method("lebm", "short-run latent EBM prior (spec §8): both chains from N(0, I), no amortizer",
                build, _state_keys, _estimate, kinds=("lebm",), exportable=False,
                metrics=("mse", "auprc", "chains"), paper=PAPER,
                study_labels={"lebm": ("LEBM prior samples, EBM trained with short-run LD", "LEBM"),
                              "recon": ("reconstructions of the test split, short-run LEBM run", "LEBM (MSE)")})
