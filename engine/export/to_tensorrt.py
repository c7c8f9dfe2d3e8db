"""``--format tensorrt``: TensorRT engines inside an ExportedProgram (``.ep``), built by Torch-TensorRT.

Written against torch-tensorrt 2.13.0 (the ``tensorrt`` extra's pin, the release built for torch 2.13) and **not
run end to end here**. What was run (README "TensorRT"): torch-tensorrt 2.13.0 and tensorrt-cu13-bindings
11.0.0.114 are ordinary wheels on PyPI and install; the TensorRT libraries (``tensorrt-cu13-libs``) are on PyPI only
as a placeholder that downloads the real wheel from NVIDIA's package index at install time, which this project's
machines cannot reach, so ``import torch_tensorrt`` stops at ``Could not find libnvinfer.so.11`` and everything from
there on (converter support, engine build) waits for a machine with the libraries. The route:

* ``torch_tensorrt.dynamo.compile(ep, arg_inputs=..., min_block_size=1, require_full_compilation=True)``: 2.13
  always builds strongly typed networks (its ``_TRTInterpreter`` sets ``STRONGLY_TYPED``; the older
  ``use_explicit_typing`` argument is gone and would be swallowed by ``**kwargs``), so the engine keeps the dtypes
  of the exported graph (bf16/fp16 networks cast explicitly, the sampler arithmetic fp32). All noise is an input,
  so no random op is frozen into the engine (pytorch/TensorRT#2580).
* ``torch_tensorrt.save(trt_gm, path, output_format="exported_program", arg_inputs=...)``; load with
  ``torch_tensorrt.load(path).module()`` (the ``.ep`` needs Torch-TensorRT's C++ runtime at load time).

Without Torch-TensorRT, the ONNX artifact is the TensorRT route: ``trtexec --onnx=DIR/step.onnx`` (README).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from engine.export.artifact import CallableGraph, ExportError, GraphIO

EXT = ".ep"
_INSTALL = ("needs torch-tensorrt built for torch " + torch.__version__.split("+")[0]
            + " and a CUDA GPU (pip install 'damc-engine[tensorrt]': torch-tensorrt from PyPI, its TensorRT libraries "
            "from NVIDIA's package index at install time); or use --format onnx and build the engine with "
            "trtexec --onnx=...")


def _import() -> tuple[Any, str]:
    """``(torch_tensorrt, "")``, or ``(None, why)`` in one line: not installed, or installed without TensorRT."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return None, f"--format tensorrt {_INSTALL}"
    try:
        # Without its TensorRT libraries torch_tensorrt prints two lines and raises a bare Exception.
        with contextlib.redirect_stdout(io.StringIO()):
            import torch_tensorrt
    except Exception as e:
        try:
            version = " " + importlib.metadata.version("torch-tensorrt")
        except importlib.metadata.PackageNotFoundError:
            version = ""
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, (f"--format tensorrt: torch-tensorrt{version} is installed but does not import ({cause}): "
                      "its TensorRT libraries (tensorrt-cu13-libs) come from NVIDIA's package index at install time; "
                      "or use --format onnx and build the engine with trtexec --onnx=...")
    return torch_tensorrt, ""


def unavailable() -> str:
    """Why Torch-TensorRT cannot be used in this environment (one line), or ``""`` when it imports."""
    return _import()[1]


def _module() -> Any:
    trt, why = _import()
    if trt is None:
        raise ExportError(why)
    return trt


def require(device: torch.device) -> None:
    if device.type != "cuda":
        raise ExportError(f"--format tensorrt builds TensorRT engines on a CUDA GPU (this run uses {device.type}); "
                          "use --format onnx here and trtexec --onnx=... on the GPU machine")
    _module()


def save(ep: ExportedProgram, path: Path, io: GraphIO, example: tuple[Any, ...]) -> None:
    trt = _module()
    inputs = list(example)
    trt_gm = trt.dynamo.compile(ep, arg_inputs=inputs, min_block_size=1, require_full_compilation=True)
    trt.save(trt_gm, str(path), output_format="exported_program", arg_inputs=inputs)


def load(path: Path, exported_on: str, device: torch.device) -> CallableGraph:
    trt = _module()
    if device.type != "cuda":
        raise ExportError(f"{path.name} holds TensorRT engines: it runs on a CUDA GPU only")
    module: CallableGraph = trt.load(str(path)).module()
    return module
