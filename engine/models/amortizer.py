"""Diffusion amortizer Q: latent U-Net ε-network, null-token MLP and their container (spec §1.4).

Architecture only: the log-SNR schedule, the training loss and the ancestral sampler live elsewhere
(spec §2). Nothing here draws random numbers in forward; the null token's noise ξ is passed in.

Shapes: z (B, nz), logsnr (B,), xemb (B, nemb) with nemb = 1024, temb (B, ntemb) with ntemb = 128,
ctx (B, ntemb + nemb) = (B, 1152).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Encoder

__all__ = [
    "LOGSNR_CLAMP",
    "logsnr_to_time",
    "sinusoidal_embedding",
    "fourier_features",
    "ConcatSquashBlock",
    "LatentUNet",
    "NullToken",
    "Amortizer",
]

# The time input clamps λ to [-20, 20] before mapping it to (0, 1) (spec §1.4 "Time input").
LOGSNR_CLAMP = 20.0
_LRELU_SLOPE = 0.01  # activation between U-Net blocks (spec §1.4: LeakyReLU(0.01), not SiLU)


def logsnr_to_time(logsnr: Tensor) -> Tensor:
    """t_in = arctan(exp(-½·clamp(λ, -20, 20))) / (π/2) ∈ (0, 1); shape preserved.

    Evaluated in at least float32 (bf16/fp16 inputs are upcast) since t_in is later multiplied by
    1000 in the sinusoid argument.
    """
    lam = logsnr.float() if logsnr.dtype in (torch.float16, torch.bfloat16) else logsnr
    lam = lam.clamp(-LOGSNR_CLAMP, LOGSNR_CLAMP)
    return torch.atan(torch.exp(-0.5 * lam)) / (math.pi / 2)


def sinusoidal_embedding(t_in: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """(B,) -> (B, dim) = [sin(arg), cos(arg)] with arg_k = scale·t_in·f_k (spec §1.4).

    f_k = exp(-k·ln(10000)/(dim/2 - 1)), k = 0..dim/2-1 (for dim = 128 the divisor is 63). The
    frequency table is built fresh (out of place) in t_in's dtype/device, so it is never stored in
    the state_dict and never affected by casting the module.
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    k = torch.arange(half, device=t_in.device, dtype=t_in.dtype)
    freqs = torch.exp(k * (-math.log(10000.0) / (half - 1)))  # (half,)
    arg = (scale * t_in)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)  # (B, dim)


class ConcatSquashBlock(nn.Module):
    """Gated concat-squash linear block with a learned linear skip (`ConcatSquashLinearSkipCtx`).

        c    = SiLU(Linear_{ctx→out}(SiLU(ctx)))
        gate = sigmoid(Linear_{out→out}(c))
        bias = Linear_{out→out, no bias}(c)
        out  = Linear_{in→out}(h) ⊙ gate + bias + Linear_{in→out}(h)    # second term: learned skip

    forward takes `ctx_act` = SiLU(ctx), already activated: ctx is shared by all seven blocks, so the
    U-Net applies the inner SiLU once instead of seven times (identical result).
    Parameters: (dim_ctx+1)·out + (out+1)·out + out·out + 2·(in+1)·out.
    """

    def __init__(self, dim_in: int, dim_out: int, dim_ctx: int) -> None:
        super().__init__()
        self.dim_in = dim_in
        self.dim_out = dim_out
        self.ctx_proj = nn.Linear(dim_ctx, dim_out)
        self.gate = nn.Linear(dim_out, dim_out)
        self.hyper_bias = nn.Linear(dim_out, dim_out, bias=False)
        self.layer = nn.Linear(dim_in, dim_out)
        self.skip = nn.Linear(dim_in, dim_out)

    def forward(self, h: Tensor, ctx_act: Tensor) -> Tensor:
        # h (B, dim_in), ctx_act (B, dim_ctx) -> (B, dim_out)
        c = F.silu(self.ctx_proj(ctx_act))
        gate = torch.sigmoid(self.gate(c))
        return self.layer(h) * gate + self.hyper_bias(c) + self.skip(h)

    # The z-independent half of forward, split off so that a sampler can compute it for all its steps at once
    # (forward == forward_given_context(h, *context_terms(ctx_act)), same operations).

    def context_terms(self, ctx_act: Tensor) -> tuple[Tensor, Tensor]:
        """(gate, bias) of forward for ctx_act (..., dim_ctx), each (..., dim_out)."""
        c = F.silu(self.ctx_proj(ctx_act))
        return torch.sigmoid(self.gate(c)), self.hyper_bias(c)

    def forward_given_context(self, h: Tensor, gate: Tensor, bias: Tensor) -> Tensor:
        """forward with its context terms given: h (B, dim_in), gate and bias (B, dim_out) -> (B, dim_out)."""
        return self.layer(h) * gate + bias + self.skip(h)


