"""Fused ancestral DDPM step (paper eq. 5, γ = 1; ``engine.sampling.diffusion``):

    ẑ0  = c_x0_z·z − c_x0_eps·ε̂                     (= (z − σ_t ε̂)/α_t)
    z_s = c_mean_z·z + c_mean_x0·ẑ0 + std·ε          (posterior mean + σ_{t|s}·ε, "large" variance)

Coefficients come from a per-step table, computed once in float64 by ``engine.sampling.diffusion.sampler_table`` and
stored in fp32, packed here as one contiguous (T, 6) fp32 tensor (:func:`pack_sampler_table`; columns
:data:`TABLE_COLUMNS`). The step index k is read from device memory, so one launch (or one CUDA-graph node)
serves every step; the last row (c_mean_z = 0, c_mean_x0 = 1, std = 0) is the deterministic final
x-prediction, with no branch. Eager torch runs ~8 elementwise kernels plus a ``randn`` per step; here it is
one pass: read z and ε̂ (and ε, unless it is drawn in-kernel), write z_s.

Ops (each with a plain-torch ``_ref`` of the same signature, the spec of the kernel):
    ddpm_step(z, eps_hat, table, k, noise)                  noise (B, nz) fp32 or None (no noise)
    ddpm_step_philox(z, eps_hat, table, k, seed_offset)     ε = philox_noise(z, seed_offset, k)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.library import triton_op

from kernels.backend import quiet_triton_op_registration, use_triton
from kernels.elementwise import check_operands, element_offset, lane_noise, launch_elementwise
from kernels.philox_noise import check_philox_args, philox_noise_ref

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

TABLE_COLUMNS = ("logsnr", "c_x0_z", "c_x0_eps", "c_mean_z", "c_mean_x0", "std")


class CoefficientTable(Protocol):
    """The per-step coefficient columns (each (T,)) of ``engine.sampling.diffusion.SamplerTable``; kernels/ never
    imports the engine, so the table is described by the attributes it must have."""

    @property
    def logsnr(self) -> Tensor: ...
    @property
    def c_x0_z(self) -> Tensor: ...
    @property
    def c_x0_eps(self) -> Tensor: ...
    @property
    def c_mean_z(self) -> Tensor: ...
    @property
    def c_mean_x0(self) -> Tensor: ...
    @property
    def std(self) -> Tensor: ...


def pack_sampler_table(table: CoefficientTable) -> Tensor:
    """(T, 6) contiguous fp32 on the table's device, columns :data:`TABLE_COLUMNS`; values unchanged."""
    cols = [getattr(table, name).to(torch.float32) for name in TABLE_COLUMNS]  # each (T,)
    return torch.stack(cols, dim=1).contiguous()


def ddpm_step_ref(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, noise: Tensor | None) -> Tensor:
    """z (B, nz) fp32, ε̂ (B, nz) any float dtype, table (T, 6) fp32, k () int64, noise (B, nz) or None.

    Identical, operation for operation, to ``engine.sampling.diffusion.ddpm_step`` at row k (ε̂ is first cast to z's
    dtype, so a bf16 ε̂ gets fp32 arithmetic). The row is gathered on the device: no host sync.
    """
    row = table.index_select(0, k.reshape(1)).reshape(-1)  # (6,)
    x0 = row[1] * z - row[2] * eps_hat.to(z.dtype)
    out = row[3] * z + row[4] * x0
    if noise is not None:
        out = out + row[5] * noise
    return out


def ddpm_step_philox_ref(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, seed_offset: Tensor) -> Tensor:
    """The step with ε = ``philox_noise_ref(z, seed_offset, k)`` (the step index doubles as the noise step)."""
    return ddpm_step_ref(z, eps_hat, table, k, philox_noise_ref(z, seed_offset, k).to(z.dtype))


if triton is not None:

    @triton.jit
    def _ddpm_step_kernel(
        z_ptr, a_ptr, noise_ptr, seed_offset_ptr, out_ptr, table_ptr, k_ptr,  # a = ε̂ (B, nz), any float dtype
        n_elements, n_ctr, n_cols,  # N, counters per step (a multiple of 16), nz
        z_s0, z_s1, a_s0, a_s1, e_s0, e_s1,  # element strides; used only when STRIDED
        NOISE: tl.constexpr, STRIDED: tl.constexpr, QUARTER: tl.constexpr,
    ):
        # The layout of kernels.elementwise: QUARTER counters c, four contiguous element runs e = lane·n_ctr + c.
        k = tl.load(k_ptr)  # step index from device memory: the launch is identical for every step
        row = table_ptr + k * 6  # (T, 6) contiguous fp32
        c_x0_z = tl.load(row + 1)
        c_x0_eps = tl.load(row + 2)
        c_mean_z = tl.load(row + 3)
        c_mean_x0 = tl.load(row + 4)
        std = tl.load(row + 5)
        c = tl.program_id(0) * QUARTER + tl.arange(0, QUARTER)  # (QUARTER,) int32
        if NOISE == 2:
            counter = tl.load(seed_offset_ptr + 1) + k * n_ctr + c  # int64
            r0, r1, r2, r3 = tl.randn4x(tl.load(seed_offset_ptr), counter)
        for lane in tl.static_range(4):
            e = lane * n_ctr + c
            live = (c < n_ctr) & (e < n_elements)
            z = tl.load(z_ptr + element_offset(e, n_cols, z_s0, z_s1, STRIDED), mask=live)
            eps_hat = tl.load(a_ptr + element_offset(e, n_cols, a_s0, a_s1, STRIDED), mask=live).to(tl.float32)
            x0 = c_x0_z * z - c_x0_eps * eps_hat
            out = c_mean_z * z + c_mean_x0 * x0
            if NOISE == 1:
                out = out + std * tl.load(noise_ptr + element_offset(e, n_cols, e_s0, e_s1, STRIDED), mask=live)
            if NOISE == 2:
                out = out + std * lane_noise(r0, r1, r2, r3, lane)
            tl.store(out_ptr + e, out, mask=live)

