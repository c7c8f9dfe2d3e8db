"""The fast path of the training iteration (paper eq. 3 / 5 / 16, spec §2-§3), and the choice between it and the
reference.

:class:`FastChains` computes the same maths with the speed-ups a :class:`~engine.runtime.perf.PerfPlan` enables:
  * bf16 autocast for G and the encoder, and for the U-Net unless ``amp_unet`` is off; z, the Langevin update,
    energies and reductions in fp32;
  * ``torch.compile(fullgraph=True)`` of the per-step functions (``autograd.grad`` stays eager) and of the
    amortizer loss (its backward through AOTAutograd);
  * each whole loop (30 posterior steps, 60 prior steps, the 100-step sampler, the M amortizer updates) captured
    once as a CUDA graph over static buffers and replayed; with ``iteration_graph`` the whole iteration is one
    graph instead (:mod:`engine.runtime.iteration`). Weights are never rebound (optimizers, the EMA update and
    ``load_state_dict`` write in place); an optimizer's ``load_state_dict`` replaces its state tensors, so it drops
    every graph and the next call captures again;
  * the hoisted sampler (:mod:`engine.runtime.sampler`): the U-Net's context for all steps at once, merged GEMMs,
    the last block's epilogue fused with the ancestral step (:mod:`kernels.ddpm_epilogue`);
  * with ``merge_unet``, the U-Net's forward in the amortizer loss (and the plain sampler loop) with the GEMMs that
    share an input merged (:mod:`engine.runtime.merged_unet`);
  * fused, capturable optimizers with device learning rates (:func:`engine.runtime.updates.make_capturable`);
  * G's first and last layers rewritten as the benchmark decides (:mod:`engine.runtime.convt`).

Randomness: every draw comes from the generator the call names (``rng``; the run's ``learner.rng`` when None),
as in the reference, so evaluation draws never move the training stream. A captured graph draws from a proxy
generator registered with it, bound to the caller's generator around each replay
(:class:`~engine.runtime.graphs.GeneratorProxy`). The fast path's noise is not the reference's (all M updates'
noise is drawn at once; graph-safe Philox offsets differ from eager ones), and bf16 changes the arithmetic:
equivalence is checked for fixed noise within bf16 tolerance, and on loss curves on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from engine.models import Amortizer
from engine.runtime.chains import IterationBody, LoopState, ReferenceChains, chain_args
from engine.runtime.convt import LastLayer, generator_forward
from engine.runtime.graphs import CapturedGraph, GeneratorProxy, Restorable, frozen
from engine.runtime.iteration import IterationGraphs, SideStreams
from engine.runtime.merged_unet import merged_unet_forward
from engine.runtime.perf import PerfPlan
from engine.runtime.sampler import draw_context, fused_unet_step, pack_unet, unet_trunk
from engine.runtime.updates import (
    StateSnapshot,
    UpdateNoise,
    amortizer_updates_given,
    fill_update_noise_,
    losses_per_update,
    make_capturable,
    optimizer_step,
    q_loss_given,
)
from engine.sampling.diffusion import SamplerTable

__all__ = ["FastChains", "SamplerStep", "UpdateOp", "build_chains"]

UpdateOp = Callable[[Tensor, Tensor, float, "Tensor | None"], Tensor]
StepOp = Callable[[Tensor, Tensor, int, SamplerTable, "Tensor | None"], Tensor]
Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]
Body = Callable[[dict[str, Tensor], torch.Generator], None]


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

    def tables(self, table: SamplerTable) -> tuple[Tensor, Tensor]:
        """(coefficients (T, 6) fp32, step indices (T,) int64), both on the table's device."""
        entry = self._cache.get(id(table))
        if entry is None:
            coeffs = self._pack(table)  # (T, 6) fp32
            ks = torch.arange(coeffs.shape[0], device=coeffs.device)  # (T,) int64
            entry = self._cache[id(table)] = (table, coeffs, ks)
        return entry[1], entry[2]

    def __call__(self, z: Tensor, eps_hat: Tensor, k: int, table: SamplerTable, noise: Tensor | None) -> Tensor:
        coeffs, ks = self.tables(table)
        return self._op(z, eps_hat, coeffs, ks[k], noise)


