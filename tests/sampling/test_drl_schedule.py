"""DRL noise schedule (docs/methods/drl.md §1-§3) against the authors' formulas (model.py @ c77cc05), float64."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampling.drl_schedule import (
    BETA_END,
    BETA_START,
    STEP_SIZE_B_SQUARE,
    ddpm_betas,
    ddpm_level_schedule,
    drl_schedule,
    extract,
    level_indices,
    q_sample,
    q_sample_pairs,
    sigma_schedule,
)


def _ref_sigma_schedule(T: int) -> tuple[list[float], list[float]]:
    """get_sigma_schedule (model.py:20-42) re-derived with Python floats and explicit loops."""
    betas = [BETA_START + (BETA_END - BETA_START) * i / 999 for i in range(1000)] + [1.0]
    sqrt_alphas = [math.sqrt(1.0 - b) for b in betas]
    stride = 1000 // ((T - 1) * 2)
    idx = [i * stride for i in range(T)] + [999]
    a = [math.prod(sqrt_alphas[: idx[0] + 1])]
    a += [math.prod(sqrt_alphas[idx[j - 1] + 1: idx[j] + 1]) for j in range(1, T + 1)]
    return [math.sqrt(1.0 - x * x) for x in a], a


# float64 values printed by running model.py's numpy formulas (linspace, prod, cumprod) for T = 6.
T6_SIGMAS = [0.00999999999999945, 0.3236802218101442, 0.5164952946878926, 0.6322110687678577,
             0.7132421411785382, 0.7733690259912669, 0.9997405831176236]
T6_SIGMAS_CUM = [0.00999999999999945, 0.3238184817184853, 0.5862192375559285, 0.7784528742811723,
                 0.8980133575472881, 0.9603141890209559, 0.99997982064757]
T6_STEP_SIZE_SQUARE = [2.0953777198212835e-05, 1.7276842203752781e-03, 4.6861291365770160e-03,
                       7.9202029893175301e-03, 1.0742029503401597e-02, 1.9196320204427034e-02]


def test_level_indices() -> None:
    assert level_indices(6).tolist() == [0, 100, 200, 300, 400, 500, 999]
    assert level_indices(2).tolist() == [0, 500, 999]
    assert level_indices(11).tolist() == [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 999]
    with pytest.raises(ValueError, match="divides"):
        level_indices(1)
    with pytest.raises(ValueError, match="stride"):
        level_indices(1000)  # the code's formula has stride 0 at T1k


def test_ddpm_betas() -> None:
    b = ddpm_betas()
    assert b.dtype == torch.float64 and b.shape == (1001,)
    assert b[0].item() == BETA_START and b[999].item() == pytest.approx(BETA_END, abs=1e-18) and b[1000].item() == 1.0


@pytest.mark.parametrize("T", [2, 6, 11])
def test_sigma_schedule_matches_python_reference(T: int) -> None:
    sigmas, a_s = sigma_schedule(T)
    ref_s, ref_a = _ref_sigma_schedule(T)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (T + 1,)
    assert sigmas.tolist() == pytest.approx(ref_s, rel=1e-12)
    assert a_s.tolist() == pytest.approx(ref_a, rel=1e-12)
    assert torch.allclose(sigmas**2 + a_s**2, torch.ones_like(sigmas), atol=1e-15)


def test_t6_tables_against_printed_values() -> None:
    s = drl_schedule(6)
    assert s.num_levels == 6
    assert s.sigmas.tolist() == pytest.approx(T6_SIGMAS, rel=1e-12)
    assert s.sigmas_cum.tolist() == pytest.approx(T6_SIGMAS_CUM, rel=1e-12)
    assert s.step_size_square.tolist() == pytest.approx(T6_STEP_SIZE_SQUARE, rel=1e-12)
    # σ_0 = √β_0 = 0.01: the lowest level is the data diffused by one DDPM step (model.py:96).
    assert s.sigmas[0].item() == pytest.approx(0.01, rel=1e-12)
    assert s.a_s_cum[-1].item() == pytest.approx(0.00635281808757002, rel=1e-12)


def test_t6_derived_tables() -> None:
    s = drl_schedule(6)
    T = 6
    # cumulative tables (model.py:52-53)
    a_cum = 1.0
    for j in range(T + 1):
        a_cum *= s.a_s[j].item()
        assert s.a_s_cum[j].item() == pytest.approx(a_cum, rel=1e-14)
        assert s.sigmas_cum[j].item() == pytest.approx(math.sqrt(1 - a_cum**2), rel=1e-14)
    # one-step and marginal variances agree: a²σ̄_t² + σ_{t+1}² = σ̄_{t+1}²
    lhs = s.a_s[1:] ** 2 * s.sigmas_cum[:-1] ** 2 + s.sigmas[1:] ** 2
    assert torch.allclose(lhs, s.sigmas_cum[1:] ** 2, atol=1e-14)
    # top level: y = x (a_s_prev[T] = 1) and no quadratic tether (is_recovery[T] = 0) (model.py:54-57)
    assert s.a_s_prev[:-1].tolist() == s.a_s[:-1].tolist() and s.a_s_prev[-1].item() == 1.0
    assert s.is_recovery.tolist() == [1.0] * T + [0.0]
    # step size (model.py:168-174), with the code's c_t² = σ̄_t / σ̄_0 (a ratio of std devs)
    for t in (0, 2, 5):
        c2 = T6_SIGMAS_CUM[t] / T6_SIGMAS_CUM[0]
        assert s.step_size_square[t].item() == pytest.approx(c2 * STEP_SIZE_B_SQUARE * T6_SIGMAS[t + 1] ** 2, rel=1e-12)
        assert s.step_size()[t].item() == pytest.approx(math.sqrt(T6_STEP_SIZE_SQUARE[t]), rel=1e-12)
    # loss weight σ_1 / σ_{t+1} (model.py:145)
    assert s.loss_weight[0].item() == 1.0
    assert s.loss_weight[5].item() == pytest.approx(T6_SIGMAS[1] / T6_SIGMAS[6], rel=1e-12)


def test_b_square_scales_the_step_only() -> None:
    a, b = drl_schedule(6), drl_schedule(6, b_square=1e-3)
    assert torch.allclose(b.step_size_square, a.step_size_square * 5.0, rtol=1e-14)
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.loss_weight, b.loss_weight)


def test_ddpm_level_schedule_t1k_reading() -> None:
    sigmas, a_s = ddpm_level_schedule(1000)
    betas = ddpm_betas()
    assert sigmas.shape == (1001,)
    assert torch.allclose(sigmas**2, betas, atol=1e-16) and torch.allclose(a_s**2, 1 - betas, atol=1e-16)
    s = drl_schedule(1000, ddpm_levels=True)
    assert s.num_levels == 1000 and s.step_size_square.shape == (1000,)
    beta_1 = BETA_START + (BETA_END - BETA_START) / 999  # level t = 0 uses σ_{t+1}² = β_1 and c_0 = 1
    assert s.step_size_square[0].item() == pytest.approx(STEP_SIZE_B_SQUARE * beta_1, rel=1e-12)


def test_q_sample_and_pairs() -> None:
    s = drl_schedule(6)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    e1 = torch.randn(x.shape, generator=g, dtype=torch.float64)
    e2 = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 4, 5])
    x_t, x_next = q_sample_pairs(x, t, s, e1, e2)
    for b, tb in enumerate(t.tolist()):
        ref_t = s.a_s_cum[tb] * x[b] + s.sigmas_cum[tb] * e1[b]
        ref_next = s.a_s[tb + 1] * ref_t + s.sigmas[tb + 1] * e2[b]
        assert torch.allclose(x_t[b], ref_t, atol=1e-15) and torch.allclose(x_next[b], ref_next, atol=1e-15)
    assert torch.equal(q_sample(x, t, s, e1), x_t)
    assert extract(s.sigmas, t, 4).shape == (4, 1, 1, 1)


def test_to_float32() -> None:
    s = drl_schedule(6).to(dtype=torch.float32)
    assert s.sigmas.dtype == torch.float32 and s.step_size_square.dtype == torch.float32
    assert s.sigmas[1].item() == pytest.approx(T6_SIGMAS[1], rel=1e-6)
