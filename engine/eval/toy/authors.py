"""The authors' toy setup, reproduced exactly: ``python -m engine.toy --setup authors`` (paper App. E.1).

Source: yuPeiyu98/Diffusion-Amortized-MCMC, ``workspace/toy_example/toy_example.py`` (cited as ``toy:<line>``)
and ``workspace/toy_example/src/diffusion_net.py`` (``net:<line>``). Where it differs from this engine's own
toy (``--setup engine``, the default of :mod:`engine.eval.toy.experiment`):

1. **Training latents** (``toy:134-155``, ``toy:184``): every iteration calls ``sample_z(500, args.seed)``, a
   NumPy ``RandomState(seed)`` pinwheel, so training sees the *same* 500 z's each time, with fresh observation
   noise ``x = G(z) + 0.25·ε`` (``toy:185``). The engine's toy draws fresh z's each iteration.
   → :func:`authors_pinwheel` (a line-for-line port, float64 then ``.float()`` as theirs).
2. **EMA direction** (``toy:104``, ``toy:230-232``): ``target ← 0.75·online + 0.25·target`` every 10 iterations;
   the engine's toy moves the target the other way (0.75·target + 0.25·online).
   → ``ema_decay = 0.25`` (the weight of the old target), with the engine's ``ema_update``.
3. **x-encoder** (``net:166-174``): 4 Linear layers 2→128→128→128→128 with ReLU; the engine's toy has
   Linear-SiLU-Linear. → ``ToyModel(x_encoder="authors")``.
4. **How G is drawn** (``toy:22-44``, ``toy:54``, ``toy:71-85``, ``toy:106``): ``torch.manual_seed(seed)``
   (default ``--seed 1``, ``toy:306``), then Q and its EMA copy ``Q_dummy`` are built (PyTorch default init,
   drawing from the global RNG), then ``G()``: four ``nn.Linear`` (default init draws again) overwritten by
   ``randn_like(w)·0.2`` and ``randn_like(b)·0.1`` layer by layer. The engine's toy draws G from its own
   generator. → :func:`authors_init` replays that construction order (every ``nn.Linear`` and ``randn`` of
   ``_netQ_U_toy.__init__``, ``net:141-184``, twice, then G), so G *and Q's initial weights* are bit-for-bit
   theirs; ``tests/eval/test_toy_authors.py`` pins them against values printed by their own code.
5. **Sizes** (``toy:182`` batch 500, ``toy:318`` 100 sampler steps, U-Net ``nf = 4``: ``net:146``, not
   overridden at ``toy:71-76``; iterations ``toy:337``: 10⁶ by default with a figure every 100, ``toy:340``;
   their README reports convergence "within 300-3000 training iterations"): batch 500, 100 steps, nf 4,
   3,000 iterations here. The engine's ``--fast`` uses batch 200, 20 steps, nf 2, 500 iterations.

The rest was already shared: Langevin ``z ← z − ½s²∇U + s·ε`` on ``‖x − G(z)‖²/(2·0.25²) + ½‖z‖²``, 50 steps
of s 0.1 (``toy:110-131``, ``toy:329-331``); chains started from ``Q_dummy`` (``toy:197``); mask
``rand < 0.1`` → null token (``toy:188-191``); 6 AdamW updates (lr 2e-4, wd 1e-2, β (0.5, 0.999), clip 100;
``toy:91``, ``toy:211-219``); LR ×0.99 every 1,000 iterations, floored at 1e-5 (``toy:224-227``); the
ε-loss, sampler (γ = 1 "large" variance, residual ε, λ ∈ [−5.1, 9.8]) and U-Net (``net:17-263``). The draws of
one iteration come in their order (x noise, mask, z_T, 99 sampler ε, 50 Langevin ε, then ξ, u, ε per update),
from a generator that continues the global stream where their script leaves it after building G: the stream
their script draws when run on a CPU. Evaluation follows ``toy:251-302``: the *online* Q, one sample per x for
10 × 500 x (``sample_z(500, seed + iteration)`` ten times, fresh noise each), 1,000-step Langevin from N(0, I)
as ground truth, kernel density plots (Gaussian KDE, bandwidth factor 0.15, on [−4, 4]², 100 × 100 points,
``toy:158-177``) and the reconstruction error ``mean ‖G(z) − x‖²`` (``toy:270``, ``toy:282-287``).

Deliberate differences, none of which changes the algorithm:
* their figure code draws from the training stream every 100 iterations (so a figure shifts the draws of
  every later iteration); here evaluation has its own generator, so evaluating never changes training;
* on a GPU their draws come from the CUDA generator (except ``z_T``, ``net:198``, from the CPU one); this
  reproduces the CPU stream, which is the only one a CPU can reproduce;
* the sampler's coefficients come from the engine's float64 table (theirs: float32 per step), a rounding
  difference (≈1e-7 relative per step);
* their unused ``self.xemb`` parameter (``net:179``) is drawn in the replay (it shifts the stream) but not kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.eval.toy.problem import ToyConfig, ToyModel
from engine.models import ConcatSquashBlock

__all__ = ["AuthorsInit", "authors_config", "authors_cpu_config", "authors_init", "authors_pinwheel"]


def authors_config(**overrides: Any) -> ToyConfig:
    """The authors' toy: their sizes and seed 1 (see the module docstring for each value's source)."""
    base = ToyConfig(setup="authors", seed=1, iterations=3000, batch_size=500, n_steps=100, unet_nf=4,
                     ema_decay=0.25, ema_every=10, gt_steps=1000, n_pooled_x=5000, n_eval_samples=1000,
                     log_every=100)
    return replace(base, **overrides)


def authors_cpu_config(**overrides: Any) -> ToyConfig:
    """The largest version of the authors' toy that fits the CPU budget of the committed results: 20 sampler
    steps and U-Net width factor 2 (instead of 100 and 4); everything else (500 fixed latents, batch 500,
    3,000 iterations, chains, EMA, optimiser, evaluation) as :func:`authors_config`. ~0.5 s per iteration on
    one core of a shared 2-core CPU, against ~2.5 s at full size."""
    return replace(authors_config(n_steps=20, unet_nf=2), **overrides)


def authors_pinwheel(n: int, seed: int) -> Tensor:
    """``sample_z(n, seed)`` (``toy:134-155``) line for line: (2·(n//2), 2) float32 latents."""
    rng = np.random.RandomState(seed)
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 2, 0.25
    num_per_class = n // num_classes
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    features = rng.randn(num_classes * num_per_class, 2) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = np.repeat(np.arange(num_classes), num_per_class)
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rotations = np.reshape(rotations.T, (-1, 2, 2))
    return torch.tensor(2 * rng.permutation(np.einsum("ti,tij->tj", features, rotations))).float()


@dataclass
class AuthorsInit:
    """Q as built by ``toy:71-85`` (the EMA copy starts equal to it), G as ``toy:106``, and the global RNG state
    right after, from which their training draws continue."""

    model: ToyModel
    g: nn.Sequential
    rng_state: Tensor


@torch.no_grad()
def _linear_into(dst: nn.Linear, fan_in: int, fan_out: int, bias: bool = True) -> None:
    """Build ``nn.Linear(fan_in, fan_out)`` exactly as their code does (its default init draws from the global
    RNG: weight, then bias) and copy it into ``dst``."""
    src = nn.Linear(fan_in, fan_out, bias=bias)
    if tuple(dst.weight.shape) != tuple(src.weight.shape) or (dst.bias is None) == bias:
        raise AssertionError(f"replay mismatch: {tuple(dst.weight.shape)} vs nn.Linear({fan_in}, {fan_out})")
    dst.weight.copy_(src.weight)
    if bias:
        dst.bias.copy_(src.bias)


def _block_into(dst: ConcatSquashBlock, dim_in: int, dim_out: int, dim_ctx: int) -> None:
    """``ConcatSquashLinearSkipCtx.__init__`` (``net:18-37``): _layer, _layer_ctx, _hyper_bias, _hyper_gate, _skip."""
    _linear_into(dst.layer, dim_in, dim_out)
    _linear_into(dst.ctx_proj, dim_ctx, dim_out)
    _linear_into(dst.hyper_bias, dim_out, dim_out, bias=False)
    _linear_into(dst.gate, dim_out, dim_out)
    _linear_into(dst.skip, dim_in, dim_out)


@torch.no_grad()
def _replay_q(model: ToyModel, nz: int, nxemb: int, ntemb: int, nf: int) -> None:
    """Every draw of ``_netQ_U_toy(...)`` (``net:141-184``), in order, written into the engine's modules."""
    enc = [m for m in model.x_embed if isinstance(m, nn.Linear)]
    for m, (a, b) in zip(enc, [(2, 128), (128, 128), (128, 128), (128, nxemb)], strict=True):  # net:166-174
        _linear_into(m, a, b)
    unet = model.unet  # Diffusion_Unet (net:63-96)
    _linear_into(unet.time_mlp[0], ntemb, ntemb)  # type: ignore[arg-type]
    _linear_into(unet.time_mlp[2], ntemb, ntemb)  # type: ignore[arg-type]
    unet.fourier_B.copy_(torch.randn(nz, nz // 2))  # net:79
    w1, w2, ctx = 32 * nf, 64 * nf, ntemb + nxemb
    shapes = [(nz * 2, w1), (w1, w2), (w2, w2), (w2, w2), (2 * w2, w2), (2 * w2, w1), (2 * w1, nz)]
    blocks = [*unet.enc, unet.mid, *unet.dec]
    for block, (a, b) in zip(blocks, shapes, strict=True):  # net:81-96
        _block_into(block, a, b, ctx)
    torch.randn(1, nxemb)  # self.xemb (net:179): never used, but drawn
    _linear_into(model.null_token.net[0], nz, 128)  # type: ignore[arg-type]  # prior_emb, net:180-184
    _linear_into(model.null_token.net[2], 128, nxemb)  # type: ignore[arg-type]


def _authors_g() -> nn.Sequential:
    """``G()`` (``toy:22-44``): default-initialised Linear layers, then N(0, 0.2²) weights, N(0, 0.1²) biases."""
    net = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128),
                        nn.ReLU(), nn.Linear(128, 2))
    with torch.no_grad():
        for m in net:  # nn.Module.apply visits the children in order
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn_like(m.weight) * 0.2)
                m.bias.copy_(torch.randn_like(m.bias) * 0.1)
    return net.requires_grad_(False)


def authors_init(cfg: ToyConfig) -> AuthorsInit:
    """Replay ``toy:54-106`` under ``torch.manual_seed(cfg.seed)`` without touching the caller's global RNG."""
    if cfg.nemb != 128 or cfg.ntemb != 128:
        raise ValueError("the authors' setup has nxemb = ntemb = 128 (toy:314-315)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ToyModel(cfg.nemb, cfg.ntemb, cfg.unet_nf, x_encoder="authors")  # every weight overwritten below
        scratch = ToyModel(cfg.nemb, cfg.ntemb, cfg.unet_nf, x_encoder="authors")
        torch.manual_seed(cfg.seed)
        _replay_q(model, 2, cfg.nemb, cfg.ntemb, cfg.unet_nf)  # Q (toy:71-76)
        _replay_q(scratch, 2, cfg.nemb, cfg.ntemb, cfg.unet_nf)  # Q_dummy (toy:77-82), then overwritten by Q
        g = _authors_g()  # toy:106
        state = torch.get_rng_state()
    return AuthorsInit(model, g, state)
