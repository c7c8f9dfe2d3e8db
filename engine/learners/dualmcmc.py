"""Dual-MCMC Teaching (``method: dualmcmc``; Cui & Han, NeurIPS 2023, seed 003): an image-space EBM, a generator and
an inference model, MCMC in both spaces.

An energy E_α(x) (lower is more probable; the paper's f_α = −E/T), a generator g_θ(z) with p(z) = N(0, I) and
p(x|z) = N(g(z), σ²I), and an inference model q_φ(z|x) = N(μ(x), diag e^{ℓ(x)}). One iteration, in the order of the
authors' code (jcui1224/dual-MCMC aac3c4c ``train.py`` L106-156; every number with its source in
``docs/methods/dualmcmc.md``):

    1. z ~ N(0, I) (B, nz);  x₀ = g(z)                         (graph kept for the G loss)
    2. x̃ = K_x Langevin steps on E from x₀:  x ← x − ½s²∇E(x) + n·U            (EBM sampling, init by G)
    3. (μ, ℓ) = q(x_data);  z₀ = μ + e^{ℓ/2}·ε                 (graph kept for the I loss)
    4. z̃ = K_z Langevin steps from z₀:  z ← z − ½s²(∇‖g(z) − x‖²/σ² + z/σ_p²) + n·U   (posterior sampling, init by I)
    5. G update (Adam): Gf·Σ(g(z̃) − x)²/B + Sf·Σ(x₀ − x̃)²/B; then E(x) once without grad (their logging forward)
    6. I update (Adam): Gf·mean NLL(z̃; q(x)) + If·mean NLL(z; q(x̃))
    7. E update (Adam): x̃' = K_x steps from g_{θ+}(z) (the *updated* G; ``fine_tune``);
       (mean E(x) − mean E(x̃')) / T,  T = (n/s)²
    8. learning rates lr₀·γ^epoch (``ExponentialLR.step(epoch)`` at each epoch's start).

Both chains are the engine's image chain (:mod:`engine.runtime.image_chains`, which takes any (N, ...) rows, so z
(B, nz) too): its step ``x − ½h²(∇V + x/σ_ref²) + h·ε`` is the authors' step with h = n, V = (s/n)²·(their
potential) and σ_ref = σ_p·n/s (:func:`chain_form`). For the z-chain s = n = 0.1, so V is the potential itself and
σ_ref = 1: the fused kernel's folded N(0, I) term, exactly. For the x-chain V = E/T, the paper's own form.

Draw order from ``learner.rng``: z, the x-chain's noise, ε of z₀, the z-chain's noise, the second x-chain's noise.
Draws (``sample``, ``reconstruct``, grids) run the networks in the authors' evaluator's modes (G's BatchNorm on batch
statistics, E's spectral norm iterating) and restore every buffer afterwards, so drawing never moves training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.learners.base import Grid, LongRun, Method, SampleKind, paired_rows
from engine.learners.image import ImageChainsMixin
from engine.learners.memory import F32, Estimate
from engine.models import IMAGE_SHAPES
from engine.models.dualmcmc import build_dualmcmc_networks
from engine.runtime.image_chains import ImageChains, ReferenceImageChains
from engine.runtime.perf import REFERENCE, PerfPlan
from engine.runtime.updates import GradSync, optimizer_step, set_lr
from engine.sampling.noise import NoiseStream

__all__ = ["METHOD", "DualMCMCLearner", "build", "chain_form", "diag_normal_nll", "iteration_updates",
           "set_learning_rates"]

_NO_CLIP = math.inf  # the authors apply the gradients as computed (no clipping)


def chain_form(step: float, noise: float, prior_sigma: float | None) -> tuple[float, float, float | None]:
    """The engine chain (h, c, σ_ref) with x − ½h²(∇(c·W) + x/σ_ref²) + h·ε = x − ½s²(∇W + x/σ_p²) + n·ε.

    h = n, c = (s/n)², σ_ref = σ_p·n/s (None: no Gaussian term). s = n gives c = 1 and σ_ref = σ_p exactly."""
    scale = 1.0 if step == noise else (step / noise) ** 2
    ref = None if prior_sigma is None else (prior_sigma if step == noise else prior_sigma * noise / step)
    return noise, scale, ref


def diag_normal_nll(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Their ``diag_normal_NLL`` (train.py L22-25): ½Σℓ + ½Σ(z − μ)²/(1e-6 + e^ℓ) per row (N,), constant dropped."""
    return 0.5 * logvar.sum(dim=1) + 0.5 * ((z - mu) * (z - mu) / (1e-6 + torch.exp(logvar))).sum(dim=1)


