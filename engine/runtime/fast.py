"""The fast path of the three loops (paper eq. 3 / 16, spec §2), and the choice between it and the reference.

:class:`FastChains` computes the same maths (paper eq. 3 / 16, spec §2) with the speed-ups a
:class:`~engine.runtime.perf.PerfPlan` enables:
  * bf16 autocast for G, the encoder and the U-Net; z, the Langevin update, energies and reductions in fp32;
  * ``torch.compile(fullgraph=True)`` of the per-step functions (``autograd.grad`` traced into the graph);
  * each whole loop (30 posterior steps, 60 prior steps, 100 sampler steps) captured once as a CUDA graph
    over static buffers and replayed every iteration; recaptured only when a shape changes. Noise is drawn
    inside the graph from the default CUDA generator, which PyTorch advances on every replay (graph-safe
    Philox offsets), so every replay gets fresh noise and the stream is reproducible from the run seed.
    Weights are never rebound (optimizers, the EMA update and ``load_state_dict`` all write in place), so a
    captured graph always sees the current parameters.
The noise stream of the fast path is not the reference's (it comes from a different generator and bf16
changes the arithmetic); equivalence is checked for fixed noise (``noise=`` arguments) within bf16
tolerance, and on loss curves on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from engine.models import Amortizer
from engine.runtime.chains import LoopState, ReferenceChains, chain_args
from engine.runtime.graphs import CapturedGraph
from engine.runtime.perf import PerfPlan
from engine.sampling.diffusion import SamplerTable

__all__ = ["FastChains", "SamplerStep", "UpdateOp", "build_chains"]

UpdateOp = Callable[[Tensor, Tensor, float, "Tensor | None"], Tensor]
StepOp = Callable[[Tensor, Tensor, int, SamplerTable, "Tensor | None"], Tensor]


class SamplerStep:
    """``engine.sampling.diffusion.ddpm_step``'s signature ``(z, eps_hat, k: int, table, noise)`` on top of the
    fused op ``kernels.ddpm_step.ddpm_step``: FastChains' default ``step_op``.

    Per table it packs the coefficients once and keeps the step indices 0..T−1 in device memory; step k
    passes the view ``ks[k]``, so each node of a captured loop reads its own fixed address. The first call
    (a warm-up, before any capture) does the packing; the table object is kept alive with its cache entry.
    """

    def __init__(self) -> None:
        # Imported here, not at module level: registering the ops imports Triton's compiler stack (when
        # installed), which the reference path never needs.
        from kernels.ddpm_step import ddpm_step, pack_sampler_table

        self._op, self._pack = ddpm_step, pack_sampler_table
        self._cache: dict[int, tuple[SamplerTable, Tensor, Tensor]] = {}

    def __call__(self, z: Tensor, eps_hat: Tensor, k: int, table: SamplerTable, noise: Tensor | None) -> Tensor:
        entry = self._cache.get(id(table))
        if entry is None:
            coeffs = self._pack(table)  # (T, 6) fp32
            ks = torch.arange(coeffs.shape[0], device=coeffs.device)  # (T,) int64
            entry = self._cache[id(table)] = (table, coeffs, ks)
        _, coeffs, ks = entry
        return self._op(z, eps_hat, coeffs, ks[k], noise)


class FastChains:
    """The same three loops with bf16 / compile / CUDA graphs as ``plan`` allows."""

    def __init__(self, learner: LoopState, plan: PerfPlan, update_op: UpdateOp | None = None,
                 step_op: StepOp | None = None) -> None:
        self.learner, self.plan = learner, plan
        self.device: torch.device = learner.device
        # The fused ops (kernels/): the Triton kernels or their plain-torch references, as
        # kernels.set_backend says (engine.runtime.system.apply_perf). Imported here, not at module level:
        # registering them imports Triton's compiler stack, which the reference path never needs.
        from kernels.langevin_update import langevin_update

        self.update_op: UpdateOp = update_op or langevin_update
        self.step_op = step_op or SamplerStep()
        self._graphs: dict[tuple[Any, ...], tuple[CapturedGraph, dict[str, Tensor]]] = {}
        nets = learner.nets
        if plan.channels_last:
            nets.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if nets.amortizer is not None:
                nets.amortizer.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                if learner.amortizer_ema is not None:
                    learner.amortizer_ema.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # Compile the energies (forward; AOTAutograd compiles their backward) and keep autograd.grad and the update
        # eager: Dynamo does not trace `requires_grad_()` in torch 2.11 (found on an H100), and the update is
        # either the fused kernel or three elementwise ops.
        self._post_energy = self._maybe_compile(self._posterior_energy)
        self._prior_energy = self._maybe_compile(self._prior_energy_fn)
        self._denoise = self._maybe_compile(self._denoise_fn)

    # -- building blocks ----------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.plan.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _maybe_compile(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if not self.plan.compile:
            return fn
        return torch.compile(fn, fullgraph=True, dynamic=False)

    def _posterior_energy(self, x: Tensor, zz: Tensor) -> Tensor:
        """Σ_b [‖x − G(z)‖²/(2σ²) + E(z)] (eq. 16 without ½‖z‖²), G in bf16, the rest fp32; x (B, C, H, W)."""
        lv = self.learner.cfg.langevin
        nets = self.learner.nets
        with self.autocast():
            xh = nets.generator(zz)
        rec = (x - xh.float()).flatten(1).pow(2).sum(dim=1) * (0.5 / (lv.likelihood_sigma ** 2))
        return (rec + nets.energy(zz)).sum()  # E in fp32: energies and reductions stay fp32

    def _prior_energy_fn(self, zz: Tensor) -> Tensor:
        """Σ_b E(z) (eq. 3 without ½‖z‖²; the MLP is tiny: fp32)."""
        return self.learner.nets.energy(zz).sum()

    def _post_step(self, x: Tensor, z: Tensor, eps: Tensor | None, step_size: float) -> Tensor:
        """One posterior step (eq. 16): the input gradient of the (compiled) energy, then the update."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._post_energy(x, zz), zz)
        return self.update_op(z, g, step_size, eps)

    def _prior_step(self, z: Tensor, eps: Tensor | None, step_size: float) -> Tensor:
        """One prior step (eq. 3)."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._prior_energy(zz), zz)
        return self.update_op(z, g, step_size, eps)

    def _denoise_fn(self, net: Amortizer, z: Tensor, lam: Tensor, xemb: Tensor) -> Tensor:
        with self.autocast():
            return net(z, lam, xemb).float()

    # -- loops (eager bodies; captured when plan.graphs) ------------------------------------------------------

    def _run(self, key: tuple[Any, ...], shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
             inputs: dict[str, Tensor], body: Callable[[dict[str, Tensor]], None],
             frozen: tuple[nn.Module, ...]) -> Tensor:
        """Run ``body`` on buffers holding ``inputs``; with graphs on, capture it once per key and replay."""
        if not self.plan.graphs:
            bufs = dict(inputs)
            body(bufs)
            return bufs["out"]
        if key not in self._graphs:
            bufs = {k: torch.empty(s, dtype=d, device=self.device) for k, (s, d) in shapes.items()}
            for k, v in inputs.items():
                bufs[k].copy_(v)
            self._graphs[key] = (CapturedGraph(lambda: body(bufs), self.device, frozen), bufs)
        graph, bufs = self._graphs[key]
        for k, v in inputs.items():
            bufs[k].copy_(v)
        graph.replay()
        return bufs["out"].clone()  # the static buffer is overwritten by the next replay

    def posterior(self, x: Tensor, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
                  with_noise: bool | None = None, rng: torch.Generator | None = None,
                  noise: Tensor | None = None) -> Tensor:
        """Eq. 16 from z0 (B, nz). ``noise`` (T, B, nz) fixes ε (tests); else fresh draws from the default
        device generator (``rng`` is not used: a captured graph can only replay the default generator)."""
        pc = self.learner.cfg.langevin.posterior
        return self._chain("posterior", *chain_args(pc, n_steps, step_size, with_noise), z0, noise, x=x)

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None,
              noise: Tensor | None = None) -> Tensor:
        """Eq. 3 from z0 (B, nz); see :meth:`posterior` for ``noise`` and ``rng``."""
        qc = self.learner.cfg.langevin.prior
        return self._chain("prior", *chain_args(qc, n_steps, step_size, with_noise), z0, noise)

    def _chain(self, kind: str, n_steps: int, step_size: float, with_noise: bool, z0: Tensor,
               noise: Tensor | None, x: Tensor | None = None) -> Tensor:
        fixed = noise is not None
        nets = self.learner.nets
        shapes = {"z": (tuple(z0.shape), z0.dtype), "out": (tuple(z0.shape), z0.dtype),
                  "noise": ((n_steps, *z0.shape), z0.dtype)}
        inputs = {"z": z0}
        if x is not None:
            shapes["x"] = (tuple(x.shape), x.dtype)
            inputs["x"] = x
        if noise is not None:
            inputs["noise"] = noise
        elif not self.plan.graphs:
            inputs["noise"] = torch.empty(n_steps, *z0.shape, device=self.device, dtype=z0.dtype)

        def body(b: dict[str, Tensor]) -> None:
            if with_noise and not fixed:
                b["noise"].normal_()  # default CUDA generator: graph-safe, fresh on every replay
            z = b["z"]
            for t in range(n_steps):
                eps = b["noise"][t] if with_noise else None
                if kind == "posterior":
                    z = self._post_step(b["x"], z, eps, step_size)
                else:
                    z = self._prior_step(z, eps, step_size)
            b["out"] = z if not self.plan.graphs else b["out"].copy_(z)

        key = (kind, n_steps, step_size, tuple(z0.shape), None if x is None else tuple(x.shape), fixed, with_noise)
        frozen = (nets.generator, nets.energy) if kind == "posterior" else (nets.energy,)
        return self._run(key, shapes, inputs, body, frozen)

    def cond_draw(self, net: Amortizer, x: Tensor, rng: torch.Generator | None = None, *,
                  noise: Tensor | None = None, z_init: Tensor | None = None) -> Tensor:
        """The 100-step conditional ancestral draw; ``z_init``/``noise`` fix the randomness (tests)."""
        return self._draw(net, x=x, n=x.shape[0], noise=noise, z_init=z_init)

    def uncond_draw(self, net: Amortizer, n: int, rng: torch.Generator | None = None, *,
                    noise: Tensor | None = None, z_init: Tensor | None = None, xi: Tensor | None = None) -> Tensor:
        """The unconditional (random null token) draw used for DAMC prior samples."""
        return self._draw(net, x=None, n=n, noise=noise, z_init=z_init, xi=xi)

    def _draw(self, net: Amortizer, *, x: Tensor | None, n: int, noise: Tensor | None,
              z_init: Tensor | None, xi: Tensor | None = None) -> Tensor:
        lr = self.learner
        table: SamplerTable = lr.table
        T, nz = table.n_steps, lr.cfg.model.nz
        with_noise = lr.cfg.diffusion.sampler_noise
        fixed = noise is not None
        f32 = torch.float32
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "z": ((n, nz), f32), "noise": ((T - 1, n, nz), f32), "out": ((n, nz), f32), "xi": ((n, nz), f32)}
        inputs: dict[str, Tensor] = {}
        if x is not None:
            shapes["x"] = (tuple(x.shape), x.dtype)
            inputs["x"] = x
        if fixed:
            assert z_init is not None and (x is not None or xi is not None)
            inputs["noise"], inputs["z"] = noise, z_init  # type: ignore[assignment]
            if xi is not None:
                inputs["xi"] = xi
        elif not self.plan.graphs:
            inputs.update(noise=torch.empty(T - 1, n, nz, device=self.device), z=torch.empty(n, nz, device=self.device),
                          xi=torch.empty(n, nz, device=self.device))

        def body(b: dict[str, Tensor]) -> None:
            if not fixed:  # draw order as the reference: [ξ], z_T, then the step noise
                if x is None:
                    b["xi"].normal_()
                b["z"].normal_()
                b["noise"].normal_()
            with torch.no_grad():
                with self.autocast():
                    xemb = net.cond_embedding(b["x"]) if x is not None else net.null_embedding(b["xi"])
                z = b["z"]
                lam = table.logsnr
                for k in range(T):
                    eps_hat = self._denoise(net, z, lam[k].expand(n), xemb)
                    eps = b["noise"][k] if (k < T - 1 and with_noise) else None
                    z = self.step_op(z, eps_hat, k, table, eps)
            b["out"] = z if not self.plan.graphs else b["out"].copy_(z)

        key = ("draw", id(net), x is not None, n, None if x is None else tuple(x.shape), fixed)
        return self._run(key, shapes, inputs, body, (net,))


def build_chains(learner: LoopState, plan: PerfPlan) -> ReferenceChains | FastChains:
    """The reference path for the reference plan, else the fast path with what the plan enables."""
    if plan.is_reference:
        return ReferenceChains(learner)
    return FastChains(learner, plan)
