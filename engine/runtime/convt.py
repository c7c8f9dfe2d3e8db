"""Rewrites of the generator's first and last transposed convolutions (issue 14 item 4; spec §1.2), as the posterior
chain's profile may ask for them. Each computes what ``nn.ConvTranspose2d`` computes (tests: fp64 forward and input
gradient against the module), reading the live parameters of :class:`engine.models.Generator`, so gradients
reach the module's weights and nothing is copied between updates.

* **First layer as one GEMM** (``perf.g_gemm_first``). G's first layer is a ConvTranspose2d on a 1×1 input with
  stride 1: out[b, o, i, j] = Σ_c z[b, c]·W[c, o, i, j] + bias[o] (then cropped by the padding, 0 in every arch).
  That is z (B, nz) @ W viewed as (nz, Co·k·k): one dense GEMM (B × 128 × 65,536 for CIFAR-10) instead of
  cudnn's transposed-conv kernels, which handle a 1×1 input poorly. With channels_last weights the view is
  (nz, k·k·Co) and the result comes out in NHWC memory directly.
* **Last layer padded** (``perf.g_last``). The last layer maps to the 3 image channels; tensor-core kernels want
  channel counts that are multiples of 8. ``convt_pad``: the same ConvTranspose2d with the output channels zero-
  padded to 8, then sliced; ``conv_pad`` (stride-1 last layers: cifar10, mnist, digits): the equivalent Conv2d
  (kernel flipped, in/out swapped, padding k − 1 − p), padded likewise.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models import Generator

__all__ = ["LastLayer", "convt_first_as_gemm", "convt_last", "generator_forward"]

LastLayer = Literal["convt", "convt_pad", "conv_pad"]
_PAD_TO = 8


def convt_first_as_gemm(z: Tensor, layer: nn.ConvTranspose2d) -> Tensor:
    """``layer`` (stride 1, no dilation/groups/output padding) on z (B, Ci) seen as (B, Ci, 1, 1) -> (B, Co, H, W).

    The output is in the weight's memory format: NCHW for contiguous weights, NHWC for channels_last ones.
    """
    w = layer.weight  # (Ci, Co, k, k)
    ci, co, kh, kw = w.shape
    p = layer.padding
    if not isinstance(p, tuple):
        raise ValueError("convt_first_as_gemm: string padding is not a transposed-conv option")
    if layer.stride != (1, 1) or layer.groups != 1 or layer.dilation != (1, 1) or layer.output_padding != (0, 0):
        raise ValueError("convt_first_as_gemm: needs stride 1, groups 1, dilation 1, no output padding")
    if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        y = (z @ w.permute(0, 2, 3, 1).reshape(ci, kh * kw * co)).view(-1, kh, kw, co).permute(0, 3, 1, 2)
    else:
        y = (z @ w.reshape(ci, co * kh * kw)).view(-1, co, kh, kw)
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)[None, :, None, None]  # under autocast y is bf16: keep it so
    if p != (0, 0):
        y = y[:, :, p[0]:kh - p[0], p[1]:kw - p[1]]  # a 1×1 input's transposed conv, cropped by the padding
    return y


def convt_last(h: Tensor, layer: nn.ConvTranspose2d, mode: LastLayer) -> Tensor:
    """``layer`` on h (B, Ci, H, W) computed as ``mode`` says (see the module docstring); (B, Co, H', W')."""
    if mode == "convt":
        return layer(h)
    w, b = layer.weight, layer.bias  # (Ci, Co, k, k), (Co,)
    co = w.shape[1]
    pad = (-co) % _PAD_TO
    p = layer.padding
    if not isinstance(p, tuple):
        raise ValueError("convt_last: string padding is not a transposed-conv option")
    if mode == "convt_pad":
        wp = F.pad(w, (0, 0, 0, 0, 0, pad))  # out channels (dim 1) padded with zeros
        bp = F.pad(b, (0, pad)) if b is not None else None
        y = F.conv_transpose2d(h, wp, bp, layer.stride, p, layer.output_padding, layer.groups, layer.dilation)
        return y[:, :co]
    if mode == "conv_pad":
        if layer.stride != (1, 1) or layer.groups != 1 or layer.dilation != (1, 1):
            raise ValueError("convt_last: conv_pad needs a stride-1 last layer (cifar10, mnist, digits)")
        k = w.shape[2:]
        wc = w.flip(2, 3).transpose(0, 1)  # (Co, Ci, k, k): the transposed conv as a conv
        wc = F.pad(wc, (0, 0, 0, 0, 0, 0, 0, pad))  # out channels (dim 0) padded with zeros
        bc = F.pad(b, (0, pad)) if b is not None else None
        y = F.conv2d(h, wc.contiguous(memory_format=_format_of(h)), bc, 1, (k[0] - 1 - p[0], k[1] - 1 - p[1]))
        return y[:, :co]
    raise ValueError(f"convt_last: mode {mode!r}; expected one of convt, convt_pad, conv_pad")


def _format_of(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def generator_forward(g: Generator, z: Tensor, gemm_first: bool, last: LastLayer) -> Tensor:
    """G(z) (B, nz) -> (B, C, H, W) with the rewrites asked for; ``g(z)`` itself when none is."""
    if not gemm_first and last == "convt":
        return g(z)
    layers = list(g.net)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.ConvTranspose2d)]
    first, final = convs[0], convs[-1]
    h = z.reshape(z.shape[0], g.nz)
    for i, m in enumerate(layers):
        if i == first and gemm_first:
            assert isinstance(m, nn.ConvTranspose2d)
            h = convt_first_as_gemm(h, m)
        elif i == first:
            h = m(h.reshape(h.shape[0], g.nz, 1, 1))
        elif i == final:
            assert isinstance(m, nn.ConvTranspose2d)
            h = convt_last(h, m, last)
        else:
            h = m(h)
    return h
