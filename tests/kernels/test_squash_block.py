"""kernels.squash_block: the references against the hoisted sampler's composition (cat, LReLU, merged GEMM,
epilogue, ddpm_epilogue), the kernel against the references (fp32 under the interpreter, bf16 on a GPU) for every
block shape of the U-Net and odd tails, the step index from device memory, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_support import DEVICE

from engine.sampling.diffusion import sampler_table
from kernels.ddpm_epilogue import ddpm_epilogue_ref
from kernels.ddpm_step import pack_sampler_table
from kernels.squash_block import (
    fourier_input,
    squash_block,
    squash_block_ddpm,
    squash_block_ddpm_ref,
    squash_block_fourier,
    squash_block_fourier_ref,
    squash_block_ref,
)

T = 100
# (K1, K2, out, act): the U-Net's blocks at nz 128, nf 4 (enc ×3, mid, dec ×3), and small odd tails.
BLOCKS = [(256, 0, 128, False), (128, 0, 256, True), (256, 0, 256, True), (256, 256, 256, True),
          (256, 256, 128, True), (128, 128, 128, True), (8, 0, 3, False), (5, 7, 9, True)]
ROWS = (1, 7, 64, 129)


def _operands(rows: int, k1: int, k2: int, out: int, dtype: torch.dtype = torch.float32,
              seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    k = k1 + k2
    ops = {"h1": r(rows, k1), "h2": r(rows, k2) if k2 else None, "w": r(2 * out, k) / math.sqrt(k),
           "b": r(2 * out) * 0.1, "gate": torch.sigmoid(r(T, rows, out)), "bias": r(T, rows, out)}
    return {n: (t.to(DEVICE, dtype) if t is not None and n in ("h1", "h2", "w", "b") else
                None if t is None else t.to(DEVICE)) for n, t in ops.items()}


def _args(o: dict[str, torch.Tensor | None], k: int, act: bool) -> tuple[object, ...]:
    return (o["h1"], o["h2"], o["w"], o["b"], o["gate"], o["bias"], torch.tensor(k, device=DEVICE), act)


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    return pack_sampler_table(sampler_table(T)).to(DEVICE)


def test_references_are_the_hoisted_samplers_composition(table: torch.Tensor) -> None:
    o = _operands(7, 16, 16, 8)
    z = torch.randn(7, 8, device=DEVICE)
    noise = torch.randn(7, 8, device=DEVICE)
    for k in (0, 41, T - 1):
        a = F.leaky_relu(torch.cat([o["h1"], o["h2"]], dim=1), 0.01)  # type: ignore[list-item]
        y = F.linear(a, o["w"], o["b"])  # type: ignore[arg-type]
        want = y[:, :8] * o["gate"][k] + o["bias"][k] + y[:, 8:]  # type: ignore[index]
        assert torch.equal(squash_block_ref(*_args(o, k, True)), want)  # type: ignore[arg-type]
        step = ddpm_epilogue_ref(z, y, o["gate"][k], o["bias"][k], table, torch.tensor(k), noise, True)  # type: ignore[index]
        assert torch.equal(squash_block_ddpm_ref(*_args(o, k, True), z, table, noise, True), step)  # type: ignore[arg-type]


def _tol(o: dict[str, torch.Tensor | None]) -> float:
    # fp32 GEMM in another summation order: a few ulp of Σ|a||w| per output, times the gate (≤ 1) plus bias
    k = o["w"].shape[1]  # type: ignore[union-attr]
    return 8 * k * torch.finfo(torch.float32).eps * 4.0


@pytest.mark.parametrize(("k1", "k2", "out", "act"), BLOCKS)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_reference(triton_backend: None, rows: int, k1: int, k2: int, out: int, act: bool) -> None:
    o = _operands(rows, k1, k2, out, seed=rows + k1 + out)
    for k in (0, T - 1):
        args = _args(o, k, act)
        got = squash_block(*args)  # type: ignore[arg-type]
        assert got.shape == (rows, out) and got.dtype == torch.float32
        torch.testing.assert_close(got, squash_block_ref(*args), rtol=0, atol=_tol(o))  # type: ignore[arg-type]


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("rows", (7, 64))
def test_last_block_with_the_step_matches_reference(triton_backend: None, table: torch.Tensor, rows: int,
                                                    residual: bool) -> None:
    o = _operands(rows, 128, 128, 128, seed=rows)
    z = torch.randn(rows, 128, device=DEVICE)
    noise = torch.randn(rows, 128, device=DEVICE)
    for k in (0, 50, T - 1):
        for eps in (noise, None):
            args = (*_args(o, k, True), z, table, eps, residual)
            got = squash_block_ddpm(*args)  # type: ignore[arg-type]
            # c_x0_eps·c_mean_x0 reaches ~13 at λ_min: the block's tolerance scaled by the step's coefficients
            c = table[k].abs()
            torch.testing.assert_close(got, squash_block_ddpm_ref(*args), rtol=0,  # type: ignore[arg-type]
                                       atol=_tol(o) * float(1 + c[2] * c[4]) + 1e-5)


@pytest.mark.parametrize(("nz", "out"), [(128, 128), (8, 32), (5, 3)])
@pytest.mark.parametrize("rows", (7, 64))
def test_first_block_with_its_fourier_features_matches_reference(triton_backend: None, rows: int, nz: int,
                                                                 out: int) -> None:
    g = torch.Generator().manual_seed(rows + nz)
    z = torch.randn(rows, nz, generator=g).to(DEVICE)
    fb = torch.randn(nz, nz // 2, generator=g).to(DEVICE)  # N(0, 1) as the module's: phases 2π·zB of O(10) rad
    o = _operands(rows, 2 * (nz // 2) + nz, 0, out, seed=nz)
    for k in (0, T - 1):
        kt = torch.tensor(k, device=DEVICE)
        args = (z, fb, o["w"], o["b"], o["gate"], o["bias"], kt)
        want = squash_block_fourier_ref(*args)  # type: ignore[arg-type]
        assert torch.equal(want, squash_block_ref(fourier_input(z, fb, torch.float32), None, o["w"], o["b"],  # type: ignore[arg-type]
                                                  o["gate"], o["bias"], kt, False))
        # zB summed in another order: ~1e-6 relative on O(10) rad phases moves sin/cos by ~1e-5
        torch.testing.assert_close(squash_block_fourier(*args), want, rtol=0, atol=2e-4)  # type: ignore[arg-type]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 arithmetic needs a GPU (the interpreter has none)")
@pytest.mark.gpu
def test_bf16_kernel_within_bf16_of_reference(triton_backend: None) -> None:
    o = _operands(64, 256, 256, 256, dtype=torch.bfloat16)
    args = _args(o, 3, True)
    got = squash_block(*args)  # type: ignore[arg-type]
    assert got.dtype == torch.bfloat16
    ref64 = squash_block_ref(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                               for a in args])  # type: ignore[arg-type]
    # the kernel rounds once (the output) where the reference rounds the GEMM and each epilogue op
    torch.testing.assert_close(got.double(), ref64, rtol=2e-2, atol=2e-2)


def test_bad_input_is_one_clear_error() -> None:
    o = _operands(4, 8, 0, 4)
    with pytest.raises(ValueError, match=r"w must be \(2·out, 9\)"):
        squash_block(o["h1"], torch.zeros(4, 1, device=DEVICE), o["w"], o["b"], o["gate"], o["bias"],  # type: ignore[arg-type]
                     torch.tensor(0, device=DEVICE), True)
    with pytest.raises(ValueError, match=r"gate must be \(T, 4, 4\)"):
        squash_block(o["h1"], None, o["w"], o["b"], o["gate"][:, :3], o["bias"],  # type: ignore[arg-type, index]
                     torch.tensor(0, device=DEVICE), True)
    with pytest.raises(ValueError, match=r"z \(B, nz\) and fourier_b \(nz, nz//2\) expected"):
        squash_block_fourier(torch.zeros(4, 8, device=DEVICE), torch.zeros(6, 4, device=DEVICE), o["w"], o["b"],  # type: ignore[arg-type]
                             o["gate"], o["bias"], torch.tensor(0, device=DEVICE))
    with pytest.raises(ValueError, match="k must be a one-element int64"):
        squash_block(o["h1"], None, o["w"], o["b"], o["gate"], o["bias"], torch.tensor(0.0), True)  # type: ignore[arg-type]
