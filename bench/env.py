"""What a measurement ran on: device model, library versions, and the file-name slug of the device.

Recorded by every benchmark in the process that measured it (``benchmark.extra_info``), so a results file
can never pair timings with another machine's description.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    # platform.processor() is empty on most Linux builds; /proc/cpuinfo names the part.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (results file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device_type: str, name: str) -> str:
    # CPU names ("AMD EPYC") say nothing about the device type; prefix them so they never look like a GPU.
    s = slug(name)
    return s if device_type == "cuda" else f"cpu-{s}"


def _triton_version() -> str | None:
    try:
        import triton  # optional: only present with CUDA builds
    except Exception:  # ImportError, or a broken install that fails at import time
        return None
    return str(getattr(triton, "__version__", "unknown"))


def environment(device: torch.device) -> dict[str, Any]:
    """JSON-serialisable description of the device and the software stack."""
    name = device_name(device)
    info: dict[str, Any] = {
        "device_type": device.type,
        "device_name": name,
        "device_slug": device_slug(device.type, name),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            capability=f"{props.major}.{props.minor}",
            gpu_memory_bytes=int(props.total_memory),
            multiprocessors=int(props.multi_processor_count),
        )
    return info


def out_dir_problem(prog: str, out: Path) -> str | None:
    """Create a tool's ``--out`` directory; the one line to print when that is impossible (None: it exists now)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{prog}: cannot use --out {out}: {exc.strerror or exc}"
    return None
