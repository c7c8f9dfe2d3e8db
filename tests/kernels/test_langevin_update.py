"""kernels.langevin_update: the reference is the engine's update; the kernel matches the reference at the
issue's odd sizes, with ε from a tensor, without noise, and with in-kernel Philox ε; registration checks."""

from __future__ import annotations

import pytest
import torch
from kernel_support import DEVICE, NOISE_ATOL, NZ, ROWS, assert_matches, fp32_atol

from engine.sampling.langevin import langevin_update as engine_langevin_update
from kernels.backend import use_backend
from kernels.langevin_update import (
    langevin_update,
    langevin_update_philox,
    langevin_update_philox_ref,
    langevin_update_ref,
)

S = 0.1  # posterior step size; the prior's 0.4 is covered by the engine-parity chains


def _inputs(rows: int, nz: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z, grad, eps = (torch.randn(rows, nz, generator=g) for _ in range(3))
    return z.to(DEVICE), (100.0 * grad).to(DEVICE), eps.to(DEVICE)  # posterior ∇V ~ 1/σ² = 100


@pytest.mark.parametrize("nz", NZ)
@pytest.mark.parametrize("rows", ROWS)
def test_reference_is_the_engine_update(rows: int, nz: int) -> None:
    z, grad, eps = _inputs(rows, nz)
    for noise in (eps, None):
        assert torch.equal(langevin_update_ref(z, grad, S, noise), engine_langevin_update(z, grad, S, noise))
    bf16 = grad.bfloat16()
    assert torch.equal(langevin_update_ref(z, bf16, S, eps), engine_langevin_update(z, bf16, S, eps))


@pytest.mark.parametrize("nz", NZ)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_reference(triton_backend: None, rows: int, nz: int) -> None:
    """Same ε → same z' (bitwise under the interpreter); no noise; in-kernel ε vs the plain-torch Philox."""
    z, grad, eps = _inputs(rows, nz)
    half_s2_g = 0.5 * S * S * grad
    assert_matches(langevin_update(z, grad, S, eps), langevin_update_ref(z, grad, S, eps), z, half_s2_g, S * eps)
    assert_matches(langevin_update(z, grad, S, None), langevin_update_ref(z, grad, S, None), z, half_s2_g)
    seed_offset, step = torch.tensor([rows, 2**40 + nz], device=DEVICE), torch.tensor(29, device=DEVICE)
    assert_matches(langevin_update_philox(z, grad, S, seed_offset, step),
                    langevin_update_philox_ref(z, grad, S, seed_offset, step), z, half_s2_g, atol=S * NOISE_ATOL)


@pytest.mark.parametrize(("rows", "nz"), [(1, 2), (7, 8), (129, 100), (1000, 128)])
def test_bf16_grad_gets_fp32_arithmetic(triton_backend: None, rows: int, nz: int) -> None:
    """bf16 g is upcast exactly on load, so kernel and reference agree to fp32 rounding (not bf16's)."""
    z, grad, eps = _inputs(rows, nz, seed=1)
    bf16 = grad.bfloat16()
    got = langevin_update(z, bf16, S, eps)
    assert_matches(got, langevin_update_ref(z, bf16, S, eps), z, 0.5 * S * S * grad, S * eps)
    # against an fp32 g the only difference is g's bf16 rounding, scaled by ½s²
    g_err = 0.5 * S * S * float((bf16.float() - grad).abs().max())
    torch.testing.assert_close(got, langevin_update_ref(z, grad, S, eps), rtol=0, atol=g_err + fp32_atol(z, grad))


@pytest.mark.parametrize(("rows", "nz"), [(7, 8), (129, 100), (1000, 128)])
def test_non_contiguous_inputs(triton_backend: None, rows: int, nz: int) -> None:
    """Transposed z, a strided slice of g, a transposed ε: read through their strides, no copies."""
    z, grad, eps = _inputs(rows, nz, seed=2)
    z_t = z.t().contiguous().t()  # (rows, nz) with strides (1, rows)
    wide = torch.zeros(rows, 2 * nz, device=DEVICE)
    wide[:, ::2] = grad
    grad_s = wide[:, ::2]  # strides (2·nz, 2)
    eps_t = eps.t().contiguous().t()
    assert not (z_t.is_contiguous() or grad_s.is_contiguous() or eps_t.is_contiguous())
    want = langevin_update_ref(z, grad, S, eps)
    assert_matches(langevin_update(z_t, grad_s, S, eps_t), want, z, 0.5 * S * S * grad, S * eps)
    seed_offset, step = torch.tensor([5, 6], device=DEVICE), torch.tensor(1, device=DEVICE)
    assert_matches(langevin_update_philox(z_t, grad_s, S, seed_offset, step),
                    langevin_update_philox(z, grad, S, seed_offset, step), z, 0.5 * S * S * grad)


def test_rejects_bad_inputs(triton_backend: None) -> None:
    z, grad, eps = _inputs(7, 8)
    with pytest.raises(ValueError, match="grad has shape"):
        langevin_update(z, grad[:, :4], S, eps)
    with pytest.raises(TypeError, match="float32"):
        langevin_update(z.double(), grad, S, eps)
    with pytest.raises(ValueError, match="seed_offset"):
        langevin_update_philox(z, grad, S, torch.tensor([1, 2, 3], device=DEVICE), torch.tensor(0, device=DEVICE))


def test_zero_elements(triton_backend: None) -> None:
    z = torch.empty(0, 8, device=DEVICE)
    assert langevin_update(z, z, S, z).shape == (0, 8)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend: str, request: pytest.FixtureRequest) -> None:
    """Schema, fake-tensor kernel, autograd registration, AOT dispatch (dynamic shapes) of both ops."""
    request.getfixturevalue(f"{backend}_backend")
    z, grad, eps = _inputs(7, 8)
    seed_offset, step = torch.tensor([1, 2], device=DEVICE), torch.tensor(3, device=DEVICE)
    torch.library.opcheck(langevin_update, (z, grad, S, eps))
    torch.library.opcheck(langevin_update, (z.clone().requires_grad_(), grad, S, None))
    # The plain-torch Philox is ~200 ops; tracing it with dynamic shapes takes ~6 s, once is enough.
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    if backend == "torch":
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(langevin_update_philox, (z, grad, S, seed_offset, step), test_utils=utils)


