"""One concat-squash block of the sampler's U-Net as one kernel: its merged GEMM and its epilogue (issue 14 item 2).

The hoisted sampler (``engine/runtime/sampler.py``) leaves per step only the z path of the U-Net's seven blocks
(spec §1.4). Each block is ``out = layer(a) ⊙ gate + bias + skip(a)`` on a = LReLU(cat[h1, h2]) (no activation before
the first block, no h2 outside the decoder), with W = [W_layer; W_skip] stacked (2·out, K) and the context terms gate,
bias precomputed for every step (T, B, out). Inductor runs each block as a GEMM plus one elementwise kernel (fused
with the next block's LReLU and cat, and step k's gate and bias gathers): with the Fourier features' GEMM, 8 GEMMs
and 7 elementwise kernels a step (counted in Inductor's code for the trunk on a CPU), then the epilogue kernel: 16.
This kernel is one launch a block: it reads a, applying the cat and LReLU on load, multiplies by both halves of W
with fp32 accumulation, and finishes the block in registers, reading step k's gate and bias rows from device memory
(one graph node shape for every step). The last block can also take the ancestral step (``kernels.ddpm_epilogue``'s
formula), and the first computes its own input, the Fourier features [sin(2π zB), cos(2π zB), z]: a whole sampler
step is seven launches.

    squash_block(h1, h2, w, b, gate, bias, k, act) -> (B, out), in w's dtype
    squash_block_fourier(z, fourier_b, w, b, gate, bias, k) -> (B, out): the first block, on its Fourier features
    squash_block_ddpm(h1, h2, w, b, gate, bias, k, act, z, table, noise, residual) -> z_s (B, nz) fp32

Shapes: h1 (B, K1), h2 (B, K2) or None, K = K1 + K2; w (2·out, K), b (2·out,); gate, bias (T, B, out); k () int64;
z, noise (B, out) fp32; table (T, 6) fp32 (``kernels.ddpm_step.TABLE_COLUMNS``). h1, h2, w, b share one dtype
(fp32 or bf16). The references are the composition the hoisted sampler runs without the kernel (``torch.cat``,
``F.leaky_relu``, ``F.linear`` in w's dtype, then the epilogue), so with the torch backend nothing changes; the kernel
keeps the GEMM's result in fp32 through the epilogue (one bf16 rounding fewer than the reference: bf16 tolerance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.backend import quiet_triton_op_registration, use_triton
from kernels.ddpm_epilogue import ddpm_epilogue_ref

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

__all__ = ["fourier_input", "squash_block", "squash_block_ddpm", "squash_block_ddpm_ref", "squash_block_fourier",
           "squash_block_fourier_ref", "squash_block_ref"]

_LRELU = 0.01  # the U-Net's LeakyReLU slope (spec §1.4)
_DTYPES = (torch.float32, torch.bfloat16)


def _block_input(h1: Tensor, h2: Tensor | None, act: bool) -> Tensor:
    a = h1 if h2 is None else torch.cat([h1, h2], dim=1)  # (B, K)
    return F.leaky_relu(a, _LRELU) if act else a


def _context_row(t: Tensor, k: Tensor) -> Tensor:
    return t.index_select(0, k.reshape(1))[0]  # (T, B, out) -> (B, out), gathered on the device


def squash_block_ref(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor, k: Tensor,
                     act: bool) -> Tensor:
    """The block as the hoisted sampler computes it without the kernel: (B, out) in w's dtype."""
    y = F.linear(_block_input(h1, h2, act), w, b)  # (B, 2·out) = [layer | skip]
    n = w.shape[0] // 2
    return y[:, :n] * _context_row(gate, k) + _context_row(bias, k) + y[:, n:]


def fourier_input(z: Tensor, fourier_b: Tensor, dtype: torch.dtype) -> Tensor:
    """The first block's input [sin(2π zB), cos(2π zB), z] (B, 2·(nz//2) + nz) in ``dtype``; z (B, nz) and the
    Fourier matrix B (nz, nz//2) in fp32 (the phases are O(10) rad: bf16 would put ~0.05 rad into each; spec §1.4)."""
    zb = 2 * math.pi * (z.float() @ fourier_b)  # (B, nz//2)
    return torch.cat([torch.sin(zb), torch.cos(zb), z], dim=1).to(dtype)


def squash_block_fourier_ref(z: Tensor, fourier_b: Tensor, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor,
                             k: Tensor) -> Tensor:
    """The U-Net's first block on its Fourier features (no activation before it): (B, out) in w's dtype."""
    return squash_block_ref(fourier_input(z, fourier_b, w.dtype), None, w, b, gate, bias, k, False)


