"""Langevin dynamics on the latent space (paper eq. 3 and 16; spec ``damc.md`` §3 steps 3-4).

Both chains target p(z) ∝ exp(−U(z)) with U = V(z) + ½‖z‖², where V is the non-Gaussian part:
    prior:      V(z) = E(z)
    posterior:  V(z) = ‖x − G(z)‖² / (2σ²) + E(z)
One step is  z ← z − ½s²·∇U(z) + s·ε = z − ½s²·(∇V(z) + z) + s·ε.
The Gaussian term is folded into the update (:func:`langevin_update`), so a fused kernel can replace the
update alone while ``grad_fn`` stays an autograd call. Chains are pure functions: the energy enters as a
callable, the randomness as a noise tensor or an explicit generator, and nothing reads tensor values on
the host, so the loop can later be captured in a CUDA graph without changing its meaning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

EnergyFn = Callable[[Tensor], Tensor]  # z (B, nz) -> per-chain energy (B,)
GradFn = Callable[[Tensor], Tensor]  # z (B, nz) -> ∇V(z) (B, nz)


def langevin_update(z: Tensor, grad: Tensor, step_size: float, noise: Tensor | None) -> Tensor:
    """z − ½s²(∇V + z) + s·ε; ``noise`` None runs the noise-free update (test-time reconstruction).

    Reference for the fused ``langevin_update`` kernel: fp32 z, any-dtype grad, elementwise.
    """
    out = z - (0.5 * step_size * step_size) * (grad.to(z.dtype) + z)
    if noise is not None:
        out = out + step_size * noise
    return out


def energy_grad(energy_fn: EnergyFn, z: Tensor) -> Tensor:
    """∇_z Σ_b V(z_b) for a batch of independent chains; parameter gradients are not computed."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy_fn(z).sum(), z)
    return grad


def prior_energy(energy: nn.Module) -> EnergyFn:
    """V(z) = E(z), the non-Gaussian part of the prior energy E(z) + ½‖z‖²."""
    return energy


def posterior_energy(generator: nn.Module, energy: nn.Module, x: Tensor, sigma: float) -> EnergyFn:
    """V(z) = ‖x − G(z)‖²/(2σ²) + E(z), per row; x (B, C, H, W), the norm sums over all pixels."""
    inv_two_var = 1.0 / (2.0 * sigma * sigma)

    def fn(z: Tensor) -> Tensor:
        residual = (x - generator(z)).flatten(1)  # (B, C·H·W)
        return inv_two_var * residual.pow(2).sum(dim=1) + energy(z)

    return fn


def gaussian_energy(z: Tensor) -> Tensor:
    """½‖z‖² per row: the N(0, I) base term that :func:`langevin_update` folds in."""
    return 0.5 * z.pow(2).sum(dim=1)


UpdateFn = Callable[[Tensor, Tensor, float, "Tensor | None"], Tensor]  # (z, ∇V, s, ε or None) -> z'


def langevin_chain(z: Tensor, grad_fn: GradFn, n_steps: int, step_size: float, *,
                   noise: Tensor | None = None, generator: torch.Generator | None = None,
                   with_noise: bool = True, update: UpdateFn = langevin_update) -> Tensor:
    """Run ``n_steps`` Langevin steps from z (B, nz); returns the final z (detached).

    ``noise`` (n_steps, B, nz) fixes every ε (exact tests, kernel parity); otherwise one ``randn`` per
    step is drawn from ``generator`` (the authors' draw order). ``with_noise=False`` is gradient descent.
    ``update`` is the step (default: eq. 3's, with the N(0, I) term folded in; the image-space chain passes its
    own, :func:`engine.sampling.image_langevin.image_langevin_update`); z may have any shape then.
    """
    if noise is not None and noise.shape != (n_steps, *z.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {(n_steps, *z.shape)}")
    z = z.detach()
    for t in range(n_steps):
        g = grad_fn(z)
        eps = None
        if with_noise:
            eps = noise[t] if noise is not None else torch.randn(
                z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = update(z, g, step_size, eps)
    return z
