"""The DAMC learner (``method: damc``): state and one training iteration (paper Algorithm 1, spec ``damc.md`` §3).

Order of one DAMC iteration (the authors' code, [code] values by default):
    1. mask m (rand < p_uncond → unconditional row)
    2. z0 = EMA-amortizer(x): conditional 100-step ancestral draw          (no grad)
    3. z⁺ = 30 posterior Langevin steps from z0 (s 0.1, σ 0.1)
    4. z⁻ = 60 prior Langevin steps from cat[z0, N(0, I)] (2B chains, s 0.4)
    5. M = 6 amortizer updates on the targets z⁺ with mask m
    6. G update on z⁺, then 7. E update on (z⁺, z⁻)
    8. LR decay every 1,000 iterations, 9. EMA every 10 iterations.
The short-run LEBM baseline (``method: lebm``, spec §8, :mod:`engine.learners.lebm`) shares this state and the
G and E updates, starts both chains from N(0, I) and has no amortizer. The iteration returns its diagnostics as
device tensors: nothing here reads a tensor value on the host, so the caller decides when to sync (log intervals).

This module is Algorithm 1 only: the maths of each draw is :mod:`engine.sampling`, how the loops run (reference
or fast) is ``learner.chains`` (:mod:`engine.runtime`); neither imports this module back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.learners.base import Grid, LongRun, Method, SampleKind, paired_rows
from engine.learners.memory import latent_ebm_estimate
from engine.models import Amortizer, Networks, build_networks
from engine.runtime.chains import Chains, ReferenceChains
from engine.runtime.fast import FastChains, build_chains
from engine.runtime.perf import PerfPlan
from engine.runtime.updates import GradSync, optimizer_step, set_lr
from engine.sampling.diffusion import SamplerTable, sampler_table
from engine.sampling.draws import amortizer_sample, posterior_chain, prior_chain
from engine.sampling.given import decode, prior_latents
from engine.sampling.langevin import energy_grad, langevin_chain, prior_energy
from engine.sampling.noise import NoiseStream, langevin_noise, prior_noise

__all__ = [
    "METHOD",
    "PAPER",
    "DamcLearner",
    "amortizer_updates",
    "base_learning_rates",
    "build",
    "damc_prior_images",
    "damc_prior_latents",
    "ema_update",
    "energy_update",
    "finish_iteration",
    "generator_energy_updates",
    "generator_update",
    "iteration_updates",
    "lebm_prior_latents",
    "reconstruct",
    "set_learning_rates",
    "state_keys",
    "train_step",
]

@dataclass
class DamcLearner:
    """Everything one training iteration reads or writes (also the LEBM baseline's state, without Q)."""

    method: ClassVar[str] = "damc"

    cfg: Config
    nets: Networks
    amortizer_ema: Amortizer | None  # the authors' Q_dummy: initialises the training chains only
    opt_g: torch.optim.Optimizer
    opt_e: torch.optim.Optimizer
    opt_q: torch.optim.Optimizer | None
    table: SamplerTable  # ancestral-sampler coefficients on the device
    rng: torch.Generator  # the run's device RNG; all draws of the iteration come from it
    iteration: int = 0  # number of completed iterations
    # Several processes: averages a network's gradients over ranks between backward and clip (set by the trainer
    # from engine.runtime.distributed; None for one process).
    grad_sync: GradSync | None = None
    # How the three loops run: ReferenceChains (set by build_learner) or engine.runtime.fast.FastChains.
    chains: Chains = field(init=False, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.nets.generator.parameters()).device

    # -- the engine.learners.base.Learner protocol -------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module | None] = {"generator": self.nets.generator, "energy": self.nets.energy,
                                             "amortizer": self.nets.amortizer, "amortizer_ema": self.amortizer_ema}
        return {k: m for k, m in nets.items() if m is not None}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"opt_g": self.opt_g, "opt_e": self.opt_e, "opt_q": self.opt_q}
        return {k: o for k, o in opts.items() if o is not None}

    def set_plan(self, plan: PerfPlan) -> None:
        self.chains = build_chains(self, plan)

    def iteration_body(self, x: Tensor) -> dict[str, Tensor]:
        """Steps 1-7 of the method's iteration (the part a CUDA graph may capture)."""
        return iteration_updates(self, x)

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        return train_step(self, x)

    def learning_rates(self) -> dict[str, float]:
        # G's LR stays a host float on every path (engine.runtime.fast keeps it so for this line).
        return {"lr_g": self.opt_g.param_groups[0]["lr"]}

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        return (SampleKind("damc", f"online amortizer, unconditional (random null token), "
                           f"{self.cfg.diffusion.n_steps} steps"), self._lebm_kind())

    def _lebm_kind(self) -> SampleKind:
        ev = self.cfg.eval  # Langevin on E(z) + ½‖z‖² (eq. 3)
        return SampleKind("lebm", "N(0, I)", chain=True, steps=ev.lebm_steps, step_size=ev.lebm_step_size,
                          override=True)

    def _kind(self, kind: str) -> SampleKind:
        for k in self.sample_kinds():
            if k.name == kind:
                return k
        raise ValueError(f"sample kind {kind!r}: a {self.method} run draws "
                         f"{', '.join(k.name for k in self.sample_kinds())}")

    def sample(self, kind: str, n: int, rng: torch.Generator, *, steps: int | None = None,
               step_size: float | None = None) -> Tensor:
        """G(z) (n, C, H, W), z from the online amortizer (``damc``) or N(0, I) + prior Langevin (``lebm``)."""
        self._kind(kind)
        if kind == "damc":
            z = damc_prior_latents(self, n, rng)
        else:
            ev = self.cfg.eval
            z = lebm_prior_latents(self, n, ev.lebm_steps if steps is None else steps,
                                   ev.lebm_step_size if step_size is None else step_size, rng)
        with torch.no_grad():
            return self.nets.generator(z)

    def noise_width(self, kind: str, steps: int | None = None) -> int:
        self._kind(kind)
        if kind == "damc":  # [ξ | z_T | ε_0 .. ε_{T−2}] (engine.sampling.noise)
            return self.table.n_steps + 1
        return 1 + (self.cfg.eval.lebm_steps if steps is None else steps)  # [z_0 | ε_0 .. ε_{L−1}]

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor:
        """The next b images of a seeded stream: the fast chains when installed, else the fp32 reference (the
        arithmetic of the exported graphs, engine.sampling.given)."""
        self._kind(kind)
        chains = self.chains
        if kind == "damc":
            pn = prior_noise(noise, b).to(self.device)
            amortizer = self.nets.amortizer
            assert amortizer is not None
            with torch.no_grad():
                if isinstance(chains, FastChains):
                    z = chains.uncond_draw(amortizer, b, noise=pn.eps, z_init=pn.z, xi=pn.xi)
                    with chains.autocast():
                        return self.nets.generator(z).float()
                z = prior_latents(amortizer, self.table, pn, with_noise=self.cfg.diffusion.sampler_noise)
                return decode(self.nets.generator, z)
        n_steps = self.cfg.eval.lebm_steps if steps is None else steps
        s = self.cfg.eval.lebm_step_size if step_size is None else step_size
        z0, eps = (t.to(self.device) for t in langevin_noise(noise, b))
        if isinstance(chains, FastChains):
            z = chains.prior(z0, n_steps=n_steps, step_size=s, with_noise=True, noise=eps)
            with torch.no_grad(), chains.autocast():
                return self.nets.generator(z).float()
        energy = prior_energy(self.nets.energy)
        z = langevin_chain(z0, lambda zz: energy_grad(energy, zz), n_steps, s, noise=eps)
        with torch.no_grad():
            return decode(self.nets.generator, z)

    def posterior_latents(self, x: Tensor, n_steps: int, step_size: float, sigma: float,
                          rng: torch.Generator) -> Tensor:
        """Spec §4: the online amortizer's conditional draw (N(0, I) for LEBM), then noise-free Langevin (fp32)."""
        nz = self.cfg.model.nz
        amortizer = self.nets.amortizer
        if amortizer is not None:
            z = amortizer_sample(amortizer, self.table, rng, x=x, nz=nz, with_noise=self.cfg.diffusion.sampler_noise)
        else:
            z = torch.randn(x.shape[0], nz, generator=rng, device=x.device)
        return posterior_chain(self.nets, x, z, sigma, n_steps, step_size, False, rng)

    def reconstruct(self, x: Tensor, rng: torch.Generator, *, steps: int, step_size: float,
                    sigma: float) -> Tensor:
        z = self.posterior_latents(x, steps, step_size, sigma, rng)
        with torch.no_grad():
            return self.nets.generator(z)

    def describe_reconstruct(self, steps: int, step_size: float, sigma: float) -> tuple[str, str]:
        init = (f"online amortizer conditional draw ({self.cfg.diffusion.n_steps} steps)"
                if self.nets.amortizer is not None else "N(0, I)")
        return init, f"{init} + {steps} noise-free LD steps, s {step_size:g}, sigma {sigma:g}"

    def grids(self, x_test: Tensor, rng: torch.Generator) -> list[Grid]:
        """DAMC prior samples, LEBM Langevin prior samples and test reconstructions, in that draw order."""
        ev, nets, n = self.cfg.eval, self.nets, self.cfg.eval.n_samples
        out = []
        with torch.no_grad():
            if nets.amortizer is not None:
                out.append(Grid("samples_damc", nets.generator(damc_prior_latents(self, n, rng))))
        z = lebm_prior_latents(self, n, ev.lebm_steps, ev.lebm_step_size, rng)
        with torch.no_grad():
            out.append(Grid("samples_lebm", nets.generator(z)))
        recon = reconstruct(self, x_test, ev.recon_steps, ev.recon_step_size, rng)
        out.append(Grid("recon", paired_rows(x_test, recon), nrow=8))
        return out

    def long_run(self, n_chains: int, steps: int, marks: list[int], step_size: float | None,
                 rng: torch.Generator) -> LongRun:
        """Prior Langevin from N(0, I) (noise on), paper Fig. 4: G(z) at the marks, mean E(z) + ½‖z‖² per step."""
        nets, nz = self.nets, self.cfg.model.nz
        s = self.cfg.eval.lebm_step_size if step_size is None else step_size

        def energy(z: Tensor) -> Tensor:
            with torch.no_grad():
                return (nets.energy(z) + 0.5 * z.pow(2).sum(dim=1)).mean()

        z = torch.randn(n_chains, nz, generator=rng, device=self.device)
        trace = [energy(z)]  # device scalars: read once at the end, not per step
        frames = []
        with torch.no_grad():
            if 0 in marks:
                frames.append(nets.generator(z))
        for t in range(1, steps + 1):
            # One step of the engine's prior chain; its draw order equals one call with `steps` steps.
            z = prior_chain(nets, z, 1, s, True, rng)
            trace.append(energy(z))
            if t in marks:
                with torch.no_grad():
                    frames.append(nets.generator(z))
        return LongRun(torch.stack(frames, dim=1), torch.stack(trace),
                       f"mean E(z) + |z|^2/2 over {n_chains} chains, Langevin s={s:g}", s)


