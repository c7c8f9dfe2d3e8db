"""The parameter updates of one iteration (Algorithm 1, spec ``damc.md`` §3 steps 5-7) as functions of pre-drawn
noise, and what the fast path needs to capture them in a CUDA graph.

The M amortizer updates are :func:`amortizer_updates_given`: M × (ε-loss, backward, total-norm clip, AdamW step),
a pure function of the networks, the optimizer and an :class:`UpdateNoise` holding every ξ, u and ε of the M
updates. How the noise is drawn is the caller's choice:

* :func:`draw_update_noise` draws it in the authors' order (per update, per loss: ξ, u, ε), which is exactly what
  ``amortizer_loss`` draws, so the reference path keeps its RNG stream and its numbers bit for bit;
* :func:`fill_update_noise_` draws all M updates at once (three RNG calls) into static buffers: the fast path's
  order, graph-safe inside a captured region.

The fast path also converts Adam/AdamW in place into the fused, capturable implementation with the learning rate
as a one-element fp32 device tensor (:func:`make_capturable`): the optimizer step then has no host work, so it can
be replayed from a CUDA graph, and the closed-form LR schedule writes the tensor in place (:func:`set_lr`). The
converted optimizer saves a reference-shaped state dict (float LR, step on the CPU, no fused/capturable flags), so
checkpoints move freely between ``perf.preset: reference`` and ``fast``; loading one re-installs the device LR and
calls the owner back (captured graphs hold the addresses of the old state tensors and must be re-captured).

:class:`StateSnapshot` saves and restores parameters, optimizer state and RNG states around the warm-up runs of
a region that trains (a warm-up is a real run; without the restore it would apply extra updates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.config import DiffusionConfig
from engine.sampling.draws import AmortizerNet, amortizer_loss_given, draw_loss_noise

__all__ = [
    "LossFn",
    "StateSnapshot",
    "StepFn",
    "UpdateNoise",
    "amortizer_updates_given",
    "draw_update_noise",
    "empty_update_noise",
    "fill_update_noise_",
    "losses_per_update",
    "make_capturable",
    "GradSync",
    "optimizer_step",
    "q_loss_given",
    "set_lr",
]


@dataclass(frozen=True)
class UpdateNoise:
    """Every random number of the M amortizer updates. L = 1 (``uncond_loss: mask``) or 2 (``both``: the
    conditional then the unconditional loss)."""

    xi: Tensor  # (M, L, B, nz) null-token noise ξ
    u: Tensor  # (M, L, B) continuous times u ~ U(0, 1)
    eps: Tensor  # (M, L, B, nz) diffusion noise ε

    @property
    def n_updates(self) -> int:
        return int(self.xi.shape[0])


def losses_per_update(d: DiffusionConfig) -> int:
    return 1 if d.uncond_loss == "mask" else 2


def draw_update_noise(rng: torch.Generator, m: int, n_losses: int, b: int, nz: int,
                      device: torch.device) -> UpdateNoise:
    """The authors' order: for each update, for each loss, ξ (B, nz), u (B,), ε (B, nz) (what ``amortizer_loss``
    draws), stacked into (M, L, ...) tensors."""
    draws = [[draw_loss_noise(rng, b, nz, device) for _ in range(n_losses)] for _ in range(m)]
    if m == 0:
        return empty_update_noise(0, n_losses, b, nz, device)
    return UpdateNoise(*(torch.stack([torch.stack([d[i] for d in per]) for per in draws]) for i in range(3)))


def empty_update_noise(m: int, n_losses: int, b: int, nz: int, device: torch.device) -> UpdateNoise:
    """Uninitialised (M, L, ...) buffers, for :func:`fill_update_noise_`."""
    return UpdateNoise(torch.empty(m, n_losses, b, nz, device=device), torch.empty(m, n_losses, b, device=device),
                       torch.empty(m, n_losses, b, nz, device=device))


def fill_update_noise_(noise: UpdateNoise, rng: torch.Generator | None) -> UpdateNoise:
    """Draw all M updates' noise at once, in place (three RNG calls; graph-safe with a registered generator)."""
    noise.xi.normal_(generator=rng)
    noise.u.uniform_(generator=rng)
    noise.eps.normal_(generator=rng)
    return noise


