"""How the training iteration runs its three loops: the amortizer draw, the posterior and the prior chain.

:class:`ReferenceChains` is the faithful eager fp32 path: it calls the pure functions of
``engine.learner`` / ``engine.langevin`` / ``engine.diffusion`` with the run's device generator.

:class:`FastChains` computes the same maths (paper eq. 3 / 16, spec §2) with the speed-ups a
:class:`~engine.perf.PerfPlan` enables:
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
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from engine.diffusion import SamplerTable
from engine.perf import PerfPlan

UpdateOp = Callable[[Tensor, Tensor, float, "Tensor | None"], Tensor]


class ReferenceChains:
    """Eager fp32, the authors' arithmetic; every draw from the run's generator in the authors' order."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cond_draw(self, net: nn.Module, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The conditional ancestral draw z ~ Q(z | x), (B, nz)."""
        from engine.learner import amortizer_sample

        lr = self.learner
        return amortizer_sample(net, lr.table, rng or lr.rng, x=x, nz=lr.cfg.model.nz,
                                with_noise=lr.cfg.diffusion.sampler_noise)

    def uncond_draw(self, net: nn.Module, n: int, rng: torch.Generator | None = None) -> Tensor:
        """The unconditional (random null token) draw: DAMC prior samples, (n, nz)."""
        from engine.learner import amortizer_sample

        lr = self.learner
        return amortizer_sample(net, lr.table, rng or lr.rng, n=n, nz=lr.cfg.model.nz,
                                with_noise=lr.cfg.diffusion.sampler_noise)

    def posterior(self, x: Tensor, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
                  with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on eq. 16 from z0; unset arguments take the training chain's config."""
        from engine.learner import posterior_chain

        lr, lv = self.learner, self.learner.cfg.langevin
        n_steps, step_size, with_noise = _chain_args(lv.posterior, n_steps, step_size, with_noise)
        return posterior_chain(lr.nets, x, z0, lv.likelihood_sigma, n_steps, step_size, with_noise, rng or lr.rng)

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Langevin on eq. 3 from z0; unset arguments take the training chain's config."""
        from engine.learner import prior_chain

        lr = self.learner
        n_steps, step_size, with_noise = _chain_args(lr.cfg.langevin.prior, n_steps, step_size, with_noise)
        return prior_chain(lr.nets, z0, n_steps, step_size, with_noise, rng or lr.rng)


def _chain_args(chain_cfg: Any, n_steps: int | None, step_size: float | None,
                with_noise: bool | None) -> tuple[int, float, bool]:
    return (chain_cfg.n_steps if n_steps is None else n_steps,
            chain_cfg.step_size if step_size is None else step_size,
            chain_cfg.noise if with_noise is None else with_noise)


# ---------------------------------------------------------------------------------------------------------
# The fast path


def _requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


@contextlib.contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters out of autograd while a loop is captured: no weight-gradient residuals are recorded."""
    flags = [p.requires_grad for m in modules for p in m.parameters()]
    _requires_grad(modules, False)
    try:
        yield
    finally:
        params = [p for m in modules for p in m.parameters()]
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


class _Captured:
    """One CUDA graph around ``body`` (which reads and writes static tensors only).

    Warm-up runs on the capture stream (compilation, cudnn autotuning and Triton JIT happen there, never
    during capture), the RNG state is restored afterwards so that capturing consumes no randomness, and the
    graph is captured on the same stream it was warmed on (stale-stream autograd errors otherwise).
    """

    def __init__(self, body: Callable[[], None], device: torch.device, frozen: tuple[nn.Module, ...],
                 warmup: int = 2) -> None:
        rng_state = torch.cuda.get_rng_state(device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with _frozen(*frozen), torch.cuda.stream(stream):
            for _ in range(warmup):
                body()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                body()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.set_rng_state(rng_state, device)

    def replay(self) -> None:
        self.graph.replay()


class FastChains:
    """The same three loops with bf16 / compile / CUDA graphs as ``plan`` allows."""

    def __init__(self, learner: Any, plan: PerfPlan, update_op: UpdateOp | None = None,
                 step_op: Callable[..., Tensor] | None = None) -> None:
        self.learner, self.plan = learner, plan
        self.device: torch.device = learner.device
        # The fused ops (kernels/): the Triton kernels or their plain-torch references, as
        # kernels.set_backend says (engine.system.apply_perf). Imported here, not at module level:
        # registering them imports Triton's compiler stack, which the reference path never needs.
        from kernels.ddpm_step import SamplerStep
        from kernels.langevin_update import langevin_update

        self.update_op: UpdateOp = update_op or langevin_update
        self.step_op = step_op or SamplerStep()
        self._graphs: dict[tuple[Any, ...], tuple[_Captured, dict[str, Tensor]]] = {}
        nets = learner.nets
        if plan.channels_last:
            nets.generator.to(memory_format=torch.channels_last)
            if nets.amortizer is not None:
                nets.amortizer.encoder.to(memory_format=torch.channels_last)
                if learner.amortizer_ema is not None:
                    learner.amortizer_ema.encoder.to(memory_format=torch.channels_last)
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

    def _denoise_fn(self, net: nn.Module, z: Tensor, lam: Tensor, xemb: Tensor) -> Tensor:
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
            self._graphs[key] = (_Captured(lambda: body(bufs), self.device, frozen), bufs)
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
        return self._chain("posterior", *_chain_args(pc, n_steps, step_size, with_noise), z0, noise, x=x)

    def prior(self, z0: Tensor, *, n_steps: int | None = None, step_size: float | None = None,
              with_noise: bool | None = None, rng: torch.Generator | None = None,
              noise: Tensor | None = None) -> Tensor:
        """Eq. 3 from z0 (B, nz); see :meth:`posterior` for ``noise`` and ``rng``."""
        qc = self.learner.cfg.langevin.prior
        return self._chain("prior", *_chain_args(qc, n_steps, step_size, with_noise), z0, noise)

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
        if fixed:
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

    def cond_draw(self, net: nn.Module, x: Tensor, rng: torch.Generator | None = None, *,
                  noise: Tensor | None = None, z_init: Tensor | None = None) -> Tensor:
        """The 100-step conditional ancestral draw; ``z_init``/``noise`` fix the randomness (tests)."""
        return self._draw(net, x=x, n=x.shape[0], noise=noise, z_init=z_init)

    def uncond_draw(self, net: nn.Module, n: int, rng: torch.Generator | None = None, *,
                    noise: Tensor | None = None, z_init: Tensor | None = None, xi: Tensor | None = None) -> Tensor:
        """The unconditional (random null token) draw used for DAMC prior samples."""
        return self._draw(net, x=None, n=n, noise=noise, z_init=z_init, xi=xi)

    def _draw(self, net: nn.Module, *, x: Tensor | None, n: int, noise: Tensor | None,
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


def build_chains(learner: Any, plan: PerfPlan) -> ReferenceChains | FastChains:
    """The reference path for the reference plan, else the fast path with what the plan enables."""
    if plan.is_reference:
        return ReferenceChains(learner)
    return FastChains(learner, plan)
