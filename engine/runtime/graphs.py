"""CUDA-graph capture of a whole loop, with the parameters kept out of autograd while it is recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["CapturedGraph", "frozen"]


def _requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters out of autograd while a loop is captured: no weight-gradient residuals are recorded."""
    flags = [p.requires_grad for m in modules for p in m.parameters()]
    _requires_grad(modules, False)
    try:
        yield
    finally:
        params = [p for m in modules for p in m.parameters()]
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


class CapturedGraph:
    """One CUDA graph around ``body`` (which reads and writes static tensors only).

    Warm-up runs on the capture stream (compilation, cudnn autotuning and Triton JIT happen there, never
    during capture), the RNG state is restored afterwards so that capturing consumes no randomness, and the
    graph is captured on the same stream it was warmed on (stale-stream autograd errors otherwise).
    """

    def __init__(self, body: Callable[[], None], device: torch.device, freeze: tuple[nn.Module, ...],
                 warmup: int = 2) -> None:
        rng_state = torch.cuda.get_rng_state(device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with frozen(*freeze), torch.cuda.stream(stream):
            for _ in range(warmup):
                body()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                body()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.set_rng_state(rng_state, device)

    def replay(self) -> None:
        self.graph.replay()