def q_loss_given(amortizer: AmortizerNet, z_pos: Tensor, x: Tensor, keep: Tensor, xi: Tensor, u: Tensor,
                 eps: Tensor, d: DiffusionConfig) -> Tensor:
    """One update's loss (spec §3 step 5) from its noise xi (L, B, nz), u (L, B), eps (L, B, nz): masked rows
    (``mask``), or the conditional plus the unconditional loss (``both``, the MNIST script)."""
    if d.uncond_loss == "mask":
        return amortizer_loss_given(amortizer, z_pos, x, keep, xi[0], u[0], eps[0], d.logsnr_min, d.logsnr_max)
    ones = torch.ones_like(keep)
    return (amortizer_loss_given(amortizer, z_pos, x, ones, xi[0], u[0], eps[0], d.logsnr_min, d.logsnr_max)
            + amortizer_loss_given(amortizer, z_pos, x, 1 - ones, xi[1], u[1], eps[1], d.logsnr_min,
                                   d.logsnr_max))


GradSync = Callable[[nn.Module], None]  # averages a module's gradients over ranks, in place


def optimizer_step(opt: torch.optim.Optimizer, module: nn.Module, loss: Tensor, clip: float,
                   sync: GradSync | None = None) -> Tensor:
    """zero_grad → backward → [average the gradients over ranks] → total-norm clip (returns the pre-clip norm, on
    the device) → step.

    ``clip_grad_norm_`` reads nothing on the host (``error_if_nonfinite`` is off): the norm, the clip coefficient
    min(1, clip / (norm + 1e-6)) and the scaling all stay on the device, so the step is capturable once the
    optimizer is (:func:`make_capturable`). With several processes, ``sync`` (``Distributed.average_grads_``)
    averages the gradients *before* the clip, so every rank clips the global batch's gradient, as one process
    training on the whole batch would.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync(module)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()
    return norm


# (z_pos, x, keep, xi (L, B, nz), u (L, B), eps (L, B, nz)) -> the update's scalar loss
LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
StepFn = Callable[[torch.optim.Optimizer, nn.Module, Tensor, float], Tensor]


def amortizer_updates_given(loss_fn: LossFn, opt: torch.optim.Optimizer, module: nn.Module, z_pos: Tensor,
                            x: Tensor, keep: Tensor, noise: UpdateNoise, clip: float,
                            step: StepFn = optimizer_step) -> tuple[Tensor, Tensor]:
    """The M updates of Q on the targets z_pos (B, nz) with the noise given; returns (mean loss, last norm).

    Operation for operation the loop of the authors' code, so with :func:`draw_update_noise`'s draws the result is
    bitwise the eager reference's.
    """
    losses: list[Tensor] = []
    norm = torch.zeros((), device=x.device)
    for m in range(noise.n_updates):
        loss = loss_fn(z_pos, x, keep, noise.xi[m], noise.u[m], noise.eps[m])
        norm = step(opt, module, loss, clip)
        losses.append(loss.detach())
    mean = torch.stack(losses).mean() if losses else torch.zeros((), device=x.device)
    return mean, norm


# ---------------------------------------------------------------------------------------------------------
# Fused, capturable Adam/AdamW with a device learning rate


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR: in place (one fill on the device, no host read) when it is a device tensor."""
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


_FAST_FLAGS = {"fused": True, "capturable": True, "foreach": None}
_REFERENCE_FLAGS = {"fused": None, "capturable": False, "foreach": None}


