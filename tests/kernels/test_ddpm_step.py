"""kernels.ddpm_step: the packed coefficient table against float64 formulas, the reference against the
engine's step, the kernel against the reference (ε from a tensor, none, in-kernel), registration checks."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_support import DEVICE, NOISE_ATOL, NZ, ROWS, assert_matches

from engine.sampling.diffusion import ddpm_step as engine_ddpm_step
from engine.sampling.diffusion import sampler_table
from kernels.backend import use_backend
from kernels.ddpm_step import (
    TABLE_COLUMNS,
    ddpm_step,
    ddpm_step_philox,
    ddpm_step_philox_ref,
    ddpm_step_ref,
    pack_sampler_table,
)

LMIN, LMAX = -5.1, 9.8
T = 100


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    return pack_sampler_table(sampler_table(T, LMIN, LMAX)).to(DEVICE)


def _lambda(u: float) -> float:
    """Cosine log-SNR schedule (spec §2), straight from the formula in Python float64."""
    b = math.atan(math.exp(-LMAX / 2))
    a = math.atan(math.exp(-LMIN / 2)) - b
    return -2 * math.log(math.tan(a * u + b))


def _row_float64(k: int, n_steps: int) -> list[float]:
    """Row k from the textbook posterior q(z_s | z_t, x) of a VP diffusion, in float64 (not the engine's
    algebra): α² = sigmoid(λ), α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s}σ_s², mean coefficients
    α_{t|s}σ_s²/σ_t² (z) and α_sσ²_{t|s}/σ_t² (x), γ = 1 std σ_{t|s}; the last row is ẑ0 itself."""
    i = n_steps - 1 - k
    lam_t, lam_s = _lambda(i / (n_steps - 1)), _lambda(max(i - 1, 0) / (n_steps - 1))
    a2_t, a2_s = 1 / (1 + math.exp(-lam_t)), 1 / (1 + math.exp(-lam_s))
    s2_t, s2_s = 1 - a2_t, 1 - a2_s
    a_ts = math.sqrt(a2_t / a2_s)
    s2_ts = max(s2_t - a_ts**2 * s2_s, 0.0)
    if k == n_steps - 1:
        mean_z, mean_x, std = 0.0, 1.0, 0.0
    else:
        mean_z, mean_x, std = a_ts * s2_s / s2_t, math.sqrt(a2_s) * s2_ts / s2_t, math.sqrt(s2_ts)
    return [lam_t, 1 / math.sqrt(a2_t), math.sqrt(s2_t / a2_t), mean_z, mean_x, std]


@pytest.mark.parametrize("n_steps", [2, 10, 100])
def test_table_against_float64_formulas(n_steps: int) -> None:
    """fp32 storage of float64 maths: every entry is the correctly rounded fp32 of the float64 value (within
    ½ ulp; float64 evaluation-order noise is ~1e-8 ulp). The same algebra in fp32 misses by up to 156 ulp
    (c_mean_x0 = (1 − r)·α_s and std, where 1 − r cancels)."""
    packed = pack_sampler_table(sampler_table(n_steps, LMIN, LMAX))
    assert packed.shape == (n_steps, len(TABLE_COLUMNS)) and packed.dtype == torch.float32
    assert packed.is_contiguous()
    want = torch.tensor([_row_float64(k, n_steps) for k in range(n_steps)], dtype=torch.float64)
    ulp = 2.0 ** (torch.frexp(want).exponent.double() - 24)  # fp32 spacing at each value
    err = (packed.double() - want).abs()
    assert bool((err <= 0.5001 * ulp + 1e-30).all()), f"max error {float((err / ulp).max())} ulp"
    assert packed[-1, 3:].tolist() == [0.0, 1.0, 0.0]  # deterministic final x-prediction


@pytest.mark.parametrize("nz", NZ)
@pytest.mark.parametrize("rows", ROWS)
def test_reference_is_the_engine_step(rows: int, nz: int) -> None:
    engine_table = sampler_table(T, LMIN, LMAX)
    packed = pack_sampler_table(engine_table)
    g = torch.Generator().manual_seed(rows * 1000 + nz)
    z, eps_hat, eps = (torch.randn(rows, nz, generator=g) for _ in range(3))
    for k in (0, 1, 37, T - 2, T - 1):
        for noise in (eps, None):
            assert torch.equal(ddpm_step_ref(z, eps_hat, packed, torch.tensor(k), noise),
                               engine_ddpm_step(z, eps_hat, k, engine_table, noise))


def _inputs(rows: int, nz: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, nz, generator=g).to(DEVICE) for _ in range(3))  # type: ignore[return-value]


def _terms(table: torch.Tensor, k: int, z: torch.Tensor, eps_hat: torch.Tensor) -> list[torch.Tensor]:
    """The formula's largest intermediate magnitudes at row k (c_x0_z reaches 1/α ≈ 13 at λ_min)."""
    c = table[k].abs()
    return [c[1] * z, c[2] * eps_hat, c[3] * z, c[4] * (c[1] * z.abs() + c[2] * eps_hat.abs())]


@pytest.mark.parametrize("nz", NZ)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_reference(triton_backend: None, table: torch.Tensor, rows: int, nz: int) -> None:
    z, eps_hat, eps = _inputs(rows, nz)
    seed_offset = torch.tensor([rows, nz], device=DEVICE)
    for k in (0, 50, T - 1):  # first step (λ_min: 1/α ≈ 13), a middle one, the final x-prediction
        k_t = torch.tensor(k, device=DEVICE)
        terms = _terms(table, k, z, eps_hat)
        assert_matches(ddpm_step(z, eps_hat, table, k_t, eps), ddpm_step_ref(z, eps_hat, table, k_t, eps), *terms)
        assert_matches(ddpm_step(z, eps_hat, table, k_t, None), ddpm_step_ref(z, eps_hat, table, k_t, None), *terms)
    k_t = torch.tensor(50, device=DEVICE)  # the plain-torch Philox is the slow part on CPU: one row is enough
    assert_matches(ddpm_step_philox(z, eps_hat, table, k_t, seed_offset),
                   ddpm_step_philox_ref(z, eps_hat, table, k_t, seed_offset), *_terms(table, 50, z, eps_hat),
                   atol=NOISE_ATOL)


