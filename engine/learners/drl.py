"""Diffusion recovery likelihood (``method: drl``; Gao, Song, Poole, Wu, Kingma, ICLR 2021, seed 002).

T conditional EBMs p_θ(x_t | x_{t+1}) along a diffusion, one network f_θ(y, t) for all levels
(:mod:`engine.models.drl`), each learnt by maximising the recovery likelihood with short conditional Langevin
chains; samples come level by level from noise. One iteration, in the authors' code's order
(ruiqigao/recovery_likelihood @ c77cc05 ``train.py:57-75`` → ``model.py``; every number with its source in
``docs/methods/drl.md``):

    1. t ~ U{0..T−1} per example; ε′, ε ~ N(0, I)                                    (train.py:70, model.py:113)
    2. x_t = ā_t·x + σ̄_t·ε;  x̃ = a_{t+1}·x_t + σ_{t+1}·ε′                          (model.py:94-118)
    3. y = x̃, then K Langevin steps on log p(y | x̃, t) = f(y, t)/s_t² − r_t·‖y − x̃‖²/(2σ_{t+1}²):
           y ← y + ½s_t²·∇_y log p + s_t·n·ξ,  s_t² = (σ̄_t/σ̄_0)·b²·σ_{t+1}²          (model.py:153-196)
       x⁻ = y / a_t (a_t = ``a_s_prev[t+1]``, 1 at the top level, where r = 0 too)
    4. Adam (lr·min(1, k/warm-up)) on (1/B)·Σ_b (σ_1/σ_{t+1})·[f(a·x⁻, t) − f(a·x_t, t)]      (model.py:134-151)
    5. EMA 0.999 of every weight and spectral-norm vector                                      (train.py:53)

How the chain runs. Every example has its own level, so its own step size s_t: a chain of the engine
(:mod:`engine.runtime.image_chains`, one scalar step) runs in the per-row units z = y/(n·s_t) with step 1, on V(z) =
−log p(n·s_t·z | x̃, t)/n², which is the authors' update exactly (z ← z − ½∇_zV + ξ ⇔ y ← y + ½s_t²∇_y log p + n·s_t·ξ,
the same ξ) and lets one captured graph, one fused update and one compiled energy serve every level (x̃, the level's
time features and the per-row coefficients are the chain's ``cond`` tensors). Samples run the same chain with every row
at one level (n = ``eval_noise_scale``), from N(0, I) through levels T−1..0, on the EMA network, whose spectral-norm
vectors are the EMA's (never advanced by a draw, so a draw is a function of its noise alone). Draw order from
``learner.rng``: t, ε′, ε, the chain's ξ. Nothing here reads a tensor on the host.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.config import Config
from engine.learners.base import GraphSpec, Grid, Learner, LongRun, Method, SampleKind, SamplerGraphs, paired_rows
from engine.learners.image import ImageChainsMixin
from engine.learners.memory import F32, Estimate
from engine.models import IMAGE_SHAPES
from engine.models.drl import DRL_NETS, DRLEnergyNet, LangevinStepGraph, SpectralNorm, build_drl_energy
from engine.runtime.image_chains import ImageChains, ReferenceImageChains
from engine.runtime.perf import REFERENCE, PerfPlan
from engine.runtime.updates import GradSync, optimizer_step, set_lr
from engine.sampling.drl_schedule import DRLSchedule, drl_schedule
from engine.sampling.noise import NoiseStream

__all__ = ["METHOD", "DRLLearner", "LevelTables", "build", "ema_update", "export_graphs", "iteration_updates",
           "level_tables", "warmup_lr"]

_NO_CLIP = math.inf  # global-norm clipping exists in the code but is off (config.py:27)


@dataclass(frozen=True)
class LevelTables:
    """The schedule as fp32 device tables indexed by the level t (T,) (model.py:90 gathers them as float32)."""

    a_cum: Tensor  # ā_t: x_t = ā_t·x + σ̄_t·ε
    sigma_cum: Tensor  # σ̄_t
    a_next: Tensor  # a_{t+1}: x̃ = a_{t+1}·x_t + σ_{t+1}·ε′
    sigma_next: Tensor  # σ_{t+1}
    scale: Tensor  # a_s_prev[t+1]: y = scale·x (1 at the top level)
    step: Tensor  # s_t = √(s_t²)
    inv_s2: Tensor  # 1/s_t²: log p's network coefficient
    pull: Tensor  # is_recovery[t+1]/(2σ_{t+1}²): log p's quadratic coefficient (0 at the top level)
    weight: Tensor  # σ_1/σ_{t+1}: the loss weight


def level_tables(schedule: DRLSchedule, device: torch.device) -> LevelTables:
    """:class:`LevelTables` from a float64 :class:`DRLSchedule` (computed in float64, then cast once)."""
    s = schedule
    cols = (s.a_s_cum[:-1], s.sigmas_cum[:-1], s.a_s[1:], s.sigmas[1:], s.a_s_prev[1:], s.step_size(),
            1.0 / s.step_size_square, s.is_recovery[1:] / (2.0 * s.sigmas[1:] ** 2), s.loss_weight)
    return LevelTables(*(c.to(device=device, dtype=torch.float32) for c in cols))


def _rows(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), for broadcasting over images."""
    return v.view(-1, 1, 1, 1)


