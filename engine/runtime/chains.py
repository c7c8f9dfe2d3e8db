"""How the training iteration runs its three loops: the amortizer draw, the posterior and the prior chain.

:class:`Chains` is the interface the learner calls; two classes implement it:

:class:`ReferenceChains` (here) is the faithful eager fp32 path: it calls the pure functions of
:mod:`engine.sampling` with the run's device generator.

:class:`~engine.runtime.fast.FastChains` computes the same maths with bf16 autocast, ``torch.compile``, CUDA
graphs and the fused kernels, as a :class:`~engine.runtime.perf.PerfPlan` allows; ``build_chains`` there picks
one of the two for a plan.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
from torch import Tensor

from engine.config import ChainConfig, Config
from engine.models import Amortizer, Networks
from engine.sampling.diffusion import SamplerTable
from engine.sampling.draws import amortizer_sample, posterior_chain, prior_chain

__all__ = ["Chains", "LoopState", "ReferenceChains", "chain_args"]


class LoopState(Protocol):
    """What the loops read from the learner (:class:`engine.learner.Learner` has these attributes).

    The chains keep a reference to it rather than copies: optimizers, the EMA update, ``load_state_dict`` and
    ``Generator.set_state`` all write in place, so the loops always see the current weights and RNG.
    """

    cfg: Config
    nets: Networks
    amortizer_ema: Amortizer | None
    table: SamplerTable  # ancestral-sampler coefficients on the device
    rng: torch.Generator  # the run's device RNG

    @property
    def device(self) -> torch.device: ...


class Chains(Protocol):
    """How the iteration runs its loops (the learner calls only these). Unset chain arguments take the
    training chain's config; ``rng`` defaults to the run's generator."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on the fast path, a no-op for the reference; wraps the networks' forward passes."""
        ...

    def cond_draw(self, net: Amortizer, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """z ~ Q(z | x) (B, nz): the conditional ancestral draw."""
        ...

    def uncond_draw(self, net: Amortizer, n: int, rng: torch.Generator | None = None) -> Tensor:
        """z ~ Q(z | ξ) (n, nz): the unconditional (random null token) draw, DAMC prior samples."""
        ...

    def posterior(self, x: Tensor, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
                  with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on paper eq. 16 from z0 (B, nz)."""
        ...

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on paper eq. 3 from z0 (B, nz)."""
        ...


class ReferenceChains:
    """Eager fp32, the authors' arithmetic; every draw from the run's generator in the authors' order."""

    def __init__(self, learner: LoopState) -> None:
        self.learner = learner

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cond_draw(self, net: Amortizer, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The conditional ancestral draw z ~ Q(z | x), (B, nz)."""
        lr = self.learner
        return amortizer_sample(net, lr.table, rng or lr.rng, x=x, nz=lr.cfg.model.nz,
                                with_noise=lr.cfg.diffusion.sampler_noise)

    def uncond_draw(self, net: Amortizer, n: int, rng: torch.Generator | None = None) -> Tensor:
        """The unconditional (random null token) draw: DAMC prior samples, (n, nz)."""
        lr = self.learner
        return amortizer_sample(net, lr.table, rng or lr.rng, n=n, nz=lr.cfg.model.nz,
                                with_noise=lr.cfg.diffusion.sampler_noise)

    def posterior(self, x: Tensor, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
                  with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on eq. 16 from z0; unset arguments take the training chain's config."""
        lr, lv = self.learner, self.learner.cfg.langevin
        n_steps, step_size, with_noise = chain_args(lv.posterior, n_steps, step_size, with_noise)
        return posterior_chain(lr.nets, x, z0, lv.likelihood_sigma, n_steps, step_size, with_noise, rng or lr.rng)

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on eq. 3 from z0; unset arguments take the training chain's config."""
        lr = self.learner
        n_steps, step_size, with_noise = chain_args(lr.cfg.langevin.prior, n_steps, step_size, with_noise)
        return prior_chain(lr.nets, z0, n_steps, step_size, with_noise, rng or lr.rng)


def chain_args(chain_cfg: ChainConfig, n_steps: int | None, step_size: float | None,
               with_noise: bool | None) -> tuple[int, float, bool]:
    """(n_steps, step_size, with_noise): each argument left None takes the chain config's value."""
    return (chain_cfg.n_steps if n_steps is None else n_steps,
            chain_cfg.step_size if step_size is None else step_size,
            chain_cfg.noise if with_noise is None else with_noise)
