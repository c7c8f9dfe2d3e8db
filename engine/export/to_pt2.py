"""``--format pt2``: the ``torch.export`` ExportedProgram itself, saved with ``torch.export.save``.

For Python users and as the input of every other route (AOTInductor, Torch-TensorRT, ONNX all start from it).
Loading needs only torch (``torch.export.load(path).module()``); a program exported on one device is moved to
another with ``torch.export.passes.move_to_device_pass``. The saved program is the one ``torch.export.export``
returned, not its ``run_decompositions()`` form: it replays the engine's eager kernels (linear rather than
addmm), so it equals the engine bit for bit on the same noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from engine.export.artifact import CallableGraph, GraphIO

EXT = ".pt2"


def require(device: torch.device) -> None:
    """Nothing beyond torch."""


def save(ep: ExportedProgram, path: Path, io: GraphIO, example: tuple[Any, ...]) -> None:
    torch.export.save(ep, str(path))


def load(path: Path, exported_on: str, device: torch.device) -> CallableGraph:
    ep = torch.export.load(str(path))
    if torch.device(exported_on).type != device.type:
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    module: CallableGraph = ep.module()
    return module