def state_keys(cfg: Config, with_amortizer: bool = True) -> tuple[list[str], list[str]]:
    """(network keys, optimizer keys) of a checkpoint of this state."""
    if with_amortizer:
        return ["generator", "energy", "amortizer", "amortizer_ema"], ["opt_g", "opt_e", "opt_q"]
    return ["generator", "energy"], ["opt_g", "opt_e"]


def build(cfg: Config, device: torch.device, rng: torch.Generator) -> DamcLearner:
    """A DAMC learner for ``cfg`` (see :func:`build_state`)."""
    return build_state(DamcLearner, cfg, device, rng, with_amortizer=True)


def build_state(cls: type[DamcLearner], cfg: Config, device: torch.device, rng: torch.Generator, *,
                with_amortizer: bool) -> DamcLearner:
    """Networks (PyTorch default init, from the global seed), EMA copy, optimizers (spec §3 table)."""
    damc = with_amortizer
    nets = build_networks(cfg.model, with_amortizer=damc)
    nets.generator.to(device)
    nets.energy.to(device)
    o = cfg.optim
    betas = (o.beta1, o.beta2)
    g_lr, e_lr, q_lr = base_learning_rates(cfg)
    opt_g = torch.optim.Adam(nets.generator.parameters(), lr=g_lr, betas=betas)
    opt_e = torch.optim.Adam(nets.energy.parameters(), lr=e_lr, betas=betas)
    opt_q = ema = None
    if damc:
        assert nets.amortizer is not None
        nets.amortizer.to(device)
        ema = copy.deepcopy(nets.amortizer).requires_grad_(False)
        opt_q = torch.optim.AdamW(nets.amortizer.parameters(), lr=q_lr, betas=betas,
                                  weight_decay=o.q_weight_decay)
    d = cfg.diffusion
    table = sampler_table(d.n_steps, d.logsnr_min, d.logsnr_max, device=device)
    learner = cls(cfg, nets, ema, opt_g, opt_e, opt_q, table, rng)
    learner.chains = ReferenceChains(learner)
    return learner


