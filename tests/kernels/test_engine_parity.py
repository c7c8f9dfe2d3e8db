"""The engine's chains and sampler give the same results with kernels on and off for the same ε.

(1) Loops that call the public ops exactly as ``engine.sampling.langevin.langevin_chain`` and
``engine.sampling.diffusion.ancestral_sample`` do, against those engine functions (the reference maths).
(2) The engine's fast path, ``engine.runtime.fast.FastChains`` (posterior, prior, conditional draw), with the ops in
its ``update_op`` / ``step_op`` hooks under the "triton" backend, against the same object under "torch", with
spies that prove the kernels ran. Once FastChains uses the ops by default (kernels/README.md, "Engine"), the
test runs the defaults instead of passing the hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from kernel_support import DEVICE, NOISE_ATOL, exact_expected
from torch import nn

import kernels.ddpm_step as kds
import kernels.langevin_update as klu
from engine.sampling.diffusion import SamplerTable, ancestral_sample, sampler_table
from engine.sampling.langevin import energy_grad, langevin_chain, posterior_energy, prior_energy
from kernels.backend import use_backend
from kernels.philox_noise import philox_seed_offset

B, NZ, N_STEPS, T = 7, 8, 12, 20
# A chain amplifies per-step rounding through ∇V; on GPU (FMA contraction) allow 1e-4, under the interpreter
# the kernel rounds like torch and the chains must agree bitwise.
CHAIN_ATOL = 0.0 if exact_expected() else 1e-4


def _assert_chain_equal(got: torch.Tensor, want: torch.Tensor, extra_atol: float = 0.0) -> None:
    if CHAIN_ATOL == 0.0 and extra_atol == 0.0:
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0, atol=CHAIN_ATOL + extra_atol)


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    energy = nn.Sequential(nn.Linear(NZ, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Flatten(0)).to(DEVICE)
    generator = nn.Sequential(nn.Linear(NZ, 12), nn.Tanh()).to(DEVICE)
    return energy, generator


def _grad_fns(nets: tuple[nn.Module, nn.Module]) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]]:
    energy, generator = nets
    x = torch.rand(B, 12, generator=torch.Generator().manual_seed(1)).to(DEVICE) * 2 - 1
    prior, post = prior_energy(energy), posterior_energy(generator, energy, x, 0.1)
    return {"prior": (lambda z: energy_grad(prior, z), 0.4), "posterior": (lambda z: energy_grad(post, z), 0.1)}


def _op_chain(z: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor], step_size: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """langevin_chain's loop with the public op for the update (what the engine will run)."""
    for t in range(N_STEPS):
        z = klu.langevin_update(z, grad_fn(z), step_size, None if noise is None else noise[t])
    return z


def _denoise(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, NZ * NZ, device=z.device).reshape(NZ, NZ)
    return torch.tanh(z @ w + 0.05 * lam[:, None])  # (B, nz), smooth in both inputs


def _op_sampler(z: torch.Tensor, table: SamplerTable, noise: torch.Tensor | None) -> torch.Tensor:
    """ancestral_sample's loop with the public op for the step: packed table, step index on the device."""
    packed, ks, lam = kds.pack_sampler_table(table), torch.arange(T, device=z.device), table.logsnr
    for k in range(T):
        eps_hat = _denoise(z, lam[k].expand(z.shape[0]))
        z = kds.ddpm_step(z, eps_hat, packed, ks[k], None if noise is None or k == T - 1 else noise[k])
    return z


@pytest.mark.parametrize("chain", ["prior", "posterior"])
@pytest.mark.parametrize("with_noise", [True, False])
def test_op_chain_equals_engine_chain(triton_backend: None, nets: Any, chain: str, with_noise: bool) -> None:
    grad_fn, s = _grad_fns(nets)[chain]
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(B, NZ, generator=g).to(DEVICE)
    noise = torch.randn(N_STEPS, B, NZ, generator=g).to(DEVICE) if with_noise else None
    want = langevin_chain(z0, grad_fn, N_STEPS, s, noise=noise, with_noise=with_noise)
    _assert_chain_equal(_op_chain(z0, grad_fn, s, noise), want)


@pytest.mark.parametrize("with_noise", [True, False])
def test_op_sampler_equals_engine_sampler(triton_backend: None, with_noise: bool) -> None:
    table = sampler_table(T).to(DEVICE)
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(B, NZ, generator=g).to(DEVICE)
    noise = torch.randn(T - 1, B, NZ, generator=g).to(DEVICE)
    want = ancestral_sample(_denoise, z0, table, noise=noise, with_noise=with_noise)
    _assert_chain_equal(_op_sampler(z0, table, noise if with_noise else None), want)


