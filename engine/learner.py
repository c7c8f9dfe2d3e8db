"""The DAMC learner: state and one training iteration (paper Algorithm 1, spec ``damc.md`` §3).

Order of one DAMC iteration (the authors' code, [code] values by default):
    1. mask m (rand < p_uncond → unconditional row)
    2. z0 = EMA-amortizer(x): conditional 100-step ancestral draw          (no grad)
    3. z⁺ = 30 posterior Langevin steps from z0 (s 0.1, σ 0.1)
    4. z⁻ = 60 prior Langevin steps from cat[z0, N(0, I)] (2B chains, s 0.4)
    5. M = 6 amortizer updates on the targets z⁺ with mask m
    6. G update on z⁺, then 7. E update on (z⁺, z⁻)
    8. LR decay every 1,000 iterations, 9. EMA every 10 iterations.
The short-run LEBM baseline (``method: lebm``, spec §8) starts both chains from N(0, I) and has no
amortizer. The iteration returns its diagnostics as device tensors: nothing here reads a tensor value
on the host, so the caller decides when to sync (log intervals).

This module is Algorithm 1 only: the maths of each draw is :mod:`engine.sampling`, how the loops run (reference
or fast) is ``learner.chains`` (:mod:`engine.runtime`); neither imports this module back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.models import Amortizer, Networks, build_networks
from engine.runtime.chains import Chains, ReferenceChains
from engine.runtime.updates import GradSync, optimizer_step, set_lr
from engine.sampling.diffusion import SamplerTable, sampler_table

__all__ = [
    "Learner",
    "amortizer_updates",
    "base_learning_rates",
    "build_learner",
    "damc_prior_images",
    "damc_prior_latents",
    "ema_update",
    "energy_update",
    "finish_iteration",
    "generator_update",
    "iteration_updates",
    "lebm_prior_latents",
    "reconstruct",
    "set_learning_rates",
    "train_step",
]


@dataclass
class Learner:
    """Everything one training iteration reads or writes."""

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


def build_learner(cfg: Config, device: torch.device, rng: torch.Generator) -> Learner:
    """Networks (PyTorch default init, from the global seed), EMA copy, optimizers (spec §3 table)."""
    damc = cfg.method == "damc"
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
    learner = Learner(cfg, nets, ema, opt_g, opt_e, opt_q, table, rng)
    learner.chains = ReferenceChains(learner)
    return learner


# ---------------------------------------------------------------------------------------------------------
# The training iteration


def _step(learner: Learner, opt: torch.optim.Optimizer, module: nn.Module, loss: Tensor) -> Tensor:
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


def set_learning_rates(learner: Learner) -> None:
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


def amortizer_updates(learner: Learner, x: Tensor, z_pos: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Step 5: M AdamW updates of Q on the targets z⁺ (B, nz); returns (mean loss, last grad norm).

    The maths is ``engine.runtime.updates.amortizer_updates_given`` (a function of the pre-drawn ξ, u, ε);
    ``learner.chains`` draws the noise (the reference in the authors' order, from ``learner.rng``) and runs it
    (eager, or compiled and captured on the fast path).
    """
    assert learner.nets.amortizer is not None and learner.opt_q is not None
    return learner.chains.amortizer_updates(x, z_pos, keep)


