"""FLOPs counted from the architecture (layer shapes), for the roofline column of the report.

Only the matmul-like layers are counted (Linear, Conv2d, ConvTranspose2d); activations, norms and the
elementwise Langevin update are a rounding error next to them (spec performance.md §0) and are left out,
so the achieved rate we report is, if anything, slightly pessimistic. One multiply-accumulate (MAC) is
2 FLOPs.

Per layer (N = batch, g = groups, k = kernel):
    Linear            MACs = rows · in_features · out_features
    Conv2d            MACs = N · C_out · H_out · W_out · (C_in / g) · k_h · k_w       (gather view)
    ConvTranspose2d   MACs = N · C_in · H_in · W_in · (C_out / g) · k_h · k_w         (scatter view)
The transposed conv is the data gradient of a Conv2d, so its work is set by the *input* positions: every
input element meets every (C_out/g)·k_h·k_w weight. Counting it from the output (out_elems · C_in · k²)
overcounts by stride² (4× for the stride-2 layers). Padding only crops the output, it does not remove
multiplies from the implicit GEMM, so it does not enter the count. The same convention is used by
``torch.utils.flop_counter`` (tests/test_bench_report.py checks the two agree).

Input gradient (what a Langevin step needs, no weight gradients): for each of these layers ∂L/∂input is
one GEMM/convolution with the same MACs as the forward (Linear: grad_out @ W; ConvTranspose2d: a Conv2d
of grad_out with the same weight). So one posterior Langevin step costs 2 × forward(G + E).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models import EnergyMLP, Generator

FLOPS_PER_MAC = 2


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def layer_macs(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of one forward call of ``module`` from its input and output shapes; 0 for uncounted layers."""
    if isinstance(module, nn.Linear):
        return _prod(in_shape[:-1]) * module.in_features * module.out_features
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return _prod(in_shape) * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return _prod(out_shape) * (module.in_channels // module.groups) * kh * kw
    return 0


@dataclass
class MacCount:
    """Forward MACs of one module call, total and per counted layer (qualified name, MACs)."""

    total: int = 0
    layers: list[tuple[str, int]] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return FLOPS_PER_MAC * self.total


def _out_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of one layer of a Sequential, from its hyper-parameters alone."""
    if isinstance(module, nn.Linear):
        return (*shape[:-1], module.out_features)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        n, _, *hw = shape
        size = []
        for i, h in enumerate(hw):
            k, s, p, d = (module.kernel_size[i], module.stride[i], module.padding[i],  # type: ignore[index]
                          module.dilation[i])
            if isinstance(module, nn.ConvTranspose2d):
                size.append((h - 1) * s - 2 * p + d * (k - 1) + module.output_padding[i] + 1)
            else:
                size.append((h + 2 * p - d * (k - 1) - 1) // s + 1)
        return (n, module.out_channels, *size)
    if isinstance(module, _SHAPE_PRESERVING):
        return shape
    raise TypeError(f"{type(module).__name__}: no shape rule; count this module with count_macs()")


# Layers that keep their input's shape (elementwise activations, per-channel norms, dropout).
_SHAPE_PRESERVING = (nn.LeakyReLU, nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout,
                     nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def sequential_macs(seq: nn.Sequential, input_shape: Sequence[int], prefix: str = "") -> MacCount:
    """Forward MACs of a Sequential on ``input_shape``, propagating shapes analytically (nothing runs)."""
    count = MacCount()
    shape = tuple(int(d) for d in input_shape)
    for name, module in seq.named_children():
        out = _out_shape(module, shape)
        macs = layer_macs(module, shape, out)
        if macs:
            count.total += macs
            count.layers.append((f"{prefix}{name}", macs))
        shape = out
    return count


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> MacCount:
    """Forward MACs of any module on an input of ``input_shape``, from the shapes seen by forward hooks.

    This runs one forward pass on the module's device (a CPU or meta-device module; the meta device computes
    nothing but pulls in torch's meta kernels, seconds on first use). For Sequential stacks prefer
    :func:`sequential_macs`, which needs no forward at all.
    """
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    count = MacCount()
    names = {m: n for n, m in module.named_modules()}
    hooks = []

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        macs = layer_macs(mod, tuple(args[0].shape), tuple(out.shape))
        if macs:
            count.total += macs
            count.layers.append((names[mod], macs))

    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(torch.zeros(tuple(input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return count


def generator_macs(model: ModelConfig) -> MacCount:
    """G forward MACs per sample for the config's architecture (cifar10, ngf 128: 1,089,208,320)."""
    with torch.device("meta"):  # architecture only: no weights are allocated or initialised
        g = Generator(model.arch, model.nz, model.ngf)
    return sequential_macs(g.net, (1, model.nz, 1, 1), "net.")  # G reshapes z to (B, nz, 1, 1) first


def energy_macs(model: ModelConfig) -> MacCount:
    """E forward MACs per sample (nz 128, ndf 200: 25,600 + 40,000 + 200 = 65,800)."""
    with torch.device("meta"):
        e = EnergyMLP(model.nz, model.ndf)
    return sequential_macs(e.net, (1, model.nz), "net.")


def posterior_step_flops(model: ModelConfig, batch: int) -> int:
    """FLOPs of one posterior Langevin step on ``batch`` chains: (G + E) forward + input gradient."""
    per_sample = generator_macs(model).total + energy_macs(model).total
    return 2 * FLOPS_PER_MAC * per_sample * batch  # 2 = forward + data-gradient backward


def posterior_chain_flops(model: ModelConfig, batch: int, n_steps: int) -> int:
    """FLOPs of an ``n_steps`` posterior chain (cifar10, B 128, 30 steps: ≈ 16.7 TFLOP, spec §0)."""
    return n_steps * posterior_step_flops(model, batch)
