"""Reconstruction error and anomaly detection on the test split (spec ``damc.md`` §4).

* **MSE**: the learner's reconstruction (:meth:`engine.learners.base.Learner.reconstruct`; DAMC: z from the online
  amortizer's conditional draw, N(0, I) for an LEBM run, then noise-free Langevin on the posterior); per-image mean
  over C·H·W of (x̂ − x)² in [−1, 1] units, averaged over the test set.
* **AUPRC** (MNIST anomaly runs): score = Σ_pix (G(z) − x)² + E(z) + ½‖z‖²;
  ``sklearn.metrics.auc(recall, precision)`` of ``precision_recall_curve`` (trapezoidal, not average precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from engine.data.pixels import u8_to_float
from engine.learners import Learner
from engine.learners.damc import DamcLearner

__all__ = ["EvalError", "anomaly_scores", "auprc", "eval_auprc", "eval_mse", "posterior_latents"]


class EvalError(RuntimeError):
    """Bad input or an evaluation that cannot run; the message is one line."""


def _to_unit(x_u8: Tensor, device: torch.device) -> Tensor:
    # x/127.5 − 1, the engine's ToTensor + Normalize(0.5, 0.5) (bitwise on every device, see engine.data.pixels).
    return u8_to_float(x_u8.to(device))


def posterior_latents(learner: DamcLearner, x: Tensor, n_steps: int, step_size: float, sigma: float,
                      rng: torch.Generator) -> Tensor:
    """Spec §4: the online amortizer's conditional draw (N(0, I) for an LEBM run), then noise-free Langevin."""
    return learner.posterior_latents(x, n_steps, step_size, sigma, rng)


def eval_mse(learner: Learner, images_u8: Tensor, *, batch_size: int, n_steps: int, step_size: float,
             sigma: float, rng: torch.Generator) -> float:
    """Mean over images of the per-image mean over C·H·W of (x̂ − x)², [−1, 1] units (spec §4)."""
    total, n = 0.0, 0
    for chunk in images_u8.split(batch_size):
        x = _to_unit(chunk, learner.device)
        recon = learner.reconstruct(x, rng, steps=n_steps, step_size=step_size, sigma=sigma)
        with torch.no_grad():
            per_image = (recon - x).flatten(1).pow(2).mean(dim=1)
        total += float(per_image.double().sum())
        n += x.shape[0]
    return total / n


def anomaly_scores(learner: DamcLearner, images_u8: Tensor, *, batch_size: int, n_steps: int, step_size: float,
                   sigma: float, rng: torch.Generator) -> np.ndarray:
    """Σ_pix (G(z) − x)² + E(z) + ½‖z‖² per image (weight 1 on the reconstruction; higher = more anomalous)."""
    out = []
    for chunk in images_u8.split(batch_size):
        x = _to_unit(chunk, learner.device)
        z = posterior_latents(learner, x, n_steps, step_size, sigma, rng)
        with torch.no_grad():
            rec = (learner.nets.generator(z) - x).flatten(1).pow(2).sum(dim=1)
            score = rec + learner.nets.energy(z) + 0.5 * z.pow(2).sum(dim=1)
        out.append(score.double().cpu())
    return torch.cat(out).numpy()


def auprc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """``sklearn.metrics.auc(recall, precision)`` of ``precision_recall_curve(labels, scores)`` (spec §4)."""
    try:
        from sklearn.metrics import auc, precision_recall_curve
    except ImportError:
        raise EvalError("AUPRC needs scikit-learn: pip install scikit-learn") from None
    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores))
    return float(auc(recall, precision))


def eval_auprc(learner: DamcLearner, images_u8: Tensor, labels: Tensor, *, batch_size: int, n_steps: int,
               step_size: float, sigma: float, rng: torch.Generator) -> float:
    scores = anomaly_scores(learner, images_u8, batch_size=batch_size, n_steps=n_steps, step_size=step_size,
                            sigma=sigma, rng=rng)
    return auprc(labels.numpy(), scores)
