"""The DAMC prior sampler (spec ``damc.md`` §2, paper eq. 5) as graphs that export: randomness in, images out.

What is exported is the *prior sampler* of a trained run: the null-token embedding of ξ, the T-step
unconditional ancestral sampler (the online amortizer, as ``engine.eval`` and the training grids use it) and G.
Every random number is an input (:mod:`engine.sampling.noise`); the schedule is a constant table inside the graph;
the sampler step is the plain-torch reference :func:`engine.sampling.diffusion.ddpm_step` (the fused
``damc::ddpm_step`` op has no ONNX or TensorRT lowering and never appears here).

Two structures:

* **per-step** (three graphs, the engine drives the loop; how NVIDIA's diffusion demos ship):
  ``null_embedding``: ξ (B, nz) → xemb (B, nemb);
  ``step``: k (1,) int64, z (B, nz), xemb (B, nemb), ε (B, nz) → z' (B, nz), one ancestral step at row k of
  the constant (T, 6) coefficient table (ε is multiplied by the row's std, which is 0 at the last row);
  ``generator``: z (B, nz) → images (B, C, H, W) in [−1, 1];
* **whole**: ξ, z_T (B, nz), ε (T−1, B, nz) → images, the T-step loop unrolled into one static graph.

Both are built from :func:`prior_latents`, the function the engine's own sample command runs on the same
noise, so an fp32 export computes exactly the engine's arithmetic. Precision ``bf16``/``fp16`` runs the
networks under autocast (explicit casts in the exported graph, which TensorRT's explicit typing keeps) while
the schedule and the step arithmetic stay fp32 (the log-SNR terms underflow in fp16; spec ``performance.md``
§4); inputs and outputs are fp32 at every precision.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.models import Amortizer, Generator
from engine.sampling.diffusion import SamplerTable, ddpm_step
from engine.sampling.given import PriorNet, decode, precision_autocast, prior_latents
from engine.sampling.noise import PriorNoise

__all__ = [
    "PRECISIONS",
    "GeneratorGraph",
    "NullEmbeddingGraph",
    "PriorNet",
    "PriorNetView",
    "StepGraph",
    "WholeGraph",
    "coefficient_rows",
    "decode",
    "prior_latents",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_COLUMNS = ("logsnr", "c_x0_z", "c_x0_eps", "c_mean_z", "c_mean_x0", "std")  # SamplerTable's fields, in order


class PriorNetView(nn.Module):
    """The parts of an :class:`Amortizer` the prior draw uses (null token + U-Net), without the image encoder, so
    an exported graph carries only the weights it runs. Same computation as ``Amortizer.null_embedding`` and
    ``Amortizer.forward`` (both delegate to these submodules)."""

    def __init__(self, amortizer: Amortizer) -> None:
        super().__init__()
        self.null_token = amortizer.null_token
        self.unet = amortizer.unet

    def null_embedding(self, xi: Tensor) -> Tensor:
        return self.null_token(xi)

    def forward(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        return self.unet(z, logsnr, xemb)


def coefficient_rows(table: SamplerTable, with_noise: bool = True) -> Tensor:
    """The (T, 6) fp32 table of the step graph, columns in :class:`SamplerTable` order; ``with_noise=False``
    zeroes the std column (``diffusion.sampler_noise: false``: ε is then multiplied by 0)."""
    cols = [getattr(table, name) for name in _COLUMNS]
    if not with_noise:
        cols[-1] = torch.zeros_like(cols[-1])
    return torch.stack(cols, dim=1).float()


def _table_of(rows: Tensor) -> SamplerTable:
    """A SamplerTable whose columns are views of ``rows`` (n, 6)."""
    return SamplerTable(*(rows[:, j] for j in range(len(_COLUMNS))))


class NullEmbeddingGraph(nn.Module):
    """ξ (B, nz) -> xemb (B, nemb) fp32."""

    def __init__(self, amortizer: Amortizer, precision: str = "fp32") -> None:
        super().__init__()
        self.null_token = amortizer.null_token  # = Amortizer.null_embedding; the graph carries no U-Net weights
        self.dtype = PRECISIONS[precision]

    def forward(self, xi: Tensor) -> Tensor:
        with precision_autocast(xi.device.type, self.dtype):
            return self.null_token(xi).float()


class StepGraph(nn.Module):
    """One ancestral step at a step index given as input: (k (1,) int64, z, xemb, ε) -> z'.

    The (T, 6) coefficient table is a constant buffer; row k is gathered inside the graph, so the same graph
    serves all T steps (one TensorRT engine, one CUDA-graph node per step).
    """

    coeffs: Tensor  # (T, 6) fp32, a constant of the exported graph

    def __init__(self, amortizer: Amortizer, table: SamplerTable, with_noise: bool = True,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.unet = amortizer.unet  # = Amortizer.forward; no null-token or encoder weights in this graph
        self.register_buffer("coeffs", coefficient_rows(table, with_noise), persistent=False)
        self.dtype = PRECISIONS[precision]

    def forward(self, k: Tensor, z: Tensor, xemb: Tensor, eps: Tensor) -> Tensor:
        row = _table_of(self.coeffs[k])  # columns of shape (1,)
        lam = row.logsnr.expand(z.shape[0])  # (B,)
        with precision_autocast(z.device.type, self.dtype):
            eps_hat = self.unet(z, lam, xemb).float()
        return ddpm_step(z, eps_hat, 0, row, eps)


class GeneratorGraph(nn.Module):
    """z (B, nz) -> images (B, C, H, W) fp32 in [−1, 1]."""

    def __init__(self, generator: Generator, precision: str = "fp32") -> None:
        super().__init__()
        self.generator = generator
        self.dtype = PRECISIONS[precision]

    def forward(self, z: Tensor) -> Tensor:
        return decode(self.generator, z, self.dtype)


class WholeGraph(nn.Module):
    """(ξ (B, nz), z_T (B, nz), ε (T−1, B, nz)) -> images: the unrolled T-step sampler and G in one graph."""

    coeffs: Tensor  # (T, 6) fp32

    def __init__(self, amortizer: Amortizer, generator: Generator, table: SamplerTable, with_noise: bool = True,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.net = PriorNetView(amortizer)
        self.generator = generator
        self.register_buffer("coeffs", coefficient_rows(table), persistent=False)
        self.with_noise = with_noise
        self.dtype = PRECISIONS[precision]

    def forward(self, xi: Tensor, z: Tensor, eps: Tensor) -> Tensor:
        table = _table_of(self.coeffs)
        zhat = prior_latents(self.net, table, PriorNoise(xi, z, eps), with_noise=self.with_noise, dtype=self.dtype)
        return decode(self.generator, zhat, self.dtype)
