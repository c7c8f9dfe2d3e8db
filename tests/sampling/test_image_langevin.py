"""engine.sampling.image_langevin: the image update against a float64 hand evaluation and the CoopVAEBM authors'
formula, the fold into the latent kernel's form, stationary laws of Gaussian targets, the generator's draw order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.sampling.image_langevin import (
    fold_reference,
    image_energy_grad,
    image_langevin_chain,
    image_langevin_update,
)
from engine.sampling.langevin import langevin_update

SHAPE = (5, 3, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Single-threaded torch (the root conftest's ``one_thread``): small tensors on a shared 2-core runner."""
EPS32 = torch.finfo(torch.float32).eps


def _tensors(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))  # type: ignore[return-value]


def conv_energy(seed: int = 0) -> nn.Module:
    """A 2-layer conv energy on 3×8×8 images, V per row (N,)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 8), nn.Flatten(0))


@pytest.mark.parametrize("ref_sigma", [0.016, 0.5, 1.0, None])
@pytest.mark.parametrize("with_noise", [True, False])
def test_update_formula_against_float64(ref_sigma: float | None, with_noise: bool) -> None:
    x, grad, eps = _tensors()
    s = 0.1
    noise = eps if with_noise else None
    got = image_langevin_update(x, grad, s, ref_sigma, noise)
    xd, gd, ed = x.double(), grad.double(), eps.double()
    ref = 0.0 if ref_sigma is None else 1.0 / ref_sigma**2
    want = xd - 0.5 * s * s * (gd + xd * ref) + (s * ed if with_noise else 0.0)
    assert got.dtype == torch.float32
    # a few fp32 roundings of the largest term (½s²·x/σ² is ≈ 20·|x| at σ = 0.016)
    scale = float((xd.abs() + 0.5 * s * s * (gd.abs() + ref * xd.abs()) + s * ed.abs()).max())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=4 * EPS32 * scale)


def test_unit_reference_is_the_latent_update_bitwise_and_bf16_grad_is_upcast() -> None:
    x, grad, eps = _tensors(1)
    for noise in (eps, None):
        assert torch.equal(image_langevin_update(x, grad, 0.3, 1.0, noise), langevin_update(x, grad, 0.3, noise))
    out = image_langevin_update(x, grad.bfloat16(), 0.3, 0.5, eps)
    assert out.dtype == torch.float32
    assert torch.equal(out, image_langevin_update(x, grad.bfloat16().float(), 0.3, 0.5, eps))


def test_coopvaebm_authors_update() -> None:
    """The authors' TF step ``syn - 0.5*δ²*(syn/σ_ref² - ∂f/∂syn)`` with f the network's score is V = −f, no noise."""
    f = conv_energy()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    delta, sigma, steps = 0.002, 0.016, 15
    got = image_langevin_chain(x, lambda xx: image_energy_grad(lambda y: -f(y), xx), steps, delta,
                               ref_sigma=sigma, with_noise=False)
    syn = x.clone()
    for _ in range(steps):
        syn = syn.detach().requires_grad_(True)
        (df,) = torch.autograd.grad(f(syn).sum(), syn)
        syn = syn - 0.5 * delta**2 * (syn / sigma**2 - df)
    torch.testing.assert_close(got, syn.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ref_sigma", [0.016, 0.5, 2.0, None])
def test_fold_reference_gives_the_kernel_formula_the_update(ref_sigma: float | None) -> None:
    """z − ½s²(g + z) with g = fold_reference(∇V, x, σ) is the image update, within fp32 rounding of its terms."""
    x, grad, eps = _tensors(3)
    s = 0.05
    g = fold_reference(grad, x, ref_sigma)
    got = langevin_update(x, g, s, eps)
    want = image_langevin_update(x, grad, s, ref_sigma, eps)
    ref = 0.0 if ref_sigma is None else 1.0 / ref_sigma**2
    # g and g + x are each rounded at the scale of |∇V| + (1 + |1/σ² − 1|)|x|, then scaled by ½s²
    big = float((grad.abs() + (1 + abs(ref - 1)) * x.abs()).max())
    torch.testing.assert_close(got, want, rtol=0, atol=4 * EPS32 * (float(x.abs().max()) + 0.5 * s * s * big + s))


def test_fold_reference_is_exact_at_unit_sigma() -> None:
    x, grad, eps = _tensors(4)
    assert fold_reference(grad, x, 1.0) is grad
    bf16 = grad.bfloat16()
    assert fold_reference(bf16, x, 1.0) is bf16  # the kernel upcasts a bf16 ∇V on load
    for noise in (eps, None):
        assert torch.equal(langevin_update(x, fold_reference(grad, x, 1.0), 0.2, noise),
                           image_langevin_update(x, grad, 0.2, 1.0, noise))
    with pytest.raises(ValueError, match="ref_sigma"):
        fold_reference(grad, x, 0.0)


def test_energy_grad_is_per_row_and_leaves_parameters_untouched() -> None:
    f = conv_energy()
    x = torch.randn(3, 3, 8, 8)
    g = image_energy_grad(f, x)
    for n in range(3):  # the gradient of the sum is each row's own gradient
        torch.testing.assert_close(g[n:n + 1], image_energy_grad(f, x[n:n + 1]), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in f.parameters())


def _quadratic(tau: float) -> nn.Module:
    """V(x) = ‖x‖²/(2τ²) per row, through autograd like a network."""

    class Quadratic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).pow(2).sum(dim=1) / (2 * tau * tau)

    return Quadratic()


def _zero() -> nn.Module:
    class Zero(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.0 * x.flatten(1).sum(dim=1)

    return Zero()


@pytest.mark.parametrize(("tau", "ref_sigma"), [(None, 0.5), (0.4, None), (0.6, 0.5)],
                         ids=["reference-only", "V-only", "both"])
def test_stationary_variance_matches_the_discrete_closed_form(tau: float | None, ref_sigma: float | None) -> None:
    """U = ‖x‖²·P/2 with precision P = 1/τ² (V) + 1/σ_ref²: x ← (1 − hP)x + sε, h = s²/2, has stationary law
    N(0, v) with v = s²/(1 − (1 − hP)²) = 1/(P(1 − s²P/4)), not 1/P (0.2604 vs 0.25 at P = 4, s = 0.2)."""
    s = 0.2
    energy = _zero() if tau is None else _quadratic(tau)
    prec = (0.0 if tau is None else 1 / tau**2) + (0.0 if ref_sigma is None else 1 / ref_sigma**2)
    g = torch.Generator().manual_seed(0)
    x0 = 2.0 + torch.randn(1000, 3, 8, 8, generator=g)  # start far from the target
    x = image_langevin_chain(x0, lambda xx: image_energy_grad(energy, xx), 250, s, ref_sigma=ref_sigma, generator=g)
    v = 1 / (prec * (1 - s * s * prec / 4))
    # 192,000 draws: the mean's standard error is 0.0023·√v, the variance's ≈ 0.0032·v; 1 − hP ≤ 0.92, so after
    # 250 steps the start's offset is < 1e-8.
    assert x.mean().item() == pytest.approx(0.0, abs=0.015 * v**0.5)
    assert x.var().item() == pytest.approx(v, rel=0.015)
    assert abs(x.var().item() - 1 / prec) > 0.02 * v  # the closed form is what the test tells apart
    pixels = torch.corrcoef(x.flatten(1)[:, :20].T)
    assert (pixels - torch.eye(20)).abs().max().item() < 0.15  # independent pixels (1000 rows: se 0.03)


def test_generator_draw_order_and_reproducibility() -> None:
    """One randn of x's shape per step, step 0 first: the chain equals the same chain with that noise fixed."""
    f = conv_energy()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    gf = lambda xx: image_energy_grad(f, xx)  # noqa: E731
    a = image_langevin_chain(x0, gf, 4, 0.05, ref_sigma=1.0, generator=torch.Generator().manual_seed(7))
    b = image_langevin_chain(x0, gf, 4, 0.05, ref_sigma=1.0, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    noise = torch.stack([torch.randn(SHAPE, generator=draws) for _ in range(4)])
    c = image_langevin_chain(x0, gf, 4, 0.05, ref_sigma=1.0, noise=noise)
    assert torch.equal(a, b) and torch.equal(a, c)
    gen = torch.Generator().manual_seed(7)
    image_langevin_chain(x0, gf, 4, 0.05, ref_sigma=1.0, generator=gen)
    assert torch.equal(gen.get_state(), draws.get_state())  # exactly the 4 draws, nothing else


def test_chain_edges() -> None:
    f = conv_energy()
    x0 = torch.randn(SHAPE).requires_grad_(True)
    gf = lambda xx: image_energy_grad(f, xx)  # noqa: E731
    assert torch.equal(image_langevin_chain(x0, gf, 0, 0.1, ref_sigma=None), x0)
    out = image_langevin_chain(x0, gf, 2, 0.1, ref_sigma=None, with_noise=False)
    assert not out.requires_grad
    noise = torch.randn(3, *SHAPE)
    with pytest.raises(ValueError, match="noise has shape"):
        image_langevin_chain(x0, gf, 2, 0.1, ref_sigma=None, noise=noise)
    with pytest.raises(ValueError, match="global RNG"):
        image_langevin_chain(x0, gf, 2, 0.1, ref_sigma=None)  # needs ε, has neither noise nor generator
    # noise-free: noise and generator unused
    assert torch.equal(image_langevin_chain(x0, gf, 3, 0.1, ref_sigma=0.5, noise=noise, with_noise=False),
                       image_langevin_chain(x0, gf, 3, 0.1, ref_sigma=0.5, with_noise=False))