def fourier_features(z: Tensor, fourier_b: Tensor) -> Tensor:
    """The U-Net's input [sin(2π zB), cos(2π zB), z] (B, 2·(nz//2) + nz) for z (B, nz) and B (nz, nz//2) (spec §1.4).

    The phases stay fp32 under autocast: 2π·zB is O(10) rad, and bf16's 8-bit mantissa would put ~0.05 rad of
    error into every sin/cos (no effect on the fp32 reference). Shared by forward, the hoisted sampler and the
    merged U-Net; kernels/squash_block.py keeps its own copy as its reference (kernels/ imports no engine code).
    """
    with torch.autocast(z.device.type, enabled=False):
        zb = 2 * math.pi * (z.float() @ fourier_b.float())  # (B, nz//2)
    return torch.cat([torch.sin(zb), torch.cos(zb), z], dim=1)


class LatentUNet(nn.Module):
    """ε-network on latent vectors (`Diffusion_UnetA`, spec §1.4, Table S3): eps_hat = f(z_λ, λ, xemb).

    Wiring (w1 = 32·nf, w2 = 64·nf; nf = 4 gives 128 / 256):
      h0 = [sin(2π zB), cos(2π zB), z]                          (B, 2·(nz//2) + nz)
      enc: h0 -> w1 -> w2 -> w2, pushing each PRE-activation output on a skip stack, LReLU(0.01)
           before the next block
      mid: w2 -> w2, no activation after
      dec: 3× (cat[current, pop()] -> LReLU(0.01) -> block): 2w2 -> w2, 2w2 -> w1, 2w1 -> nz
      eps_hat = z + out   (residual ε, `diffusion_residual=True`; always on in the code, spec §5.9)

    Parameter counts (nf=4, ntemb=128, nemb=1024): nz=128 3,143,424; nz=100 3,066,424; nz=8 2,841,024.
    """

    def __init__(
        self, nz: int, nemb: int = 1024, ntemb: int = 128, nf: int = 4, residual: bool = True
    ) -> None:
        super().__init__()
        self.nz = nz
        self.nemb = nemb
        self.ntemb = ntemb
        self.nf = nf
        self.residual = residual
        w1, w2 = 32 * nf, 64 * nf
        dim_ctx = ntemb + nemb

        # Time MLP on the sinusoid: Linear → SiLU → Linear (33,024 params for ntemb = 128).
        self.time_mlp = nn.Sequential(nn.Linear(ntemb, ntemb), nn.SiLU(), nn.Linear(ntemb, ntemb))
        # Learned Fourier features, B ~ N(0, 1) of shape (nz, nz//2).
        self.fourier_B = nn.Parameter(torch.randn(nz, nz // 2))
        dim_h0 = 2 * (nz // 2) + nz  # = 2·nz for even nz

        self.enc = nn.ModuleList(
            [
                ConcatSquashBlock(dim_h0, w1, dim_ctx),
                ConcatSquashBlock(w1, w2, dim_ctx),
                ConcatSquashBlock(w2, w2, dim_ctx),
            ]
        )
        self.mid = ConcatSquashBlock(w2, w2, dim_ctx)
        self.dec = nn.ModuleList(
            [
                ConcatSquashBlock(2 * w2, w2, dim_ctx),  # cat[mid (w2), enc3 (w2)]
                ConcatSquashBlock(2 * w2, w1, dim_ctx),  # cat[dec1 (w2), enc2 (w2)]
                ConcatSquashBlock(2 * w1, nz, dim_ctx),  # cat[dec2 (w1), enc1 (w1)]
            ]
        )

    def time_embedding(self, logsnr: Tensor) -> Tensor:
        """(B,) log-SNR -> temb (B, ntemb)."""
        emb = sinusoidal_embedding(logsnr_to_time(logsnr), self.ntemb)
        w = cast(nn.Linear, self.time_mlp[0]).weight
        return self.time_mlp(emb.to(w.dtype))

    def forward(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        # z (B, nz), logsnr (B,) or scalar, xemb (B, nemb) -> eps_hat (B, nz)
        if logsnr.dim() == 0:
            logsnr = logsnr.expand(z.shape[0])
        temb = self.time_embedding(logsnr)  # (B, ntemb)
        ctx_act = F.silu(torch.cat([temb, xemb], dim=1))  # (B, ntemb + nemb); temb first

        h = fourier_features(z, self.fourier_B)  # (B, 2·(nz//2) + nz)

        skips: list[Tensor] = []
        for i, block in enumerate(self.enc):
            if i > 0:
                h = F.leaky_relu(h, _LRELU_SLOPE)
            h = block(h, ctx_act)
            skips.append(h)  # pre-activation output
        h = self.mid(F.leaky_relu(h, _LRELU_SLOPE), ctx_act)  # no activation after the middle block
        for block in self.dec:
            h = F.leaky_relu(torch.cat([h, skips.pop()], dim=1), _LRELU_SLOPE)
            h = block(h, ctx_act)
        return z + h if self.residual else h

    # The sampler's view of forward: the context path (time embedding ⊕ xemb → every block's gate and bias) does
    # not depend on z, so a T-step draw can compute it once for all T steps and B rows.

    def blocks(self) -> list[ConcatSquashBlock]:
        """The seven blocks in forward's order: enc ×3, mid, dec ×3."""
        return [*self.enc, self.mid, *self.dec]

    def step_context(self, logsnr: Tensor, xemb: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every block's (gate, bias), each (T, B, dim_out), for the T log-SNRs logsnr (T,) and xemb (B, nemb).

        Row (k, b) is what forward computes for λ_k and xemb[b]: ctx_act = SiLU(cat[temb_k, xemb_b]), with the
        time embedding evaluated once per step rather than once per row and step.
        """
        temb = self.time_embedding(logsnr)  # (T, ntemb)
        t, b = temb.shape[0], xemb.shape[0]
        ctx = torch.cat([temb[:, None, :].expand(t, b, -1), xemb[None, :, :].expand(t, b, -1)], dim=2)
        ctx_act = F.silu(ctx)  # (T, B, ntemb + nemb)
        return [blk.context_terms(ctx_act) for blk in self.blocks()]

    def forward_given_context(self, z: Tensor, context: list[tuple[Tensor, Tensor]]) -> Tensor:
        """forward for z (B, nz) with every block's (gate, bias) (B, dim_out) given (one step of step_context)."""
        h = fourier_features(z, self.fourier_B)
        blocks = self.blocks()
        skips: list[Tensor] = []
        for i in range(3):
            if i > 0:
                h = F.leaky_relu(h, _LRELU_SLOPE)
            h = blocks[i].forward_given_context(h, *context[i])
            skips.append(h)
        h = blocks[3].forward_given_context(F.leaky_relu(h, _LRELU_SLOPE), *context[3])
        for i in range(4, 7):
            h = F.leaky_relu(torch.cat([h, skips.pop()], dim=1), _LRELU_SLOPE)
            h = blocks[i].forward_given_context(h, *context[i])
        return z + h if self.residual else h


class NullToken(nn.Module):
    """Random "null token" embedding `prior_emb` (spec §1.4): ξ (B, nz) -> (B, nemb).

    Linear(nz→hidden) → LReLU(0.01) → Linear(hidden→nemb); 148,608 params for nz = 128. The input ξ is
    fresh N(0, I) noise drawn by the caller (once per sample at sampling time), so the unconditional
    embedding is random, not a fixed learned vector (spec §5 item 12).
    """

    def __init__(self, nz: int, nemb: int = 1024, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(nz, hidden), nn.LeakyReLU(_LRELU_SLOPE), nn.Linear(hidden, nemb))

    def forward(self, xi: Tensor) -> Tensor:
        return self.net(xi)


class Amortizer(nn.Module):
    """Q (`_netQ_U`): image encoder + null-token MLP + latent U-Net.

    The authors' module also holds `self.xemb`, a (1, 1024) parameter that is never used and never
    receives gradient; it is intentionally omitted here, so our parameter total is 1,024 below the
    spec's 14,439,808 for cifar10 (i.e. 14,438,784). Q has no buffers, so EMA over parameters covers
    the whole state.
    """

    def __init__(
        self,
        arch: str,
        nz: int,
        nif: int = 64,
        nemb: int = 1024,
        ntemb: int = 128,
        nf: int = 4,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(arch, nif, nemb)
        self.null_token = NullToken(nz, nemb)
        self.unet = LatentUNet(nz, nemb, ntemb, nf, residual=residual)

    def cond_embedding(self, x: Tensor) -> Tensor:
        """Conditional branch: image x (B, C, H, W) -> xemb (B, nemb)."""
        return self.encoder(x)

    def null_embedding(self, xi: Tensor) -> Tensor:
        """Unconditional branch: noise ξ ~ N(0, I) (B, nz) -> xemb (B, nemb)."""
        return self.null_token(xi)

    def forward(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        """eps_hat (B, nz) for noisy latents z (B, nz) at log-SNR logsnr (B,) given xemb (B, nemb)."""
        return self.unet(z, logsnr, xemb)