def generator_update(learner: Learner, x: Tensor, z_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Step 6: mean over the batch of Σ_pixels (G(z⁺) − x)² (no 1/(2σ²) factor, as the code)."""
    nets = learner.nets
    with learner.chains.autocast():  # G through the chains: the fast path may rewrite its first / last layer
        x_hat = learner.chains.generator(z_pos)
    loss = (x_hat.float() - x).flatten(1).pow(2).sum(dim=1).mean()
    return loss.detach(), _step(learner, learner.opt_g, nets.generator, loss)


def energy_update(learner: Learner, z_pos: Tensor, z_neg: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 7: contrastive mean E(z⁺) − mean E(z⁻) (no L2 regulariser in the image runs), in fp32."""
    energy = learner.nets.energy
    e_pos, e_neg = energy(z_pos).mean(), energy(z_neg).mean()
    loss = e_pos - e_neg
    norm = _step(learner, learner.opt_e, energy, loss)
    return loss.detach(), e_pos.detach(), e_neg.detach(), norm


def train_step(learner: Learner, x: Tensor) -> dict[str, Tensor]:
    """One iteration of Algorithm 1 on the batch x (B, C, H, W) in [−1, 1]; returns device diagnostics.

    Steps 1-7 are :func:`iteration_updates`, all device work: ``learner.chains`` runs them as they are (reference)
    or captured as one CUDA graph (fast path, ``perf.iteration_graph``). Steps 8-9 depend only on the host's
    iteration count and run here, outside any graph.
    """
    out = learner.chains.run_iteration(lambda xb: iteration_updates(learner, xb), x)
    finish_iteration(learner)
    return out


def iteration_updates(learner: Learner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-7 of Algorithm 1 on x (B, C, H, W): draws, chains and the Q, G, E updates; device diagnostics."""
    cfg = learner.cfg
    nets, rng = learner.nets, learner.rng
    b, nz = x.shape[0], cfg.model.nz
    lv = cfg.langevin
    damc = cfg.method == "damc"
    chains = learner.chains

    if damc:
        d = cfg.diffusion
        # 1. rows with rand < p_uncond train the unconditional (null-token) branch.
        keep = (torch.rand(b, generator=rng, device=x.device) >= d.p_uncond).to(x.dtype)  # (B,)
        # 2. Chain init from the amortizer ([code]: the EMA copy; [paper] Listing 2: the online net).
        #    The authors also draw an unconditional sample zp = Q(x=None) here every iteration and never
        #    use it; we skip that wasted 100-step draw (it only shifted their RNG stream).
        init_net = learner.amortizer_ema if d.init_from == "ema" else nets.amortizer
        assert init_net is not None  # a DAMC learner has both
        z0 = chains.cond_draw(init_net, x)
    else:
        z0 = torch.randn(b, nz, generator=rng, device=x.device)  # short-run LEBM: posterior from N(0, I)

    # 3. Posterior chain: 30 steps on ‖x − G(z)‖²/(2σ²) + E(z) + ½‖z‖² (eq. 16).
    z_pos = chains.posterior(x, z0)

    # 4. Prior chain: 60 steps on E(z) + ½‖z‖² (eq. 3), from the amortizer draws plus N(0, I) (2B chains).
    if not damc:
        z_neg0 = torch.randn(b, nz, generator=rng, device=x.device)
    elif lv.prior_init == "posterior_and_noise":
        z_neg0 = torch.cat([z0, torch.randn(b, nz, generator=rng, device=x.device)])  # (2B, nz)
    else:
        z_neg0 = z0
    z_neg = chains.prior(z_neg0)

    out: dict[str, Tensor] = {}
    # 5. Distil the refined posterior samples z⁺ back into the amortizer (Algorithm 1, line 7).
    if damc:
        out["loss_q"], out["grad_norm_q"] = amortizer_updates(learner, x, z_pos, keep)
    # 6-7. Generator, then energy.
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


def finish_iteration(learner: Learner) -> None:
    """Steps 8-9: LR decay and EMA on the completed-iteration count (host integers, no device sync)."""
    o, d, nets = learner.cfg.optim, learner.cfg.diffusion, learner.nets
    learner.iteration += 1
    if learner.iteration % o.lr_decay_every == 0:
        set_learning_rates(learner)
    if learner.cfg.method == "damc" and learner.iteration % d.ema_every == 0:
        assert learner.amortizer_ema is not None and nets.amortizer is not None
        ema_update(learner.amortizer_ema, nets.amortizer, d.ema_decay)


# ---------------------------------------------------------------------------------------------------------
# Evaluation-time draws (spec §4): the online amortizer, never the EMA copy. They take their own RNG so
# that how often a run draws grids never changes its training stream.


def damc_prior_latents(learner: Learner, n: int, rng: torch.Generator) -> Tensor:
    """DAMC prior samples: the online amortizer's unconditional (random null token) draw."""
    assert learner.nets.amortizer is not None
    return learner.chains.uncond_draw(learner.nets.amortizer, n, rng)


def damc_prior_images(learner: Learner, n: int, rng: torch.Generator) -> Tensor:
    """DAMC prior samples as images (n, C, H, W): the online amortizer's unconditional draw, then G (on the fast
    path one captured region, G in bf16)."""
    assert learner.nets.amortizer is not None
    return learner.chains.prior_images(learner.nets.amortizer, n, rng)


def lebm_prior_latents(learner: Learner, n: int, n_steps: int, step_size: float,
                       rng: torch.Generator) -> Tensor:
    """"LEBM" prior samples: N(0, I) followed by Langevin on E(z) + ½‖z‖² (noise on)."""
    z = torch.randn(n, learner.cfg.model.nz, generator=rng, device=learner.device)
    return learner.chains.prior(z, n_steps=n_steps, step_size=step_size, with_noise=True, rng=rng)


def reconstruct(learner: Learner, x: Tensor, n_steps: int, step_size: float, rng: torch.Generator) -> Tensor:
    """G(z) for posterior z: the amortizer's conditional draw (N(0, I) for LEBM) + noise-free Langevin."""
    if learner.nets.amortizer is not None:
        z = learner.chains.cond_draw(learner.nets.amortizer, x, rng)
    else:
        z = torch.randn(x.shape[0], learner.cfg.model.nz, generator=rng, device=x.device)
    z = learner.chains.posterior(x, z, n_steps=n_steps, step_size=step_size, with_noise=False, rng=rng)
    with torch.no_grad():
        return learner.nets.generator(z)
