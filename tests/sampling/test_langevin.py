"""Paper eq. 3 / 16: the Langevin update and chains on analytic targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.sampling.langevin import (
    energy_grad,
    gaussian_energy,
    langevin_chain,
    langevin_update,
    posterior_energy,
    prior_energy,
)


class ZeroEnergy(nn.Module):
    """E ≡ 0 (still differentiable), so the prior is exactly N(0, I)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 0.0 * z.sum(dim=1)


def test_update_formula_and_noise_off() -> None:
    g = torch.Generator().manual_seed(0)
    z, grad, eps = (torch.randn(5, 3, generator=g) for _ in range(3))
    s = 0.3
    torch.testing.assert_close(langevin_update(z, grad, s, eps), z - 0.5 * s * s * (grad + z) + s * eps)
    torch.testing.assert_close(langevin_update(z, grad, s, None), z - 0.5 * s * s * (grad + z))
    # bf16 gradient is accepted; arithmetic stays in z's fp32
    assert langevin_update(z, grad.bfloat16(), s, eps).dtype == torch.float32


def test_folded_gaussian_equals_autograd_of_total_energy() -> None:
    """Folding ½‖z‖² into the update equals the authors' autograd on E + ½‖z‖²."""
    torch.manual_seed(0)
    energy = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    fn = lambda z: energy(z).squeeze(-1)  # noqa: E731
    z = torch.randn(6, 4)
    total = energy_grad(lambda zz: fn(zz) + gaussian_energy(zz), z)
    torch.testing.assert_close(energy_grad(fn, z) + z, total)


def test_energy_grad_leaves_parameters_untouched() -> None:
    energy = nn.Linear(3, 1)
    energy_grad(lambda z: energy(z).squeeze(-1), torch.randn(4, 3))
    assert energy.weight.grad is None and energy.bias.grad is None


def test_prior_chain_with_zero_energy_reaches_standard_normal() -> None:
    """E ≡ 0: z ← (1 − s²/2)z + sε has stationary law N(0, v) with v = 1/(1 − s²/4) (1.04 at s = 0.4)."""
    s, n_chains, nz = 0.4, 20000, 4
    fn = prior_energy(ZeroEnergy())
    g = torch.Generator().manual_seed(0)
    z0 = 3.0 + torch.randn(n_chains, nz, generator=g)  # start far from the target
    z = langevin_chain(z0, lambda zz: energy_grad(fn, zz), 300, s, generator=g)
    v = 1 / (1 - s * s / 4)
    # 80,000 draws: the standard error of the mean is 0.0036 and of the variance ≈ 0.005·v.
    assert z.mean().item() == pytest.approx(0.0, abs=0.02)
    assert z.var().item() == pytest.approx(v, rel=0.03)
    cov = torch.cov(z.T)
    off = cov - torch.diag(torch.diagonal(cov))
    assert off.abs().max().item() < 0.03


def test_posterior_chain_with_linear_generator_reaches_gaussian_posterior() -> None:
    """G(z) = Az + c: p(z|x) = N(m, P⁻¹) with P = AᵀA/σ² + I, m = P⁻¹Aᵀ(x − c)/σ² (closed form)."""
    torch.manual_seed(0)
    nz, d, sigma, s = 3, 6, 0.5, 0.05
    gen = nn.Linear(nz, d).double()
    with torch.no_grad():
        gen.weight.mul_(2.0)
    A, c = gen.weight.detach(), gen.bias.detach()
    x1 = torch.randn(d, dtype=torch.float64)
    n_chains = 8000
    x = x1.expand(n_chains, d)
    fn = posterior_energy(gen, ZeroEnergy(), x, sigma)
    g = torch.Generator().manual_seed(1)
    z = langevin_chain(torch.randn(n_chains, nz, generator=g, dtype=torch.float64),
                       lambda zz: energy_grad(fn, zz), 1500, s, generator=g)
    P = A.T @ A / sigma**2 + torch.eye(nz, dtype=torch.float64)
    m = torch.linalg.solve(P, A.T @ (x1 - c) / sigma**2)
    cov_true = torch.linalg.inv(P)
    # The mean of the discretised chain is unbiased for a Gaussian; its covariance is (P − hP²/2)⁻¹ with
    # h = s²/2, which differs from P⁻¹ by O(h·λ_max(P)) (< 2% here). Tolerances: mean within 0.1 posterior
    # standard deviations per coordinate, covariance within 6% of the largest posterior variance.
    post_sd = cov_true.diagonal().sqrt()
    assert ((z.mean(0) - m).abs() / post_sd).max().item() < 0.1
    emp = torch.cov(z.T)
    assert (emp - cov_true).abs().max().item() < 0.06 * cov_true.diagonal().max().item()
    h = s * s / 2
    cov_ula = torch.linalg.inv(P - h * P @ P / 2)
    assert (emp - cov_ula).abs().max().item() < 0.05 * cov_true.diagonal().max().item()


def test_chain_with_fixed_noise_is_deterministic_and_zero_steps_is_identity() -> None:
    fn = prior_energy(nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)))
    z0 = torch.randn(5, 2)
    noise = torch.randn(4, 5, 2)
    gf = lambda zz: energy_grad(fn, zz)  # noqa: E731
    a = langevin_chain(z0, gf, 4, 0.1, noise=noise)
    b = langevin_chain(z0, gf, 4, 0.1, noise=noise)
    assert torch.equal(a, b)
    assert torch.equal(langevin_chain(z0, gf, 0, 0.1), z0)
    c = langevin_chain(z0, gf, 4, 0.1, noise=noise, with_noise=False)
    d = langevin_chain(z0, gf, 4, 0.1, with_noise=False)
    assert torch.equal(c, d) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="noise has shape"):
        langevin_chain(z0, gf, 3, 0.1, noise=noise)