def test_gradients_of_the_linear_update(torch_backend: None) -> None:
    """The registered backward (∂/∂z = 1 − ½s², ∂/∂g = −½s², ∂/∂ε = s) against finite differences."""
    z, grad, eps = (t.double().cpu().requires_grad_() for t in _inputs(3, 5))
    assert torch.autograd.gradcheck(lambda a, b, c: langevin_update(a, b, 0.4, c), (z, grad, eps))
    so, st = torch.tensor([1, 2]), torch.tensor(0)
    assert torch.autograd.gradcheck(lambda a, b: langevin_update_philox(a, b, 0.4, so, st), (z, grad))


def test_compile_fullgraph(torch_backend: None) -> None:
    """torch.compile traces through both ops with no graph break (the reference on CPU; on GPU the kernel)."""
    z, grad, eps = _inputs(7, 8)
    seed_offset = torch.tensor([1, 2], device=DEVICE)
    steps = torch.arange(3, device=DEVICE)

    def two_steps(z: torch.Tensor) -> torch.Tensor:
        z = langevin_update(z, grad, S, eps)
        return langevin_update_philox(z, grad, S, seed_offset, steps[1])

    torch._dynamo.reset()
    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z), two_steps(z), rtol=0, atol=fp32_atol(z, grad))
    torch._dynamo.reset()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the compiled Triton kernel inside an Inductor graph needs a GPU")
def test_compile_fullgraph_inductor_with_kernel(triton_backend: None) -> None:
    z, grad, eps = _inputs(129, 128)
    seed_offset, step = torch.tensor([1, 2], device=DEVICE), torch.tensor(3, device=DEVICE)
    fn = lambda z: langevin_update_philox(langevin_update(z, grad, S, eps), grad, S, seed_offset, step)  # noqa: E731
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True)(z)
    with use_backend("torch"):
        want = fn(z)
    torch.testing.assert_close(out, want, rtol=0, atol=fp32_atol(z, grad) + S * NOISE_ATOL)
    torch._dynamo.reset()
