"""Issue 14 item 1: the latent U-Net's training forward with merged GEMMs (``perf.merge_unet``) equals the module's
forward, its gradients reach every parameter as the module's do, it compiles, and it issues fewer GEMMs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.config import PerfConfig, load_config
from engine.learners import build_learner
from engine.models.amortizer import LatentUNet
from engine.runtime import system
from engine.runtime.fast import FastChains
from engine.runtime.merged_unet import merged_unet_forward
from engine.runtime.perf import PerfPlan, resolve

# (nz, nf, nemb, ntemb): the paper's U-Net (nz 128, nf 4), the odd small one of the brief, and an odd nz (the
# Fourier features then have 2·(nz//2) + nz columns).
SIZES = [(128, 4, 1024, 128), (8, 1, 1024, 128), (7, 1, 16, 8)]


def case(nz: int, nf: int, nemb: int, ntemb: int, dtype: torch.dtype, b: int = 12,
         seed: int = 0) -> tuple[LatentUNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    unet = LatentUNet(nz, nemb, ntemb, nf).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(b, nz, generator=g, dtype=dtype)
    lam = torch.empty(b, dtype=dtype).uniform_(-22.0, 22.0, generator=g)  # per-row λ, past the ±20 clamp too
    xemb = torch.randn(b, nemb, generator=g, dtype=dtype)
    return unet, z, lam, xemb


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"nz{s[0]}_nf{s[1]}")
@torch.no_grad()
def test_merged_forward_equals_forward_fp32(size: tuple[int, int, int, int]) -> None:
    unet, z, lam, xemb = case(*size, torch.float32)
    torch.testing.assert_close(merged_unet_forward(unet, z, lam, xemb), unet(z, lam, xemb), rtol=0, atol=1e-6)
    # a scalar λ broadcasts over the rows, as forward's
    torch.testing.assert_close(merged_unet_forward(unet, z, lam[3], xemb), unet(z, lam[3], xemb), rtol=0, atol=1e-6)
    unet.residual = False
    torch.testing.assert_close(merged_unet_forward(unet, z, lam, xemb), unet(z, lam, xemb), rtol=0, atol=1e-6)


def _grads(fn: Callable[..., torch.Tensor], unet: LatentUNet, z: torch.Tensor, lam: torch.Tensor,
           xemb: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of an ε-loss-like scalar (mean squared error to a fixed target) for every parameter, z and xemb."""
    unet.zero_grad(set_to_none=True)
    zz, xx = z.clone().requires_grad_(True), xemb.clone().requires_grad_(True)
    loss = (fn(zz, lam, xx) - target).pow(2).mean()
    loss.backward()
    out = {name: p.grad.clone() for name, p in unet.named_parameters() if p.grad is not None}
    assert zz.grad is not None and xx.grad is not None
    out.update(z=zz.grad, xemb=xx.grad, loss=loss.detach())
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"nz{s[0]}_nf{s[1]}")
def test_merged_forward_gradients_equal_the_modules(size: tuple[int, int, int, int], dtype: torch.dtype,
                                                    tol: float) -> None:
    unet, z, lam, xemb = case(*size, dtype)
    target = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    want = _grads(unet, unet, z, lam, xemb, target)
    got = _grads(lambda a, b, c: merged_unet_forward(unet, a, b, c), unet, z, lam, xemb, target)
    n_params = len(list(unet.parameters()))
    assert len(want) == len(got) == n_params + 3  # every parameter gets a gradient, through the stacks too
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=0, atol=tol, msg=lambda m, k=name: f"{k}: {m}")


def test_merged_forward_leaves_the_module_and_its_state_dict_alone() -> None:
    unet, z, lam, xemb = case(8, 1, 16, 8, torch.float32)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    merged_unet_forward(unet, z, lam, xemb).sum().backward()
    after = unet.state_dict()
    assert list(after) == list(before)  # no new entries (nothing cached on the module)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_merged_forward_under_autocast_matches_forward_dtypes() -> None:
    """CPU bf16 autocast: same output dtype as forward, and within bf16 error of it (the casts are the same; only
    GEMM blocking differs)."""
    unet, z, lam, xemb = case(8, 1, 64, 8, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = unet(z, lam, xemb), merged_unet_forward(unet, z, lam, xemb)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0.05)


