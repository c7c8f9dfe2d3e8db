"""What the generator and the encoder share: the image shape of each architecture and the DCGAN-style stack.

Both networks are a stack of (de)convolutions whose widths are multiples of one base width (``ngf`` for G,
``nif`` for the encoder), described per architecture as a list of (multiplier, kernel, stride, padding)
(spec §1.2-1.3, Tables S2 and S4), followed by one last layer of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["IMAGE_SHAPES", "LayerSpec", "check_arch", "conv_stack"]

# (C, H, W) of the data each arch models.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 32),
    "svhn": (3, 32, 32),
    "celeba64": (3, 64, 64),
    "celebahq256": (3, 256, 256),
    "mnist": (1, 28, 28),
    "digits": (1, 8, 8),
}

LayerSpec = tuple[int, int, int, int]  # (out-channel multiplier of the base width, kernel, stride, padding)
Block = Callable[[int, int, int, int, int], list[nn.Module]]  # (c_in, c_out, k, s, p) -> the block's modules


def check_arch(arch: str) -> None:
    if arch not in IMAGE_SHAPES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(IMAGE_SHAPES)}")


def conv_stack(c_in: int, width: int, spec: Sequence[LayerSpec], block: Block) -> tuple[list[nn.Module], int]:
    """``block(c_in, width·mult, k, s, p)`` for each entry of ``spec``, chained; returns (modules, channels out).

    The modules come in layer order, so ``nn.Sequential(*modules)`` numbers them as the authors' networks do
    (state-dict keys ``net.0.weight``, ...).
    """
    layers: list[nn.Module] = []
    for mult, k, s, p in spec:
        c_out = width * mult
        layers += block(c_in, c_out, k, s, p)
        c_in = c_out
    return layers, c_in
