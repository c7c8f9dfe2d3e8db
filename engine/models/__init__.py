"""Network architectures for DAMC (spec §1): energy E, generator G and the diffusion amortizer Q.

`build_networks(model_cfg)` takes any object with the attributes arch, nz, ngf, ndf, nif, nemb,
unet_nf and ntemb (engine.config.ModelConfig in practice) and returns freshly initialised networks
with PyTorch default init (the Fourier matrix B ~ N(0, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .amortizer import (
    LOGSNR_CLAMP,
    Amortizer,
    ConcatSquashBlock,
    LatentUNet,
    NullToken,
    logsnr_to_time,
    sinusoidal_embedding,
)
from .encoder import ENCODER_LAYERS, Encoder
from .energy import EnergyMLP
from .generator import GENERATOR_LAYERS, IMAGE_SHAPES, Generator

__all__ = [
    "IMAGE_SHAPES",
    "GENERATOR_LAYERS",
    "ENCODER_LAYERS",
    "LOGSNR_CLAMP",
    "EnergyMLP",
    "Generator",
    "Encoder",
    "ConcatSquashBlock",
    "LatentUNet",
    "NullToken",
    "Amortizer",
    "Networks",
    "build_networks",
    "count_params",
    "logsnr_to_time",
    "sinusoidal_embedding",
]


@dataclass
class Networks:
    """The three trained networks. `amortizer` is None when built without it (e.g. an LEBM baseline)."""

    generator: Generator
    energy: EnergyMLP
    amortizer: Amortizer | None


def count_params(module: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in module.parameters())


def build_networks(model_cfg: Any, with_amortizer: bool = True) -> Networks:
    """Build G, E and (optionally) Q from a model config (see the module docstring for attributes)."""
    generator = Generator(model_cfg.arch, model_cfg.nz, model_cfg.ngf)
    energy = EnergyMLP(model_cfg.nz, model_cfg.ndf)
    amortizer = None
    if with_amortizer:
        amortizer = Amortizer(
            model_cfg.arch,
            model_cfg.nz,
            nif=model_cfg.nif,
            nemb=model_cfg.nemb,
            ntemb=model_cfg.ntemb,
            nf=model_cfg.unet_nf,
        )
    return Networks(generator=generator, energy=energy, amortizer=amortizer)