# ---------------------------------------------------------------------------------------------------------
# The training iteration


def _step(learner: DamcLearner, opt: torch.optim.Optimizer, module: nn.Module, loss: Tensor) -> Tensor:
    """zero_grad → backward → [average over ranks] → total-norm clip (returns the pre-clip norm, on device) → step."""
    return optimizer_step(opt, module, loss, learner.cfg.optim.grad_clip, learner.grad_sync)


def _lr_at(lr0: float, completed: int, decay: float, every: int, floor: float) -> float:
    """lr0·decay^⌊completed/every⌋, floored: the authors' ``max(0.99·lr, 1e-5)`` every 1,000 iterations."""
    return max(lr0 * decay ** (completed // every), floor)


def base_learning_rates(cfg: Config) -> tuple[float, float, float]:
    """(G, E, Q) learning rates before decay: ``optim.*_lr``, times ``train.batch_size / optim.lr_scale_batch`` when
    that is set (the linear scaling rule; off by default, so several GPUs keep the single-GPU LRs)."""
    o = cfg.optim
    scale = cfg.train.batch_size / o.lr_scale_batch if o.lr_scale_batch > 0 else 1.0
    return o.g_lr * scale, o.e_lr * scale, o.q_lr * scale


def set_learning_rates(learner: DamcLearner) -> None:
    """Set every optimizer's LR for the current iteration count (closed form, so resume is exact). A device-tensor
    LR (the fast path's fused optimizers) is written in place: one fill on the device, no host read."""
    o = learner.cfg.optim
    g_lr, e_lr, q_lr = base_learning_rates(learner.cfg)
    pairs = [(learner.opt_g, g_lr), (learner.opt_e, e_lr), (learner.opt_q, q_lr)]
    for opt, lr0 in pairs:
        if opt is None:
            continue
        set_lr(opt, _lr_at(lr0, learner.iteration, o.lr_decay, o.lr_decay_every, o.lr_min))


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ over parameters (the amortizer has no buffers)."""
    t: list[Tensor] = list(target.parameters())
    torch._foreach_mul_(t, decay)
    s: list[Tensor] = list(source.parameters())
    torch._foreach_add_(t, s, alpha=1.0 - decay)


def amortizer_updates(learner: DamcLearner, x: Tensor, z_pos: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Step 5: M AdamW updates of Q on the targets z⁺ (B, nz); returns (mean loss, last grad norm).

    The maths is ``engine.runtime.updates.amortizer_updates_given`` (a function of the pre-drawn ξ, u, ε);
    ``learner.chains`` draws the noise (the reference in the authors' order, from ``learner.rng``) and runs it
    (eager, or compiled and captured on the fast path).
    """
    assert learner.nets.amortizer is not None and learner.opt_q is not None
    return learner.chains.amortizer_updates(x, z_pos, keep)


def generator_update(learner: DamcLearner, x: Tensor, z_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Step 6: mean over the batch of Σ_pixels (G(z⁺) − x)² (no 1/(2σ²) factor, as the code)."""
    nets = learner.nets
    with learner.chains.autocast():  # G through the chains: the fast path may rewrite its first / last layer
        x_hat = learner.chains.generator(z_pos)
    loss = (x_hat.float() - x).flatten(1).pow(2).sum(dim=1).mean()
    return loss.detach(), _step(learner, learner.opt_g, nets.generator, loss)


def energy_update(learner: DamcLearner, z_pos: Tensor, z_neg: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 7: contrastive mean E(z⁺) − mean E(z⁻) (no L2 regulariser in the image runs), in fp32."""
    energy = learner.nets.energy
    e_pos, e_neg = energy(z_pos).mean(), energy(z_neg).mean()
    loss = e_pos - e_neg
    norm = _step(learner, learner.opt_e, energy, loss)
    return loss.detach(), e_pos.detach(), e_neg.detach(), norm


def train_step(learner: DamcLearner, x: Tensor) -> dict[str, Tensor]:
    """One iteration of Algorithm 1 on the batch x (B, C, H, W) in [−1, 1]; returns device diagnostics.

    Steps 1-7 are :func:`iteration_updates`, all device work: ``learner.chains`` runs them as they are (reference)
    or captured as one CUDA graph (fast path, ``perf.iteration_graph``). Steps 8-9 depend only on the host's
    iteration count and run here, outside any graph.
    """
    out = learner.chains.run_iteration(learner.iteration_body, x)
    finish_iteration(learner)
    return out


def iteration_updates(learner: DamcLearner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-7 of Algorithm 1 on x (B, C, H, W): draws, chains and the Q, G, E updates; device diagnostics."""
    cfg = learner.cfg
    nets, rng = learner.nets, learner.rng
    b, nz = x.shape[0], cfg.model.nz
    lv = cfg.langevin
    chains = learner.chains
    d = cfg.diffusion

    # 1. rows with rand < p_uncond train the unconditional (null-token) branch.
    keep = (torch.rand(b, generator=rng, device=x.device) >= d.p_uncond).to(x.dtype)  # (B,)
    # 2. Chain init from the amortizer ([code]: the EMA copy; [paper] Listing 2: the online net).
    #    The authors also draw an unconditional sample zp = Q(x=None) here every iteration and never
    #    use it; we skip that wasted 100-step draw (it only shifted their RNG stream).
    init_net = learner.amortizer_ema if d.init_from == "ema" else nets.amortizer
    assert init_net is not None  # a DAMC learner has both
    z0 = chains.cond_draw(init_net, x)

    # 3. Posterior chain: 30 steps on ‖x − G(z)‖²/(2σ²) + E(z) + ½‖z‖² (eq. 16).
    z_pos = chains.posterior(x, z0)

    # 4. Prior chain: 60 steps on E(z) + ½‖z‖² (eq. 3), from the amortizer draws plus N(0, I) (2B chains).
    if lv.prior_init == "posterior_and_noise":
        z_neg0 = torch.cat([z0, torch.randn(b, nz, generator=rng, device=x.device)])  # (2B, nz)
    else:
        z_neg0 = z0
    z_neg = chains.prior(z_neg0)

    out: dict[str, Tensor] = {}
    # 5. Distil the refined posterior samples z⁺ back into the amortizer (Algorithm 1, line 7).
    out["loss_q"], out["grad_norm_q"] = amortizer_updates(learner, x, z_pos, keep)
    # 6-7. Generator, then energy.
    return {**out, **generator_energy_updates(learner, x, z_pos, z_neg)}


def generator_energy_updates(learner: DamcLearner, x: Tensor, z_pos: Tensor, z_neg: Tensor) -> dict[str, Tensor]:
    """Steps 6-7 (G on z⁺, then E on (z⁺, z⁻)) and the iteration's diagnostics; DAMC and LEBM share them."""
    out: dict[str, Tensor] = {}
    loss_g, out["grad_norm_g"] = generator_update(learner, x, z_pos)
    loss_e, e_pos, e_neg, out["grad_norm_e"] = energy_update(learner, z_pos, z_neg)
    out.update(
        loss_g=loss_g,
        loss_e=loss_e,
        energy_pos=e_pos,
        energy_neg=e_neg,
        mse=loss_g / x[0].numel(),  # per-pixel MSE of G(z⁺), [−1, 1] units
        z_pos_norm=z_pos.norm(dim=1).mean(),
        z_neg_norm=z_neg.norm(dim=1).mean(),
    )
    return out


def finish_iteration(learner: DamcLearner) -> None:
    """Steps 8-9: LR decay and EMA on the completed-iteration count (host integers, no device sync)."""
    o, d, nets = learner.cfg.optim, learner.cfg.diffusion, learner.nets
    learner.iteration += 1
    if learner.iteration % o.lr_decay_every == 0:
        set_learning_rates(learner)
    if learner.amortizer_ema is not None and learner.iteration % d.ema_every == 0:
        assert learner.amortizer_ema is not None and nets.amortizer is not None
        ema_update(learner.amortizer_ema, nets.amortizer, d.ema_decay)


# ---------------------------------------------------------------------------------------------------------
# Evaluation-time draws (spec §4): the online amortizer, never the EMA copy. They take their own RNG so
# that how often a run draws grids never changes its training stream.


def damc_prior_latents(learner: DamcLearner, n: int, rng: torch.Generator) -> Tensor:
    """DAMC prior samples: the online amortizer's unconditional (random null token) draw."""
    assert learner.nets.amortizer is not None
    return learner.chains.uncond_draw(learner.nets.amortizer, n, rng)


def damc_prior_images(learner: DamcLearner, n: int, rng: torch.Generator) -> Tensor:
    """DAMC prior samples as images (n, C, H, W): the online amortizer's unconditional draw, then G (on the fast
    path one captured region, G in bf16)."""
    assert learner.nets.amortizer is not None
    return learner.chains.prior_images(learner.nets.amortizer, n, rng)


def lebm_prior_latents(learner: DamcLearner, n: int, n_steps: int, step_size: float,
                       rng: torch.Generator) -> Tensor:
    """"LEBM" prior samples: N(0, I) followed by Langevin on E(z) + ½‖z‖² (noise on)."""
    z = torch.randn(n, learner.cfg.model.nz, generator=rng, device=learner.device)
    return learner.chains.prior(z, n_steps=n_steps, step_size=step_size, with_noise=True, rng=rng)


def reconstruct(learner: DamcLearner, x: Tensor, n_steps: int, step_size: float, rng: torch.Generator) -> Tensor:
    """G(z) for posterior z: the amortizer's conditional draw (N(0, I) for LEBM) + noise-free Langevin."""
    if learner.nets.amortizer is not None:
        z = learner.chains.cond_draw(learner.nets.amortizer, x, rng)
    else:
        z = torch.randn(x.shape[0], learner.cfg.model.nz, generator=rng, device=x.device)
    z = learner.chains.posterior(x, z, n_steps=n_steps, step_size=step_size, with_noise=False, rng=rng)
    with torch.no_grad():
        return learner.nets.generator(z)


# Spec §4 tables: the paper's figures per architecture (Tables 1-2; "fid_lebm" is Ours-LEBM, the DAMC-trained prior
# sampled by short-run Langevin).
PAPER: dict[str, dict[str, float]] = {
    "cifar10": {"mse": 0.015, "fid_damc": 57.72, "fid_lebm": 60.89},
    "svhn": {"mse": 0.002, "fid_damc": 18.76, "fid_lebm": 21.17},
    "celeba64": {"mse": 0.005, "fid_damc": 30.83, "fid_lebm": 35.67},
    "celebahq256": {"mse": 0.023, "fid_damc": 85.88, "fid_lebm": 89.54},
}

# The paper's Table 1 claims, paired by seed in the digits study (the LEBM baseline's rows come from its own runs).
STUDY_COMPARISONS = (
    ("Ours-DAMC < Ours-LEBM", "kid", ("damc", "damc"), ("damc", "lebm")),
    ("Ours-LEBM < LEBM", "kid", ("damc", "lebm"), ("lebm", "lebm")),
    ("Ours-DAMC < LEBM", "kid", ("damc", "damc"), ("lebm", "lebm")),
    ("Ours-LEBM < LEBM", "fid", ("damc", "lebm"), ("lebm", "lebm")),
    ("Ours-DAMC < LEBM", "fid", ("damc", "damc"), ("lebm", "lebm")),
    ("reconstruction, DAMC run < LEBM run", "mse", ("damc", "recon"), ("lebm", "recon")),
)

METHOD = Method("damc", "Diffusion-Amortized MCMC (Yu et al., NeurIPS 2023): latent EBM prior, amortized chains",
                build, state_keys, latent_ebm_estimate, kinds=("damc", "lebm"), exportable=True,
                metrics=("mse", "auprc", "chains"), paper=PAPER,
                study_labels={"damc": ("DAMC prior samples (DAMC run)", "Ours-DAMC"),
                              "lebm": ("LEBM prior samples, EBM trained with DAMC", "Ours-LEBM"),
                              "recon": ("reconstructions of the test split, DAMC run", "Ours (MSE)")},
                study_comparisons=STUDY_COMPARISONS)
