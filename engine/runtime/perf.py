"""Which speed-ups run, decided once for the device at hand (the ``perf:`` config section).

``reference`` is the faithful eager fp32 path. ``fast`` enables every switch left at ``auto`` that the device
supports, except those not yet measured on a GPU (``_UNMEASURED``: only ``on`` enables them); a switch set to
``on``/``off`` overrides the preset. A capability the machine lacks (no GPU, no Triton) is turned off with one log
line, never an error. Backend flags (TF32, cudnn autotuning) are applied
by :func:`engine.runtime.system.apply_perf`, the only place that touches ``torch.backends``.

On a CPU, ``fast`` keeps the reference: the pure-torch rewrites (compile, fused optimizers, the hoisted sampler,
G's first layer as a GEMM) cost more than they save on tiny CPU-sized steps; ``on`` forces each one (tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from engine.config import PerfConfig
from kernels import triton_available  # asks importlib only; never imports triton

SWITCHES = ("graphs", "compile", "amp", "kernels", "channels_last", "tf32", "cudnn_benchmark", "iteration_graph",
            "fused_optim", "hoist_sampler", "amp_unet", "side_streams", "g_gemm_first", "sampler_kernel",
            "combo_kernels", "merge_unet")
_CUDA_ONLY = {
    "graphs": "CUDA graphs",
    "amp": "bf16 autocast",
    "kernels": "Triton kernels",
    "channels_last": "channels_last",
    "tf32": "TF32",
    "cudnn_benchmark": "cudnn autotuning",
    "iteration_graph": "the iteration as one CUDA graph",
    "side_streams": "side streams",
}
# Pure torch, so they run on a CPU, but only when asked for explicitly there (see the module docstring).
_CPU_AUTO_OFF = {
    "compile": "torch.compile",
    "fused_optim": "fused optimizers",
    "hoist_sampler": "the hoisted sampler",
    "g_gemm_first": "G's first layer as a GEMM",
}
# Written but not yet measured on a GPU: ``auto`` leaves them off under both presets until a benchmark variant shows
# they pay (bench/phases.py VARIANTS); ``on`` runs them anywhere (their references on a CPU).
_UNMEASURED = ("sampler_kernel", "combo_kernels", "merge_unet")


@dataclass(frozen=True)
class PerfPlan:
    graphs: bool = False
    compile: bool = False
    amp: bool = False
    kernels: bool = False
    channels_last: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    iteration_graph: bool = False
    fused_optim: bool = False
    hoist_sampler: bool = False
    amp_unet: bool = False  # meaningful only with amp
    side_streams: bool = False
    g_gemm_first: bool = False
    sampler_kernel: bool = False
    combo_kernels: bool = False
    merge_unet: bool = False
    g_last: str = "convt"
    compile_mode: str = "default"
    cudnn_benchmark_limit: int = 10

    @property
    def is_reference(self) -> bool:
        return not any(getattr(self, name) for name in SWITCHES) and self.g_last == "convt"

    @property
    def unet_bf16(self) -> bool:
        return self.amp and self.amp_unet

    def describe(self) -> str:
        on = [name for name in SWITCHES if getattr(self, name)]
        if self.g_last != "convt":
            on.append(f"g_last={self.g_last}")
        if self.compile and self.compile_mode != "default":
            on.append(f"compile_mode={self.compile_mode}")
        return "reference (eager fp32)" if not on else "fast: " + ", ".join(on)


REFERENCE = PerfPlan()


def resolve(cfg: PerfConfig, device: torch.device, world_size: int = 1) -> tuple[PerfPlan, str | None]:
    """The plan for ``device`` and, when something asked for was unavailable, one log line saying so.

    With several processes (``world_size`` > 1) the gradient all-reduce runs between backward and the optimizer
    step, outside captured regions: the whole-iteration graph is off (the chains and the sampler stay captured,
    and the amortizer updates run eagerly; engine/runtime/fast.py).
    """
    fast = cfg.preset == "fast"
    want: dict[str, bool] = {name: getattr(cfg, name) == "on" or (getattr(cfg, name) == "auto" and fast
                                                                  and name not in _UNMEASURED)
                             for name in SWITCHES}
    dropped: list[str] = []
    cuda = device.type == "cuda"
    if not cuda:
        for name, label in _CUDA_ONLY.items():
            if want[name]:
                want[name] = False
                dropped.append(f"{label} (no GPU)")
        for name, label in _CPU_AUTO_OFF.items():
            if want[name] and getattr(cfg, name) == "auto":
                # Compiling the tiny CPU-sized steps costs more than it saves; `perf.<switch>=on` forces it.
                want[name] = False
                dropped.append(f"{label} (CPU; set perf.{name}=on to force)")
    elif not triton_available():
        for name, label in (("kernels", "Triton kernels"), ("compile", "torch.compile (Inductor needs Triton)")):
            if want[name]:
                want[name] = False
                dropped.append(f"{label} (triton not installed)")
    # What a switch needs: the whole-iteration graph every loop capturable and optimizers whose step can be replayed;
    # the sampler kernel the hoisted sampler; combo kernels a compiler to fuse them.
    for name, needs in (("iteration_graph", ("graphs", "fused_optim")), ("side_streams", ("iteration_graph",)),
                        ("sampler_kernel", ("hoist_sampler",)), ("combo_kernels", ("compile",))):
        missing = [n for n in needs if not want[n]]
        if want[name] and missing:
            want[name] = False
            if cuda or name in _UNMEASURED:
                dropped.append(f"{name} (needs {' and '.join(missing)})")
    if world_size > 1 and want["iteration_graph"]:
        want["iteration_graph"] = want["side_streams"] = False
        dropped.append(f"iteration_graph ({world_size} processes: the gradient all-reduce stays outside CUDA graphs)")
    want["amp_unet"] = want["amp_unet"] and want["amp"]
    plan = PerfPlan(g_last=cfg.g_last, compile_mode=cfg.compile_mode, cudnn_benchmark_limit=cfg.cudnn_benchmark_limit)
    plan = dataclasses.replace(plan, **want)  # type: ignore[arg-type]  # every key is a bool field of PerfPlan
    note = f"perf: {plan.describe()}; unavailable here: {', '.join(dropped)}" if dropped else None
    return plan, note
