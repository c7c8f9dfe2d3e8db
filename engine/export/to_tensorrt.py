"""``--format tensorrt``: TensorRT engines inside an ExportedProgram (``.ep``), built by Torch-TensorRT.

Written against the documented torch-tensorrt 2.x API (spec ``performance.md`` §4) and **not run here**: the
TensorRT libraries come only from NVIDIA's package index, which this project's machines cannot reach, and the
GPU machine used for testing has no TensorRT. The route:

* ``torch_tensorrt.dynamo.compile(ep, arg_inputs=..., use_explicit_typing=True, min_block_size=1,
  require_full_compilation=True)``: explicit typing keeps the dtypes of the exported graph (bf16/fp16 networks
  cast explicitly, the sampler arithmetic fp32; ``enabled_precisions`` is deprecated with TensorRT's weak
  typing). All noise is an input, so no random op is frozen into the engine (pytorch/TensorRT#2580).
* ``torch_tensorrt.save(trt_gm, path, output_format="exported_program", arg_inputs=...)``; load with
  ``torch_tensorrt.load(path).module()`` (the ``.ep`` needs Torch-TensorRT's C++ runtime at load time).

Without Torch-TensorRT, the ONNX artifact is the TensorRT route: ``trtexec --onnx=DIR/step.onnx`` (README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from engine.export.artifact import CallableGraph, ExportError, GraphIO

EXT = ".ep"
_INSTALL = ("needs torch-tensorrt built for torch " + torch.__version__.split("+")[0]
            + " and a CUDA GPU (pip install 'damc-engine[tensorrt]' from NVIDIA's index); or use --format onnx "
            "and build the engine with trtexec --onnx=...")


def _module() -> Any:
    try:
        import torch_tensorrt
    except ImportError:
        raise ExportError(f"--format tensorrt {_INSTALL}") from None
    return torch_tensorrt


def require(device: torch.device) -> None:
    if device.type != "cuda":
        raise ExportError(f"--format tensorrt builds TensorRT engines on a CUDA GPU (this run uses {device.type}); "
                          "use --format onnx here and trtexec --onnx=... on the GPU machine")
    _module()


def save(ep: ExportedProgram, path: Path, io: GraphIO, example: tuple[Any, ...]) -> None:
    trt = _module()
    inputs = list(example)
    trt_gm = trt.dynamo.compile(ep, arg_inputs=inputs, use_explicit_typing=True, min_block_size=1,
                                require_full_compilation=True)
    trt.save(trt_gm, str(path), output_format="exported_program", arg_inputs=inputs)


def load(path: Path, exported_on: str, device: torch.device) -> CallableGraph:
    trt = _module()
    if device.type != "cuda":
        raise ExportError(f"{path.name} holds TensorRT engines: it runs on a CUDA GPU only")
    module: CallableGraph = trt.load(str(path)).module()
    return module
