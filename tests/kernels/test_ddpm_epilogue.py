"""kernels.ddpm_epilogue: the reference against the composition it replaces (the last concat-squash block's
epilogue, the residual ε̂ and kernels.ddpm_step), the kernel against the reference (fp32 and bf16 operands, with
and without noise, residual on/off), the step index from device memory, bad input, registration checks."""

from __future__ import annotations

import pytest
import torch
from kernel_support import DEVICE, NZ, ROWS, assert_matches

from engine.sampling.diffusion import sampler_table
from kernels.ddpm_epilogue import ddpm_epilogue, ddpm_epilogue_ref
from kernels.ddpm_step import ddpm_step_ref, pack_sampler_table

T = 100


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    return pack_sampler_table(sampler_table(T)).to(DEVICE)


def _inputs(rows: int, nz: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    return {"z": r(rows, nz), "y": r(rows, 2 * nz), "gate": torch.sigmoid(r(rows, nz)), "bias": r(rows, nz),
            "noise": r(rows, nz)}


def _terms(table: torch.Tensor, k: int, i: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The formula's largest intermediates: the block output, ε̂, and the step's products (c_x0_z ≈ 13 at λ_min)."""
    c = table[k].abs()
    h = i["y"].abs().max() * 2 + i["bias"].abs().max()
    eps_hat = i["z"].abs() + h
    return [h.reshape(1), c[1] * i["z"], c[2] * eps_hat, c[4] * (c[1] * i["z"].abs() + c[2] * eps_hat)]


@pytest.mark.parametrize("residual", [True, False])
def test_reference_is_the_block_epilogue_then_the_step(table: torch.Tensor, residual: bool) -> None:
    i = _inputs(7, 8)
    nz = 8
    for k in (0, 50, T - 1):
        kt = torch.tensor(k, device=DEVICE)
        h = i["y"][:, :nz] * i["gate"] + i["bias"] + i["y"][:, nz:]  # layer(h)·gate + bias + skip(h)
        eps_hat = i["z"] + h if residual else h
        want = ddpm_step_ref(i["z"], eps_hat, table, kt, i["noise"])
        assert torch.equal(ddpm_epilogue_ref(i["z"], i["y"], i["gate"], i["bias"], table, kt, i["noise"], residual),
                           want)


@pytest.mark.parametrize("nz", NZ)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_reference(triton_backend: None, table: torch.Tensor, rows: int, nz: int) -> None:
    i = _inputs(rows, nz, seed=rows + nz)
    for k in (0, 50, T - 1):
        kt = torch.tensor(k, device=DEVICE)
        for noise in (i["noise"], None):
            for residual in (True, False):
                args = (i["z"], i["y"], i["gate"], i["bias"], table, kt, noise, residual)
                assert_matches(ddpm_epilogue(*args), ddpm_epilogue_ref(*args), *_terms(table, k, i))


def test_bf16_operands_compute_in_fp32(triton_backend: None, table: torch.Tensor) -> None:
    i = _inputs(129, 128, seed=3)
    kt = torch.tensor(10, device=DEVICE)
    y, gate, bias = i["y"].bfloat16(), i["gate"].bfloat16(), i["bias"].bfloat16()
    args = (i["z"], y, gate, bias, table, kt, i["noise"], True)
    got = ddpm_epilogue(*args)
    assert got.dtype == torch.float32
    assert_matches(got, ddpm_epilogue_ref(*args), *_terms(table, 10, i))


def test_step_index_is_read_from_device_memory(triton_backend: None, table: torch.Tensor) -> None:
    i = _inputs(7, 8)
    k = torch.tensor(3, device=DEVICE)
    args = (i["z"], i["y"], i["gate"], i["bias"], table)
    first = ddpm_epilogue(*args, k, i["noise"], True)
    k.fill_(60)
    second = ddpm_epilogue(*args, k, i["noise"], True)
    assert not torch.equal(first, second)
    assert_matches(second, ddpm_epilogue_ref(*args, torch.tensor(60, device=DEVICE), i["noise"], True),
                   *_terms(table, 60, i))


def test_rejects_bad_inputs(triton_backend: None, table: torch.Tensor) -> None:
    i = _inputs(7, 8)
    k = torch.tensor(0, device=DEVICE)
    with pytest.raises(ValueError, match="y has shape"):
        ddpm_epilogue(i["z"], i["y"][:, :8], i["gate"], i["bias"], table, k, None, True)
    with pytest.raises(ValueError, match="table has shape"):
        ddpm_epilogue(i["z"], i["y"], i["gate"], i["bias"], table[:, :5], k, None, True)
    with pytest.raises(ValueError, match="k must be"):
        ddpm_epilogue(i["z"], i["y"], i["gate"], i["bias"], table, k.int(), None, True)
    with pytest.raises(TypeError, match="contiguous"):
        ddpm_epilogue(i["z"], i["y"], i["gate"].t().contiguous().t()[:, :8], i["bias"].t().contiguous().t(), table,
                      k, None, True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend: str, table: torch.Tensor, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{backend}_backend")
    i = _inputs(7, 8)
    k = torch.tensor(5, device=DEVICE)
    utils = ("test_schema", "test_faketensor")  # no autograd: the sampler runs under no_grad
    torch.library.opcheck(ddpm_epilogue, (i["z"], i["y"], i["gate"], i["bias"], table, k, i["noise"], True),
                          test_utils=utils)
    torch.library.opcheck(ddpm_epilogue, (i["z"], i["y"], i["gate"], i["bias"], table, k, None, False),
                          test_utils=utils)