def test_final_step_is_the_deterministic_x_prediction(triton_backend: None, table: torch.Tensor) -> None:
    """Row T−1: z_s = ẑ0 = c_x0_z·z − c_x0_eps·ε̂ whatever the noise (no branch in the kernel)."""
    z, eps_hat, eps = _inputs(129, 100)
    k = torch.tensor(T - 1, device=DEVICE)
    x0 = table[-1, 1] * z - table[-1, 2] * eps_hat
    for out in (ddpm_step(z, eps_hat, table, k, eps), ddpm_step(z, eps_hat, table, k, None),
                ddpm_step_philox(z, eps_hat, table, k, torch.tensor([1, 2], device=DEVICE))):
        assert_matches(out, x0, *_terms(table, T - 1, z, eps_hat))


def test_step_index_is_read_from_device_memory(triton_backend: None, table: torch.Tensor) -> None:
    """Graph safety: one set of launch arguments serves every step; changing k in place changes the row."""
    z, eps_hat, eps = _inputs(7, 8)
    k = torch.tensor(3, device=DEVICE)
    first = ddpm_step(z, eps_hat, table, k, eps)
    k.fill_(60)
    second = ddpm_step(z, eps_hat, table, k, eps)
    assert not torch.equal(first, second)
    assert_matches(second, ddpm_step_ref(z, eps_hat, table, torch.tensor(60, device=DEVICE), eps),
                   *_terms(table, 60, z, eps_hat))


def test_bf16_eps_hat_and_non_contiguous_inputs(triton_backend: None, table: torch.Tensor) -> None:
    z, eps_hat, eps = _inputs(1000, 128, seed=3)
    k = torch.tensor(10, device=DEVICE)
    terms = _terms(table, 10, z, eps_hat)
    bf16 = eps_hat.bfloat16()
    assert_matches(ddpm_step(z, bf16, table, k, eps), ddpm_step_ref(z, bf16, table, k, eps), *terms)
    z_t, eps_t = z.t().contiguous().t(), eps.t().contiguous().t()
    wide = torch.zeros(1000, 256, device=DEVICE)
    wide[:, 1::2] = eps_hat
    assert_matches(ddpm_step(z_t, wide[:, 1::2], table, k, eps_t), ddpm_step_ref(z, eps_hat, table, k, eps), *terms)


def test_rejects_bad_inputs(triton_backend: None, table: torch.Tensor) -> None:
    z, eps_hat, eps = _inputs(7, 8)
    k = torch.tensor(0, device=DEVICE)
    with pytest.raises(ValueError, match="table has shape"):
        ddpm_step(z, eps_hat, table[:, :5], k, eps)
    with pytest.raises(ValueError, match="k must be"):
        ddpm_step(z, eps_hat, table, k.int(), eps)
    with pytest.raises(ValueError, match="noise has shape"):
        ddpm_step(z, eps_hat, table, k, eps[:3])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend: str, table: torch.Tensor, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{backend}_backend")
    z, eps_hat, eps = _inputs(7, 8)
    k, seed_offset = torch.tensor(5, device=DEVICE), torch.tensor([1, 2], device=DEVICE)
    torch.library.opcheck(ddpm_step, (z, eps_hat, table, k, eps))
    torch.library.opcheck(ddpm_step, (z.clone().requires_grad_(), eps_hat, table, k, None))
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")  # Philox AOT: see the Langevin test
    torch.library.opcheck(ddpm_step_philox, (z, eps_hat, table, k, seed_offset), test_utils=utils)


def test_gradients_of_the_linear_step(torch_backend: None) -> None:
    table64 = pack_sampler_table(sampler_table(10)).double()
    z, eps_hat, eps = (torch.randn(3, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k = torch.tensor(4)
    assert torch.autograd.gradcheck(lambda a, b, c: ddpm_step(a, b, table64, k, c), (z, eps_hat, eps))
    so = torch.tensor([1, 2])
    assert torch.autograd.gradcheck(lambda a, b: ddpm_step_philox(a, b, table64, k, so), (z, eps_hat))


def test_compile_fullgraph(torch_backend: None, table: torch.Tensor) -> None:
    z, eps_hat, eps = _inputs(7, 8)
    ks, seed_offset = torch.arange(T, device=DEVICE), torch.tensor([1, 2], device=DEVICE)

    def two_steps(z: torch.Tensor) -> torch.Tensor:
        z = ddpm_step(z, eps_hat, table, ks[0], eps)
        return ddpm_step_philox(z, eps_hat, table, ks[1], seed_offset)

    torch._dynamo.reset()
    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z), two_steps(z), rtol=0, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the compiled Triton kernel inside an Inductor graph needs a GPU")
def test_compile_fullgraph_inductor_with_kernel(triton_backend: None, table: torch.Tensor) -> None:
    z, eps_hat, eps = _inputs(129, 128)
    k, seed_offset = torch.tensor(3, device=DEVICE), torch.tensor([1, 2], device=DEVICE)
    fn = lambda z: ddpm_step_philox(ddpm_step(z, eps_hat, table, k, eps), eps_hat, table, k, seed_offset)  # noqa: E731
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True)(z)
    with use_backend("torch"):
        want = fn(z)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5 + NOISE_ATOL)
    torch._dynamo.reset()