def test_philox_chain_kernels_on_off(triton_backend: None, nets: Any) -> None:
    """With in-kernel noise, the CPU reference reproduces the kernel's chain (same Philox stream), so
    kernels on/off stay comparable even on the graph-safe path."""
    grad_fn, s = _grad_fns(nets)["prior"]
    z0 = torch.randn(B, NZ, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    seed_offset = philox_seed_offset(torch.Generator(device=DEVICE).manual_seed(5), DEVICE)
    steps = torch.arange(N_STEPS, device=DEVICE)

    def run() -> torch.Tensor:
        z = z0
        for t in range(N_STEPS):
            z = klu.langevin_update_philox(z, grad_fn(z), s, seed_offset, steps[t])
        return z

    on = run()
    with use_backend("torch"):
        off = run()
    _assert_chain_equal(on, off, extra_atol=N_STEPS * s * NOISE_ATOL)


def _count_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, launcher: str) -> list[int]:
    calls = [0]
    original = getattr(module, launcher)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, launcher, spy)
    return calls


FAST_TINY = ["model.nz=4", "model.ngf=4", "model.nif=4", "model.nemb=8", "model.unet_nf=1", "model.ntemb=8",
             "train.batch_size=6", "diffusion.n_steps=6", "langevin.posterior.n_steps=3",
             "langevin.prior.n_steps=4"]


def test_fast_chains_hooks_kernels_on_off(triton_backend: None) -> None:
    """The engine's fast path with the kernels on equals it with the references (``torch`` backend, bitwise
    the engine's own functions) for the same ε; the reference's equality with the engine's pure functions is
    tests/test_chains.py's business."""
    chains = pytest.importorskip("engine.runtime.fast")
    from engine.config import load_config
    from engine.learners import build_learner
    from engine.runtime import system
    from engine.runtime.perf import PerfPlan

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", FAST_TINY)
    system.seed_init(0)
    learner = build_learner(cfg, DEVICE, system.make_generator(DEVICE, 0))
    b, nz, T_ = cfg.train.batch_size, cfg.model.nz, cfg.diffusion.n_steps
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    x, z0 = (torch.rand(b, 1, 8, 8, generator=g) * 2 - 1).to(DEVICE), r(b, nz)
    post_noise, prior_noise = r(cfg.langevin.posterior.n_steps, b, nz), r(cfg.langevin.prior.n_steps, b, nz)
    draw_noise, z_T = r(T_ - 1, b, nz), r(b, nz)

    def loops(fast: object) -> list[torch.Tensor]:
        return [fast.posterior(x, z0, noise=post_noise), fast.prior(z0, noise=prior_noise),  # type: ignore[attr-defined]
                fast.cond_draw(learner.nets.amortizer, x, noise=draw_noise, z_init=z_T)]  # type: ignore[attr-defined]

    wired = chains.FastChains(learner, PerfPlan()).update_op is klu.langevin_update
    hooks: dict[str, Any] = {} if wired else {"update_op": klu.langevin_update, "step_op": chains.SamplerStep()}
    with use_backend("torch"):
        off = loops(chains.FastChains(learner, PerfPlan(kernels=True), **hooks))
    on_chains = chains.FastChains(learner, PerfPlan(kernels=True), **hooks)
    with pytest.MonkeyPatch.context() as mp:
        launches = _count_launches(mp, klu, "_langevin_update_triton")
        draws = _count_launches(mp, kds, "_ddpm_step_triton")
        on = loops(on_chains)
    assert launches[0] == cfg.langevin.posterior.n_steps + cfg.langevin.prior.n_steps and draws[0] == T_
    for got, want in zip(on, off, strict=True):
        _assert_chain_equal(got, want)


def test_fast_chains_sampler_kernel_on_off(triton_backend: None) -> None:
    """``perf.sampler_kernel``: the hoisted draw with kernels.squash_block's kernel (one launch per U-Net block, the
    last with the step) against the same draw with the ops' references, for the same ε; a spy proves 7 launches a
    step ran."""
    import kernels.squash_block as ksb
    from engine.config import load_config
    from engine.learners import build_learner
    from engine.runtime import system
    from engine.runtime.fast import FastChains
    from engine.runtime.perf import PerfPlan

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", FAST_TINY)
    system.seed_init(0)
    learner = build_learner(cfg, DEVICE, system.make_generator(DEVICE, 0))
    b, nz, T_ = cfg.train.batch_size, cfg.model.nz, cfg.diffusion.n_steps
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(b, 1, 8, 8, generator=g) * 2 - 1).to(DEVICE)
    noise, z_T = torch.randn(T_ - 1, b, nz, generator=g).to(DEVICE), torch.randn(b, nz, generator=g).to(DEVICE)
    plan = PerfPlan(hoist_sampler=True, sampler_kernel=True)
    with use_backend("torch"):
        want = FastChains(learner, plan).cond_draw(learner.nets.amortizer, x, noise=noise, z_init=z_T)
    with pytest.MonkeyPatch.context() as mp:
        launches = _count_launches(mp, ksb, "_launch")
        got = FastChains(learner, plan).cond_draw(learner.nets.amortizer, x, noise=noise, z_init=z_T)
    assert launches[0] == 7 * T_
    # fp32 GEMMs in another summation order through T steps (the final x-prediction scales ε̂ by σ/α ≤ 12.8)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
