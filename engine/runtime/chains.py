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
import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from engine.config import ChainConfig, Config
from engine.models import Amortizer, Networks
from engine.runtime.updates import (
    GradSync,
    amortizer_updates_given,
    draw_update_noise,
    losses_per_update,
    optimizer_step,
    q_loss_given,
)
from engine.sampling.diffusion import SamplerTable
from engine.sampling.draws import amortizer_sample, posterior_chain, prior_chain

__all__ = ["Chains", "IterationBody", "LoopState", "ReferenceChains", "chain_args"]

IterationBody = Callable[[Tensor], dict[str, Tensor]]  # x (B, C, H, W) -> device diagnostics (steps 1-7)


class LoopState(Protocol):
    """What the loops read from the learner (:class:`engine.learners.damc.DamcLearner` has these attributes).

    The chains keep a reference to it rather than copies: optimizers, the EMA update, ``load_state_dict`` and
    ``Generator.set_state`` all write in place, so the loops always see the current weights and RNG.
    """

    cfg: Config
    nets: Networks
    amortizer_ema: Amortizer | None
    table: SamplerTable  # ancestral-sampler coefficients on the device
    rng: torch.Generator  # the run's device RNG
    opt_g: torch.optim.Optimizer
    opt_e: torch.optim.Optimizer
    opt_q: torch.optim.Optimizer | None
    grad_sync: GradSync | None  # several processes: average gradients over ranks (between backward and clip)

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

    def prior_images(self, net: Amortizer, n: int, rng: torch.Generator) -> Tensor:
        """G(z) (n, C, H, W) for the unconditional draw z ~ Q(z | ξ): DAMC prior samples as images."""
        ...

    def generator(self, z: Tensor) -> Tensor:
        """G(z) (B, C, H, W) for z (B, nz), as the path computes it (under the caller's autocast)."""
        ...

    def amortizer_updates(self, x: Tensor, z_pos: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """The M amortizer updates on the targets z_pos (B, nz) with row mask keep (B,); (mean loss, last norm)."""
        ...

    def run_iteration(self, body: IterationBody, x: Tensor) -> dict[str, Tensor]:
        """``body(x)``: steps 1-7 of the iteration, as they are or captured as one CUDA graph."""
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

    def generator(self, z: Tensor) -> Tensor:
        return self.learner.nets.generator(z)

    def prior_images(self, net: Amortizer, n: int, rng: torch.Generator) -> Tensor:
        """The unconditional draw, then G in fp32."""
        z = self.uncond_draw(net, n, rng)
        with torch.no_grad():
            return self.learner.nets.generator(z)

    def amortizer_updates(self, x: Tensor, z_pos: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Eager fp32; ξ, u, ε drawn from the run's generator in the authors' order (per update: ξ, u, ε)."""
        lr = self.learner
        d, net, opt = lr.cfg.diffusion, lr.nets.amortizer, lr.opt_q
        assert net is not None and opt is not None
        b, nz = z_pos.shape
        noise = draw_update_noise(lr.rng, d.updates_per_iter, losses_per_update(d), b, nz, z_pos.device)

        def loss_fn(z: Tensor, xb: Tensor, k: Tensor, xi: Tensor, u: Tensor, eps: Tensor) -> Tensor:
            return q_loss_given(net, z, xb, k, xi, u, eps, d)

        return amortizer_updates_given(loss_fn, opt, net, z_pos, x, keep, noise, lr.cfg.optim.grad_clip,
                                       step=functools.partial(optimizer_step, sync=lr.grad_sync))

    def run_iteration(self, body: IterationBody, x: Tensor) -> dict[str, Tensor]:
        return body(x)


def chain_args(chain_cfg: ChainConfig, n_steps: int | None, step_size: float | None,
               with_noise: bool | None) -> tuple[int, float, bool]:
    """(n_steps, step_size, with_noise): each argument left None takes the chain config's value."""
    return (chain_cfg.n_steps if n_steps is None else n_steps,
            chain_cfg.step_size if step_size is None else step_size,
            chain_cfg.noise if with_noise is None else with_noise)
