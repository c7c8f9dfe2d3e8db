"""CoopVAEBM (``method: coopvae``; Xie, Zheng, Li, AAAI 2021, seed 004): an image-space EBM taught by a VAE.

An energy-based model p_θ(x) ∝ exp(f_θ(x)) · N(x; 0, σ_ref² I) with a bottom-up ConvNet score f_θ (the authors'
"descriptor"), and a VAE — generator g_α(z), z ~ N(0, I), encoder q_φ(z|x) — as its amortized sampler. One
iteration, in the authors' code's order (jianwen-xie/CoopVAEBM ``model/model.py`` ``train``; every number with its
source in ``docs/methods/coopvae.md``):

    1. z ~ N(0, I) (n_chains, nz);  x̂ = g_α(z)                                     (ancestral draw, no grad)
    2. x̃ = K Langevin steps on U(x) = −f_θ(x) + ‖x‖²/(2σ_ref²) from x̂:
           x ← x − ½δ²·(x/σ_ref² − ∂f/∂x)  [+ δ·ε; the code has the noise term commented out]
    3. EBM update (Adam): minimise mean f(x̃) − mean f(x_data)        (maximum likelihood, the revised samples
                                                                        as the model's)
    4. VAE update (Adam) on x̃ as data ("MCMC teaching"): minimise the mean over rows of
           Σ_pix (g(μ + ε·e^s) − x̃)² + w·KL(N(μ, e^{2s}) ‖ N(0, I)),   (μ, s) = q_φ(x̃), ε ~ N(0, I)
    5. learning rates lr₀·0.98^(epoch/20), constant within an epoch (``tf.train.exponential_decay``).

Draw order from ``learner.rng``: z, [the chain's noise], ε of the VAE update. The chain runs through
:mod:`engine.runtime.image_chains` (reference, or the fast path's compile / bf16 / fused kernel / CUDA graph);
nothing here reads a tensor on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.learners.base import Grid, LongRun, Method, SampleKind, paired_rows
from engine.learners.image import ImageChainsMixin
from engine.learners.memory import F32, Estimate, activation_bytes
from engine.models import IMAGE_SHAPES
from engine.models.coopvae import build_coopvae_networks
from engine.runtime.image_chains import ImageChains, ReferenceImageChains
from engine.runtime.perf import REFERENCE, PerfPlan
from engine.runtime.updates import GradSync, optimizer_step, set_lr
from engine.sampling.noise import NoiseStream

__all__ = ["METHOD", "CoopVAELearner", "build", "ebm_update", "iteration_updates", "vae_loss", "vae_update"]

_NO_CLIP = math.inf  # the authors apply the gradients as computed (no clipping)


@dataclass
class CoopVAELearner(ImageChainsMixin):
    """Everything one CoopVAEBM iteration reads or writes."""

    method: ClassVar[str] = "coopvae"

    cfg: Config
    descriptor: nn.Module  # f_θ: (N, C, H, W) -> (N,) score (negative energy)
    encoder: nn.Module  # q_φ: (N, C, H, W) -> (μ, log σ), each (N, nz)
    generator: nn.Module  # g_α: (N, nz) -> (N, C, H, W) in [−1, 1]
    opt_ebm: torch.optim.Optimizer
    opt_vae: torch.optim.Optimizer
    rng: torch.Generator
    iteration: int = 0
    grad_sync: GradSync | None = None
    chains: ImageChains = field(init=False, repr=False)
    plan: PerfPlan = field(default=REFERENCE, repr=False)

    def __post_init__(self) -> None:
        self.chains = ReferenceImageChains()
        self.vae = nn.ModuleDict({"encoder": self.encoder, "generator": self.generator})  # one optimizer, one sync

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    # -- the engine.learners.base.Learner protocol -------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        return {"descriptor": self.descriptor, "encoder": self.encoder, "generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_ebm": self.opt_ebm, "opt_vae": self.opt_vae}

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        out = iteration_updates(self, x)
        self.iteration += 1
        if self.iteration % self.cfg.coopvae.epoch_iterations == 0:
            set_learning_rates(self)
        return out

    def learning_rates(self) -> dict[str, float]:
        c = self.cfg.coopvae
        decay = _decay(self.cfg, self.iteration)
        return {"lr_ebm": c.ebm_lr * decay, "lr_vae": c.vae_lr * decay}  # host arithmetic, no device read

    def neg_score(self, x: Tensor) -> Tensor:
        """V(x) = −f_θ(x) per row (N,): the non-Gaussian part of U(x) = −f(x) + ‖x‖²/(2σ_ref²)."""
        return -self.descriptor(x)

    def revise(self, x_hat: Tensor, rng: torch.Generator | None, *, steps: int | None = None,
               step_size: float | None = None, noise: Tensor | None = None) -> Tensor:
        """x̃: the EBM's Langevin chain from x̂ (N, C, H, W) (step 2), its parameters frozen for the chain."""
        c = self.cfg.coopvae
        return self.chains.run(self.neg_score, x_hat, n_steps=c.langevin.n_steps if steps is None else steps,
                               step_size=c.langevin.step_size if step_size is None else step_size,
                               ref_sigma=c.ref_sigma, with_noise=c.langevin.noise, rng=rng,
                               freeze=(self.descriptor,), noise=noise, key="coopvae.revise")

    def draw(self, n: int, rng: torch.Generator, z: Tensor | None = None) -> Tensor:
        """x̂ = g(z) (n, C, H, W), z ~ N(0, I) from ``rng`` unless given (the generator's batch statistics)."""
        if z is None:
            z = torch.randn(n, self.cfg.model.nz, generator=rng, device=self.device)
        with torch.no_grad(), self.autocast():
            return self.generator(z).float()

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        c = self.cfg.coopvae
        return (SampleKind("ebm", "x~: VAE draw g(z), z ~ N(0, I), revised by the EBM", chain=True,
                           steps=c.langevin.n_steps, step_size=c.langevin.step_size, noise=c.langevin.noise,
                           deterministic=False),
                SampleKind("vae", "x^: VAE draw g(z), z ~ N(0, I)", deterministic=False))

    def sample(self, kind: str, n: int, rng: torch.Generator, *, steps: int | None = None,
               step_size: float | None = None) -> Tensor:
        """n images of ``kind`` drawn as one batch (the generator normalises with the batch's statistics, as the
        authors' sampler does with its 900 chains)."""
        self._check_kind(kind)
        x_hat = self.draw(n, rng)
        return self.revise(x_hat, rng, steps=steps, step_size=step_size) if kind == "ebm" else x_hat

    def noise_width(self, kind: str, steps: int | None = None) -> int:
        self._check_kind(kind)
        return 1  # z; the chain's image noise (when on) comes after it from the stream's generator

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor:
        self._check_kind(kind)
        z = noise.take(b)[:, 0].to(self.device)
        x_hat = self.draw(b, noise.gen, z=z)
        if kind == "vae":
            return x_hat
        c = self.cfg.coopvae
        n_steps = c.langevin.n_steps if steps is None else steps
        eps = None
        if c.langevin.noise:  # one block per batch from the stream's generator, after the batch's z
            eps = torch.randn((n_steps, *x_hat.shape), generator=noise.gen).to(self.device)
        return self.revise(x_hat, None, steps=n_steps, step_size=step_size, noise=eps)

    def reconstruct(self, x: Tensor, rng: torch.Generator, *, steps: int, step_size: float,
                    sigma: float) -> Tensor:
        """g(μ_φ(x)): the encoder's mean, decoded (the VAE's inference; the posterior-chain arguments do not apply)."""
        with torch.no_grad(), self.autocast():
            mean, _ = self.encoder(x)
            return self.generator(mean.float()).float()

    def describe_reconstruct(self, steps: int, step_size: float, sigma: float) -> tuple[str, str]:
        return "VAE encoder mean", "VAE encoder mean mu(x), then the generator g(mu) (no Langevin)"

    def grids(self, x_test: Tensor, rng: torch.Generator) -> list[Grid]:
        """x̂ and x̃ side by side (rows alternate: 8 VAE draws, then the same 8 after the EBM's chain), and the
        test reconstructions."""
        x_hat = self.draw(self.cfg.eval.n_samples, rng)
        x_tilde = self.revise(x_hat, rng)
        recon = self.reconstruct(x_test, rng, steps=0, step_size=0.0, sigma=1.0)
        return [Grid("samples_vae_ebm", paired_rows(x_hat, x_tilde), nrow=8),
                Grid("recon", paired_rows(x_test, recon), nrow=8)]

    def long_run(self, n_chains: int, steps: int, marks: list[int], step_size: float | None,
                 rng: torch.Generator) -> LongRun:
        """The EBM's chain from VAE draws, far beyond the K training steps: x at the marks, mean U(x) per step."""
        c = self.cfg.coopvae
        s = c.langevin.step_size if step_size is None else step_size
        inv = 0.5 / (c.ref_sigma * c.ref_sigma)

        def energy(x: Tensor) -> Tensor:
            with torch.no_grad():
                return (-self.descriptor(x) + inv * x.flatten(1).pow(2).sum(dim=1)).mean()

        x = self.draw(n_chains, rng)
        trace, frames = [energy(x)], [x] if 0 in marks else []
        for t in range(1, steps + 1):
            x = self.revise(x, rng, steps=1, step_size=s)
            trace.append(energy(x))
            if t in marks:
                frames.append(x)
        return LongRun(torch.stack(frames, dim=1), torch.stack(trace),
                       f"mean U(x) = -f(x) + |x|^2/(2 sigma_ref^2) over {n_chains} chains from VAE draws, s={s:g}", s)


