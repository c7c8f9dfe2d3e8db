"""The device's dense matmul rate, measured in the same run: the denominator of the report's roofline column.

CUDA: a bf16 8192³ matmul (tensor cores), 10 per timed call so launch gaps do not count. CPU has no useful
bf16 rate, so it times an fp32 matmul instead and labels it as such.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.conftest import measure, plan
from bench.phases import SUITE


def test_matmul_rate(benchmark: Any, device: torch.device, env_info: dict[str, Any]) -> None:
    if device.type == "cuda":
        dtype, n, reps = torch.bfloat16, 8192, 10
    else:
        dtype, n, reps = torch.float32, 512, 4
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=c)

    benchmark.group = "matmul"
    rounds, warmup = plan(device)
    timing = measure(benchmark, run, device, rounds=rounds, warmup=warmup)
    benchmark.extra_info.update(
        suite=SUITE,
        phase="matmul",
        dtype=str(dtype).removeprefix("torch."),
        n=n,
        reps=reps,
        flops_per_call=2 * n**3 * reps,
        env=env_info,
        **timing,
    )
