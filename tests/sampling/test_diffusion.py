"""Spec §2: schedule values, sampler coefficients, one step and the whole sampler against float64."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampling.diffusion import (
    alpha_sigma,
    ancestral_sample,
    ddpm_step,
    diffusion_loss,
    logsnr_schedule,
    sampler_table,
)

LMIN, LMAX = -5.1, 9.8


def _ref_lambda(u: float) -> float:
    """λ(u) straight from the spec's formula, in Python float64."""
    b = math.atan(math.exp(-LMAX / 2))
    a = math.atan(math.exp(-LMIN / 2)) - b
    return -2 * math.log(math.tan(a * u + b))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_schedule_constants_and_endpoints() -> None:
    b = math.atan(math.exp(-LMAX / 2))
    a = math.atan(math.exp(-LMIN / 2)) - b
    assert a == pytest.approx(1.485426, abs=1e-6) and b == pytest.approx(0.007446, abs=1e-6)
    u = torch.tensor([0.0, 1.0], dtype=torch.float64)
    lam = logsnr_schedule(u, LMIN, LMAX)
    assert lam.tolist() == pytest.approx([LMAX, LMIN], abs=1e-9)
    alpha, sigma = alpha_sigma(lam)
    assert alpha[1].item() == pytest.approx(0.0778, abs=5e-5)
    assert sigma[1].item() == pytest.approx(0.9970, abs=5e-5)
    assert sigma[0].item() == pytest.approx(0.0074, abs=5e-5)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(2, dtype=torch.float64))


def test_schedule_monotone_decreasing() -> None:
    lam = logsnr_schedule(torch.linspace(0, 1, 1001, dtype=torch.float64), LMIN, LMAX)
    assert bool((lam[1:] < lam[:-1]).all())


def _ref_step(z: torch.Tensor, eps_hat: torch.Tensor, i: int, T: int, noise: torch.Tensor | None):
    """The authors' loop body for index i (float64), written from the spec's formulas."""
    lt = _ref_lambda(i / (T - 1))
    ls = _ref_lambda(max(i - 1, 0) / (T - 1))
    x0 = math.sqrt(1 + math.exp(-lt)) * (z - eps_hat / math.sqrt(1 + math.exp(lt)))
    if i == 0:
        return x0
    r = math.exp(lt - ls)
    at, st, as_ = math.sqrt(_sig(lt)), math.sqrt(_sig(-lt)), math.sqrt(_sig(ls))
    mean = r * (as_ / at) * z + (1 - r) * as_ * x0
    return mean + math.sqrt((1 - r) * st**2) * noise


def test_table_against_float64_formulas() -> None:
    T = 100
    tab = sampler_table(T, LMIN, LMAX)
    assert tab.logsnr.dtype == torch.float32 and tab.n_steps == T
    for k in (0, 1, 50, 97, 98):
        i = T - 1 - k
        lt, ls = _ref_lambda(i / (T - 1)), _ref_lambda(max(i - 1, 0) / (T - 1))
        r = math.exp(lt - ls)
        at, st, as_ = math.sqrt(_sig(lt)), math.sqrt(_sig(-lt)), math.sqrt(_sig(ls))
        assert tab.logsnr[k].item() == pytest.approx(lt, rel=1e-6)
        assert tab.c_x0_z[k].item() == pytest.approx(1 / at, rel=1e-6)
        assert tab.c_x0_eps[k].item() == pytest.approx(st / at, rel=1e-6)
        assert tab.c_mean_z[k].item() == pytest.approx(r * as_ / at, rel=1e-6)
        assert tab.c_mean_x0[k].item() == pytest.approx((1 - r) * as_, rel=1e-6, abs=1e-12)
        assert tab.std[k].item() == pytest.approx(math.sqrt((1 - r) * st**2), rel=1e-6)
    # final row: deterministic x-prediction at λ_max
    assert tab.logsnr[-1].item() == pytest.approx(LMAX, rel=1e-6)
    assert (tab.c_mean_z[-1].item(), tab.c_mean_x0[-1].item(), tab.std[-1].item()) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("k", [0, 42, 98, 99])
