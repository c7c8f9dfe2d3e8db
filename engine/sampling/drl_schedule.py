"""Noise schedule of diffusion recovery likelihood (Gao et al., ICLR 2021; ``docs/methods/drl.md`` §1-§3).

Pure float64 tables and the two elementwise diffusion formulas, written from the authors' TensorFlow code
(ruiqigao/recovery_likelihood @ c77cc05, ``model.py``; "model.py:30" below means that file and line). Nothing
here draws random numbers: noise enters as tensors.

Indexing (the code's, kept on purpose so every table lines up with ``model.py``). With T noise levels the tables
have T+1 entries j = 0..T:

* ``sigmas[j]``, ``a_s[j]`` = σ_j, a_j = √(1−σ_j²): the one-step transition into diffused state j,
  x_j = a_j·x_{j−1} + σ_j·ε (x_{−1} is the data). So x_0 already carries noise σ_0 = 0.01 (model.py:96
  "t == 0 means diffused for 1 step").
* ``a_s_cum[j]`` = ∏_{i≤j} a_i, ``sigmas_cum[j]`` = √(1 − a_s_cum[j]²): the marginal x_j = ā_j·x_data + σ̄_j·ε.
* The EBM level t ∈ {0..T−1} models x_t given x_{t+1}: it uses σ = ``sigmas[t+1]``, the scaling
  a = ``a_s_prev[t+1]`` (y = a·x_t; a_s_prev[T] = 1) and the recovery switch ``is_recovery[t+1]`` (0 at the top
  level t = T−1, whose chain samples the marginal EBM with no quadratic tether).

Per-level tables (length T, index t): ``step_size_square[t]`` = s_t² = (σ̄_t/σ̄_0)·b²·σ_{t+1}² with b² = 2e-4
(model.py:173-174, config.py:59) and ``loss_weight[t]`` = σ_1/σ_{t+1} (model.py:145).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = [
    "BETA_START",
    "BETA_END",
    "NUM_DDPM_STEPS",
    "STEP_SIZE_B_SQUARE",
    "DRLSchedule",
    "ddpm_betas",
    "level_indices",
    "sigma_schedule",
    "ddpm_level_schedule",
    "drl_schedule",
    "extract",
    "q_sample",
    "q_sample_pairs",
]

BETA_START = 1e-4  # model.py:51
BETA_END = 0.02  # model.py:51
NUM_DDPM_STEPS = 1000  # model.py:30: the fine DDPM grid the T levels are cut from
STEP_SIZE_B_SQUARE = 2e-4  # config.py:59 `mcmc_step_size_b_square`


def ddpm_betas(beta_start: float = BETA_START, beta_end: float = BETA_END) -> Tensor:
    """(1001,) float64: linspace(β_start, β_end, 1000) with a final 1.0 appended (model.py:30-31).

    The appended 1.0 is never read by :func:`sigma_schedule` (its slices stop at index 999).
    """
    betas = torch.linspace(beta_start, beta_end, NUM_DDPM_STEPS, dtype=torch.float64)
    return torch.cat([betas, torch.ones(1, dtype=torch.float64)])


def level_indices(num_levels: int) -> Tensor:
    """(T+1,) int64: the DDPM step each diffused state x_j ends at, [0, s, 2s, …, (T−1)s, 999] (model.py:36).

    The stride is s = 1000 // (2(T−1)) (floor division), so the first T−1 levels cover DDPM steps 0..(T−1)s ≈ 500
    and the last transition jumps to step 999. T = 6: [0, 100, 200, 300, 400, 500, 999].
    Raises ValueError for T < 2 (the code divides by T−1) and T > 501 (stride 0: levels would repeat; in
    particular the code's formula degenerates at T = 1000, see :func:`ddpm_level_schedule`).
    """
    if num_levels < 2:
        raise ValueError(f"num_levels = {num_levels}: the code's schedule divides by num_levels - 1")
    stride = NUM_DDPM_STEPS // ((num_levels - 1) * 2)
    if stride == 0:
        raise ValueError(f"num_levels = {num_levels}: stride 1000 // (2(T-1)) is 0 (the code supports T <= 501)")
    head = torch.arange(num_levels, dtype=torch.int64) * stride
    return torch.cat([head, torch.tensor([NUM_DDPM_STEPS - 1], dtype=torch.int64)])


def sigma_schedule(num_levels: int = 6, beta_start: float = BETA_START,
                   beta_end: float = BETA_END) -> tuple[Tensor, Tensor]:
    """(sigmas, a_s), each (T+1,) float64, exactly as ``get_sigma_schedule`` (model.py:20-42).

    With ᾱ-style products of √(1−β_i) over the DDPM steps between consecutive level indices k_{j−1} < i ≤ k_j:
        a_0 = √(1−β_0),   a_j = ∏_{i=k_{j−1}+1}^{k_j} √(1−β_i)  (j ≥ 1),   σ_j = √(1 − a_j²).
    T = 6: σ = [0.0100, 0.3237, 0.5165, 0.6322, 0.7132, 0.7734, 0.9997].
    """
    idx = level_indices(num_levels).tolist()
    sqrt_alphas = torch.sqrt(1.0 - ddpm_betas(beta_start, beta_end))
    a = [torch.prod(sqrt_alphas[: idx[0] + 1])]
    a += [torch.prod(sqrt_alphas[idx[j - 1] + 1: idx[j] + 1]) for j in range(1, len(idx))]
    a_s = torch.stack(a)
    return torch.sqrt(1.0 - a_s**2), a_s


def ddpm_level_schedule(num_levels: int = 1000, beta_start: float = BETA_START,
                        beta_end: float = BETA_END) -> tuple[Tensor, Tensor]:
    """(sigmas, a_s), each (T+1,) float64, for the paper's T1k setting: every DDPM step is one level.

    NOT in the released code (README.md:52 "This code is for T6 setting"; model.py:36 gives stride 0 at
    T = 1000, i.e. σ_j = 0 for j = 1..998). This is our reading of the paper's T1k setting, the DDPM schedule of
    Ho et al. (2020) itself: σ_j² = β_j (j = 0..T−1) on linspace(β_start, β_end, T), and a last entry σ_T = 1,
    a_T = 0 (the code's appended β = 1, model.py:31) so the tables keep the T+1 layout. Unverified against the
    paper's appendix (see the doc's open questions).
    """
    if num_levels < 2:
        raise ValueError(f"num_levels = {num_levels}: need at least 2 levels")
    betas = torch.linspace(beta_start, beta_end, num_levels, dtype=torch.float64)
    betas = torch.cat([betas, torch.ones(1, dtype=torch.float64)])
    return torch.sqrt(betas), torch.sqrt(1.0 - betas)


@dataclass(frozen=True)
class DRLSchedule:
    """All per-level constants of one schedule (float64 unless moved). Shapes: (T+1,) or (T,); see module doc.

    Fields, with their source lines in model.py:
      sigmas, a_s          (T+1,)  σ_j, a_j                                   l.51 (get_sigma_schedule)
      a_s_cum, sigmas_cum  (T+1,)  ā_j = ∏_{i≤j} a_i, σ̄_j = √(1 − ā_j²)       l.52-53
      a_s_prev             (T+1,)  a_j with a_s_prev[T] = 1 (y = a·x scaling)  l.54-55
      is_recovery          (T+1,)  1, …, 1, 0 (no tether at the top level)     l.56-57
      step_size_square     (T,)    s_t² = (σ̄_t/σ̄_0)·b²·σ_{t+1}²               l.168-174
      loss_weight          (T,)    σ_1/σ_{t+1}                                 l.145
    """

    sigmas: Tensor
    a_s: Tensor
    a_s_cum: Tensor
    sigmas_cum: Tensor
    a_s_prev: Tensor
    is_recovery: Tensor
    step_size_square: Tensor
    loss_weight: Tensor

    @property
    def num_levels(self) -> int:
        """T, the number of EBM levels (the tables of length T+1 also hold the top state x_T)."""
        return int(self.step_size_square.shape[0])

    def step_size(self) -> Tensor:
        """(T,) Langevin step s_t = √(s_t²): the noise scale per step (model.py:182 ``tf.sqrt(step_size_square)``)."""
        return torch.sqrt(self.step_size_square)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DRLSchedule:
        """A copy with every table moved/cast (the authors gather the tables as float32, model.py:90)."""
        return DRLSchedule(*(getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)))


def drl_schedule(num_levels: int = 6, b_square: float = STEP_SIZE_B_SQUARE, *, ddpm_levels: bool = False,
                 beta_start: float = BETA_START, beta_end: float = BETA_END) -> DRLSchedule:
    """Every table of :class:`DRLSchedule` in float64 (model.py:51-57, 145, 168-174).

    ``ddpm_levels=False`` is the released code's schedule (:func:`sigma_schedule`, T6 by default);
    ``ddpm_levels=True`` takes :func:`ddpm_level_schedule` (our T1k reading, not in the code).
    The step size keeps the code's factor c_t² = σ̄_t/σ̄_0 (a ratio of standard deviations, not variances, although
    the code names it ``c_t_square``, model.py:173).
    """
    if ddpm_levels:
        sigmas, a_s = ddpm_level_schedule(num_levels, beta_start, beta_end)
    else:
        sigmas, a_s = sigma_schedule(num_levels, beta_start, beta_end)
    a_s_cum = torch.cumprod(a_s, dim=0)
    sigmas_cum = torch.sqrt(1.0 - a_s_cum**2)
    a_s_prev = a_s.clone()
    a_s_prev[-1] = 1.0
    is_recovery = torch.ones_like(a_s)
    is_recovery[-1] = 0.0
    c_t_square = sigmas_cum[:-1] / sigmas_cum[0]
    step_size_square = c_t_square * b_square * sigmas[1:] ** 2
    loss_weight = sigmas[1] / sigmas[1:]
    return DRLSchedule(sigmas, a_s, a_s_cum, sigmas_cum, a_s_prev, is_recovery, step_size_square, loss_weight)


def extract(table: Tensor, t: Tensor, ndim: int) -> Tensor:
    """table[t] reshaped to (B, 1, …, 1) with ``ndim`` dims in all, for broadcasting (model.py:80-92).

    table (N,) on t's device; t (B,) int64. The result keeps the table's dtype: cast the schedule first
    (``schedule.to(dtype=...)``) to match the data, as the authors do (float32).
    """
    out = table.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


def q_sample(x_data: Tensor, t: Tensor, schedule: DRLSchedule, noise: Tensor) -> Tensor:
    """x_t = ā_t·x_data + σ̄_t·ε for per-example levels t (B,) (model.py:94-104). x_data, noise: (B, C, H, W)."""
    nd = x_data.dim()
    return extract(schedule.a_s_cum, t, nd) * x_data + extract(schedule.sigmas_cum, t, nd) * noise


def q_sample_pairs(x_data: Tensor, t: Tensor, schedule: DRLSchedule, noise_t: Tensor,
                   noise_next: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, x_{t+1}) for training (model.py:106-118): x_t from :func:`q_sample` with ``noise_t``, then
    x_{t+1} = a_{t+1}·x_t + σ_{t+1}·``noise_next``. All tensors (B, C, H, W) but t (B,) in 0..T−1.

    Note the order of draws in the code: ``noise_next`` is drawn first (model.py:113), then x_t's noise inside
    ``q_sample`` (model.py:99); only the pairing matters for matching distributions, not the order.
    """
    nd = x_data.dim()
    x_t = q_sample(x_data, t, schedule, noise_t)
    x_next = extract(schedule.a_s, t + 1, nd) * x_t + extract(schedule.sigmas, t + 1, nd) * noise_next
    return x_t, x_next