def squash_block_ddpm_ref(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor,
                          k: Tensor, act: bool, z: Tensor, table: Tensor, noise: Tensor | None,
                          residual: bool) -> Tensor:
    """The last block, the residual ε̂ = z + h and the ancestral step at row k: z_s (B, nz) fp32."""
    y = F.linear(_block_input(h1, h2, act), w, b)  # (B, 2·nz)
    return ddpm_epilogue_ref(z, y, _context_row(gate, k), _context_row(bias, k), table, k, noise, residual)


if triton is not None:

    @triton.jit
    def _squash_block_kernel(h1_ptr, h2_ptr, w_ptr, b_ptr, g_ptr, bb_ptr, k_ptr, out_ptr, z_ptr, table_ptr,
                             noise_ptr, n_rows, k1, k2, half, n_out,
                             ACT: tl.constexpr, TWO: tl.constexpr, FOURIER: tl.constexpr, DDPM: tl.constexpr,
                             NOISE: tl.constexpr, RESIDUAL: tl.constexpr, IEEE: tl.constexpr, NZP: tl.constexpr,
                             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # Program (i, j): rows i·BM.., output columns j·BN.. of the block; every operand contiguous. The input a
        # (BM, K) is cat[h1, h2] (K = k1 + k2), or with FOURIER the first block's [sin(2π zB), cos(2π zB), z] for
        # h1 = z (B, k1 = nz) fp32 and h2 = B (nz, half) fp32 (K = 2·half + nz).
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        kk_total = k1 + k2 + 2 * half
        row_ok = rm < n_rows
        col_ok = rn < n_out
        acc_l = tl.zeros((BM, BN), dtype=tl.float32)  # layer(a)
        acc_s = tl.zeros((BM, BN), dtype=tl.float32)  # skip(a)
        if FOURIER:
            rz = tl.arange(0, NZP)
            z_rows = tl.load(h1_ptr + rm[:, None] * k1 + rz[None, :], mask=row_ok[:, None] & (rz[None, :] < k1),
                             other=0.0)  # (BM, NZP) fp32
        for k0 in range(0, kk_total, BK):
            kk = k0 + rk
            if FOURIER:
                # column c of zB feeds a's column c (sin) and half + c (cos); zB's phases are O(10) rad: fp32 IEEE
                c = tl.minimum(tl.maximum(tl.where(kk < half, kk, kk - half), 0), half - 1)
                fb = tl.load(h2_ptr + rz[:, None] * half + c[None, :],
                             mask=(rz[:, None] < k1) & (kk[None, :] < 2 * half), other=0.0)  # (NZP, BK)
                zb = tl.dot(z_rows, fb, input_precision="ieee") * 6.283185307179586
                zi = tl.maximum(kk - 2 * half, 0)
                zc = tl.load(h1_ptr + rm[:, None] * k1 + zi[None, :],
                             mask=row_ok[:, None] & (kk[None, :] >= 2 * half) & (kk[None, :] < kk_total), other=0.0)
                a = tl.where(kk[None, :] < half, tl.sin(zb), tl.where(kk[None, :] < 2 * half, tl.cos(zb), zc))
                a = a.to(w_ptr.dtype.element_ty)
            else:
                # a = LReLU(cat[h1, h2]) for columns kk: h1's below k1, h2's above (both masked loads)
                a = tl.load(h1_ptr + rm[:, None] * k1 + kk[None, :], mask=row_ok[:, None] & (kk[None, :] < k1),
                            other=0.0)
                if TWO:
                    k_in2 = tl.maximum(kk - k1, 0)
                    a += tl.load(h2_ptr + rm[:, None] * k2 + k_in2[None, :],
                                 mask=row_ok[:, None] & (kk[None, :] >= k1) & (kk[None, :] < kk_total), other=0.0)
                if ACT:
                    af = a.to(tl.float32)
                    a = tl.where(af > 0, af, af * 0.01).to(a.dtype)
            w_mask = (kk[:, None] < kk_total) & col_ok[None, :]
            w_l = tl.load(w_ptr + rn[None, :] * kk_total + kk[:, None], mask=w_mask, other=0.0)  # (BK, BN)
            w_s = tl.load(w_ptr + (rn[None, :] + n_out) * kk_total + kk[:, None], mask=w_mask, other=0.0)
            if IEEE:
                acc_l = tl.dot(a, w_l, acc_l, input_precision="ieee")
                acc_s = tl.dot(a, w_s, acc_s, input_precision="ieee")
            else:
                acc_l = tl.dot(a, w_l, acc_l)
                acc_s = tl.dot(a, w_s, acc_s)
        b_l = tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)
        b_s = tl.load(b_ptr + n_out + rn, mask=col_ok, other=0.0).to(tl.float32)
        step = tl.load(k_ptr)
        ok = row_ok[:, None] & col_ok[None, :]
        at = rm[:, None] * n_out + rn[None, :]  # (B, out) offsets
        ctx = step * n_rows * n_out + at  # row k of the (T, B, out) context terms
        gate = tl.load(g_ptr + ctx, mask=ok, other=0.0).to(tl.float32)
        bias = tl.load(bb_ptr + ctx, mask=ok, other=0.0).to(tl.float32)
        h = (acc_l + b_l[None, :]) * gate + bias + (acc_s + b_s[None, :])
        if DDPM:  # kernels.ddpm_epilogue's formula on the block's fp32 result
            row = table_ptr + step * 6
            z = tl.load(z_ptr + at, mask=ok, other=0.0)
            if RESIDUAL:  # noqa: SIM108 (a compile-time branch of the kernel)
                eps_hat = z + h
            else:
                eps_hat = h
            x0 = tl.load(row + 1) * z - tl.load(row + 2) * eps_hat
            out = tl.load(row + 3) * z + tl.load(row + 4) * x0
            if NOISE:
                out = out + tl.load(row + 5) * tl.load(noise_ptr + at, mask=ok, other=0.0)
            tl.store(out_ptr + at, out, mask=ok)
        else:
            tl.store(out_ptr + at, h.to(out_ptr.dtype.element_ty), mask=ok)

