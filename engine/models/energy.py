"""Latent energy network E(z) (spec §1.1, Table S1).

E is an *energy*: lower means more probable. The prior is p(z) ∝ exp(-E(z)) · N(z; 0, I), so the
paper's f_α equals -E (spec §0). Default PyTorch init, no spectral norm.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["EnergyMLP"]


class EnergyMLP(nn.Module):
    """Linear(nz→ndf) → LReLU(0.2) → Linear(ndf→ndf) → LReLU(0.2) → Linear(ndf→1).

    Parameter count: (nz+1)·ndf + (ndf+1)·ndf + ndf + 1, e.g. 66,201 for nz=128, ndf=200.
    """

    def __init__(self, nz: int, ndf: int = 200) -> None:
        super().__init__()
        self.nz = nz
        self.ndf = ndf
        self.net = nn.Sequential(
            nn.Linear(nz, ndf),
            nn.LeakyReLU(0.2),
            nn.Linear(ndf, ndf),
            nn.LeakyReLU(0.2),
            nn.Linear(ndf, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        # z: (B, nz) -> (B, 1) -> (B,). squeeze(-1) (not a bare squeeze) keeps (1,) for B = 1.
        return self.net(z).squeeze(-1)
