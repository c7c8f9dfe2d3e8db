"""``--format aoti``: an AOTInductor package (``torch._inductor.aoti_compile_and_package``), Python-free deployment.

Inductor compiles the exported program ahead of time into a shared library (C++ on CPU, C++ + Triton kernels on
CUDA) packed into one ``.pt2`` archive; ``torch._inductor.aoti_load_package`` (Python) or
``torch::inductor::AOTIModelPackageLoader`` (C++) run it. A package runs only on the device type it was
compiled for. On CPU the compile needs a C++ compiler (g++ 12 here: about 10-30 s per graph on 2 cores for
the test-sized networks); on CUDA it needs Triton.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from engine.export.artifact import CallableGraph, ExportError, GraphIO

EXT = ".aoti.pt2"


def require(device: torch.device) -> None:
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ExportError("--format aoti on CPU compiles C++: install a compiler (e.g. apt-get install g++)")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ExportError("--format aoti on CUDA compiles Triton kernels: pip install 'damc-engine[gpu]'")


def save(ep: ExportedProgram, path: Path, io: GraphIO, example: tuple[Any, ...]) -> None:
    torch._inductor.aoti_compile_and_package(ep, package_path=str(path))


def load(path: Path, exported_on: str, device: torch.device) -> CallableGraph:
    if torch.device(exported_on).type != device.type:
        raise ExportError(f"{path.name} is an AOTInductor package compiled for {exported_on}; this run uses "
                          f"{device.type}: export again with --device {device.type}")
    runner: CallableGraph = torch._inductor.aoti_load_package(str(path))
    return runner