else:
    _squash_block_kernel = None


def _check(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor, k: Tensor,
           z: Tensor | None = None, table: Tensor | None = None, noise: Tensor | None = None,
           fourier: bool = False) -> str | None:
    """Raise on inconsistent shapes/devices; return why the kernel cannot take these inputs (None: it can).
    ``fourier``: h1 is z (B, nz) and h2 the Fourier matrix (nz, nz//2), both fp32; the block's input is
    (B, 2·(nz//2) + nz)."""
    if fourier:
        if h1.dim() != 2 or h2 is None or h2.dim() != 2 or h2.shape[0] != h1.shape[1]:
            raise ValueError(f"squash_block_fourier: z (B, nz) and fourier_b (nz, nz//2) expected; got "
                             f"{tuple(h1.shape)}, {None if h2 is None else tuple(h2.shape)}")
        kk = 2 * h2.shape[1] + h1.shape[1]
    else:
        if h1.dim() != 2 or (h2 is not None and (h2.dim() != 2 or h2.shape[0] != h1.shape[0])):
            raise ValueError(f"squash_block: h1, h2 must be (B, K1), (B, K2); got {tuple(h1.shape)}, "
                             f"{None if h2 is None else tuple(h2.shape)}")
        kk = h1.shape[1] + (0 if h2 is None else h2.shape[1])
    rows = h1.shape[0]
    if w.dim() != 2 or w.shape[1] != kk or w.shape[0] % 2:
        raise ValueError(f"squash_block: w must be (2·out, {kk}); got {tuple(w.shape)}")
    out = w.shape[0] // 2
    if tuple(b.shape) != (2 * out,):
        raise ValueError(f"squash_block: b has shape {tuple(b.shape)}; expected ({2 * out},)")
    for name, t in (("gate", gate), ("bias", bias)):
        if t.dim() != 3 or tuple(t.shape[1:]) != (rows, out):
            raise ValueError(f"squash_block: {name} must be (T, {rows}, {out}); got {tuple(t.shape)}")
    if k.numel() != 1 or k.dtype != torch.int64:
        raise ValueError(f"squash_block: k must be a one-element int64 tensor; got {tuple(k.shape)} {k.dtype}")
    for name, opt in (("z", z), ("noise", noise)):
        if opt is not None and tuple(opt.shape) != (rows, out):
            raise ValueError(f"squash_block: {name} has shape {tuple(opt.shape)}; expected ({rows}, {out})")
    if table is not None and (table.dim() != 2 or table.shape[1] != 6):
        raise ValueError(f"squash_block: table has shape {tuple(table.shape)}; expected (T, 6)")
    operands = [t for t in (h1, h2, w, b, gate, bias, k, z, table, noise) if t is not None]
    if any(t.device != h1.device for t in operands):
        raise ValueError("squash_block: every operand must be on one device")
    inputs = (h1, *(() if h2 is None else (h2,)))
    if w.dtype not in _DTYPES or b.dtype != w.dtype:
        return "squash_block: w and b must share one dtype, float32 or bfloat16"
    if any(t.dtype != (torch.float32 if fourier else w.dtype) for t in inputs):
        return ("squash_block_fourier: z and the Fourier matrix stay float32" if fourier else
                "squash_block: h1, h2 must have w's dtype")
    if gate.dtype not in _DTYPES or bias.dtype not in _DTYPES:
        return "squash_block: gate and bias must be float32 or bfloat16"
    if any(t.dtype != torch.float32 for t in (z, table, noise) if t is not None):
        return "squash_block: z, the table and ε stay float32"
    if not all(t.is_contiguous() for t in operands):
        return "squash_block: the kernel takes contiguous operands"
    if gate.numel() >= 2**31 or w.numel() >= 2**31:
        return "squash_block: offsets exceed int32"
    return None


