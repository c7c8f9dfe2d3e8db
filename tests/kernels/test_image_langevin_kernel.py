"""The existing fused ``langevin_update`` on flattened image rows (N, C·H·W), its gradient folded by
``engine.sampling.image_langevin.fold_reference``, against the image update; then the fast image chain with the
kernel (``FastImageChains`` with ``kernels``) against the unfused chain, with a spy proving the kernel ran."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from kernel_support import DEVICE, exact_expected, fp32_atol
from torch import nn

import kernels.langevin_update as klu
from engine.runtime.image_chains import FastImageChains
from engine.runtime.perf import PerfPlan
from engine.sampling.image_langevin import fold_reference, image_langevin_update
from kernels.langevin_update import langevin_update

# (N, C, H, W): odd rows and odd C·H·W tails, the tests' 3×8×8, a CIFAR-sized row
SHAPES = ((1, 3, 8, 8), (7, 3, 8, 8), (5, 1, 5, 7), (3, 3, 32, 32))
SIGMAS = (0.016, 0.5, 1.0, None)  # CoopVAEBM's σ_ref, a generic one, the latent kernel's own, none (DRL, Dual-MCMC)


def _inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, grad, eps = (torch.randn(shape, generator=g) for _ in range(3))
    return x.to(DEVICE), grad.to(DEVICE), eps.to(DEVICE)


@pytest.mark.parametrize("ref_sigma", SIGMAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_on_image_rows_with_folded_gradient(triton_backend: None, shape: tuple[int, ...],
                                                   ref_sigma: float | None) -> None:
    x, grad, eps = _inputs(shape)
    s = 0.002 if ref_sigma == 0.016 else 0.05  # CoopVAEBM's δ with its σ_ref (½s²/σ² < 1: a stable chain)
    n = shape[0]
    g = fold_reference(grad, x, ref_sigma)
    ref = 0.0 if ref_sigma is None else 1.0 / ref_sigma**2
    h = 0.5 * s * s
    for noise in (eps, None):
        got = langevin_update(x.flatten(1), g.flatten(1), s, None if noise is None else noise.reshape(n, -1))
        assert got.shape == (n, x[0].numel()) and got.dtype == torch.float32
        got = got.reshape(shape)
        want = image_langevin_update(x, grad, s, ref_sigma, noise)
        if ref_sigma == 1.0 and exact_expected():
            assert torch.equal(got, want)  # g is ∇V itself: the kernel computes the update's operations
        # otherwise the fold rounds g and g + x once more, at the scale of |∇V| + (1 + |1/σ² − 1|)|x|
        fold_scale = h * (grad.abs() + (1 + abs(ref - 1)) * x.abs())
        terms = [x, fold_scale] + ([s * noise] if noise is not None else [])
        torch.testing.assert_close(got, want, rtol=0, atol=fp32_atol(*terms))


def test_kernel_takes_a_bf16_gradient_at_unit_sigma(triton_backend: None) -> None:
    """σ_ref = 1 hands ∇V through unchanged, so a bf16 ∇V is upcast by the kernel on load, as in the latent chains."""
    x, grad, eps = _inputs((7, 3, 8, 8), seed=1)
    bf16 = grad.bfloat16()
    got = langevin_update(x.flatten(1), fold_reference(bf16, x, 1.0).flatten(1), 0.05, eps.flatten(1))
    want = image_langevin_update(x, bf16, 0.05, 1.0, eps)
    torch.testing.assert_close(got.reshape(x.shape), want, rtol=0, atol=fp32_atol(x, 0.05 * eps))
    if exact_expected():
        assert torch.equal(got.reshape(x.shape), want)


class _ConvEnergy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net(x).flatten()


@pytest.mark.parametrize(("ref_sigma", "step_size"), [(0.016, 0.002), (0.5, 0.05), (1.0, 0.05), (None, 0.05)])
def test_fast_image_chain_runs_the_kernel(triton_backend: None, monkeypatch: pytest.MonkeyPatch,
                                          ref_sigma: float | None, step_size: float) -> None:
    """A 6-step chain through ``FastImageChains(PerfPlan(kernels=True))`` (the Triton kernel, interpreted on a CPU)
    against the same chain unfused: bitwise at σ_ref = 1 under the interpreter, else within the fold's rounding
    carried through the chain (∇V is ≈ 0.04 here, so 1e-5 is generous yet catches any formula error)."""
    launches: list[int] = []
    real = klu._langevin_update_triton

    def spy(*args: Any, **kw: Any) -> torch.Tensor:
        launches.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(klu, "_langevin_update_triton", spy)
    torch.manual_seed(0)
    energy = _ConvEnergy().to(DEVICE)
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(4, 3, 8, 8, generator=g) * 2 - 1).to(DEVICE)
    noise = torch.randn(6, 4, 3, 8, 8, generator=g).to(DEVICE)
    kw: dict[str, Any] = {"n_steps": 6, "step_size": step_size, "ref_sigma": ref_sigma, "with_noise": True,
                          "rng": None, "freeze": (energy,), "noise": noise}
    fused = FastImageChains(PerfPlan(kernels=True), DEVICE).run(energy, x0, **kw)
    assert len(launches) == 6
    unfused = FastImageChains(PerfPlan(), DEVICE).run(energy, x0, **kw)
    if ref_sigma == 1.0 and exact_expected():
        assert torch.equal(fused, unfused)
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-5)