class _GemmCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def test_merged_forward_issues_fewer_gemms() -> None:
    """Forward: 38 GEMMs (time MLP 2, Fourier 1, 7 blocks × 5) become 18 (2 + 1 + one ctx_proj + 7 × 2); the backward
    loses at least as many (one input- and one weight-gradient GEMM per merged group)."""
    unet, z, lam, xemb = case(8, 1, 16, 8, torch.float32)
    xemb.requires_grad_(True)
    counts = []
    for fn in (unet, lambda a, b, c: merged_unet_forward(unet, a, b, c)):
        fwd, bwd = _GemmCount(), _GemmCount()
        with fwd:
            out = fn(z, lam, xemb)
        with bwd:
            out.sum().backward()
        counts.append((fwd.ops.total(), bwd.ops.total()))
    (f_ref, b_ref), (f_merged, b_merged) = counts
    assert (f_ref, f_merged) == (38, 18)
    assert b_merged <= b_ref - 20, counts


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_merged_forward_and_backward_match_eager(backend: str) -> None:
    """Tiny sizes: the merged forward traces as one graph (fullgraph; the weight stacks inside it) with its backward
    through AOTAutograd, and agrees with eager. Inductor's C++ build takes ~17 s cold on 2 cores: ``-m slow``."""
    unet, z, lam, xemb = case(4, 1, 8, 8, torch.float32, b=6)
    target = torch.zeros_like(z)

    def fn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return merged_unet_forward(unet, a, b, c)

    torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
        want = _grads(fn, unet, z, lam, xemb, target)
        got = _grads(compiled, unet, z, lam, xemb, target)
    finally:
        torch._dynamo.reset()
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=lambda m, k=name: f"{k}: {m}")


def test_merge_unet_switch_resolves() -> None:
    """auto is off under both presets (undecided until a GPU measurement); on forces it, on a CPU too."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # resolve() reads only the device type
    for preset in ("reference", "fast"):
        for dev in (cuda, cpu):
            assert not resolve(PerfConfig(preset=preset), dev)[0].merge_unet  # type: ignore[arg-type]
            plan, note = resolve(PerfConfig(preset=preset, merge_unet="on"), dev)  # type: ignore[arg-type]
            assert plan.merge_unet and "merge_unet" in plan.describe() and not plan.is_reference
            assert note is None or "merge_unet" not in note.partition("unavailable here")[2]  # never dropped
    assert not resolve(PerfConfig(preset="fast", merge_unet="off"), cuda)[0].merge_unet
    assert PerfPlan(merge_unet=True).describe() == "fast: merge_unet"


def test_plain_sampler_loop_with_the_merged_unet_equals_the_modules() -> None:
    """``_denoise_fn`` (the sampler loop without ``hoist_sampler``) with merge_unet: the same draw for fixed noise."""
    cfg = load_config("configs/quickstart.yaml", ["model.nz=4", "model.ngf=4", "model.nif=4", "model.nemb=8",
                                                  "model.unet_nf=1", "model.ntemb=8", "diffusion.n_steps=12"])
    system.seed_init(0)
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    net = learner.nets.amortizer
    assert net is not None
    g = torch.Generator().manual_seed(2)
    x, z_t, noise = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 4, generator=g), torch.randn(
        11, 6, 4, generator=g)
    want = FastChains(learner, PerfPlan()).cond_draw(net, x, noise=noise, z_init=z_t)
    got = FastChains(learner, PerfPlan(merge_unet=True)).cond_draw(net, x, noise=noise, z_init=z_t)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_merged_forward_on_the_gpu_fp32_and_bf16() -> None:
    """cuBLAS at the paper's sizes (batch 128, nz 128), eager: fp32 (TF32 off) within 1e-5 of forward, gradients of
    every parameter too; under bf16 autocast the same dtypes and bf16-sized differences. A second or so."""
    unet, z, lam, xemb = case(128, 4, 1024, 128, torch.float32, b=128)
    unet, z, lam, xemb = unet.cuda(), z.cuda(), lam.cuda(), xemb.cuda()
    target = torch.randn_like(z)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        want = _grads(unet, unet, z, lam, xemb, target)
        got = _grads(lambda a, b, c: merged_unet_forward(unet, a, b, c), unet, z, lam, xemb, target)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5, msg=lambda m, k=name: f"{k}: {m}")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = unet(z, lam, xemb), merged_unet_forward(unet, z, lam, xemb)
    assert a.dtype == b.dtype
    torch.testing.assert_close(b.float(), a.float(), rtol=0, atol=0.05)
