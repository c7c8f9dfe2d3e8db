"""Every phase of the DAMC iteration, the whole iteration and the paper's four sampling timings, for each
registered configuration (reference, fast), side by side in one process on one device.

Run: ``pytest bench/ --benchmark-only`` (GPU: paper sizes; CPU: tiny smoke sizes); ``python -m bench.report``
runs this and prints the table. Rows are grouped by phase so pytest-benchmark's own output already puts
reference and fast next to each other.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from bench.conftest import measure, plan, sync
from bench.phases import (
    CONFIGURATIONS,
    MODES,
    PHASE_INFO,
    PHASES,
    SUITE,
    Sizes,
    build_phases,
    phase_flops,
    size_summary,
)
from engine.config import Config

CASES = [(p.key, mode) for p in PHASES for mode in MODES]


@pytest.mark.parametrize(("phase", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_phase(benchmark: Any, bench_config: Config, device: torch.device, sizes: Sizes,
               env_info: dict[str, Any], phase: str, mode: str) -> None:
    info, conf = PHASE_INFO[phase], CONFIGURATIONS[mode]
    benchmark.group = phase
    t0 = time.perf_counter()
    fn = build_phases(bench_config, device, mode, only=[phase])[phase]
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device, heavy=info.heavy)
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    implemented, note = conf.status(bench_config, device)
    benchmark.extra_info.update(
        suite=SUITE,
        phase=phase,
        mode=mode,
        implemented=implemented,
        note=note,
        build_s=build_s,
        flops_per_call=phase_flops(phase, bench_config),
        size=size_summary(bench_config, sizes),
        env=env_info,
        **timing,
    )
