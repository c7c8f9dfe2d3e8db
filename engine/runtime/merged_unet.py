"""The latent U-Net's forward with its per-block GEMMs merged, for training (issue 14 item 1; spec §1.4).

:class:`engine.models.amortizer.LatentUNet` runs seven concat-squash blocks, each with five ``nn.Linear``:
``ctx_proj(ctx_act)``, ``gate(c)``, ``hyper_bias(c)``, ``layer(h)``, ``skip(h)``. Several share their input, so
their weights can be stacked and each group run as one GEMM (B rows, S = Σ_blocks dim_out):

* all seven ``ctx_proj`` read the same ctx_act (B, ntemb + nemb): one GEMM with W_ctx = [W_1; …; W_7] (S, ntemb +
  nemb), then c = SiLU(·) (B, S), block i reading its column slice c_i (B, out_i);
* ``gate`` and ``hyper_bias`` of a block read c_i: one GEMM with W_gb = [W_gate; W_hyper] (2·out, out) and the bias
  [b_gate; 0] (``hyper_bias`` has none);
* ``layer`` and ``skip`` of a block read h: one GEMM with W_ls = [W_layer; W_skip] (2·out, in), b_ls = [b_l; b_s].

38 GEMMs per forward become 18 (the time MLP's 2 and the Fourier projection stay); the backward loses as many
(one input-gradient and one weight-gradient GEMM per merged group). The training step is latency-bound (a few µs
per kernel on an H100/H200), so fewer, larger GEMMs are what may pay: ``perf.merge_unet``, decided by the GPU
benchmark (variant ``merge_unet`` in bench/phases.py).

The stacks are built inside autograd from the live parameters at every call (``torch.cat`` of the ``nn.Parameter``
s): gradients reach the module's own parameters, and nothing is cached across optimizer steps, which update the
parameters in place. The module and its state dict are untouched, so checkpoints do not change. The no-grad
sampler (:mod:`engine.runtime.sampler`) stacks the same way through the same helpers, detached and cast once per
draw.

Autocast behaves as in ``LatentUNet.forward``: each merged GEMM is cast as the separate ones would be (a cast of a
concatenation equals the concatenation of the casts), and the Fourier features stay fp32. In fp32 the result equals
forward's up to the GEMMs' summation order (tests: within 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.models.amortizer import ConcatSquashBlock, LatentUNet, fourier_features

__all__ = ["merged_trunk", "merged_unet_forward", "stack_ctx_proj", "stack_gate_bias",
           "stack_layer_skip"]

_LRELU = 0.01  # LeakyReLU slope between the U-Net's blocks (spec §1.4)


def stack_ctx_proj(blocks: Sequence[ConcatSquashBlock]) -> tuple[Tensor, Tensor]:
    """Every block's ctx_proj stacked: W (S, dim_ctx), b (S,), S = Σ dim_out, blocks in the given order."""
    return torch.cat([b.ctx_proj.weight for b in blocks]), torch.cat([b.ctx_proj.bias for b in blocks])


def stack_gate_bias(block: ConcatSquashBlock) -> Tensor:
    """[W_gate; W_hyper] (2·out, out); the gate's bias (out,) is ``block.gate.bias`` (hyper_bias has none)."""
    return torch.cat([block.gate.weight, block.hyper_bias.weight])


def stack_layer_skip(block: ConcatSquashBlock) -> tuple[Tensor, Tensor]:
    """[W_layer; W_skip] (2·out, in) and [b_layer; b_skip] (2·out,)."""
    return torch.cat([block.layer.weight, block.skip.weight]), torch.cat([block.layer.bias, block.skip.bias])


def merged_trunk(h: Tensor, w_ls: Sequence[Tensor], b_ls: Sequence[Tensor], gates: Sequence[Tensor],
                 biases: Sequence[Tensor]) -> Tensor:
    """The seven blocks' z path with each block's layer and skip as one GEMM, up to the last block's GEMM.

    h (B, dim_h0) = :func:`~engine.models.amortizer.fourier_features`; w_ls[i] (2·out_i, in_i), b_ls[i] (2·out_i,) from
    :func:`stack_layer_skip`; gates[i], biases[i] (B, out_i) the context terms of the first six blocks (a seventh
    entry is ignored). Returns y (B, 2·nz) = [layer(h) | skip(h)] of the last block: the caller finishes it as
    ``y[:, :nz] * gate + bias + y[:, nz:]`` (the sampler in its fused epilogue kernel). Wiring as
    ``LatentUNet.forward``: enc ×3 (pre-activation outputs kept for the skips), mid, dec ×3 on cat[h, skip].
    """
    def block(i: int, hh: Tensor) -> Tensor:
        y = F.linear(hh, w_ls[i], b_ls[i])  # (B, 2·out)
        n = y.shape[1] // 2
        return y[:, :n] * gates[i] + biases[i] + y[:, n:]  # layer(h)·gate + bias + skip(h), forward's order

    skips: list[Tensor] = []
    for i in range(3):
        if i > 0:
            h = F.leaky_relu(h, _LRELU)
        h = block(i, h)
        skips.append(h)  # pre-activation output
    h = block(3, F.leaky_relu(h, _LRELU))  # mid: no activation after
    for i in (4, 5):
        h = block(i, F.leaky_relu(torch.cat([h, skips.pop()], dim=1), _LRELU))
    h = F.leaky_relu(torch.cat([h, skips.pop()], dim=1), _LRELU)
    return F.linear(h, w_ls[6], b_ls[6])  # (B, 2·nz)


def merged_unet_forward(unet: LatentUNet, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
    """``unet(z, logsnr, xemb)`` with merged GEMMs: z (B, nz), logsnr (B,) or (), xemb (B, nemb) -> eps_hat (B, nz).

    Differentiable with respect to every parameter of ``unet`` and to z, xemb (the encoder's gradient).
    """
    if logsnr.dim() == 0:
        logsnr = logsnr.expand(z.shape[0])
    blocks = unet.blocks()
    temb = unet.time_embedding(logsnr)  # (B, ntemb), as forward
    ctx_act = F.silu(torch.cat([temb, xemb], dim=1))  # (B, ntemb + nemb); temb first
    w_ctx, b_ctx = stack_ctx_proj(blocks)  # (S, ntemb + nemb), (S,)
    c = F.silu(F.linear(ctx_act, w_ctx, b_ctx))  # (B, S): every block's c in one GEMM
    gates: list[Tensor] = []
    biases: list[Tensor] = []
    start = 0
    for blk in blocks:
        n = blk.dim_out
        b_gb = torch.cat([blk.gate.bias, torch.zeros_like(blk.gate.bias)])  # (2·out,): hyper_bias has no bias
        gb = F.linear(c[:, start:start + n], stack_gate_bias(blk), b_gb)  # (B, 2·out) = [gate(c) | hyper_bias(c)]
        gates.append(torch.sigmoid(gb[:, :n]))
        biases.append(gb[:, n:])
        start += n
    w_ls, b_ls = zip(*(stack_layer_skip(blk) for blk in blocks), strict=True)
    y = merged_trunk(fourier_features(z, unet.fourier_B), w_ls, b_ls, gates, biases)  # (B, 2·nz)
    nz = y.shape[1] // 2
    h = y[:, :nz] * gates[6] + biases[6] + y[:, nz:]
    return z + h if unet.residual else h