def _emit(b: dict[str, Tensor], name: str, value: Tensor) -> None:
    """An output: copied into its static buffer when the region is captured, else handed over as it is."""
    if name in b:
        b[name].copy_(value)
    else:
        b[name] = value


class _Precision:
    """The amortizer with each part under its own autocast: the encoder and null token follow ``amp``, the U-Net
    ``amp_unet`` (latency-bound: bf16 may not pay); the U-Net's GEMMs merged with ``merged``. Satisfies
    :class:`engine.sampling.draws.AmortizerNet`."""

    def __init__(self, net: Amortizer, embed: Callable[[], Any], unet: Callable[[], Any], merged: bool = False) -> None:
        self.net, self._embed, self._unet, self._merged = net, embed, unet, merged

    def cond_embedding(self, x: Tensor) -> Tensor:
        with self._embed():
            return self.net.cond_embedding(x)

    def null_embedding(self, xi: Tensor) -> Tensor:
        with self._embed():
            return self.net.null_embedding(xi)

    def __call__(self, z: Tensor, logsnr: Tensor, xemb: Tensor) -> Tensor:
        with self._unet():
            return _unet_forward(self.net, z, logsnr, xemb, self._merged)


class FastChains:
    """The iteration's loops and updates with bf16 / compile / CUDA graphs / fused kernels as ``plan`` allows."""

    def __init__(self, learner: LoopState, plan: PerfPlan, update_op: UpdateOp | None = None,
                 step_op: StepOp | None = None) -> None:
        self.learner, self.plan = learner, plan
        self.device: torch.device = learner.device
        # The fused ops (kernels/): the Triton kernels or their plain-torch references, as
        # kernels.set_backend says (engine.runtime.system.apply_perf). Imported here, not at module level:
        # registering them imports Triton's compiler stack, which the reference path never needs.
        from kernels.ddpm_epilogue import ddpm_epilogue
        from kernels.langevin_update import langevin_update

        self.update_op: UpdateOp = update_op or langevin_update
        self._sampler_step = SamplerStep()
        self.step_op: StepOp = step_op or self._sampler_step
        self._epilogue = ddpm_epilogue
        self._graphs: dict[tuple[Any, ...], tuple[CapturedGraph, dict[str, Tensor]]] = {}
        self._proxy = GeneratorProxy(self.device) if plan.graphs else None
        self._iteration = IterationGraphs(learner)
        self._streams = SideStreams(self.device, plan.side_streams, lambda: self._iteration.capturing)
        nets = learner.nets
        if plan.channels_last:
            nets.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            for q in (nets.amortizer, learner.amortizer_ema):
                if q is not None:
                    q.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if plan.fused_optim:
            # G's LR stays a float: engine.run.train logs `opt_g.param_groups[0]["lr"]` into JSON as it is. The
            # iteration graph bakes it in and is captured again when it decays (every lr_decay_every iterations).
            for opt in (learner.opt_g, learner.opt_e, learner.opt_q):
                if opt is not None:
                    make_capturable(opt, self.device, on_load=self.invalidate_graphs,
                                    device_lr=opt is not learner.opt_g)
        self._g: Callable[[Tensor], Tensor] = functools.partial(
            generator_forward, nets.generator, gemm_first=plan.g_gemm_first, last=_last(plan.g_last))
        # Compile the energies (forward; AOTAutograd compiles their backward) and keep autograd.grad and the update
        # eager: Dynamo does not trace `requires_grad_()` in torch 2.11 (found on an H100), and the update is
        # either the fused kernel or three elementwise ops.
        self._post_energy = self._maybe_compile(self._posterior_energy)
        self._prior_energy = self._maybe_compile(self._prior_energy_fn)
        self._denoise = self._maybe_compile(self._denoise_fn)
        self._q_loss = self._maybe_compile(self._q_loss_fn)
        self._trunk = self._maybe_compile(unet_trunk)
        self._fused_step = self._maybe_compile(fused_unet_step)

    # -- building blocks ----------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.plan.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _unet_autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.plan.unet_bf16:
            return torch.autocast(self.device.type, enabled=False) if self.plan.amp else contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _maybe_compile(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if not self.plan.compile:
            return fn
        mode = None if self.plan.compile_mode == "default" else self.plan.compile_mode
        if not self.plan.combo_kernels:
            return torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        # torch.compile takes a mode or options, not both: the mode's options plus horizontal fusion
        options = {**(torch._inductor.list_mode_options(mode) if mode else {}), "combo_kernels": True}
        return torch.compile(fn, fullgraph=True, dynamic=False, options=options)

    def generator(self, z: Tensor) -> Tensor:
        """G(z) with the plan's layer rewrites; the caller decides autocast (as for ``nets.generator``)."""
        return self._g(z)

    def _posterior_energy(self, x: Tensor, zz: Tensor) -> Tensor:
        """Σ_b [‖x − G(z)‖²/(2σ²) + E(z)] (eq. 16 without ½‖z‖²), G in bf16, the rest fp32; x (B, C, H, W)."""
        lv = self.learner.cfg.langevin
        with self.autocast():
            xh = self._g(zz)
        rec = (x - xh.float()).flatten(1).pow(2).sum(dim=1) * (0.5 / (lv.likelihood_sigma ** 2))
        return (rec + self.learner.nets.energy(zz)).sum()  # E in fp32: energies and reductions stay fp32

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
        with self._unet_autocast():
            return _unet_forward(net, z, lam, xemb, self.plan.merge_unet).float()

    def _q_loss_fn(self, z: Tensor, x: Tensor, keep: Tensor, xi: Tensor, u: Tensor, eps: Tensor) -> Tensor:
        net = self.learner.nets.amortizer
        assert net is not None
        return q_loss_given(_Precision(net, self.autocast, self._unet_autocast, self.plan.merge_unet), z, x, keep,
                            xi, u, eps, self.learner.cfg.diffusion)

    # -- regions: eager, inside the iteration graph, or captured on their own -----------------------------------

    def invalidate_graphs(self) -> None:
        """Drop every captured graph (an optimizer's state tensors were replaced); the next call captures again."""
        self._graphs.clear()
        self._iteration.clear()

    def _run(self, key: tuple[Any, ...], shapes: Shapes, inputs: dict[str, Tensor], body: Body,
             freeze: tuple[nn.Module, ...], rng: torch.Generator, outputs: Sequence[str] = ("out",),
             state: Callable[[], Restorable] | None = None, capturable: bool = True) -> dict[str, Tensor]:
        """Run ``body(buffers, generator)`` and return its ``outputs``.

        Eager when graphs are off (or the region cannot be captured: an optimizer step that is not capturable);
        as part of the enclosing capture inside the iteration graph; else captured once per ``key`` over static
        buffers and replayed, the caller's ``rng`` bound to the graph's proxy generator around the replay.
        """
        inside = self._iteration.capturing
        if inside or not self.plan.graphs or not capturable:
            bufs = dict(inputs)
            for k, (shape, dtype) in shapes.items():
                if k not in bufs and k not in outputs:
                    bufs[k] = torch.empty(shape, dtype=dtype, device=self.device)
            # Frozen as in a capture: a chain needs ∂/∂z only. With G's and E's weights still requiring grad, the
            # compiled energy's backward (AOTAutograd: every differentiable input) also computed their gradients,
            # and on CUDA hit an Inductor stride assertion in convolution_backward (bench.profile, H200).
            with frozen(*freeze):
                body(bufs, rng)
            return {k: bufs[k] for k in outputs}
        assert self._proxy is not None
        gen = self._proxy.generator
        if key not in self._graphs:
            bufs = {k: torch.empty(s, dtype=d, device=self.device) for k, (s, d) in shapes.items()}
            for k, v in inputs.items():
                bufs[k].copy_(v)
            graph = CapturedGraph(functools.partial(body, bufs, gen), self.device, freeze, generators=(gen,),
                                  state=state)
            self._graphs[key] = (graph, bufs)
        graph, bufs = self._graphs[key]
        for k, v in inputs.items():
            bufs[k].copy_(v)
        with self._proxy.bound(rng):
            graph.replay()
        return {k: bufs[k].clone() for k in outputs}  # the static buffers are overwritten by the next replay

    def run_iteration(self, body: IterationBody, x: Tensor) -> dict[str, Tensor]:
        """Steps 1-7: one CUDA graph with ``iteration_graph`` (captured on first use), else ``body(x)``."""
        if not self.plan.iteration_graph:
            return body(x)
        return self._iteration.run(body, x, self._streams.join)

    # -- the loops ----------------------------------------------------------------------------------------------

    def posterior(self, x: Tensor, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
                  with_noise: bool | None = None, rng: torch.Generator | None = None,
                  noise: Tensor | None = None) -> Tensor:
        """Eq. 16 from z0 (B, nz). ``noise`` (T, B, nz) fixes ε (tests); else drawn from ``rng`` (the run's
        generator when None). Inside the iteration graph with side streams, it runs beside the prior chain."""
        pc = self.learner.cfg.langevin.posterior
        args = chain_args(pc, n_steps, step_size, with_noise)
        with self._streams.fork(x, z0) as hand_back:
            return hand_back(self._chain("posterior", *args, z0, noise, rng, x=x))

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None,
              noise: Tensor | None = None) -> Tensor:
        """Eq. 3 from z0 (B, nz); see :meth:`posterior` for ``noise`` and ``rng``."""
        qc = self.learner.cfg.langevin.prior
        z = self._chain("prior", *chain_args(qc, n_steps, step_size, with_noise), z0, noise, rng)
        self._streams.join()  # whatever forked before (the posterior) is needed from here on
        return z

    def _chain(self, kind: str, n_steps: int, step_size: float, with_noise: bool, z0: Tensor,
               noise: Tensor | None, rng: torch.Generator | None, x: Tensor | None = None) -> Tensor:
        fixed = noise is not None
        nets = self.learner.nets
        shapes: Shapes = {"z": (tuple(z0.shape), z0.dtype), "out": (tuple(z0.shape), z0.dtype),
                          "noise": ((n_steps, *z0.shape), z0.dtype)}
        inputs = {"z": z0}
        if x is not None:
            shapes["x"] = (tuple(x.shape), x.dtype)
            inputs["x"] = x
        if noise is not None:
            inputs["noise"] = noise

        def body(b: dict[str, Tensor], gen: torch.Generator) -> None:
            if with_noise and not fixed:
                b["noise"].normal_(generator=gen)
            z = b["z"]
            for t in range(n_steps):
                eps = b["noise"][t] if with_noise else None
                if kind == "posterior":
                    z = self._post_step(b["x"], z, eps, step_size)
                else:
                    z = self._prior_step(z, eps, step_size)
            _emit(b, "out", z)

        key = (kind, n_steps, step_size, tuple(z0.shape), None if x is None else tuple(x.shape), fixed, with_noise)
        frz = (nets.generator, nets.energy) if kind == "posterior" else (nets.energy,)
        return self._run(key, shapes, inputs, body, frz, rng or self.learner.rng)["out"]

    def cond_draw(self, net: Amortizer, x: Tensor, rng: torch.Generator | None = None, *,
                  noise: Tensor | None = None, z_init: Tensor | None = None) -> Tensor:
        """The 100-step conditional ancestral draw; ``z_init``/``noise`` fix the randomness (tests)."""
        return self._draw(net, x=x, n=x.shape[0], rng=rng, noise=noise, z_init=z_init)["out"]

    def uncond_draw(self, net: Amortizer, n: int, rng: torch.Generator | None = None, *,
                    noise: Tensor | None = None, z_init: Tensor | None = None, xi: Tensor | None = None) -> Tensor:
        """The unconditional (random null token) draw used for DAMC prior samples."""
        return self._draw(net, x=None, n=n, rng=rng, noise=noise, z_init=z_init, xi=xi)["out"]

    def prior_images(self, net: Amortizer, n: int, rng: torch.Generator, *, noise: Tensor | None = None,
                     z_init: Tensor | None = None, xi: Tensor | None = None) -> Tensor:
        """The unconditional draw and G (bf16 with amp) in one region: one graph replay per call."""
        return self._draw(net, x=None, n=n, rng=rng, noise=noise, z_init=z_init, xi=xi, decode=True)["img"]

    def _draw(self, net: Amortizer, *, x: Tensor | None, n: int, rng: torch.Generator | None,
              noise: Tensor | None, z_init: Tensor | None, xi: Tensor | None = None,
              decode: bool = False) -> dict[str, Tensor]:
        lr = self.learner
        table: SamplerTable = lr.table
        T, nz = table.n_steps, lr.cfg.model.nz
        with_noise = lr.cfg.diffusion.sampler_noise
        fixed = noise is not None
        f32 = torch.float32
        shapes: Shapes = {"z": ((n, nz), f32), "noise": ((T - 1, n, nz), f32), "out": ((n, nz), f32),
                          "xi": ((n, nz), f32)}
        outputs = ["out"]
        if decode:
            shapes["img"] = ((n, *lr.nets.generator.image_shape), f32)
            outputs.append("img")
        inputs: dict[str, Tensor] = {}
        if x is not None:
            shapes["x"] = (tuple(x.shape), x.dtype)
            inputs["x"] = x
        if fixed:
            assert z_init is not None and (x is not None or xi is not None)
            inputs["noise"], inputs["z"] = noise, z_init  # type: ignore[assignment]
            if xi is not None:
                inputs["xi"] = xi

        def body(b: dict[str, Tensor], gen: torch.Generator) -> None:
            if not fixed:  # draw order as the reference: [ξ], z_T, then the step noise
                if x is None:
                    b["xi"].normal_(generator=gen)
                b["z"].normal_(generator=gen)
                b["noise"].normal_(generator=gen)
            with torch.no_grad():
                with self.autocast():
                    xemb = net.cond_embedding(b["x"]) if x is not None else net.null_embedding(b["xi"])
                step_noise = [b["noise"][k] if (k < T - 1 and with_noise) else None for k in range(T)]
                z = (self._hoisted_loop if self.plan.hoist_sampler else self._plain_loop)(net, b["z"], xemb,
                                                                                            step_noise)
                _emit(b, "out", z)
                if decode:
                    with self.autocast():
                        _emit(b, "img", self._g(z).float())

        key = ("draw", id(net), x is not None, n, None if x is None else tuple(x.shape), fixed, decode)
        frz = (net, lr.nets.generator) if decode else (net,)
        return self._run(key, shapes, inputs, body, frz, rng or lr.rng, outputs)

    def _plain_loop(self, net: Amortizer, z: Tensor, xemb: Tensor, noise: list[Tensor | None]) -> Tensor:
        """T × (U-Net, ancestral step): the module's forward per step."""
        table = self.learner.table
        lam = table.logsnr
        for k in range(table.n_steps):
            eps_hat = self._denoise(net, z, lam[k].expand(z.shape[0]), xemb)
            z = self.step_op(z, eps_hat, k, table, noise[k])
        return z

    def _hoisted_loop(self, net: Amortizer, z: Tensor, xemb: Tensor, noise: list[Tensor | None]) -> Tensor:
        """T × (the U-Net's z path, fused epilogue + step), the context for all T steps computed first."""
        table = self.learner.table
        dtype = torch.bfloat16 if self.plan.unet_bf16 else torch.float32
        packed = pack_unet(net.unet, dtype)  # weights cast once per draw, from the live fp32 weights
        ctx = draw_context(net.unet, table.logsnr, xemb, dtype)  # [(T, B, out)] × 7
        coeffs, ks = self._sampler_step.tables(table)
        gates, biases = [g for g, _ in ctx], [b for _, b in ctx]
        for k in range(table.n_steps):
            if self.plan.sampler_kernel:  # one kernel per block (kernels/squash_block.py)
                z = self._fused_step(z, ks[k], packed.fourier_b, packed.w_ls, packed.b_ls, gates, biases, coeffs,
                                     noise[k], packed.residual)
                continue
            y = self._trunk(z, ks[k], packed.fourier_b, packed.w_ls, packed.b_ls, gates[:6], biases[:6])
            z = self._epilogue(z, y, gates[6][k], biases[6][k], coeffs, ks[k], noise[k], packed.residual)
        return z

    # -- the amortizer updates ----------------------------------------------------------------------------------

    def amortizer_updates(self, x: Tensor, z_pos: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """The M updates with all their noise drawn at once (from the run's generator), the loss compiled, the
        whole region one graph when the optimizer is capturable; beside G and E with side streams."""
        lr = self.learner
        d, net, opt = lr.cfg.diffusion, lr.nets.amortizer, lr.opt_q
        assert net is not None and opt is not None
        m, n_loss = d.updates_per_iter, losses_per_update(d)
        b, nz = z_pos.shape
        clip = lr.cfg.optim.grad_clip

        def body(bufs: dict[str, Tensor], gen: torch.Generator) -> None:
            noise = fill_update_noise_(UpdateNoise(bufs["xi"], bufs["u"], bufs["eps"]), gen)
            mean, norm = amortizer_updates_given(self._q_loss, opt, net, bufs["z"], bufs["x"], bufs["keep"], noise,
                                                 clip, step=functools.partial(optimizer_step, sync=lr.grad_sync))
            _emit(bufs, "loss", mean)
            _emit(bufs, "norm", norm)

        f32 = torch.float32
        shapes: Shapes = {"x": (tuple(x.shape), x.dtype), "z": ((b, nz), f32), "keep": ((b,), keep.dtype),
                          "xi": ((m, n_loss, b, nz), f32), "u": ((m, n_loss, b), f32),
                          "eps": ((m, n_loss, b, nz), f32), "loss": ((), f32), "norm": ((), f32)}
        key = ("q_updates", tuple(x.shape), b, nz, m, n_loss)
        inputs = {"x": x, "z": z_pos, "keep": keep}
        # The gradient all-reduce of several processes stays outside captured regions (issue 16): then the updates
        # run eagerly (fused optimizer still), between the captured chains and sampler.
        capturable = bool(getattr(opt, "_damc_capturable", False)) and lr.grad_sync is None
        with self._streams.fork(x, z_pos, keep) as hand_back:
            out = self._run(key, shapes, inputs, body, (), lr.rng, ("loss", "norm"),
                            state=lambda: StateSnapshot([net], [opt]), capturable=capturable)
            return hand_back(out["loss"]), hand_back(out["norm"])


def _unet_forward(net: Amortizer, z: Tensor, logsnr: Tensor, xemb: Tensor, merged: bool) -> Tensor:
    """ε̂ (B, nz): the module's forward, or the same maths with merged GEMMs (``perf.merge_unet``)."""
    return merged_unet_forward(net.unet, z, logsnr, xemb) if merged else net(z, logsnr, xemb)


def _last(mode: str) -> LastLayer:
    if mode not in ("convt", "convt_pad", "conv_pad"):
        raise ValueError(f"perf.g_last = {mode!r}: expected convt, convt_pad or conv_pad")
    return mode  # type: ignore[return-value]


def build_chains(learner: LoopState, plan: PerfPlan) -> ReferenceChains | FastChains:
    """The reference path for the reference plan, else the fast path with what the plan enables."""
    if plan.is_reference:
        return ReferenceChains(learner)
    return FastChains(learner, plan)
