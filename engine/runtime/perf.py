"""Which speed-ups run, decided once for the device at hand (the ``perf:`` config section).

``reference`` is the faithful eager fp32 path. ``fast`` enables every switch left at ``auto`` that the device
supports; a switch set to ``on``/``off`` overrides the preset. A capability the machine lacks (no GPU, no
Triton) is turned off with one log line, never an error. Backend flags (TF32, cudnn autotuning) are applied
by :func:`engine.runtime.system.apply_perf`, the only place that touches ``torch.backends``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from engine.config import PerfConfig
from kernels import triton_available  # asks importlib only; never imports triton

SWITCHES = ("graphs", "compile", "amp", "kernels", "channels_last", "tf32", "cudnn_benchmark")
_CUDA_ONLY = {
    "graphs": "CUDA graphs",
    "amp": "bf16 autocast",
    "kernels": "Triton kernels",
    "channels_last": "channels_last",
    "tf32": "TF32",
    "cudnn_benchmark": "cudnn autotuning",
}


@dataclass(frozen=True)
class PerfPlan:
    graphs: bool = False
    compile: bool = False
    amp: bool = False
    kernels: bool = False
    channels_last: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False

    @property
    def is_reference(self) -> bool:
        return not any(dataclasses.astuple(self))

    def describe(self) -> str:
        on = [name for name in SWITCHES if getattr(self, name)]
        return "reference (eager fp32)" if not on else "fast: " + ", ".join(on)


REFERENCE = PerfPlan()


def resolve(cfg: PerfConfig, device: torch.device) -> tuple[PerfPlan, str | None]:
    """The plan for ``device`` and, when something asked for was unavailable, one log line saying so."""
    fast = cfg.preset == "fast"
    want = {name: getattr(cfg, name) == "on" or (getattr(cfg, name) == "auto" and fast) for name in SWITCHES}
    dropped: list[str] = []
    cuda = device.type == "cuda"
    if not cuda:
        for name, label in _CUDA_ONLY.items():
            if want[name]:
                want[name] = False
                dropped.append(f"{label} (no GPU)")
        if want["compile"] and cfg.compile == "auto":
            # Compiling the tiny CPU-sized steps costs more than it saves; `perf.compile=on` forces it.
            want["compile"] = False
            dropped.append("torch.compile (CPU; set perf.compile=on to force)")
    elif not triton_available():
        for name, label in (("kernels", "Triton kernels"), ("compile", "torch.compile (Inductor needs Triton)")):
            if want[name]:
                want[name] = False
                dropped.append(f"{label} (triton not installed)")
    plan = PerfPlan(**want)
    note = f"perf: {plan.describe()}; unavailable here: {', '.join(dropped)}" if dropped else None
    return plan, note