def test_one_step_matches_float64(k: int) -> None:
    T = 100
    tab = sampler_table(T, LMIN, LMAX)
    g = torch.Generator().manual_seed(k)
    z, eps_hat, noise = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    out = ddpm_step(z.float(), eps_hat.float(), k, tab, noise.float())
    ref = _ref_step(z, eps_hat, T - 1 - k, T, noise)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)


def test_whole_sampler_matches_float64() -> None:
    """Same denoiser, same noise: the fp32 sampler tracks the float64 spec loop over all 100 steps."""
    T, B, nz = 100, 16, 6
    g = torch.Generator().manual_seed(0)
    W = torch.randn(nz, nz, generator=g, dtype=torch.float64) / math.sqrt(nz)
    z_init = torch.randn(B, nz, generator=g, dtype=torch.float64)
    noise = torch.randn(T - 1, B, nz, generator=g, dtype=torch.float64)

    def denoise(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:  # any smooth function of (z, λ)
        return torch.tanh(z @ W.to(z.dtype)) + 0.01 * lam[:, None]

    out = ancestral_sample(denoise, z_init.float(), sampler_table(T, LMIN, LMAX), noise=noise.float())
    z = z_init
    for i in range(T - 1, -1, -1):
        lam = torch.full((B,), _ref_lambda(i / (T - 1)), dtype=torch.float64)
        z = _ref_step(z, denoise(z, lam), i, T, noise[T - 1 - i] if i > 0 else None)
    torch.testing.assert_close(out.double(), z, rtol=1e-4, atol=1e-4)


def test_sampler_noise_from_generator_is_reproducible_and_no_noise_is_deterministic() -> None:
    tab = sampler_table(10, LMIN, LMAX)
    den = lambda z, lam: 0.5 * z  # noqa: E731
    z0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    a = ancestral_sample(den, z0, tab, generator=torch.Generator().manual_seed(5))
    b = ancestral_sample(den, z0, tab, generator=torch.Generator().manual_seed(5))
    c = ancestral_sample(den, z0, tab, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = ancestral_sample(den, z0, tab, generator=torch.Generator().manual_seed(5), with_noise=False)
    e = ancestral_sample(den, z0, tab, noise=torch.randn(9, 4, 3), with_noise=False)
    assert torch.equal(d, e)
    with pytest.raises(ValueError, match="noise has shape"):
        ancestral_sample(den, z0, tab, noise=torch.zeros(10, 4, 3))


def test_sampler_with_exact_denoiser_reaches_gaussian_target() -> None:
    """Data z0 ~ N(μ, s²I): the Bayes-optimal ε̂ is known, so the sampler must return ≈ N(μ, s²I)."""
    T, B, nz, mu, s = 100, 20000, 2, 0.7, 0.5

    def eps_opt(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        a, sg = alpha_sigma(lam)
        a, sg = a[:, None], sg[:, None]
        return sg * (z - a * mu) / (a * a * s * s + sg * sg)

    g = torch.Generator().manual_seed(0)
    z = ancestral_sample(eps_opt, torch.randn(B, nz, generator=g, dtype=torch.float64),
                         sampler_table(T, LMIN, LMAX).to("cpu"), generator=g)
    # tolerances: 4 standard errors of the sample mean/std at B = 20000, plus the small error that
    # comes from starting at N(0, I) although α(1) = 0.078 (the terminal law is not exactly N(0, I)).
    assert z.mean().item() == pytest.approx(mu, abs=0.02)
    assert z.std().item() == pytest.approx(s, rel=0.03)


def test_diffusion_loss_forms_z_t_correctly() -> None:
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(32, 4, generator=g), torch.randn(32, 4, generator=g)
    u = torch.rand(32, generator=g)
    xemb = torch.zeros(32, 1)

    def oracle(z_t: torch.Tensor, lam: torch.Tensor, _xemb: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(lam)
        return (z_t - a[:, None] * z0) / s[:, None]  # recovers ε exactly iff z_t = α z0 + σ ε

    assert diffusion_loss(oracle, z0, xemb, u, eps).item() == pytest.approx(0.0, abs=1e-6)
    zero = diffusion_loss(lambda z, lam, e: torch.zeros_like(z), z0, xemb, u, eps)
    torch.testing.assert_close(zero, 0.5 * eps.pow(2).sum(1).mean())
