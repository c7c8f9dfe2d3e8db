"""Load an exported prior sampler and run it on given noise: what ``engine.sample --from-export`` and the
export's own verification use.

The per-step structure is driven here, as a deployment would drive it (``sidecar.driver``)::

    xemb = null_embedding(ξ)
    for k in 0 .. T−1:  z = step(k, z, xemb, ε[k] if k < T−1 else 0)
    images = generator(z)

On a CUDA device the whole loop (or the whole graph) is captured once as a CUDA graph over static buffers and
replayed for every batch (pt2, AOTInductor and TensorRT artifacts; onnxruntime sessions run outside torch's
streams and are driven eagerly). A capture that fails falls back to the eager loop with a note, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from engine.export import to_aoti, to_onnx, to_pt2, to_tensorrt
from engine.export.artifact import CallableGraph, ExportError, Sidecar, read_sidecar
from engine.runtime.graphs import CapturedGraph
from engine.sampling.noise import NoiseStream, PriorNoise, prior_noise

__all__ = ["FORMAT_MODULES", "ArtifactSampler", "check_loadable", "drive_per_step", "load_artifact"]

FORMAT_MODULES: dict[str, ModuleType] = {"pt2": to_pt2, "onnx": to_onnx, "aoti": to_aoti, "tensorrt": to_tensorrt}


def drive_per_step(null_embedding: CallableGraph, step: CallableGraph, generator: CallableGraph,
                   noise: PriorNoise, ks: Tensor) -> Tensor:
    """Images (B, C, H, W) from the three per-step graphs; ``ks`` (T, 1) int64 holds the step indices (one
    fixed address per step, so a captured loop reads each index from its own buffer)."""
    xemb = null_embedding(noise.xi)
    z = noise.z
    last = ks.shape[0] - 1
    zeros = torch.zeros_like(z)  # the final x-prediction step has std 0: its noise input is never used
    for k in range(last + 1):
        z = step(ks[k], z, xemb, noise.eps[k] if k < last else zeros)
    return generator(z)


class _Graphed:
    """``fn(noise)`` captured once as a CUDA graph over static input buffers; replays copy the inputs in."""

    def __init__(self, fn: Callable[[PriorNoise], Tensor], example: PriorNoise, device: torch.device) -> None:
        self.static = PriorNoise(example.xi.clone(), example.z.clone(), example.eps.clone())
        self.out: Tensor | None = None

        def body() -> None:
            self.out = fn(self.static)

        self.graph = CapturedGraph(body, device, ())

    def __call__(self, noise: PriorNoise) -> Tensor:
        self.static.xi.copy_(noise.xi)
        self.static.z.copy_(noise.z)
        self.static.eps.copy_(noise.eps)
        self.graph.replay()
        assert self.out is not None
        return self.out.clone()  # the static output is overwritten by the next replay


class ArtifactSampler:
    """An exported sampler ready to run: ``images(noise)`` for up to ``batch`` rows of noise."""

    def __init__(self, directory: Path, sidecar: Sidecar, device: torch.device, *, cuda_graph: bool = True) -> None:
        self.directory, self.sidecar, self.device = directory, sidecar, device
        fmt = FORMAT_MODULES[sidecar.format]
        self.graphs = {name: fmt.load(directory / g.file, sidecar.device, device) for name, g in sidecar.graphs.items()}
        self.ks = torch.arange(sidecar.n_steps, device=device).view(-1, 1)
        self.note: str | None = None
        self._graphed: _Graphed | None = None
        self._use_graph = cuda_graph and device.type == "cuda" and sidecar.format != "onnx"

    @property
    def batch(self) -> int:
        return self.sidecar.batch

    @property
    def captured(self) -> bool:
        """Whether batches replay one CUDA graph (after the first call)."""
        return self._graphed is not None

    def _eager(self, noise: PriorNoise) -> Tensor:
        g = self.graphs
        if self.sidecar.structure == "whole":
            return g["sampler"](noise.xi, noise.z, noise.eps)
        return drive_per_step(g["null_embedding"], g["step"], g["generator"], noise, self.ks)

    def images(self, noise: PriorNoise) -> Tensor:
        """Images (rows, C, H, W) fp32 in [−1, 1] on the device, for ``noise`` of at most ``batch`` rows."""
        rows = noise.rows
        if rows > self.batch:
            raise ValueError(f"{rows} rows of noise for an artifact of batch {self.batch}")
        full = noise.padded(self.batch).to(self.device)
        with torch.no_grad():
            if self._use_graph and self._graphed is None:
                try:
                    self._graphed = _Graphed(self._eager, full, self.device)
                except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly instead
                    self._use_graph = False
                    self.note = f"CUDA-graph capture failed ({str(exc).splitlines()[0][:120]}); driving eagerly"
            out = self._graphed(full) if self._graphed is not None else self._eager(full)
        return out[:rows]

    def draw(self, stream: NoiseStream, rows: int) -> Tensor:
        """The next ``rows`` images on ``engine.sample``'s noise stream (its next ``rows`` prior-noise draws)."""
        return self.images(prior_noise(stream, rows))


def check_loadable(sidecar: Sidecar, device: torch.device) -> None:
    """Fail before any work when this machine cannot run the artifact (missing package, wrong device type)."""
    import importlib.util

    if sidecar.format == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        raise ExportError("sampling an ONNX artifact needs onnxruntime: pip install 'damc-engine[export]'")
    if sidecar.format == "aoti" and torch.device(sidecar.device).type != device.type:
        raise ExportError(f"the AOTInductor package was compiled for {sidecar.device} and this run uses "
                          f"{device.type}: pass --device {sidecar.device} or export again with --device {device.type}")
    if sidecar.format == "tensorrt":
        if device.type != "cuda":
            raise ExportError("a TensorRT artifact runs on a CUDA GPU only")
        to_tensorrt.require(device)


def load_artifact(path: Path, device: torch.device, *, cuda_graph: bool = True) -> ArtifactSampler:
    """Read the sidecar, check the format's packages and device, load every graph."""
    directory, sidecar = read_sidecar(path)
    try:
        return ArtifactSampler(directory, sidecar, device, cuda_graph=cuda_graph)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt graph file surfaces as the loader's own exception
        raise ExportError(f"--from-export {path}: cannot load the {sidecar.format} graphs "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                          "export again") from None
