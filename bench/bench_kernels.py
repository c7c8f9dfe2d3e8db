"""GPU micro-benchmarks of the fused kernels (kernels/README.md): achieved bandwidth against a device copy.

For every op variant and B = 128 … 4096 rows at nz = 128 (CIFAR-10's latent), one benchmark records:
  * ``kernel_us``: device time of one launch, from a CUDA graph of ``INNER`` back-to-back launches (the way
    the engine runs them: inside captured loops, so Python dispatch does not hide the kernel);
  * ``kernel_gbps``: bytes the kernel must move (reads + writes, ``bytes_per_call``) / ``kernel_us``;
  * ``copy_gbps``: the same bytes moved by ``dst.copy_(src)`` (a plain device copy; read + write), same
    method; ``fraction_of_copy`` = kernel_gbps / copy_gbps, target ≥ 0.8 (``meets_target``);
  * ``torch_us`` / ``compiled_us``: the eager torch op sequence the kernel replaces (the ``_ref`` plus the
    ``randn`` it no longer needs) and ``torch.compile`` of it, same method; ``speedup_vs_torch``.
pytest-benchmark's own statistics time ``graph.replay(); synchronize()`` (``INNER`` launches per call).
At these sizes (≤ 2 MiB per tensor) everything stays in an H100's 50 MB L2, so the GB/s are L2 rates for the
kernel and the copy alike; the ratio is the figure of merit. Skips cleanly without CUDA or Triton.

Run: ``pytest bench/bench_kernels.py --benchmark-only --benchmark-json=kernels.json``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch

from engine.sampling.diffusion import sampler_table
from kernels.backend import triton_available, use_backend
from kernels.ddpm_step import ddpm_step, ddpm_step_philox, ddpm_step_ref, pack_sampler_table
from kernels.langevin_update import (
    _langevin_update_triton,
    langevin_update,
    langevin_update_philox,
    langevin_update_ref,
)
from kernels.philox_noise import philox_seed_offset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="kernel benchmarks need a CUDA device"),
    pytest.mark.skipif(not triton_available(), reason="kernel benchmarks need triton"),
]

ROWS = (128, 256, 512, 1024, 2048, 4096)
NZ = 128
INNER = 100  # launches per graph replay: ~0.3-3 ms of device time per timed call
TARGET = 0.8  # fraction of copy bandwidth the issue asks for
S = 0.1
VARIANTS = ("langevin_noise", "langevin_noise_bf16_grad", "langevin_noise_off", "langevin_philox",
            "ddpm_noise", "ddpm_philox")


def _graph(fn: Callable[[], object], inner: int = INNER) -> Callable[[], None]:
    """``inner`` calls of ``fn`` captured once (after a warm-up that compiles/JITs on the capture stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(inner):
            fn()
    torch.cuda.synchronize()
    return graph.replay


def _device_us(replay: Callable[[], None], inner: int = INNER, reps: int = 15) -> float:
    """Median device time of one captured call, µs (CUDA events around each replay)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(times)


def _copy_gbps(n_bytes: int) -> float:
    """Bandwidth of a device copy moving ``n_bytes`` in total (n/2 read + n/2 written)."""
    src = torch.randn(n_bytes // 8, device="cuda")
    dst = torch.empty_like(src)
    return n_bytes / _device_us(_graph(lambda: dst.copy_(src))) / 1e3


def _env() -> dict[str, Any]:
    import triton

    return {"device_name": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}


def _case(variant: str, rows: int) -> tuple[Callable[[], object], Callable[[], object], int]:
    """(fused call, the torch sequence it replaces, bytes the fused kernel must move per call)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    z, grad, eps = (torch.randn(rows, NZ, device="cuda", generator=g) for _ in range(3))
    seed_offset = philox_seed_offset(g, "cuda")
    step = torch.tensor(3, device="cuda")
    n, f32 = rows * NZ, 4
    if variant.startswith("ddpm"):
        table = pack_sampler_table(sampler_table(100, device="cuda"))
        if variant == "ddpm_noise":  # read z, ε̂, ε; write z_s
            return (lambda: ddpm_step(z, grad, table, step, eps),
                    lambda: ddpm_step_ref(z, grad, table, step, torch.randn_like(z)), 4 * f32 * n)
        return (lambda: ddpm_step_philox(z, grad, table, step, seed_offset),  # read z, ε̂; write z_s
                lambda: ddpm_step_ref(z, grad, table, step, torch.randn_like(z)), 3 * f32 * n)
    if variant == "langevin_noise_bf16_grad":
        grad = grad.bfloat16()
    g_bytes = grad.element_size()
    if variant in ("langevin_noise", "langevin_noise_bf16_grad"):  # read z, g, ε; write z'
        return (lambda: langevin_update(z, grad, S, eps),
                lambda: langevin_update_ref(z, grad, S, torch.randn_like(z)), (3 * f32 + g_bytes) * n)
    if variant == "langevin_noise_off":  # read z, g; write z'
        return (lambda: langevin_update(z, grad, S, None),
                lambda: langevin_update_ref(z, grad, S, None), (2 * f32 + g_bytes) * n)
    return (lambda: langevin_update_philox(z, grad, S, seed_offset, step),  # read z, g; write z'
            lambda: langevin_update_ref(z, grad, S, torch.randn_like(z)), (2 * f32 + g_bytes) * n)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_bandwidth(benchmark: Any, variant: str, rows: int) -> None:
    with use_backend("triton"):
        fused, torch_seq, n_bytes = _case(variant, rows)
        replay = _graph(fused)
    kernel_us = _device_us(replay)
    torch_us = _device_us(_graph(torch_seq))
    torch._dynamo.reset()
    compiled = torch.compile(torch_seq, fullgraph=True)
    compiled_us = _device_us(_graph(compiled))
    torch._dynamo.reset()
    copy_gbps = _copy_gbps(n_bytes)
    kernel_gbps = n_bytes / kernel_us / 1e3
    benchmark.group = f"kernels-{variant}"
    benchmark.extra_info.update(
        op=variant, rows=rows, nz=NZ, inner=INNER, bytes_per_call=n_bytes, kernel_us=kernel_us,
        kernel_gbps=kernel_gbps, copy_gbps=copy_gbps, fraction_of_copy=kernel_gbps / copy_gbps, target=TARGET,
        meets_target=kernel_gbps / copy_gbps >= TARGET, torch_us=torch_us, compiled_us=compiled_us,
        speedup_vs_torch=torch_us / kernel_us, speedup_vs_compiled=compiled_us / kernel_us, env=_env())

    def timed() -> None:
        replay()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("rows", (128, 4096))
@pytest.mark.parametrize(("quarter", "warps"), [(128, 1), (256, 2), (512, 4), (1024, 4), (1024, 8)])
def test_launch_config_sweep(benchmark: Any, rows: int, quarter: int, warps: int) -> None:
    """The in-kernel-noise Langevin update (the heaviest per element) under each launch shape; the numbers
    never change with it (tests/kernels). Feeds ``kernels.philox_noise.launch_config``."""
    g = torch.Generator(device="cuda").manual_seed(0)
    z, grad = (torch.randn(rows, NZ, device="cuda", generator=g) for _ in range(2))
    seed_offset, step = philox_seed_offset(g, "cuda"), torch.tensor(0, device="cuda")
    replay = _graph(lambda: _langevin_update_triton(z, grad, S, None, seed_offset, step, (quarter, warps)))
    kernel_us = _device_us(replay)
    n_bytes = 3 * 4 * rows * NZ
    benchmark.group = f"kernels-launch-config-{rows}"
    benchmark.extra_info.update(op="langevin_philox", rows=rows, nz=NZ, quarter=quarter, num_warps=warps,
                                kernel_us=kernel_us, kernel_gbps=n_bytes / kernel_us / 1e3,
                                copy_gbps=_copy_gbps(n_bytes), env=_env())

    def timed() -> None:
        replay()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=3)
