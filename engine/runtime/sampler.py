"""The ancestral draw's U-Net reorganised for a launch-bound 100-step loop (issue 14 item 2; spec §1.4, §2).

Per step the U-Net (:class:`engine.models.amortizer.LatentUNet`) runs seven concat-squash blocks, each
``layer(h) ⊙ gate(c) + hyper_bias(c) + skip(h)`` with c = SiLU(ctx_proj(SiLU(cat[temb(λ_k), xemb]))). Only h
depends on z. Per draw (B rows, T steps) this module therefore:

* casts and packs the weights once (:func:`pack_unet`): ``layer`` and ``skip`` share their input, so they become
  one GEMM with the weights stacked, W_ls = [W_layer; W_skip] (2·out, in); ``gate`` and ``hyper_bias`` share c,
  so W_gb = [W_gate; W_hyper] (2·out, out);
* computes the whole context path for all steps at once (:func:`draw_context`). ctx_proj is linear in the
  concatenation, so ctx_proj(SiLU(cat[t, x])) = W_t·SiLU(t) + W_x·SiLU(x) + b: one GEMM for the T time
  embeddings and one for the B embeddings, all seven blocks' ctx_proj stacked (S = Σ out rows), then
  c = SiLU(A_k + X_b) for every (k, b) and one GEMM per block for its gate and bias, (T, B, out) each;
* leaves per step only the z path (:func:`unet_trunk`): Fourier features (fp32), then per block one GEMM and an
  elementwise epilogue; the last block's epilogue, the residual ε̂ = z + h and the ancestral step are one fused
  kernel (:mod:`kernels.ddpm_epilogue`). With ``perf.sampler_kernel``, :func:`fused_unet_step` runs each block,
  GEMM and epilogue, as one kernel (:mod:`kernels.squash_block`), the first with its Fourier features, the last
  with the step: seven launches a step instead of sixteen.

The stacks are built by the helpers of :mod:`engine.runtime.merged_unet` (the training forward's merged GEMMs),
here detached and cast once per draw.

With ``dtype = float32`` every number equals forward's up to the summation order of the split ctx_proj GEMM
(tests: within 1e-6 for all 100 λ); with bfloat16 the GEMMs run in bf16 as autocast would run them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.models.amortizer import LatentUNet, fourier_features
from engine.runtime.merged_unet import merged_trunk, stack_ctx_proj, stack_gate_bias, stack_layer_skip

__all__ = ["Context", "PackedUNet", "draw_context", "fused_unet_step", "pack_unet", "unet_trunk"]


@dataclass(frozen=True)
class PackedUNet:
    """The z path's weights, cast to the sampler's dtype, one entry per block (enc ×3, mid, dec ×3)."""

    fourier_b: Tensor  # (nz, nz//2) fp32
    w_ls: tuple[Tensor, ...]  # (2·out, in): [layer; skip]
    b_ls: tuple[Tensor, ...]  # (2·out,)
    residual: bool


# Per block: gate (T, B, out) and bias (T, B, out); step k reads gate[k], bias[k].
Context = list[tuple[Tensor, Tensor]]


def pack_unet(unet: LatentUNet, dtype: torch.dtype) -> PackedUNet:
    """Stack and cast the z path's weights (a few small copies per draw; always from the live fp32 weights)."""
    stacked = [stack_layer_skip(b) for b in unet.blocks()]
    return PackedUNet(
        fourier_b=unet.fourier_B.detach().float(),
        w_ls=tuple(w.detach().to(dtype) for w, _ in stacked),
        b_ls=tuple(b.detach().to(dtype) for _, b in stacked),
        residual=unet.residual,
    )