def _install(opt: torch.optim.Optimizer, device: torch.device, device_lr: bool) -> None:
    """Fused + capturable flags, ``step`` on the device, and the LR as a 0-d fp32 device tensor kept per group (or a
    float when ``device_lr`` is off)."""
    for group in opt.param_groups:
        group.update(_FAST_FLAGS)
        lr = group["lr"]
        value = float(lr.item()) if isinstance(lr, Tensor) else float(lr)  # a CPU value here (load / first call)
        if device_lr:
            owned = group.get("_device_lr")
            if not isinstance(owned, Tensor):
                owned = torch.zeros((), dtype=torch.float32, device=device)
                group["_device_lr"] = owned
            owned.fill_(value)
            group["lr"] = owned
        else:
            group["lr"] = value
        for p in group["params"]:
            st = opt.state.get(p)
            if st and isinstance(st.get("step"), Tensor):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def _reference_state_dict(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """The state dict as a plain (unfused, non-capturable) optimizer writes it: float LR, CPU ``step``.

    Reads the LR on the host (a sync), which only happens when a checkpoint is written. Builds new dicts: the
    packed state shares its per-parameter dicts with the live optimizer.
    """
    groups = []
    for g in sd["param_groups"]:
        g = {k: v for k, v in g.items() if k != "_device_lr"}
        if isinstance(g["lr"], Tensor):
            g["lr"] = float(g["lr"].item())
        g.update(_REFERENCE_FLAGS)
        groups.append(g)
    state = {k: {n: (v.detach().to("cpu", torch.float32) if n == "step" and isinstance(v, Tensor) else v)
                 for n, v in st.items()} for k, st in sd["state"].items()}
    return {**sd, "param_groups": groups, "state": state}


def make_capturable(opt: torch.optim.Optimizer, device: torch.device, on_load: Callable[[], None] | None = None,
                    device_lr: bool = True) -> torch.optim.Optimizer:
    """Turn an Adam/AdamW into the fused, capturable implementation with a device LR, in place (same object).

    ``torch.optim``'s fused kernels run the whole update of every parameter in a few launches and read the LR from
    device memory when it is a tensor (fp32 on CUDA); with ``capturable`` set, ``step`` lives on the device and
    the optimizer passes the capture health check. ``on_load`` is called after every ``load_state_dict``: the state
    tensors are new objects then, so anything captured over the old ones must be captured again. With
    ``device_lr`` off the LR stays a Python float (a graph then bakes it in, and must be captured again when it
    changes).
    """
    if not isinstance(opt, torch.optim.Adam):
        raise TypeError(f"make_capturable: expected Adam/AdamW, got {type(opt).__name__}")
    if getattr(opt, "_damc_capturable", False):
        return opt
    _install(opt, device, device_lr)
    opt.defaults.update(_FAST_FLAGS)

    def after_load(o: torch.optim.Optimizer) -> None:
        _install(o, device, device_lr)
        if on_load is not None:
            on_load()

    opt.register_load_state_dict_post_hook(after_load)
    opt.register_state_dict_post_hook(_reference_state_dict)
    opt._damc_capturable = True  # type: ignore[attr-defined]
    return opt


# ---------------------------------------------------------------------------------------------------------
# Warm-up runs of a region that trains


class StateSnapshot:
    """Parameters, optimizer state and generator states, saved now and restored by :meth:`restore`.

    Optimizer state that does not exist yet (Adam creates it on its first step, i.e. during a warm-up) is zeroed on
    restore: zero moments and a zero step are exactly a fresh Adam's state, so the next step is the first one.
    """

    def __init__(self, modules: Iterable[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                 generators: Sequence[torch.Generator] = ()) -> None:
        self._params = [(p, p.detach().clone()) for m in modules for p in m.parameters()]
        self._optimizers = list(optimizers)
        self._opt_state = [{(i, k): v.detach().clone() for i, p in enumerate(_params_of(o))
                            for k, v in o.state.get(p, {}).items() if isinstance(v, Tensor)}
                           for o in self._optimizers]
        self._generators = [(g, g.get_state()) for g in generators]

    @torch.no_grad()
    def restore(self) -> None:
        for param, saved in self._params:
            param.copy_(saved)
        for o, saved_state in zip(self._optimizers, self._opt_state, strict=True):
            for i, p in enumerate(_params_of(o)):
                for k, v in o.state.get(p, {}).items():
                    if isinstance(v, Tensor):
                        old = saved_state.get((i, k))
                        if old is None:
                            v.zero_()
                        else:
                            v.copy_(old)
        for g, s in self._generators:
            g.set_state(s)


def _params_of(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]
