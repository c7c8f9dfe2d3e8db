"""Distances between sample sets: sliced Wasserstein-2 and kernel MMD (float64, deterministic projections)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mmd_rbf", "sliced_wasserstein"]


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two sample sets (n, d), (m, d).

    SW₂² = E_θ W₂²(θᵀa, θᵀb) over random unit directions θ; each 1-D W₂² is the mean squared difference of
    the sorted projections, evaluated at the same quantile levels when n ≠ m (linear interpolation).
    """
    d = a.shape[1]
    theta = torch.randn(d, n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double() @ theta, dim=0).values  # (n, P)
    pb = torch.sort(b.double() @ theta, dim=0).values  # (m, P)
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        pa, pb = _quantiles(pa, n), _quantiles(pb, n)
    return float((pa - pb).pow(2).mean().sqrt())


def _quantiles(sorted_x: Tensor, n: int) -> Tensor:
    """Empirical quantile functions of the columns of sorted_x at the n mid-point levels (i + ½)/n."""
    m = sorted_x.shape[0]
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo)[:, None]
    return sorted_x[lo] * (1 - w) + sorted_x[hi] * w


def mmd_rbf(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with a sum of Gaussian kernels exp(−‖u − v‖²/(2h²)) over the given bandwidths."""
    a, b = a.double(), b.double()

    def k(u: Tensor, v: Tensor) -> Tensor:
        d2 = torch.cdist(u, v).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)  # type: ignore[return-value]

    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    xx = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    yy = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kab.mean())