# ---------------------------------------------------------------------------------------------------------
# Building


def build(cfg: Config, device: torch.device, rng: torch.Generator) -> CoopVAELearner:
    """Networks with the authors' initialisation (from the global seed), Adam for the EBM and for the VAE."""
    descriptor, encoder, generator = build_coopvae_networks(cfg.model.arch, cfg.model.nz)
    for m in (descriptor, encoder, generator):
        m.to(device)
    c = cfg.coopvae
    betas = (c.beta1, c.beta2)
    opt_ebm = torch.optim.Adam(descriptor.parameters(), lr=c.ebm_lr, betas=betas)
    opt_vae = torch.optim.Adam([*encoder.parameters(), *generator.parameters()], lr=c.vae_lr, betas=betas)
    return CoopVAELearner(cfg, descriptor, encoder, generator, opt_ebm, opt_vae, rng)


def _decay(cfg: Config, completed: int) -> float:
    """0.98^(epoch/20) for the epoch the next iteration is in (continuous exponent, as the code's schedule)."""
    c = cfg.coopvae
    return float(c.lr_decay ** ((completed // c.epoch_iterations) / c.lr_decay_epochs))


def set_learning_rates(learner: CoopVAELearner) -> None:
    """Both optimizers' LRs for the current iteration count (closed form, so a resume is exact)."""
    lrs = learner.learning_rates()
    set_lr(learner.opt_ebm, lrs["lr_ebm"])
    set_lr(learner.opt_vae, lrs["lr_vae"])


def _state_keys(cfg: Config) -> tuple[list[str], list[str]]:
    return ["descriptor", "encoder", "generator"], ["opt_ebm", "opt_vae"]


def _estimate(cfg: Config, batch: int | None = None) -> Estimate:
    """Memory floor: weights, gradients and two Adam moments of the three networks; the activations of the largest
    backward (the VAE update on n_chains images, or the chain's input gradient on them)."""
    c, h, w = IMAGE_SHAPES[cfg.model.arch]
    with torch.device("meta"):
        d, e, g = build_coopvae_networks(cfg.model.arch, cfg.model.nz)
    n_params = sum(p.numel() for m in (d, e, g) for p in m.parameters())
    act_d, _ = activation_bytes(d, (c, h, w))
    act_e, _ = activation_bytes(e, (c, h, w))
    act_g, layer_g = activation_bytes(g, (cfg.model.nz, 1, 1))
    image = c * h * w * F32
    n = max(cfg.coopvae.n_chains, batch or 0)
    activations = max(n * (act_d + image), n * (act_e + act_g + 2 * image), cfg.train.batch_size * act_d)
    grids = cfg.eval.n_samples * (act_g + act_d + 2 * image)
    return Estimate(F32 * 4 * n_params, activations, grids, 0)


# ---------------------------------------------------------------------------------------------------------
# The training iteration


def iteration_updates(learner: CoopVAELearner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-4 on the data batch x (B, C, H, W) in [−1, 1]; device diagnostics."""
    c = learner.cfg.coopvae
    x_hat = learner.draw(c.n_chains, learner.rng)  # 1. (n_chains, C, H, W)
    x_tilde = learner.revise(x_hat, learner.rng)  # 2.
    loss_e, f_syn, f_obs, norm_e = ebm_update(learner, x, x_tilde)  # 3.
    loss_vae, recon, kl, norm_vae = vae_update(learner, x_tilde)  # 4.
    return {
        "loss_e": loss_e, "score_data": f_obs, "score_syn": f_syn, "grad_norm_e": norm_e,
        "loss_vae": loss_vae, "recon_vae": recon, "kl_vae": kl, "grad_norm_vae": norm_vae,
        # How far the EBM moved the VAE's draws (per pixel, [−1, 1] units): the teaching signal.
        "revision_mse": (x_tilde - x_hat).pow(2).mean(),
        # The authors' "L2 dist": squared distance between the mean synthesized and the mean data image.
        "mean_image_l2": (x_tilde.mean(dim=0) - x.mean(dim=0)).pow(2).mean(),
    }


def ebm_update(learner: CoopVAELearner, x: Tensor, x_tilde: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 3: Adam on mean f(x̃) − mean f(x) (lowers the revised samples' score, raises the data's), fp32."""
    f_syn = learner.descriptor(x_tilde).mean()
    f_obs = learner.descriptor(x).mean()
    loss = f_syn - f_obs
    norm = optimizer_step(learner.opt_ebm, learner.descriptor, loss, _NO_CLIP, learner.grad_sync)
    return loss.detach(), f_syn.detach(), f_obs.detach(), norm


def vae_loss(learner: CoopVAELearner, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mean reconstruction term, mean KL) of the VAE on x (N, C, H, W) with the reparameterisation noise
    eps (N, nz): mean over rows of Σ_pix (g(μ + ε·e^s) − x)² + w·KL, KL = −½Σ(1 + 2s − μ² − e^{2s})."""
    with learner.autocast():
        mean, log_std = learner.encoder(x)
    mean, log_std = mean.float(), log_std.float()
    code = mean + eps * torch.exp(log_std)
    with learner.autocast():
        x_rec = learner.generator(code)
    recon = (x_rec.float() - x).flatten(1).pow(2).sum(dim=1)
    kl = -0.5 * (1.0 + 2.0 * log_std - mean.pow(2) - torch.exp(2.0 * log_std)).sum(dim=1)
    loss = (recon + learner.cfg.coopvae.latent_weight * kl).mean()
    return loss, recon.mean(), kl.mean()


def vae_update(learner: CoopVAELearner, x_tilde: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 4: Adam on the VAE loss with the revised samples x̃ as its data (MCMC teaching)."""
    eps = torch.randn(x_tilde.shape[0], learner.cfg.model.nz, generator=learner.rng, device=x_tilde.device)
    loss, recon, kl = vae_loss(learner, x_tilde, eps)
    norm = optimizer_step(learner.opt_vae, learner.vae, loss, _NO_CLIP, learner.grad_sync)
    return loss.detach(), recon.detach(), kl.detach(), norm


# Seed 004 Table 1: CoopVAEBM's CIFAR-10 FID (its EBM samples x̃, as the authors' FID code evaluates).
PAPER: dict[str, dict[str, float]] = {"cifar10": {"fid_ebm": 36.2}}

METHOD = Method("coopvae", "CoopVAEBM (Xie, Zheng, Li, AAAI 2021): an image-space EBM whose chains a VAE amortizes",
                build, _state_keys, _estimate, kinds=("ebm", "vae"), exportable=False, metrics=("mse", "chains"),
                paper=PAPER,
                study_labels={"ebm": ("CoopVAEBM EBM samples x̃ (the VAE's draw revised by Langevin on the EBM)", ""),
                              "vae": ("CoopVAEBM VAE samples x̂ (the VAE generator's draw alone)", ""),
                              "recon": ("reconstructions of the test split, CoopVAEBM run", "")},
                study_comparisons=(
                    ("CoopVAEBM EBM samples vs DAMC prior samples", "kid", ("coopvae", "ebm"), ("damc", "damc")),
                    ("CoopVAEBM EBM samples vs DAMC prior samples", "fid", ("coopvae", "ebm"), ("damc", "damc")),
                    # the paper's MCMC-teaching claim: the EBM's revision improves on the VAE's draw
                    ("CoopVAEBM EBM samples (x̃) < VAE samples (x̂)", "kid", ("coopvae", "ebm"), ("coopvae", "vae")),
                    ("CoopVAEBM EBM samples (x̃) < VAE samples (x̂)", "fid", ("coopvae", "ebm"), ("coopvae", "vae"))))
