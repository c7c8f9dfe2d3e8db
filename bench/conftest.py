"""Benchmark fixtures: device, problem sizes, backend-flag isolation, and the synchronized timing harness.

On a GPU the suite uses the paper's sizes (CIFAR-10 networks, batch 128 for training, 64 for sampling);
on CPU it uses tiny sizes and only checks that everything runs. Environment overrides:
    DAMC_BENCH_SIZES=paper|smoke   default: paper on CUDA, smoke on CPU
    DAMC_BENCH_ROUNDS=N            timed rounds per benchmark (default: GPU 10, 5 for heavy phases; CPU 2)
    DAMC_BENCH_WARMUP=N            warm-up calls before timing (default: GPU 2, CPU 1)
    DAMC_BENCH_THREADS=N           CPU intra-op threads (default 1 on CPU; untouched on CUDA)
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from bench.env import environment
from bench.phases import REPO, SMOKE_OVERRIDES, Sizes
from bench.phases import bench_config as _bench_config
from engine.config import Config
from engine.learners import build_learner
from engine.learners.damc import DamcLearner as Learner
from engine.runtime import system

__all__ = ["REPO", "TINY", "make_learner", "synced", "sync", "measure", "plan"]

TINY = SMOKE_OVERRIDES  # the name the first bench used; kept for other bench files


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def learner_on_preset(cfg: Config, device: torch.device, mode: str) -> tuple[Any, torch.Tensor, torch.Generator]:
    """(learner, a data batch x (batch, C, H, W) uniform in [−1, 1], the CPU generator that drew it, for further
    inputs) for a learner whose chains follow ``mode``'s preset, installed as engine.run.train installs it."""
    from engine.models import IMAGE_SHAPES
    from engine.runtime import perf

    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, device, system.make_generator(device, cfg.train.seed))
    resolved, _ = perf.resolve(dataclasses.replace(cfg.perf, preset=mode), device)
    system.apply_perf(resolved, device)
    learner.set_plan(resolved)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(cfg.train.batch_size, *IMAGE_SHAPES[cfg.model.arch], generator=g) * 2 - 1).to(device)
    return learner, x, g


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    value = int(raw)
    if value < 0:
        raise ValueError(f"{name}={raw}: must be >= 0")
    return value


def plan(device: torch.device, heavy: bool = False) -> tuple[int, int]:
    """(timed rounds, warm-up calls) for one benchmark on ``device``."""
    rounds = _env_int("DAMC_BENCH_ROUNDS")
    warmup = _env_int("DAMC_BENCH_WARMUP")
    if device.type == "cuda":
        default_rounds, default_warmup = (5 if heavy else 10), 2
    else:
        default_rounds, default_warmup = 2, 1  # smoke: the CPU run checks that everything runs
    return max(1, rounds if rounds is not None else default_rounds), (
        warmup if warmup is not None else default_warmup)


def measure(benchmark: Any, fn: Callable[[], object], device: torch.device, *, rounds: int,
            warmup: int) -> dict[str, Any]:
    """Time ``fn`` with pytest-benchmark; returns warm-up time, GPU time and peak memory for ``extra_info``.

    Every call ends with a device synchronize, because pytest-benchmark reads ``time.perf_counter``
    and would otherwise time the kernel launches only. The first ``warmup`` calls (compilation,
    graph capture, autotuning, cuDNN/lazy-module initialisation) run through pedantic's warm-up
    rounds, which pytest-benchmark leaves out of its statistics; we time them ourselves so the warm-up
    cost is reported on its own. On CUDA each call is also bracketed by two CUDA events on the current
    stream: the GPU's own elapsed time (``gpu_s``, median of the timed rounds) beside the wall time. The two
    differ by the host's launch latency before the first kernel and the final synchronize; for a phase whose
    GPU idles between host launches (launch-bound), the events include that idle time.
    """
    durations: list[float] = []
    gpu: list[float] = []
    cuda = device.type == "cuda"

    def timed() -> None:
        start = end = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        if start is not None and end is not None:
            end.record()
        sync(device)
        durations.append(time.perf_counter() - t0)
        if start is not None and end is not None:
            gpu.append(start.elapsed_time(end) / 1e3)

    resident = None
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)
    timed_gpu = gpu[warmup:]
    out: dict[str, Any] = {
        "warmup_calls": warmup,
        "warmup_s": sum(durations[:warmup]),
        "first_call_s": durations[0] if durations else None,
        "gpu_s": statistics.median(timed_gpu) if timed_gpu else None,
        "gpu_data_s": timed_gpu,
        "peak_mem_bytes": None,
        "resident_mem_bytes": resident,
    }
    if cuda:
        # Peak over warm-up and timed rounds, including the resident weights and optimizer state.
        out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    # The CPU run is a smoke test, not a CPU benchmark. Tiny ops fanned out over OpenMP threads collapse
    # (10-50x) on a loaded 2-core CI runner while the threads spin-wait, so run single-threaded by default.
    threads = _env_int("DAMC_BENCH_THREADS")
    torch.set_num_threads(max(1, threads if threads is not None else 1))
    return torch.device("cpu")


@pytest.fixture(scope="session")
def sizes(device: torch.device) -> Sizes:
    raw = os.environ.get("DAMC_BENCH_SIZES", "").strip()
    if raw:
        if raw not in ("paper", "smoke"):
            raise pytest.UsageError(f"DAMC_BENCH_SIZES={raw}: expected 'paper' or 'smoke'")
        return raw  # type: ignore[return-value]
    return "paper" if device.type == "cuda" else "smoke"


@pytest.fixture(scope="session")
def bench_config(sizes: Sizes) -> Config:
    return _bench_config(sizes)


@pytest.fixture(scope="session")
def env_info(device: torch.device) -> dict[str, Any]:
    return environment(device)


def _backend_flags() -> dict[str, Any]:
    return {
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }


def _restore_flags(flags: dict[str, Any]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.set_float32_matmul_precision(flags["matmul_precision"])


@pytest.fixture(autouse=True)
def _isolate(device: torch.device) -> Iterator[None]:
    """Restore process-global backend flags and free device memory after every benchmark.

    Configurations set global switches (TF32, cudnn.benchmark) in their builders; without this a fast
    configuration measured first would silently speed up the reference measured after it.
    """
    flags = _backend_flags()
    yield
    _restore_flags(flags)
    if "torch._dynamo" in sys.modules:
        # Each benchmark compiles its own functions inside its own warm-up; compiled code left over from the
        # previous benchmark would also count towards Dynamo's recompile limit and silently fall back to eager.
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@pytest.fixture(autouse=True)
def _stream_result(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``DAMC_BENCH_STREAM=path.jsonl``, append each finished benchmark to that file at once, one JSON object
    per line (pytest-benchmark's own record). pytest-benchmark writes its JSON only when the session ends, so a
    run killed by a time limit (bench/gpu_all.sh) would otherwise lose every measurement it had made."""
    yield
    path = os.environ.get("DAMC_BENCH_STREAM", "").strip()
    bench = request.node.funcargs.get("benchmark") if hasattr(request.node, "funcargs") else None
    meta = getattr(bench, "stats", None)
    if not path or meta is None or not getattr(meta.stats, "data", None):
        return
    record = meta.as_dict(include_data=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Helpers kept for other bench files (bench_kernels.py)


def make_learner(cfg: Config, device: torch.device) -> Learner:
    system.seed_init(cfg.train.seed)
    return build_learner(cfg, device, system.make_generator(device, cfg.train.seed))


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        fn()
        sync(device)

    return run