@dataclass
class DRLLearner(ImageChainsMixin):
    """Everything one DRL iteration reads or writes."""

    method: ClassVar[str] = "drl"

    cfg: Config
    net: DRLEnergyNet  # f_θ(y, t): (N, C, H, W), (N,) int64 -> (N,) log-density up to a constant
    net_ema: DRLEnergyNet  # its EMA (samples, grids, FID, exports); u never advanced by a draw
    opt: torch.optim.Optimizer
    rng: torch.Generator
    iteration: int = 0
    grad_sync: GradSync | None = None
    chains: ImageChains = field(init=False, repr=False)
    plan: PerfPlan = field(default=REFERENCE, repr=False)

    def __post_init__(self) -> None:
        c = self.cfg.drl
        self.schedule = drl_schedule(c.levels, c.b_square, beta_start=c.beta_start, beta_end=c.beta_end)
        self.tables = level_tables(self.schedule, self.device)
        self.chains = ReferenceImageChains()
        for m in self.net_ema.modules():  # the EMA's u vectors are averages of the online ones (ema_update)
            if isinstance(m, SpectralNorm):
                m.update_u = False

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def levels(self) -> int:
        return self.cfg.drl.levels

    # -- the engine.learners.base.Learner protocol -------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        return {"energy": self.net, "energy_ema": self.net_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        set_lr(self.opt, warmup_lr(self.cfg, self.iteration))
        out = iteration_updates(self, x)
        self.iteration += 1
        return out

    def learning_rates(self) -> dict[str, float]:
        return {"lr": warmup_lr(self.cfg, self.iteration)}  # the next update's (host arithmetic)

    # -- the conditional chain -----------------------------------------------------------------------------------

    def _energy(self, net: DRLEnergyNet, z: Tensor, x_tilde: Tensor, temb: Tensor, coef: Tensor) -> Tensor:
        """V(z) per row: c_pull·‖y − x̃‖² − c_net·f(y, t) with y = α·z; coef (N, 3) = [α, c_net, c_pull], temb the
        level's time features (``net.time_features(t)``: they do not depend on y, so a chain computes them once)."""
        y = _rows(coef[:, 0]) * z
        pull = (y - x_tilde).flatten(1).pow(2).sum(dim=1)
        return coef[:, 2] * pull - coef[:, 1] * net.score(y, temb).float()

    def _energy_online(self, z: Tensor, x_tilde: Tensor, temb: Tensor, coef: Tensor) -> Tensor:
        return self._energy(self.net, z, x_tilde, temb, coef)

    def _energy_ema(self, z: Tensor, x_tilde: Tensor, temb: Tensor, coef: Tensor) -> Tensor:
        return self._energy(self.net_ema, z, x_tilde, temb, coef)

    def coefficients(self, t: Tensor, noise_scale: float, step: Tensor | None = None) -> Tensor:
        """(N, 3) [α = n·s, c_net = 1/(n²s_t²), c_pull = r/(2σ²n²)] for levels t (N,) (``step``: s per row instead of
        s_t, for the long-run chain; the density keeps its s_t²)."""
        tb, n2 = self.tables, noise_scale * noise_scale
        s = tb.step[t] if step is None else step
        return torch.stack([noise_scale * s, tb.inv_s2[t] / n2, tb.pull[t] / n2], dim=1)

    def recover(self, x_tilde: Tensor, t: Tensor, *, ema: bool, noise_scale: float, rng: torch.Generator | None,
                noise: Tensor | None = None, steps: int | None = None, step: Tensor | None = None,
                y0: Tensor | None = None) -> Tensor:
        """y after the level-t chains from y⁰ = x̃ (or ``y0``) given x̃ (N, C, H, W); t (N,) int64.

        ``noise`` (K, N, C, H, W) fixes every ξ; else ξ comes from ``rng``. ``steps`` overrides K, ``step`` s_t.
        """
        net = self.net_ema if ema else self.net
        coef = self.coefficients(t, noise_scale, step)
        alpha = _rows(coef[:, 0])
        z0 = (x_tilde if y0 is None else y0) / alpha
        key: Hashable = ("drl", "ema" if ema else "online")
        energy = self._energy_ema if ema else self._energy_online
        with torch.no_grad():
            temb = net.time_features(t)
        z = self.chains.run(energy, z0, n_steps=self.cfg.drl.langevin_steps if steps is None else steps,
                            step_size=1.0, ref_sigma=None, with_noise=True, rng=rng, freeze=(net,), noise=noise,
                            cond=(x_tilde, temb, coef), key=key)
        return alpha * z

    def denoise_levels(self, x: Tensor, top: int, rng: torch.Generator | None, noise: Tensor | None = None,
                       keep: bool = False) -> list[Tensor]:
        """The sampler from x at level ``top`` (x_T: N(0, I) for top = T) through levels top−1..0 (EMA net, eval
        noise scale): [x_0], or with ``keep`` [x_top, …, x_0]. ``noise`` (top, K, N, C, H, W): level top−1 first."""
        n = self.cfg.drl.eval_noise_scale
        out = [x] if keep else []
        for j, level in enumerate(range(top - 1, -1, -1)):
            t = torch.full((x.shape[0],), level, dtype=torch.int64, device=x.device)
            y = self.recover(x, t, ema=True, noise_scale=n, rng=rng, noise=None if noise is None else noise[j])
            x = y / _rows(self.tables.scale[t])
            if keep or level == 0:
                out.append(x)
        return out

    # -- draws ---------------------------------------------------------------------------------------------------

    def _shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPES[self.cfg.model.arch]

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        c = self.cfg.drl
        return (SampleKind("drl", f"{c.levels}-level sampler from N(0, I): {c.langevin_steps} Langevin steps per "
                           f"level, s_t^2 = (sigma_cum_t/sigma_cum_0) b^2 sigma_t+1^2, b^2 {c.b_square:g}, noise "
                           f"x{c.eval_noise_scale:g}, EMA net"),)

    def sample(self, kind: str, n: int, rng: torch.Generator, *, steps: int | None = None,
               step_size: float | None = None) -> Tensor:
        """x_0 of the T-level sampler (n, C, H, W): x_T ~ N(0, I), then the EMA net's chains (model.py:198-217)."""
        self._check_kind(kind)
        x = torch.randn((n, *self._shape()), generator=rng, device=self.device)
        return self.denoise_levels(x, self.levels, rng)[-1]

    def image_noise(self) -> int:
        """Numbers of N(0, I) one sample consumes: x_T, then ξ of the K steps of each level (C·H·W each)."""
        return math.prod(self._shape()) * (1 + self.levels * self.cfg.drl.langevin_steps)

    def noise_width(self, kind: str, steps: int | None = None) -> int:
        self._check_kind(kind)
        return -(-self.image_noise() // self.cfg.model.nz)  # rows of nz; the last row's tail is unused

    def split_noise(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """(b, ≥ image_noise) stream rows -> x_T (b, C, H, W) and ξ (T, K, b, C, H, W), level T−1 first:
        per sample [x_T | ξ_{T−1,0} … ξ_{T−1,K−1} | ξ_{T−2,0} … | ξ_{0,K−1}]."""
        b, shape, k = flat.shape[0], self._shape(), self.cfg.drl.langevin_steps
        d = math.prod(shape)
        x_top = flat[:, :d].reshape(b, *shape)
        xi = flat[:, d:self.image_noise()].reshape(b, self.levels, k, *shape).permute(1, 2, 0, 3, 4, 5)
        return x_top.contiguous(), xi.contiguous()

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor:
        self._check_kind(kind)
        x_top, xi = self.split_noise(noise.take(b).flatten(1))
        return self.denoise_levels(x_top.to(self.device), self.levels, None, noise=xi.to(self.device))[-1]

    def reconstruct(self, x: Tensor, rng: torch.Generator, *, steps: int, step_size: float,
                    sigma: float) -> Tensor:
        """Recovery: x_L = ā_L·x + σ̄_L·ε (L = ``drl.recon_level``), then the sampler's chains L−1..0 (no encoder; the
        posterior-chain arguments do not apply)."""
        level = self.cfg.drl.recon_level
        eps = torch.randn(x.shape, generator=rng, device=x.device)
        return self.denoise_levels(self._diffuse(x, level, eps), level, rng)[-1]

    def _diffuse(self, x: Tensor, level: int, eps: Tensor) -> Tensor:
        """x_L = ā_L·x + σ̄_L·ε: the data diffused to state L (x_0 carries σ̄_0 = 0.01)."""
        s = self.schedule
        return float(s.a_s_cum[level]) * x + float(s.sigmas_cum[level]) * eps

    def describe_reconstruct(self, steps: int, step_size: float, sigma: float) -> tuple[str, str]:
        c = self.cfg.drl
        lv = c.recon_level
        return (f"x diffused to level {lv}", f"x_{lv} = a_cum x + sigma_cum eps (sigma_cum "
                f"{float(self.schedule.sigmas_cum[lv]):.3f}), then the sampler's chains at levels {lv - 1}..0 "
                f"({c.langevin_steps} steps each, EMA net, noise x{c.eval_noise_scale:g}); no encoder")

    def grids(self, x_test: Tensor, rng: torch.Generator) -> list[Grid]:
        """The sampler level by level (row j: 8 chains at x_{T−j}, from noise to x_0), 64 final samples, and test
        images next to their recoveries from level ``recon_level``."""
        n = self.cfg.eval.n_samples
        x = torch.randn((n, *self._shape()), generator=rng, device=self.device)
        frames = self.denoise_levels(x, self.levels, rng, keep=True)
        strip = torch.cat([f[:8] for f in frames])
        recon = self.reconstruct(x_test, rng, steps=0, step_size=0.0, sigma=1.0)
        return [Grid("levels_drl", strip, nrow=min(8, n)), Grid("samples_drl", frames[-1]),
                Grid("recon", paired_rows(x_test, recon), nrow=8)]

    def long_run(self, n_chains: int, steps: int, marks: list[int], step_size: float | None,
                 rng: torch.Generator) -> LongRun:
        """The lowest level's conditional chain p(x_0 | x̃ = x_1) far beyond K steps (EMA net, eval noise scale):
        x̃ from the sampler's levels T−1..1, y⁰ = x̃; x = y/a at the marks and the mean
        U(y) = −f(y, 0)/s_0² + ‖y − x̃‖²/(2σ_1²) after every step."""
        c, tb = self.cfg.drl, self.tables
        x = torch.randn((n_chains, *self._shape()), generator=rng, device=self.device)
        for level in range(self.levels - 1, 0, -1):
            t = torch.full((n_chains,), level, dtype=torch.int64, device=self.device)
            x = self.recover(x, t, ema=True, noise_scale=c.eval_noise_scale, rng=rng) / _rows(tb.scale[t])
        t0 = torch.zeros(n_chains, dtype=torch.int64, device=self.device)
        s = float(tb.step[0]) if step_size is None else step_size
        step = torch.full((n_chains,), s, device=self.device)
        scale = float(tb.scale[0])
        unit = self.coefficients(t0, 1.0)
        unit[:, 0] = 1.0  # y itself: U(y) = c_pull·‖y − x̃‖² − f(y, 0)/s_0²

        with torch.no_grad():
            temb = self.net_ema.time_features(t0)

        def energy(y: Tensor) -> Tensor:
            with torch.no_grad():
                return self._energy(self.net_ema, y, x, temb, unit).mean()

        y = x
        trace, frames = [energy(y)], [y / scale] if 0 in marks else []
        for k in range(1, steps + 1):
            y = self.recover(x, t0, ema=True, noise_scale=c.eval_noise_scale, rng=rng, steps=1, step=step, y0=y)
            trace.append(energy(y))
            if k in marks:
                frames.append(y / scale)
        return LongRun(torch.stack(frames, dim=1), torch.stack(trace),
                       f"level-0 chain p(x_0 | x_1) from sampled x_1, {n_chains} chains: mean U = -f/s_0^2 + "
                       f"|y - x_1|^2/(2 sigma_1^2), s={s:g}, noise x{c.eval_noise_scale:g}", s)


# ---------------------------------------------------------------------------------------------------------
# Building


def build(cfg: Config, device: torch.device, rng: torch.Generator) -> DRLLearner:
    """The network with the authors' initialisation (from the global seed), its EMA copy, Adam."""
    net = build_drl_energy(DRL_NETS[cfg.model.arch]).to(device)
    net_ema = copy.deepcopy(net)
    net_ema.requires_grad_(False)
    c = cfg.drl
    opt = torch.optim.Adam(net.parameters(), lr=warmup_lr(cfg, 0), betas=(c.beta1, c.beta2), eps=c.eps)
    return DRLLearner(cfg, net, net_ema, opt, rng)


def warmup_lr(cfg: Config, completed: int) -> float:
    """lr·min(1, k/warm-up) for update k = ``completed`` (from 0: the first update runs at lr 0; train_utils.py:25-33)
    — host arithmetic, so a resume is exact."""
    c = cfg.drl
    return c.lr if c.warmup == 0 else c.lr * min(1.0, completed / c.warmup)


def _state_keys(cfg: Config) -> tuple[list[str], list[str]]:
    return ["energy", "energy_ema"], ["opt"]


def _activation_floats(arch: str) -> int:
    """Floats one example keeps for a backward through f_θ: six maps per residual block (its input, conv1's output
    and its activation, conv2's, the scale and the sum), the stem's output and the image."""
    cfg = DRL_NETS[arch]
    total = 2 * cfg.in_ch * cfg.image_size**2 + cfg.ch * cfg.image_size**2
    for i, mult in enumerate(cfg.ch_mult):
        total += 6 * cfg.num_res_blocks * cfg.ch * mult * (cfg.image_size // 2**i) ** 2
    return total


def _estimate(cfg: Config, batch: int | None = None) -> Estimate:
    """Memory floor: weights, gradients, two Adam moments and the EMA copy; the activations of a chain step's (or the
    update's two) backward at the training batch (or an evaluation batch); the grids' chains."""
    with torch.device("meta"):
        net = build_drl_energy(DRL_NETS[cfg.model.arch])
    n_params = sum(p.numel() for p in net.parameters())
    per = F32 * _activation_floats(cfg.model.arch)
    n = max(cfg.train.batch_size * 2, batch or 0)
    return Estimate(F32 * 5 * n_params, n * per, cfg.eval.n_samples * per, 0)


# ---------------------------------------------------------------------------------------------------------
# The training iteration


def iteration_updates(learner: DRLLearner, x: Tensor) -> dict[str, Tensor]:
    """Steps 1-5 on the data batch x (B, C, H, W) in [−1, 1]; device diagnostics."""
    c, tb, rng = learner.cfg.drl, learner.tables, learner.rng
    b = x.shape[0]
    t = torch.randint(learner.levels, (b,), generator=rng, device=x.device)  # 1.
    noise_next = torch.randn(x.shape, generator=rng, device=x.device)  # ε′ first (model.py:113), then ε
    noise_t = torch.randn(x.shape, generator=rng, device=x.device)
    x_t = _rows(tb.a_cum[t]) * x + _rows(tb.sigma_cum[t]) * noise_t  # 2.
    x_tilde = _rows(tb.a_next[t]) * x_t + _rows(tb.sigma_next[t]) * noise_next
    scale = _rows(tb.scale[t])
    y = learner.recover(x_tilde, t, ema=False, noise_scale=c.noise_scale, rng=rng)  # 3.
    x_neg = y / scale
    pos_f = learner.net(scale * x_t, t)  # 4. (pos first, as training_losses)
    neg_f = learner.net(scale * x_neg, t)
    loss = (tb.weight[t] * (neg_f - pos_f)).sum() / b
    norm = optimizer_step(learner.opt, learner.net, loss, _NO_CLIP, learner.grad_sync)
    ema_update(learner.net_ema, learner.net, c.ema_decay)  # 5.
    return {"loss": loss.detach(), "f_pos": pos_f.detach().mean(), "f_neg": neg_f.detach().mean(),
            "grad_norm": norm,
            # How far the chain moved x̃ (per-example L2, the code's `disp`, averaged over the batch).
            "disp": (x_neg - x_tilde).flatten(1).norm(dim=1).mean(),
            "recovery_mse": (x_neg - x_t).pow(2).mean()}


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """shadow ← shadow − (1 − decay)·(shadow − v) for every parameter and float buffer (the spectral-norm u's):
    tf.train.ExponentialMovingAverage over ``model.variables`` (train_utils.py:50-76)."""
    ema_state, state = ema.state_dict(), net.state_dict()
    for k, v in ema_state.items():
        if v.is_floating_point():
            v.lerp_(state[k], 1.0 - decay)


DRIVER = ("x = x_T; for j, t in enumerate(T-1 .. 0): x_tilde = x; y = x_tilde; for k in 0..K-1: y = step(t=[t] "
          "int64, y, x_tilde, xi[j, k]); x = y / scale[t]  # images x (B, C, H, W), clip to [-1, 1]")
NOISE = {"x_T": "N(0, I), (B, C, H, W): the sampler's start",
         "xi": "N(0, I), (T, K, B, C, H, W): xi[j, k] is the noise of step k at level T-1-j",
         "stream": "python -m engine.sample draws them per sample from torch.Generator(cpu).manual_seed(seed): one "
                   "randn(width * nz) per sample = [x_T | xi_(T-1,0) .. xi_(T-1,K-1) | .. | xi_(0,K-1)] (the rest "
                   "of the last row unused)"}


def export_graphs(learner: Learner, batch: int, dtype: torch.dtype, device: torch.device) -> SamplerGraphs:
    """The T-level sampler for ``engine.export``: one Langevin-step graph of the EMA net at a level given as input
    (:class:`~engine.models.drl.LangevinStepGraph`), driven T·K times (the unrolled T·K-step graph, 180 network
    gradients at T6, takes too long to export to be offered)."""
    assert isinstance(learner, DRLLearner)
    c, tb, net = learner.cfg.drl, learner.tables, learner.net_ema
    net.eval().requires_grad_(False)
    with torch.no_grad():
        temb = net.time_features(torch.arange(learner.levels, device=learner.device))
    coef = torch.stack([tb.step**2, tb.inv_s2, tb.pull, c.eval_noise_scale * tb.step], dim=1)
    step = LangevinStepGraph(net, temb, coef, dtype).to(device).eval()
    scale = [float(v) for v in tb.scale.tolist()]

    def stream(seed: int) -> NoiseStream:
        return NoiseStream(seed, learner.cfg.model.nz, learner.noise_width("drl"))

    def noise(draws: NoiseStream, rows: int) -> tuple[Tensor, Tensor]:
        """The next ``rows`` samples' x_T and ξ, padded with zero rows to the graphs' static batch (every row is
        its own chain: the padding changes no real row)."""
        flat = draws.take(rows).flatten(1)
        if rows < batch:
            flat = torch.cat([flat, flat.new_zeros(batch - rows, flat.shape[1])])
        x_top, xi = learner.split_noise(flat)
        return x_top.to(device), xi.to(device)

    def drive(graphs: dict[str, Callable[..., Tensor]], draws: NoiseStream, rows: int) -> Tensor:
        x, xi = noise(draws, rows)
        for j, level in enumerate(range(learner.levels - 1, -1, -1)):
            t = torch.full((1,), level, dtype=torch.int64, device=device)
            x_tilde = y = x
            for k in range(c.langevin_steps):
                y = graphs["step"](t, y, x_tilde, xi[j, k])
            x = y / scale[level]
        return x[:rows]

    def reference(draws: NoiseStream, rows: int) -> Tensor:
        with torch.no_grad():
            return learner.sample_from("drl", draws, rows).to(device)

    x_top, xi = noise(stream(0), batch)
    # x̃ must be its own tensor: an input passed twice is traced as one (the graph would then ignore x̃).
    example = (torch.full((1,), c.levels - 1, dtype=torch.int64, device=device), x_top, x_top.clone(), xi[0, 0])
    info = {"levels": c.levels, "langevin_steps": c.langevin_steps, "noise_scale": c.eval_noise_scale,
            "scale": scale, "image_shape": list(x_top.shape[1:])}
    return SamplerGraphs({"step": GraphSpec(step, example, ("t", "y", "x_tilde", "xi"), "y_next")}, stream,
                         drive, reference, DRIVER, dict(NOISE), info, net.state_dict())


# Seed 002 abstract: unconditional CIFAR-10 FID 9.58 (the T6 setting).
PAPER: dict[str, dict[str, float]] = {"cifar10": {"fid_drl": 9.58}}

METHOD = Method("drl", "Diffusion recovery likelihood (Gao et al., ICLR 2021): T conditional EBMs along a diffusion, "
                "sampled level by level", build, _state_keys, _estimate, kinds=("drl",), exportable=True,
                export_graphs=export_graphs, metrics=("mse", "chains"), paper=PAPER,
                study_labels={"drl": ("DRL samples (the T-level sampler from N(0, I), EMA net)", ""),
                              "recon": ("recoveries of the noised test split (level 1 -> 0), DRL run", "")},
                study_comparisons=tuple(("DRL samples vs DAMC prior samples", metric, ("drl", "drl"), ("damc", "damc"))
                                        for metric in ("kid", "fid")))
