"""How an image-space Langevin chain runs (:mod:`engine.sampling.image_langevin`), for any learner.

:class:`ImageChains` is the interface, one method ``run``; two classes implement it:

* :class:`ReferenceImageChains`: eager fp32, the pure functions, ε drawn per step from the caller's generator;
* :class:`FastImageChains`: the same maths with what a :class:`~engine.runtime.perf.PerfPlan` enables, on the
  machinery of :mod:`engine.runtime.fast` (read its docstring for the why of each choice):

  - ``amp``: the energy network's forward under bf16 autocast; x (so ∇V too), the update and the energies (cast
    before their sum) stay fp32;
  - ``compile``: the energy's forward (and, through AOTAutograd, its backward) compiled with
    ``fullgraph=True, dynamic=False``; ``autograd.grad`` stays eager (Dynamo does not trace ``requires_grad_()``);
  - ``kernels``: the update by the existing fused op ``kernels.langevin_update.langevin_update`` (which honours
    ``kernels.set_backend``) on the flattened (N, C·H·W) rows, with the reference term folded into its gradient
    (:func:`~engine.sampling.image_langevin.fold_reference`);
  - ``graphs``: the whole K-step chain captured once per key as one CUDA graph over static buffers, the ε of all K
    steps drawn into a static (K, N, C, H, W) buffer from a :class:`~engine.runtime.graphs.GeneratorProxy` bound to
    the caller's generator around each replay (so every replay draws fresh noise and the caller's stream advances
    as if it had drawn), the output cloned out of its buffer.

The energy's parameters (``freeze``) are kept out of autograd while a chain runs or is captured, on both paths: a
chain needs ∂V/∂x only, and a compiled energy's backward would otherwise also compute every weight gradient
(``engine.runtime.fast.FastChains._run``). The fast path draws all K steps' ε at once (on a GPU, graph-safe Philox
offsets differ again), so for the same generator its noise is not the reference's; equivalence is tested for fixed
noise (tests/runtime/test_image_chains.py). No host syncs in a chain: step counts,
step sizes and σ_ref are Python floats of the config.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.runtime.graphs import CapturedGraph, GeneratorProxy, frozen
from engine.runtime.perf import PerfPlan
from engine.sampling.image_langevin import (
    fold_reference,
    image_energy_grad,
    image_langevin_chain,
    image_langevin_update,
)

__all__ = ["FastImageChains", "ImageChains", "ImageEnergy", "ReferenceImageChains", "build_image_chains"]

# energy(x, *cond): x (N, C, H, W) fp32, cond the per-call tensors it also reads -> per-row V (N,)
ImageEnergy = Callable[..., Tensor]
UpdateOp = Callable[[Tensor, Tensor, float, "Tensor | None"], Tensor]


class ImageChains(Protocol):
    """How a learner runs an image Langevin chain; both paths take the same arguments and mean the same maths."""

    def run(self, energy: ImageEnergy, x0: Tensor, *, n_steps: int, step_size: float, ref_sigma: float | None,
            with_noise: bool, rng: torch.Generator | None, freeze: Sequence[nn.Module] = (),
            noise: Tensor | None = None, cond: Sequence[Tensor] = (), key: Hashable = None) -> Tensor:
        """``n_steps`` steps of x − ½s²(∇V + x/σ_ref²) + s·ε from x0 (N, C, H, W); returns x (N, C, H, W), detached.

        ``energy(x, *cond)`` is V per row (N,); ``cond`` holds the tensors besides x it reads that change between
        calls (DRL's noisy data y, a time step): a captured graph reads them from static buffers, refilled per call.
        ``ref_sigma`` None: no Gaussian reference term. ``with_noise`` False: noise-free steps. ``noise``
        (n_steps, N, C, H, W) fixes every ε; else ε comes from ``rng`` (None only when nothing is drawn).
        ``freeze``: modules whose parameters stay out of autograd during the chain (restored after). ``key`` names
        the energy for the fast path's graph cache (None: the energy object's identity); see
        :meth:`FastImageChains.run`.
        """
        ...


def _check_noise(noise: Tensor | None, n_steps: int, x0: Tensor, with_noise: bool,
                 rng: torch.Generator | None) -> None:
    if noise is not None and noise.shape != (n_steps, *x0.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {(n_steps, *x0.shape)}")
    if with_noise and noise is None and rng is None and n_steps > 0:
        raise ValueError("the chain draws ε: pass noise or rng (a torch.Generator; never the global RNG)")


class ReferenceImageChains:
    """Eager fp32: :func:`~engine.sampling.image_langevin.image_langevin_chain`, one ``randn`` per step from ``rng``."""

    def run(self, energy: ImageEnergy, x0: Tensor, *, n_steps: int, step_size: float, ref_sigma: float | None,
            with_noise: bool, rng: torch.Generator | None, freeze: Sequence[nn.Module] = (),
            noise: Tensor | None = None, cond: Sequence[Tensor] = (), key: Hashable = None) -> Tensor:
        """See :meth:`ImageChains.run`; ``key`` is unused here."""
        _check_noise(noise, n_steps, x0, with_noise, rng)

        def v(x: Tensor) -> Tensor:
            return energy(x, *cond)

        with frozen(*freeze):
            return image_langevin_chain(x0, lambda x: image_energy_grad(v, x), n_steps, step_size,
                                        ref_sigma=ref_sigma, noise=noise, generator=rng, with_noise=with_noise)


class FastImageChains:
    """The chain with bf16 / compile / the fused update / one CUDA graph per key, as ``plan`` allows.

    Graphs need a CUDA ``device``; the other switches run anywhere (their references on a CPU), which is how
    the CPU tests check them.
    """

    def __init__(self, plan: PerfPlan, device: torch.device) -> None:
        self.plan, self.device = plan, torch.device(device)
        if plan.graphs and self.device.type != "cuda":
            raise ValueError(f"perf.graphs needs a CUDA device (got {self.device})")
        self._update_op: UpdateOp | None = None
        if plan.kernels:
            # Imported here, not at module level: registering the op imports Triton's compiler stack (when installed),
            # which the reference path never needs.
            from kernels.langevin_update import langevin_update

            self._update_op = langevin_update
        self._energy_sum: Callable[..., Tensor] = self._energy_sum_fn
        if plan.compile:
            mode = None if plan.compile_mode == "default" else plan.compile_mode
            self._energy_sum = torch.compile(self._energy_sum_fn, fullgraph=True, dynamic=False, mode=mode)
        self._proxy = GeneratorProxy(self.device) if plan.graphs else None
        self._graphs: dict[Hashable, tuple[CapturedGraph, dict[str, Tensor]]] = {}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast with ``amp`` (around the energy network's forward only), else a no-op."""
        if not self.plan.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _energy_sum_fn(self, energy: ImageEnergy, x: Tensor, *cond: Tensor) -> Tensor:
        """Σ_n V(x_n): the network under the plan's autocast, the energies cast to fp32 before the sum."""
        with self.autocast():
            v = energy(x, *cond)
        return v.float().sum()

    def _step(self, energy: ImageEnergy, x: Tensor, cond: Sequence[Tensor], eps: Tensor | None, step_size: float,
              ref_sigma: float | None) -> Tensor:
        """One step: ∇V by eager autograd through the (compiled) energy, then the update (fused with ``kernels``)."""
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._energy_sum(energy, xx, *cond), xx)
        if self._update_op is None:
            return image_langevin_update(x, g, step_size, ref_sigma, eps)
        rows = x.shape[0]  # the kernel's (B, nz) layout: one image per row, C·H·W columns

        def flat(t: Tensor) -> Tensor:
            return t.reshape(rows, -1)

        out = self._update_op(flat(x), flat(fold_reference(g, x, ref_sigma)), step_size,
                              None if eps is None else flat(eps))
        return out.reshape(x.shape)

    def clear(self) -> None:
        """Drop every captured graph (and the energies they hold); the next call captures again."""
        self._graphs.clear()

    def run(self, energy: ImageEnergy, x0: Tensor, *, n_steps: int, step_size: float, ref_sigma: float | None,
            with_noise: bool, rng: torch.Generator | None, freeze: Sequence[nn.Module] = (),
            noise: Tensor | None = None, cond: Sequence[Tensor] = (), key: Hashable = None) -> Tensor:
        """See :meth:`ImageChains.run`.

        With ``graphs`` one graph is captured per (``key``, shapes and dtypes of x0 and ``cond``, n_steps, step_size,
        ref_sigma, with_noise, fixed noise or not) and replayed. A replay runs the energy of the call that captured
        it: it sees weights updated in place and new ``cond`` values, nothing rebound. So ``key`` must name one
        energy: None uses ``id(energy)`` (right for a module or a method the learner keeps; a new closure per call
        captures a new graph per call, held until :meth:`clear`).
        """
        _check_noise(noise, n_steps, x0, with_noise, rng)
        fixed, draws = noise is not None, with_noise and noise is None and n_steps > 0
        n_cond = len(cond)

        def body(b: dict[str, Tensor], gen: torch.Generator | None) -> None:
            if draws:
                b["noise"].normal_(generator=gen)  # all K steps' ε at once: one RNG node in a graph
            c = [b[f"cond{i}"] for i in range(n_cond)]
            x = b["x"].detach()
            for t in range(n_steps):
                x = self._step(energy, x, c, b["noise"][t] if with_noise else None, step_size, ref_sigma)
            if "out" in b:
                b["out"].copy_(x)
            else:
                b["out"] = x

        inputs = {"x": x0, **{f"cond{i}": c for i, c in enumerate(cond)}}
        if fixed and with_noise:
            assert noise is not None
            inputs["noise"] = noise
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in inputs.items()}
        shapes["out"] = (tuple(x0.shape), x0.dtype)
        if with_noise:
            shapes["noise"] = ((n_steps, *x0.shape), x0.dtype)

        if self._proxy is None:  # uncaptured: frozen as in a capture (see the module docstring)
            bufs = dict(inputs)
            if draws:
                bufs["noise"] = torch.empty(shapes["noise"][0], dtype=x0.dtype, device=x0.device)
            with frozen(*freeze):
                body(bufs, rng)
            return bufs["out"].detach()

        gen = self._proxy.generator
        full_key = (id(energy) if key is None else key, tuple(shapes.items()), n_steps, step_size, ref_sigma,
                    with_noise, fixed)
        entry = self._graphs.get(full_key)
        if entry is None:
            bufs = {k: torch.empty(s, dtype=d, device=self.device) for k, (s, d) in shapes.items()}
            for k, v in inputs.items():
                bufs[k].copy_(v)
            graph = CapturedGraph(functools.partial(body, bufs, gen), self.device, tuple(freeze), generators=(gen,))
            entry = self._graphs[full_key] = (graph, bufs)
        graph, bufs = entry
        for k, v in inputs.items():
            bufs[k].copy_(v)
        with self._proxy.bound(rng) if draws and rng is not None else contextlib.nullcontext():
            graph.replay()
        return bufs["out"].clone()  # the static buffer is overwritten by the next replay


def build_image_chains(plan: PerfPlan, device: torch.device) -> ReferenceImageChains | FastImageChains:
    """The reference for the reference plan (``plan.is_reference``), else the fast path with what the plan enables."""
    if plan.is_reference:
        return ReferenceImageChains()
    return FastImageChains(plan, device)