@dataclass
class DualMCMCLearner(ImageChainsMixin):
    """Everything one Dual-MCMC iteration reads or writes."""

    method: ClassVar[str] = "dualmcmc"

    cfg: Config
    energy: nn.Module  # E: (N, C, H, W) -> (N,) energy (spectral norm on every layer)
    generator: nn.Module  # g: (N, nz) -> (N, C, H, W) in (−1, 1) (BatchNorm, train mode)
    inference: nn.Module  # q: (N, C, H, W) -> (μ, log-variance), each (N, nz)
    opt_ebm: torch.optim.Optimizer
    opt_gen: torch.optim.Optimizer
    opt_inf: torch.optim.Optimizer
    rng: torch.Generator
    iteration: int = 0
    grad_sync: GradSync | None = None
    chains: ImageChains = field(init=False, repr=False)
    plan: PerfPlan = field(default=REFERENCE, repr=False)

    def __post_init__(self) -> None:
        self.chains = ReferenceImageChains()
        self._energies: dict[Hashable, Callable[..., Tensor]] = {}  # one callable per chain form (graph/compile key)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    # -- the engine.learners.base.Learner protocol -------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        return {"ebm": self.energy, "generator": self.generator, "inference": self.inference}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_ebm": self.opt_ebm, "opt_gen": self.opt_gen, "opt_inf": self.opt_inf}

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        out = iteration_updates(self, x)
        self.iteration += 1
        if self.iteration % self.cfg.dualmcmc.epoch_iterations == 0:
            set_learning_rates(self)
        return out

    def learning_rates(self) -> dict[str, float]:
        c = self.cfg.dualmcmc
        decay = c.lr_gamma ** (self.iteration // c.epoch_iterations)  # host arithmetic, no device read
        return {"lr_ebm": c.ebm_lr * decay, "lr_gen": c.gen_lr * decay, "lr_inf": c.inf_lr * decay}

    # -- the two chains ----------------------------------------------------------------------------------------

    def _energy_fn(self, key: Hashable, make: Callable[[], Callable[..., Tensor]]) -> Callable[..., Tensor]:
        fn = self._energies.get(key)
        if fn is None:
            fn = self._energies[key] = make()
        return fn

    def ebm_chain(self, x0: Tensor, rng: torch.Generator | None, *, steps: int | None = None,
                  step_size: float | None = None, noise: Tensor | None = None) -> Tensor:
        """x̃: their ``langevin_x`` from x0 (N, C, H, W): x ← x − ½s²∇ΣE(x) + n·U, E's parameters frozen."""
        c = self.cfg.dualmcmc
        s = c.ebm_chain.step_size if step_size is None else step_size
        h, scale, _ = chain_form(s, c.ebm_noise, None)

        def make() -> Callable[..., Tensor]:
            def v(x: Tensor) -> Tensor:  # E/T per row, T = (n/s)²: the paper's −f_α
                e = self.energy(x).float()
                return e if scale == 1.0 else e * scale
            return v

        key = ("dualmcmc.x", scale)
        return self.chains.run(self._energy_fn(key, make), x0, n_steps=c.ebm_chain.n_steps if steps is None else steps,
                               step_size=h, ref_sigma=None, with_noise=c.ebm_chain.noise, rng=rng,
                               freeze=(self.energy,), noise=noise, key=key)

    def posterior_chain(self, z0: Tensor, x: Tensor, rng: torch.Generator | None, *, steps: int | None = None,
                        step_size: float | None = None, sigma: float | None = None,
                        noise: Tensor | None = None) -> Tensor:
        """z̃: their ``langevin_z`` from z0 (B, nz) given x: z ← z − ½s²(∇Σ‖g(z) − x‖²/σ² + z/σ_p²) + n·U, G frozen."""
        c = self.cfg.dualmcmc
        s = c.posterior.step_size if step_size is None else step_size
        sig = c.sigma if sigma is None else sigma
        h, scale, ref = chain_form(s, c.posterior_noise, c.prior_sigma)
        factor = scale / (sig * sig)

        def make() -> Callable[..., Tensor]:
            def v(z: Tensor, target: Tensor) -> Tensor:  # (s/n)²·‖g(z) − x‖²/σ² per row
                return (self.generator(z).float() - target).flatten(1).pow(2).sum(dim=1) * factor
            return v

        key = ("dualmcmc.z", factor)
        return self.chains.run(self._energy_fn(key, make), z0, n_steps=c.posterior.n_steps if steps is None else steps,
                               step_size=h, ref_sigma=ref, with_noise=c.posterior.noise, rng=rng,
                               freeze=(self.generator,), noise=noise, cond=(x,), key=key)

    # -- draws -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def sampling_mode(self) -> Iterator[None]:
        """The networks as the authors' evaluator runs them (``batch_stats``: train mode — G's BatchNorm on batch
        statistics, E's spectral norm one power iteration per forward — else eval mode); every buffer (running
        statistics, u, v) and mode flag is put back afterwards, so a draw changes nothing the next iteration reads."""
        nets = (self.generator, self.energy, self.inference)
        modes = [[m.training for m in net.modules()] for net in nets]
        saved = [[b.detach().clone() for b in net.buffers()] for net in nets]
        for net in nets:
            net.train(self.cfg.dualmcmc.batch_stats)
        try:
            yield
        finally:
            with torch.no_grad():
                for net, bufs, flags in zip(nets, saved, modes, strict=True):
                    for b, old in zip(net.buffers(), bufs, strict=True):
                        b.copy_(old)
                    for m, flag in zip(net.modules(), flags, strict=True):
                        m.training = flag

    def draw(self, n: int, rng: torch.Generator, z: Tensor | None = None) -> Tensor:
        """x̂ = g(z) (n, C, H, W), z ~ N(0, I) from ``rng`` unless given (the generator's batch statistics)."""
        if z is None:
            z = torch.randn(n, self.cfg.model.nz, generator=rng, device=self.device)
        with torch.no_grad(), self.autocast():
            return self.generator(z).float()

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        c = self.cfg.dualmcmc
        return (SampleKind("ebm", f"x~: generator draw g(z), z ~ N(0, I), revised by the EBM (noise scale "
                                  f"{c.ebm_noise:g})", chain=True, steps=c.eval_steps, step_size=c.eval_step_size,
                           noise=c.ebm_chain.noise, deterministic=False),
                SampleKind("gen", "x^: generator draw g(z), z ~ N(0, I)", deterministic=False))

    def _eval_chain(self, steps: int | None, step_size: float | None) -> tuple[int, float]:
        c = self.cfg.dualmcmc
        return (c.eval_steps if steps is None else steps), (c.eval_step_size if step_size is None else step_size)

    def sample(self, kind: str, n: int, rng: torch.Generator, *, steps: int | None = None,
               step_size: float | None = None) -> Tensor:
        """n images of ``kind`` drawn as one batch (task_fid.py: z → g(z) → 70 steps of s 0.4, batches of 100)."""
        self._check_kind(kind)
        k, s = self._eval_chain(steps, step_size)
        with self.sampling_mode():
            x_hat = self.draw(n, rng)
            return self.ebm_chain(x_hat, rng, steps=k, step_size=s) if kind == "ebm" else x_hat

    def noise_width(self, kind: str, steps: int | None = None) -> int:
        self._check_kind(kind)
        return 1  # z; the chain's noise (when on) comes after it from the stream's generator

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor:
        self._check_kind(kind)
        k, s = self._eval_chain(steps, step_size)
        z = noise.take(b)[:, 0].to(self.device)
        with self.sampling_mode():
            x_hat = self.draw(b, noise.gen, z=z)
            if kind == "gen":
                return x_hat
            eps = None
            if self.cfg.dualmcmc.ebm_chain.noise:  # one block per batch from the stream's generator, after its z
                eps = torch.randn((k, *x_hat.shape), generator=noise.gen).to(self.device)
            return self.ebm_chain(x_hat, None, steps=k, step_size=s, noise=eps)

    def reconstruct(self, x: Tensor, rng: torch.Generator, *, steps: int, step_size: float,
                    sigma: float) -> Tensor:
        """Their ``recon_x`` (train.py L71-76): z₀ = μ(x) (the inference mean), ``steps`` z-chain steps of size
        ``step_size`` at σ = ``sigma`` (noise n as in training), then g(z) (``steps`` 0: g(μ(x)), "Inf")."""
        with self.sampling_mode():
            with torch.no_grad(), self.autocast():
                mu = self.inference(x)[0].float()
            z = self.posterior_chain(mu, x, rng, steps=steps, step_size=step_size, sigma=sigma) if steps else mu
            with torch.no_grad(), self.autocast():
                return self.generator(z).float()

    def describe_reconstruct(self, steps: int, step_size: float, sigma: float) -> tuple[str, str]:
        c = self.cfg.dualmcmc
        chain = (f", then {steps} Langevin steps on |x - g(z)|^2/sigma^2 + |z|^2/2 (s {step_size:g}, noise "
                 f"{c.posterior_noise if c.posterior.noise else 0:g}, sigma {sigma:g})") if steps else ""
        return "inference mean", f"inference model mean mu(x){chain}, then the generator g(z)"

    def grids(self, x_test: Tensor, rng: torch.Generator) -> list[Grid]:
        """x̂ and x̃ side by side (rows alternate: 8 generator draws, then the same 8 after the EBM's evaluation
        chain), and the test reconstructions (μ(x), K_z z-chain steps, g)."""
        c = self.cfg.dualmcmc
        with self.sampling_mode():
            x_hat = self.draw(self.cfg.eval.n_samples, rng)
            x_tilde = self.ebm_chain(x_hat, rng, steps=c.eval_steps, step_size=c.eval_step_size)
        recon = self.reconstruct(x_test, rng, steps=c.posterior.n_steps, step_size=c.posterior.step_size,
                                 sigma=c.sigma)
        return [Grid("samples_gen_ebm", paired_rows(x_hat, x_tilde), nrow=8),
                Grid("recon", paired_rows(x_test, recon), nrow=8)]

    def long_run(self, n_chains: int, steps: int, marks: list[int], step_size: float | None,
                 rng: torch.Generator) -> LongRun:
        """The EBM's chain from generator draws far beyond its K steps: x at the marks, mean E(x) per step."""
        _, s = self._eval_chain(None, step_size)

        def energy(x: Tensor) -> Tensor:
            with torch.no_grad():
                return self.energy(x).float().mean()

        with self.sampling_mode():
            x = self.draw(n_chains, rng)
            trace, frames = [energy(x)], [x] if 0 in marks else []
            for t in range(1, steps + 1):
                x = self.ebm_chain(x, rng, steps=1, step_size=s)
                trace.append(energy(x))
                if t in marks:
                    frames.append(x)
        return LongRun(torch.stack(frames, dim=1), torch.stack(trace),
                       f"mean E(x) over {n_chains} chains from generator draws, s={s:g}, "
                       f"n={self.cfg.dualmcmc.ebm_noise:g}", s)


# ---------------------------------------------------------------------------------------------------------
# Building


def _widths(cfg: Config) -> tuple[int | None, int | None, int | None]:
    c = cfg.dualmcmc
    return c.ngf or None, c.ndf or None, c.nif or None


def build(cfg: Config, device: torch.device, rng: torch.Generator) -> DualMCMCLearner:
    """G, E, I in their order with their initialisation and E's spectral norm (from the global seed), then Adam with
    betas (β₁, 0.9) and coupled weight decay for each (train.py L80-82)."""
    nets = build_dualmcmc_networks(cfg.model.arch, cfg.model.nz, *_widths(cfg))
    for m in (nets.generator, nets.energy, nets.inference):
        m.to(device)
    c = cfg.dualmcmc
    betas = (c.beta1, c.beta2)
    opt_ebm = torch.optim.Adam(nets.energy.parameters(), lr=c.ebm_lr, betas=betas, weight_decay=c.ebm_decay)
    opt_gen = torch.optim.Adam(nets.generator.parameters(), lr=c.gen_lr, betas=betas, weight_decay=c.gen_decay)
    opt_inf = torch.optim.Adam(nets.inference.parameters(), lr=c.inf_lr, betas=betas, weight_decay=c.inf_decay)
    return DualMCMCLearner(cfg, nets.energy, nets.generator, nets.inference, opt_ebm, opt_gen, opt_inf, rng)


def set_learning_rates(learner: DualMCMCLearner) -> None:
    """Every optimizer's LR for the current iteration count (closed form lr₀·γ^epoch, so a resume is exact)."""
    lrs = learner.learning_rates()
    set_lr(learner.opt_ebm, lrs["lr_ebm"])
    set_lr(learner.opt_gen, lrs["lr_gen"])
    set_lr(learner.opt_inf, lrs["lr_inf"])


def _state_keys(cfg: Config) -> tuple[list[str], list[str]]:
    return ["ebm", "generator", "inference"], ["opt_ebm", "opt_gen", "opt_inf"]


def _leaf_bytes(module: nn.Module, *inputs: Tensor) -> int:
    """Bytes (fp32) of every leaf layer's output for one forward on meta ``inputs`` (shapes only, nothing runs):
    these residual stacks branch, which :func:`~engine.learners.memory.activation_bytes`'s chain walk cannot follow."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for m in module.modules() if not list(m.children())]
    try:
        module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return F32 * sum(sizes)


def _estimate(cfg: Config, batch: int | None = None) -> Estimate:
    """Memory floor: weights, gradients and two Adam moments of the three networks; the activations of the largest
    backward (the G update: two generator graphs and q's on the batch; or an x-chain step's input gradient)."""
    shape = IMAGE_SHAPES[cfg.model.arch]
    with torch.device("meta"):
        nets = build_dualmcmc_networks(cfg.model.arch, cfg.model.nz, *_widths(cfg))
        g, e, i = nets.generator, nets.energy, nets.inference
        act_g = _leaf_bytes(g, torch.empty(1, cfg.model.nz))
        act_e = _leaf_bytes(e, torch.empty(1, *shape))
        act_i = _leaf_bytes(i, torch.empty(1, *shape))
    n_params = sum(p.numel() for m in (g, e, i) for p in m.parameters())
    image = math.prod(shape) * F32
    n = max(cfg.train.batch_size, batch or 0)
    activations = n * max(2 * act_g + act_i + 4 * image, 2 * (act_e + image))
    grids = cfg.eval.n_samples * (act_g + act_e + act_i + 3 * image)
    return Estimate(F32 * 4 * n_params, activations, grids, 0)


# ---------------------------------------------------------------------------------------------------------
# The training iteration


def iteration_updates(learner: DualMCMCLearner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-7 on the data batch x (B, C, H, W) in [−1, 1]; device diagnostics."""
    c, lr = learner.cfg.dualmcmc, learner
    b, nz = x.shape[0], learner.cfg.model.nz
    z = torch.randn(b, nz, generator=lr.rng, device=x.device)  # 1.
    with lr.autocast():
        x0 = lr.generator(z).float()
    x_t = lr.ebm_chain(x0.detach(), lr.rng)  # 2.
    with lr.autocast():
        mu, logvar = lr.inference(x)  # 3.
    mu, logvar = mu.float(), logvar.float()
    std = torch.exp(logvar.detach() * 0.5)
    z0 = torch.randn(std.shape, generator=lr.rng, device=x.device) * std + mu.detach()
    z_t = lr.posterior_chain(z0, x, lr.rng)  # 4.

    with lr.autocast():  # 5. the generator: the data's posterior samples and the EBM's revisions
        x_rec = lr.generator(z_t).float()
    recon = (x_rec - x).pow(2).sum() / b
    teach = (x0 - x_t).pow(2).sum() / b
    loss_g = c.gen_weight * recon + c.sample_weight * teach
    norm_g = optimizer_step(lr.opt_gen, lr.generator, loss_g, _NO_CLIP, lr.grad_sync)
    with torch.no_grad():
        e_logged = lr.energy(x).mean()  # their logging forward: it advances E's spectral-norm power iteration

    nll_data = diag_normal_nll(z_t, mu, logvar).mean()  # 6. the inference model, on (x, z̃) and (x̃, z)
    with lr.autocast():
        mu_g, logvar_g = lr.inference(x_t)
    nll_gen = diag_normal_nll(z, mu_g.float(), logvar_g.float()).mean()
    loss_i = c.gen_weight * nll_data + c.inf_weight * nll_gen
    norm_i = optimizer_step(lr.opt_inf, lr.inference, loss_i, _NO_CLIP, lr.grad_sync)

    e_data = lr.energy(x).mean()  # 7. the EBM: data against the updated generator's (revised) draws
    x_neg = lr.draw(b, lr.rng, z=z)
    if c.fine_tune:
        x_neg = lr.ebm_chain(x_neg, lr.rng)
    e_syn = lr.energy(x_neg).mean()
    gap = e_data - e_syn
    loss_e = gap / (c.ebm_noise / c.ebm_chain.step_size) ** 2 if c.use_temp else gap
    norm_e = optimizer_step(lr.opt_ebm, lr.energy, loss_e, _NO_CLIP, lr.grad_sync)
    return {
        "loss_e": loss_e.detach(), "energy_data": e_data.detach(), "energy_syn": e_syn.detach(),
        "energy_data_after_g": e_logged, "grad_norm_e": norm_e,
        "loss_g": loss_g.detach(), "recon_g": recon.detach(), "teach_g": teach.detach(), "grad_norm_g": norm_g,
        "loss_i": loss_i.detach(), "nll_data": nll_data.detach(), "nll_gen": nll_gen.detach(), "grad_norm_i": norm_i,
        # How far the EBM moved the generator's draws, and the posterior samples' fit (per pixel, [−1, 1] units).
        "revision_mse": (x_t - x0.detach()).pow(2).mean(), "posterior_mse": (x_rec.detach() - x).pow(2).mean(),
        # The authors' stop rule |mean E(x) − mean E(x̃')| > 1e4 (train.py L161-164), read by the divergence guard:
        # 0 while within it, NaN past it (no host read here).
        "explosion_e": torch.where(gap.detach().abs() > c.explode, math.nan, 0.0),
    }


# Seed 003 Table 1 (EBM samples; CelebA-64's generator samples from p.8 §5.2). Reconstruction MSE (Table 3) is left
# out: the paper does not say in which units it is measured.
PAPER: dict[str, dict[str, float]] = {"cifar10": {"fid_ebm": 9.26}, "celeba64": {"fid_ebm": 5.15, "fid_gen": 5.94}}

METHOD = Method("dualmcmc", "Dual-MCMC Teaching (Cui & Han, NeurIPS 2023): an image-space EBM, a generator and an "
                "inference model, MCMC in both spaces", build, _state_keys, _estimate, kinds=("ebm", "gen"),
                exportable=False, metrics=("mse", "chains"), paper=PAPER,
                study_labels={"ebm": ("Dual-MCMC EBM samples (the generator's draw revised by the EBM's chain)", ""),
                              "gen": ("Dual-MCMC generator samples g(z)", ""),
                              "recon": ("reconstructions of the test split, Dual-MCMC run", "")},
                study_comparisons=tuple(  # the paper's ordering: Dual-MCMC (FID 9.26) beats the cooperative EBM
                    (name, metric, ("dualmcmc", "ebm"), other) for metric in ("kid", "fid") for name, other in (
                        ("Dual-MCMC EBM samples < CoopVAEBM EBM samples", ("coopvae", "ebm")),
                        ("Dual-MCMC EBM samples vs DAMC prior samples", ("damc", "damc")),
                        ("Dual-MCMC EBM samples < its generator's samples", ("dualmcmc", "gen")))))
