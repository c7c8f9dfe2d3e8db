"""The randomness of a prior draw, drawn outside every graph and handed in as tensors.

Exported samplers take all their noise as inputs (an exporter that meets a random op either fails, or, like
Torch-TensorRT, freezes it into a build-time constant: pytorch/TensorRT#2580, spec ``performance.md`` §4), and
the engine, its fast path and every exported artifact consume the *same* tensors, so they can be compared
image by image.

The stream: one CPU ``torch.Generator`` seeded with ``seed`` draws, sample after sample, one
``randn(k·nz)`` vector per sample, split into its rows. For the DAMC prior draw k = T + 1:

    [ ξ (nz) | z_T (nz) | ε_0 (nz) | ... | ε_{T−2} (nz) ]

(ξ: the null token's noise; z_T: the sampler's start; ε_k: the noise of sampling step k; the final step, a
deterministic x-prediction, takes none). For the LEBM prior draw k = 1 + L: [ z_0 | ε_0 | ... | ε_{L−1} ].
One draw per sample makes image i a function of (seed, i) alone: the same for any ``--batch``, any ``--n``
above i, CPU or GPU, engine or artifact. (A single ``randn`` over a whole batch would not be: the CPU
generator's Box-Muller works in blocks of 16 values, so how a request is cut into draws changes the values.)
Cost: ≈ 3 s of CPU time for 50,000 CIFAR-10-sized draws (T = 100, nz = 128), overlapped with nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MAX_SEED", "NoiseStream", "PriorNoise", "langevin_noise", "prior_noise"]

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PriorNoise:
    """The inputs of one DAMC prior draw of B samples: ξ (B, nz), z_T (B, nz), ε (T−1, B, nz), all fp32."""

    xi: Tensor
    z: Tensor
    eps: Tensor

    @property
    def rows(self) -> int:
        return int(self.z.shape[0])

    def to(self, device: torch.device | str) -> PriorNoise:
        return PriorNoise(self.xi.to(device), self.z.to(device), self.eps.to(device))

    def padded(self, batch: int) -> PriorNoise:
        """Zero rows appended up to ``batch`` rows (a static-batch artifact's last, partial batch). Rows are
        independent through every network (no batch statistics), so the real rows are unaffected."""
        extra = batch - self.rows
        if extra < 0:
            raise ValueError(f"{self.rows} rows do not fit a batch of {batch}")
        if extra == 0:
            return self

        def pad(t: Tensor, dim: int) -> Tensor:
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        return PriorNoise(pad(self.xi, 0), pad(self.z, 0), pad(self.eps, 1))


class NoiseStream:
    """Per-sample N(0, I) draws of ``width`` rows of ``nz`` from a seeded CPU generator (module docstring)."""

    def __init__(self, seed: int, nz: int, width: int) -> None:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed = {seed}: must be in [0, 2**63 - 1]")
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(seed)
        self.nz, self.width = nz, width
        self.drawn = 0  # samples drawn so far

    def take(self, b: int) -> Tensor:
        """The next ``b`` samples' noise, (b, width, nz) fp32 on the CPU."""
        out = torch.empty(b, self.width * self.nz)
        for i in range(b):
            out[i] = torch.randn(self.width * self.nz, generator=self.gen)
        self.drawn += b
        return out.view(b, self.width, self.nz)


def prior_noise(stream: NoiseStream, b: int) -> PriorNoise:
    """The next ``b`` samples of a DAMC prior stream (width T + 1) as sampler inputs."""
    rows = stream.take(b)  # (b, T + 1, nz)
    return PriorNoise(rows[:, 0].contiguous(), rows[:, 1].contiguous(), rows[:, 2:].transpose(0, 1).contiguous())


def langevin_noise(stream: NoiseStream, b: int) -> tuple[Tensor, Tensor]:
    """The next ``b`` samples of an LEBM prior stream (width 1 + L): z_0 (b, nz) and ε (L, b, nz)."""
    rows = stream.take(b)
    return rows[:, 0].contiguous(), rows[:, 1:].transpose(0, 1).contiguous()