def _launch(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor, k: Tensor, act: bool,
            z: Tensor | None = None, table: Tensor | None = None, noise: Tensor | None = None,
            residual: bool = True, fourier: bool = False) -> Tensor:
    """fourier: h1 is z (B, nz) fp32 and h2 the Fourier matrix (nz, nz//2) fp32 (the first block)."""
    rows, n_out = h1.shape[0], w.shape[0] // 2
    ddpm = z is not None
    out = torch.empty(rows, n_out, dtype=torch.float32 if ddpm else w.dtype, device=h1.device)
    if rows == 0 or n_out == 0:
        return out
    # Latency-bound sizes (B ≤ a few hundred, out ≤ 512, K ≤ 512): one row tile for a sampling batch, narrow
    # column tiles so that a block spreads over several SMs. Not autotuned: a GPU measurement decides (bench).
    bm = 16 if rows <= 16 else (32 if rows <= 32 else 64)
    bn, bk = 32, 64
    grid = (triton.cdiv(rows, bm), triton.cdiv(n_out, bn))
    wrap_triton(_squash_block_kernel)[grid](
        h1, h2 if h2 is not None else h1, w, b, gate, bias, k, out, z if ddpm else out,
        table if table is not None else b, noise if noise is not None else out, rows, h1.shape[1],
        0 if h2 is None or fourier else h2.shape[1], h2.shape[1] if fourier and h2 is not None else 0, n_out,
        ACT=act, TWO=h2 is not None and not fourier, FOURIER=fourier, DDPM=ddpm, NOISE=noise is not None,
        RESIDUAL=residual, IEEE=w.dtype == torch.float32, NZP=max(16, triton.next_power_of_2(h1.shape[1])),
        BM=bm, BN=bn, BK=bk,
    )
    return out


with quiet_triton_op_registration():

    @triton_op("damc::squash_block", mutates_args=())
    def squash_block(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor, k: Tensor,
                     act: bool) -> Tensor:
        """Public op: one concat-squash block at step k (see the module docstring); kernel or reference."""
        if use_triton(h1, _check(h1, h2, w, b, gate, bias, k)):
            return _launch(h1, h2, w, b, gate, bias, k, act)
        return squash_block_ref(h1, h2, w, b, gate, bias, k, act)

    @triton_op("damc::squash_block_ddpm", mutates_args=())
    def squash_block_ddpm(h1: Tensor, h2: Tensor | None, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor,
                          k: Tensor, act: bool, z: Tensor, table: Tensor, noise: Tensor | None,
                          residual: bool) -> Tensor:
        """Public op: the last block and the ancestral step at row k (see the module docstring)."""
        if use_triton(h1, _check(h1, h2, w, b, gate, bias, k, z, table, noise)):
            return _launch(h1, h2, w, b, gate, bias, k, act, z, table, noise, residual)
        return squash_block_ddpm_ref(h1, h2, w, b, gate, bias, k, act, z, table, noise, residual)

    @triton_op("damc::squash_block_fourier", mutates_args=())
    def squash_block_fourier(z: Tensor, fourier_b: Tensor, w: Tensor, b: Tensor, gate: Tensor, bias: Tensor,
                             k: Tensor) -> Tensor:
        """Public op: the first block with its Fourier features computed in the kernel (see the module docstring)."""
        if use_triton(z, _check(z, fourier_b, w, b, gate, bias, k, fourier=True)):
            return _launch(z, fourier_b, w, b, gate, bias, k, False, fourier=True)
        return squash_block_fourier_ref(z, fourier_b, w, b, gate, bias, k)
