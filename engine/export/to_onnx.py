"""``--format onnx``: ``torch.onnx.export(dynamo=True)`` of the exported program; onnxruntime checks it.

The portable artifact, and the TensorRT route on machines without Torch-TensorRT: ``trtexec --onnx=FILE``
builds an engine from it. Its operators are all in the default ONNX domain and within onnx-tensorrt's support
matrix (tests/export/test_onnx.py keeps that list and checks every export against it); opset 20, which every
TensorRT 10.x parses (10.0 reads opsets 9-20). Needs ``pip install 'damc-engine[export]'`` (onnx, onnxscript
>= 0.6, which torch 2.11+'s exporter imports, and onnxruntime). Weights are stored inside the ``.onnx`` file
(external data only above ONNX's 2 GB protobuf limit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram

from engine.export.artifact import CallableGraph, ExportError, GraphIO

EXT = ".onnx"
OPSET = 20
_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require(device: torch.device) -> None:
    import importlib.util

    missing = [p for p in _PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)}: pip install 'damc-engine[export]'")


def save(ep: ExportedProgram, path: Path, io: GraphIO, example: tuple[Any, ...]) -> None:
    # The exporter warns once per missing torchvision op (nms, roi_align, ...): noise for this graph.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(ep, example, dynamo=True, input_names=[t.name for t in io.inputs],
                                    output_names=[t.name for t in io.outputs], opset_version=OPSET, verbose=False)
    finally:
        registration.setLevel(level)
    if program is None:  # only with f= given; kept for the type checker
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path))


def operator_types(path: Path) -> set[tuple[str, str]]:
    """Every (domain, op_type) in the model: main graph, subgraphs and local functions."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: set[tuple[str, str]] = set()

    def walk(nodes: Any) -> None:
        for node in nodes:
            found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for fn in model.functions:
        walk(fn.node)
    return found


def load(path: Path, exported_on: str, device: torch.device) -> CallableGraph:
    """An onnxruntime session as a torch callable: CUDA provider when the device is CUDA and onnxruntime-gpu is
    installed, else the CPU provider (inputs and outputs are copied through host memory)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("sampling an ONNX artifact needs onnxruntime: pip install 'damc-engine[export]'") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{path.name}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
    names = [i.name for i in session.get_inputs()]

    def run(*args: torch.Tensor) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(a.detach().cpu().numpy()) for n, a in zip(names, args, strict=True)}
        out = session.run(None, feed)[0]
        return torch.from_numpy(np.asarray(out)).to(device)

    return run
