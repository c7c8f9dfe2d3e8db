"""The one place that decides device, threads and seeding.

Other modules take a ``torch.device`` and ``torch.Generator`` as arguments and never touch
``torch.backends`` or environment variables. The reference configuration runs plain fp32: no TF32, no
autocast, no cudnn autotuning (the authors set no backend flags, spec §3); fast paths arrive later
behind their own switches.
"""

from __future__ import annotations

import torch

from engine.config import ConfigError, SystemConfig
from engine.runtime.perf import PerfPlan


def resolve_device(cfg: SystemConfig) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a :class:`ConfigError` (one line)
    raised before any work."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda" or torch.cuda.is_available():
        if not torch.cuda.is_available():
            raise ConfigError("system.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


def setup(cfg: SystemConfig) -> torch.device:
    """Device and CPU threads. ``system.threads`` (default 1) sets torch's intra-op threads; 0 keeps torch's
    default (one per core, or ``OMP_NUM_THREADS``). One thread is the default because OpenMP workers that
    wait for each other collapse on a shared or busy CPU (README, "CPU threads": 0.2-2.8 s per quickstart
    iteration with one thread against up to 47 s with two on a loaded 2-core machine); the GPU path does not
    depend on CPU threads."""
    device = resolve_device(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        # Faithful fp32: keep TF32 off so the reference matches the authors' arithmetic.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def apply_perf(plan: PerfPlan, device: torch.device) -> None:
    """Backend flags of the fast path: fused-kernel backend, TF32 for the remaining fp32 matmuls, cudnn
    autotuning. Set before anything is compiled or captured (both bake the choices in)."""
    from kernels import set_backend

    set_backend("triton" if plan.kernels else "torch")
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = plan.tf32
    torch.backends.cudnn.allow_tf32 = plan.tf32
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    # How many algorithms autotuning times per convolution shape (cudnn v8+ API; 0 = all). Fewer trials bound the
    # workspace that autotuning allocates (the first fast sampling row peaked at 10 GiB, issue 14).
    torch.backends.cudnn.benchmark_limit = plan.cudnn_benchmark_limit


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """The run's device RNG: every draw of the training iteration comes from it, in a fixed order."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_init(seed: int) -> None:
    """Seed the global RNGs used by PyTorch's default parameter initialisation."""
    torch.manual_seed(seed)