else:
    _ddpm_step_kernel = None


def _ddpm_step_triton(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, noise: Tensor | None,
                      seed_offset: Tensor | None = None, config: tuple[int, int] | None = None) -> Tensor:
    """Launch the kernel; ``noise`` xor ``seed_offset`` picks the ε source, neither = no noise."""
    return launch_elementwise(_ddpm_step_kernel, z, eps_hat, noise, seed_offset, config,
                              table_ptr=table.contiguous(), k_ptr=k)


def _check(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, noise: Tensor | None) -> str | None:
    """Raise on mismatched shapes/devices; return why the kernel cannot take these dtypes (None: it can)."""
    if table.dim() != 2 or table.shape[1] != len(TABLE_COLUMNS):
        raise ValueError(f"ddpm_step: table has shape {tuple(table.shape)}; expected (T, {len(TABLE_COLUMNS)})")
    if k.numel() != 1 or k.dtype != torch.int64:
        raise ValueError(f"ddpm_step: k must be a one-element int64 tensor; got {tuple(k.shape)} {k.dtype}")
    if table.device != z.device or k.device != z.device:
        raise ValueError(f"ddpm_step: table ({table.device}) and k ({k.device}) must be on {z.device}")
    unsupported = check_operands("ddpm_step", z, "eps_hat", eps_hat, noise)
    if unsupported is None and table.dtype != torch.float32:
        return f"ddpm_step computes in float32; table is {table.dtype}"
    return unsupported


with quiet_triton_op_registration():

    @triton_op("damc::ddpm_step", mutates_args=())
    def ddpm_step(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, noise: Tensor | None) -> Tensor:
        """Public op: one ancestral step at row k (noise None: no noise); kernel or reference per backend."""
        if use_triton(z, _check(z, eps_hat, table, k, noise)):
            return _ddpm_step_triton(z, eps_hat, table, k, noise)
        return ddpm_step_ref(z, eps_hat, table, k, noise)

    @triton_op("damc::ddpm_step_philox", mutates_args=())
    def ddpm_step_philox(z: Tensor, eps_hat: Tensor, table: Tensor, k: Tensor, seed_offset: Tensor) -> Tensor:
        """Public op: one ancestral step with in-kernel Philox ε (seed_offset (2,) int64, k () int64, on device)."""
        unsupported = _check(z, eps_hat, table, k, None)
        check_philox_args(z, seed_offset, k)
        if use_triton(z, unsupported):
            return _ddpm_step_triton(z, eps_hat, table, k, None, seed_offset)
        return ddpm_step_philox_ref(z, eps_hat, table, k, seed_offset)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    z, eps_hat, table, k = inputs[:4]
    ctx.save_for_backward(table.index_select(0, k.reshape(1)).reshape(-1))  # (6,)
    ctx.eps_dtype = eps_hat.dtype
    ctx.has_noise = isinstance(inputs[4], Tensor) and inputs[4].is_floating_point()


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, Tensor | None]:
    """Linear in (z, ε̂, ε): ∂/∂z = c_mean_z + c_mean_x0·c_x0_z, ∂/∂ε̂ = −c_mean_x0·c_x0_eps, ∂/∂ε = std."""
    (row,) = ctx.saved_tensors
    d_z = (row[3] + row[4] * row[1]) * grad_out
    d_eps_hat = (-(row[4] * row[2]) * grad_out).to(ctx.eps_dtype)
    d_noise = row[5] * grad_out if ctx.has_noise else None
    return d_z, d_eps_hat, None, None, d_noise


def _backward_philox(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
    d_z, d_eps_hat, _, _, _ = _backward(ctx, grad_out)
    return d_z, d_eps_hat, None, None, None


ddpm_step.register_autograd(_backward, setup_context=_setup_context)
ddpm_step_philox.register_autograd(_backward_philox, setup_context=_setup_context)