def draw_context(unet: LatentUNet, logsnr: Tensor, xemb: Tensor, dtype: torch.dtype) -> Context:
    """Every block's (gate, bias) for all T steps and B rows: logsnr (T,), xemb (B, nemb) -> [(T, B, out)] × 7."""
    blocks = unet.blocks()
    nt = unet.ntemb
    w, bias = (t.detach() for t in stack_ctx_proj(blocks))  # (S, ntemb + nemb), (S,)
    temb = unet.time_embedding(logsnr.float()).detach()  # (T, ntemb), fp32 as forward computes it
    a = F.linear(F.silu(temb).to(dtype), w[:, :nt].to(dtype))  # (T, S)
    x = F.linear(F.silu(xemb.float()).to(dtype), w[:, nt:].to(dtype), bias.to(dtype))  # (B, S)
    c = F.silu(a[:, None, :] + x[None, :, :])  # (T, B, S)
    out: Context = []
    start = 0
    for blk in blocks:
        n = blk.dim_out
        w_gb = stack_gate_bias(blk).detach().to(dtype)  # (2·out, out)
        gb = F.linear(c[..., start:start + n], w_gb)  # (T, B, 2·out)
        out.append((torch.sigmoid(gb[..., :n] + blk.gate.bias.detach().to(dtype)).contiguous(),
                    gb[..., n:].contiguous()))
        start += n
    return out


def unet_trunk(z: Tensor, k: Tensor, fourier_b: Tensor, w_ls: Sequence[Tensor], b_ls: Sequence[Tensor],
               gates: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """One step up to the last block's merged GEMM: z (B, nz) fp32, the step k () int64, a :class:`PackedUNet`'s
    fields, and the first six blocks' context (T, B, out) -> y (B, 2·nz) = [layer(h) | skip(h)] of the last block,
    in the packed dtype. Step k's gate and bias rows are gathered on the device: the arguments are the same tensors
    for every step, so one ``torch.compile`` serves all T steps (a Python int k would recompile per step)."""
    row = k.reshape(1)
    g = [t.index_select(0, row)[0] for t in gates]  # (B, out) each
    bb = [t.index_select(0, row)[0] for t in biases]
    h = fourier_features(z, fourier_b).to(w_ls[0].dtype)  # phases in fp32 (spec §1.4 note), then the packed dtype
    return merged_trunk(h, w_ls, b_ls, g, bb)  # (B, 2·nz): the epilogue kernel finishes the last block


def fused_unet_step(z: Tensor, k: Tensor, fourier_b: Tensor, w_ls: Sequence[Tensor], b_ls: Sequence[Tensor],
                    gates: Sequence[Tensor], biases: Sequence[Tensor], table: Tensor, noise: Tensor | None,
                    residual: bool) -> Tensor:
    """One whole ancestral step with one kernel per block (``perf.sampler_kernel``; :mod:`kernels.squash_block`):
    z (B, nz) fp32, the step k () int64, a :class:`PackedUNet`'s fields, all seven blocks' context (T, B, out), the
    packed coefficient table (T, 6) and ε (B, nz) or None -> z_s (B, nz) fp32.

    :func:`unet_trunk` followed by ``kernels.ddpm_epilogue`` with the block composition moved into the ops: with the
    ops' references (CPU, or the torch kernel backend) the two are the same operations, bitwise.
    """
    # Imported here: registering the ops imports Triton's compiler stack, which the reference path never needs.
    from kernels.squash_block import squash_block, squash_block_ddpm, squash_block_fourier

    def block(i: int, h1: Tensor, h2: Tensor | None, act: bool) -> Tensor:
        return squash_block(h1, h2, w_ls[i], b_ls[i], gates[i], biases[i], k, act)

    # enc: the first block computes its Fourier-feature input itself (no LReLU before it)
    e1 = squash_block_fourier(z, fourier_b, w_ls[0], b_ls[0], gates[0], biases[0], k)
    e2 = block(1, e1, None, True)
    e3 = block(2, e2, None, True)
    mid = block(3, e3, None, True)
    d1 = block(4, mid, e3, True)  # dec: LReLU(cat[current, skip])
    d2 = block(5, d1, e2, True)
    return squash_block_ddpm(d2, e1, w_ls[6], b_ls[6], gates[6], biases[6], k, True, z, table, noise, residual)
