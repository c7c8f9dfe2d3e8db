"""The last U-Net block's epilogue fused with the ancestral DDPM step (issue 14 item 2; ``kernels.ddpm_step``).

The sampler's U-Net ends in a concat-squash block whose two input GEMMs (``layer`` and ``skip``) are merged into one
producing y = [layer(h) | skip(h)] (B, 2·nz). What follows is elementwise:

    h      = y[:, :nz] ⊙ gate + bias + y[:, nz:]           (gate, bias: the block's context terms at step k)
    ε̂     = z + h   (the residual ε of the code; h alone with residual=False)
    ẑ0     = c_x0_z·z − c_x0_eps·ε̂
    z_s    = c_mean_z·z + c_mean_x0·ẑ0 + std·ε

Eager torch runs ~12 kernels for it; this is one pass reading z, y, gate, bias (and ε) and writing z_s, in fp32
whatever the dtype of y, gate and bias (bf16 under the fast path). The coefficient table and the step index are
those of :mod:`kernels.ddpm_step` (step index from device memory: one CUDA-graph node shape for every step).

    ddpm_epilogue(z, y, gate, bias, table, k, noise, residual)     noise (B, nz) fp32 or None
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.backend import quiet_triton_op_registration, use_triton
from kernels.ddpm_step import TABLE_COLUMNS, ddpm_step_ref

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

__all__ = ["ddpm_epilogue", "ddpm_epilogue_ref"]

_BLOCK = 1024
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def ddpm_epilogue_ref(z: Tensor, y: Tensor, gate: Tensor, bias: Tensor, table: Tensor, k: Tensor,
                      noise: Tensor | None, residual: bool) -> Tensor:
    """z (B, nz) fp32, y (B, 2·nz), gate and bias (B, nz) any float dtype (computed in fp32), table (T, 6) fp32,
    k () int64, noise (B, nz) fp32 or None; returns z_s (B, nz) fp32."""
    nz = z.shape[1]
    h = y[:, :nz].float() * gate.float() + bias.float() + y[:, nz:].float()
    eps_hat = z + h if residual else h
    return ddpm_step_ref(z, eps_hat, table, k, noise)


if triton is not None:

    @triton.jit
    def _ddpm_epilogue_kernel(z_ptr, y_ptr, g_ptr, b_ptr, noise_ptr, out_ptr, table_ptr, k_ptr, n_elements, nz,
                              NOISE: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        # All operands contiguous: z, gate, bias, noise, out (B, nz); y (B, 2·nz).
        k = tl.load(k_ptr)
        row = table_ptr + k * 6
        c_x0_z = tl.load(row + 1)
        c_x0_eps = tl.load(row + 2)
        c_mean_z = tl.load(row + 3)
        c_mean_x0 = tl.load(row + 4)
        std = tl.load(row + 5)
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = e < n_elements
        r = e // nz
        y_off = e + r * nz  # row r of y starts at r·2nz; column e − r·nz
        z = tl.load(z_ptr + e, mask=live)
        y_l = tl.load(y_ptr + y_off, mask=live).to(tl.float32)
        y_s = tl.load(y_ptr + y_off + nz, mask=live).to(tl.float32)
        gate = tl.load(g_ptr + e, mask=live).to(tl.float32)
        bias = tl.load(b_ptr + e, mask=live).to(tl.float32)
        h = y_l * gate + bias + y_s
        if RESIDUAL:  # noqa: SIM108 (a compile-time branch of the kernel)
            eps_hat = z + h
        else:
            eps_hat = h
        x0 = c_x0_z * z - c_x0_eps * eps_hat
        out = c_mean_z * z + c_mean_x0 * x0
        if NOISE:
            out = out + std * tl.load(noise_ptr + e, mask=live)
        tl.store(out_ptr + e, out, mask=live)

else:
    _ddpm_epilogue_kernel = None


def _check(z: Tensor, y: Tensor, gate: Tensor, bias: Tensor, table: Tensor, k: Tensor,
           noise: Tensor | None) -> str | None:
    """Raise on mismatched shapes/devices; return why the kernel cannot take these inputs (None: it can)."""
    if z.dim() != 2:
        raise ValueError(f"ddpm_epilogue: z must be (B, nz); got {tuple(z.shape)}")
    b, nz = z.shape
    want = {"y": (b, 2 * nz), "gate": (b, nz), "bias": (b, nz)}
    for name, t in (("y", y), ("gate", gate), ("bias", bias), ("noise", noise)):
        if t is None:
            continue
        if tuple(t.shape) != want.get(name, (b, nz)):
            raise ValueError(f"ddpm_epilogue: {name} has shape {tuple(t.shape)}; expected {want.get(name, (b, nz))}")
        if t.device != z.device:
            raise ValueError(f"ddpm_epilogue: {name} is on {t.device}; z is on {z.device}")
    if table.dim() != 2 or table.shape[1] != len(TABLE_COLUMNS):
        raise ValueError(f"ddpm_epilogue: table has shape {tuple(table.shape)}; expected (T, {len(TABLE_COLUMNS)})")
    if k.numel() != 1 or k.dtype != torch.int64:
        raise ValueError(f"ddpm_epilogue: k must be a one-element int64 tensor; got {tuple(k.shape)} {k.dtype}")
    if z.dtype != torch.float32 or table.dtype != torch.float32 or (noise is not None and noise.dtype != z.dtype):
        return "ddpm_epilogue keeps z, the table and ε in float32"
    if any(t.dtype not in _DTYPES for t in (y, gate, bias)):
        return "ddpm_epilogue: y, gate and bias must be float32/bfloat16/float16"
    if not all(t.is_contiguous() for t in (z, y, gate, bias, *(() if noise is None else (noise,)))):
        return "ddpm_epilogue: the kernel takes contiguous operands"
    if 2 * z.numel() >= 2**31:
        return "ddpm_epilogue: offsets exceed int32"
    return None


def _launch(z: Tensor, y: Tensor, gate: Tensor, bias: Tensor, table: Tensor, k: Tensor, noise: Tensor | None,
            residual: bool) -> Tensor:
    out = torch.empty_like(z)
    n = z.numel()
    if n == 0:
        return out
    wrap_triton(_ddpm_epilogue_kernel)[((n + _BLOCK - 1) // _BLOCK,)](
        z, y, gate, bias, noise if noise is not None else z, out, table.contiguous(), k, n, z.shape[1],
        NOISE=noise is not None, RESIDUAL=residual, BLOCK=_BLOCK,
    )
    return out


with quiet_triton_op_registration():

    @triton_op("damc::ddpm_epilogue", mutates_args=())
    def ddpm_epilogue(z: Tensor, y: Tensor, gate: Tensor, bias: Tensor, table: Tensor, k: Tensor,
                      noise: Tensor | None, residual: bool) -> Tensor:
        """Public op: the last block's epilogue and the ancestral step at row k; kernel or reference per backend."""
        if use_triton(z, _check(z, y, gate, bias, table, k, noise)):
            return _launch(z, y, gate, bias, table, k, noise, residual)
        return ddpm_epilogue_ref(z, y, gate, bias, table, k, noise, residual)
