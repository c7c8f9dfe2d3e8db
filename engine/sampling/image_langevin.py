"""Langevin dynamics on images x (N, C, H, W): the pure maths, for any learner whose chain runs in data space.

The target is p(x) ∝ exp(−U(x)) with U = V(x) + ‖x‖²/(2σ_ref²), V the non-Gaussian part (a network's energy, plus
whatever quadratic terms the learner adds), and the Gaussian reference term optional (``ref_sigma`` None: U = V).
One step is

    x ← x − ½s²·(∇V(x) + x/σ_ref²) + s·ε,      ε ~ N(0, I).

Who uses which form:
  * CoopVAEBM (Xie et al., AAAI 2021; the authors' TF code): ``syn = syn - 0.5*δ²*(syn/σ_ref² - ∂f/∂syn)`` with f
    the network's score, i.e. V = −f, δ = 0.002, σ_ref = 0.016, 15 steps, no noise term (``noise`` None);
  * Diffusion Recovery Likelihood (Gao et al., ICLR 2021): V = −f(x̃) + ‖x̃ − y‖²/(2σ²), the conditioning quadratic
    put into V by its learner, ``ref_sigma`` None;
  * Dual-MCMC (Cui & Han, 2023): plain x − ½s²∇E(x) + s·ε, V = E, ``ref_sigma`` None.

As in :mod:`engine.sampling.langevin` the energy enters as a callable, the randomness as a noise tensor or an
explicit generator (never the global RNG), and nothing reads tensor values on the host, so the runtime
(:mod:`engine.runtime.image_chains`) can compile it and capture it as one CUDA graph without changing its meaning.
:func:`fold_reference` rewrites the update into the latent update's form, so the existing fused kernel
(:mod:`kernels.langevin_update`) runs it unchanged on the flattened (N, C·H·W) rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from engine.sampling.langevin import langevin_chain

__all__ = ["ImageEnergyFn", "ImageGradFn", "fold_reference", "image_energy_grad", "image_langevin_chain",
           "image_langevin_update"]

ImageEnergyFn = Callable[[Tensor], Tensor]  # x (N, C, H, W) -> per-row V (N,)
ImageGradFn = Callable[[Tensor], Tensor]  # x (N, C, H, W) -> ∇V(x) (N, C, H, W)


def _inv_var(ref_sigma: float | None) -> float:
    """1/σ_ref² (0 without a reference term); ``ref_sigma`` is a Python float of the chain config."""
    if ref_sigma is None:
        return 0.0
    if not ref_sigma > 0.0:
        raise ValueError(f"ref_sigma = {ref_sigma!r}: expected a positive float or None")
    return 1.0 / (ref_sigma * ref_sigma)


def image_langevin_update(x: Tensor, grad_v: Tensor, step_size: float, ref_sigma: float | None,
                          noise: Tensor | None) -> Tensor:
    """x − ½s²·(∇V + x/σ_ref²) + s·ε; ``ref_sigma`` None drops x/σ_ref², ``noise`` None drops s·ε.

    x (N, C, H, W) fp32 (any shape: the update is elementwise), grad_v like x in any float dtype (upcast to x's),
    noise like x or None; returns x' in x's dtype. With σ_ref = 1 this is, operation for operation,
    :func:`engine.sampling.langevin.langevin_update` (x·1.0 is exact).
    """
    drift = grad_v.to(x.dtype)
    if ref_sigma is not None:
        drift = drift + x * _inv_var(ref_sigma)
    out = x - (0.5 * step_size * step_size) * drift
    if noise is not None:
        out = out + step_size * noise
    return out


def fold_reference(grad_v: Tensor, x: Tensor, ref_sigma: float | None) -> Tensor:
    """The g with z − ½s²·(g + z) = x − ½s²·(∇V + x/σ_ref²): g = ∇V + (1/σ_ref² − 1)·x (∇V − x for None).

    The fused kernel ``kernels.langevin_update.langevin_update`` folds the N(0, I) term's gradient z into its
    update; this hands it a gradient that cancels that term and adds the image chain's own, so the kernel runs
    unchanged (on ``x.flatten(1)`` rows). The result equals :func:`image_langevin_update` within fp32 rounding of
    the larger of ∇V and x/σ_ref² (g + x is rounded once more); for σ_ref = 1 it is ``grad_v`` itself and exact.
    Costs one elementwise pass over x (a kernel taking 1/σ_ref² would save it).
    """
    coeff = _inv_var(ref_sigma) - 1.0
    if coeff == 0.0:  # σ_ref = 1: the kernel's own N(0, I) term; the kernel upcasts a bf16 ∇V itself
        return grad_v
    return grad_v.to(x.dtype) + coeff * x


def image_energy_grad(energy_fn: ImageEnergyFn, x: Tensor) -> Tensor:
    """∇_x Σ_n V(x_n) (N, C, H, W) for a batch of independent chains; no parameter gradients are computed.

    (The same as :func:`engine.sampling.langevin.energy_grad`; the rows are independent, so the gradient of the
    sum is each row's own gradient.)
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy_fn(x).sum(), x)
    return grad


def image_langevin_chain(x0: Tensor, grad_fn: ImageGradFn, n_steps: int, step_size: float, *,
                         ref_sigma: float | None, noise: Tensor | None = None,
                         generator: torch.Generator | None = None, with_noise: bool = True) -> Tensor:
    """Run ``n_steps`` image Langevin steps from x0 (N, C, H, W); returns the final x (detached).

    ``noise`` (n_steps, N, C, H, W) fixes every ε (exact tests, kernel parity); otherwise one ``randn`` of x's
    shape per step is drawn from ``generator``, step 0 first. ``with_noise=False`` is the noise-free update
    (CoopVAEBM's authors' chain; ``noise`` and ``generator`` are then unused). Needing draws without a generator
    is an error: the global RNG is never used.
    """
    if with_noise and noise is None and generator is None and n_steps > 0:
        raise ValueError("image_langevin_chain draws ε: pass noise or a torch.Generator (never the global RNG)")

    def update(x: Tensor, g: Tensor, s: float, eps: Tensor | None) -> Tensor:
        return image_langevin_update(x, g, s, ref_sigma, eps)

    # The latent chain's loop (draw order, noise checks), with the image update.
    return langevin_chain(x0, grad_fn, n_steps, step_size, noise=noise, generator=generator, with_noise=with_noise,
                          update=update)
