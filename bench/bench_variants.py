"""The fast configuration's open choices (issue 14), each timed on the phases it can change: perf.preset=fast plus
one variant's overrides (``bench.phases.VARIANTS``). ``python -m bench.report`` sets each beside the fast row.

Run: ``pytest bench/bench_variants.py --benchmark-only`` (``-k "not max_autotune"`` skips the long one).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import torch

from bench.conftest import measure, plan, sync
from bench.phases import PHASE_INFO, VARIANT_INFO, VARIANT_SUITE, VARIANTS, Sizes, bench_config, build_fast
from engine.runtime import perf

CASES = [(v.name, p) for v in VARIANTS for p in v.phases]


@pytest.mark.parametrize(("variant", "phase"), CASES, ids=[f"{v}-{p}" for v, p in CASES])
def test_variant(benchmark: Any, device: torch.device, sizes: Sizes, env_info: dict[str, Any], variant: str,
                 phase: str) -> None:
    v = VARIANT_INFO[variant]
    cfg = bench_config(sizes, v.overrides)
    benchmark.group = f"{phase} variants"
    t0 = time.perf_counter()
    fn = build_fast(cfg, device, [phase])[phase]
    sync(device)
    build_s = time.perf_counter() - t0
    rounds, warmup = plan(device, heavy=PHASE_INFO[phase].heavy)
    timing = measure(benchmark, fn, device, rounds=rounds, warmup=warmup)
    fast_plan, _ = perf.resolve(dataclasses.replace(cfg.perf, preset="fast"), device)
    benchmark.extra_info.update(suite=VARIANT_SUITE, phase=phase, variant=variant, overrides=list(v.overrides),
                                question=v.question, plan=fast_plan.describe(), build_s=build_s, env=env_info,
                                **timing)
