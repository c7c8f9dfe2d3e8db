"""CUDA-graph capture of a whole loop or a whole iteration, with the parameters kept out of autograd while a loop
is recorded, the RNG streams a region draws from registered with the graph, and the state a training region
changes restored after its warm-up runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

__all__ = ["CapturedGraph", "GeneratorProxy", "Restorable", "frozen"]


def _requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters out of autograd while a loop runs or is captured: no weight-gradient residuals are recorded."""
    flags = [p.requires_grad for m in modules for p in m.parameters()]
    _requires_grad(modules, False)
    try:
        yield
    finally:
        params = [p for m in modules for p in m.parameters()]
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


class Restorable(Protocol):
    """State saved before a region's warm-up runs (:class:`engine.runtime.updates.StateSnapshot`)."""

    def restore(self) -> None: ...


class CapturedGraph:
    """One CUDA graph around ``body`` (which reads and writes static tensors only).

    Warm-up runs on the capture stream (compilation, cudnn autotuning and Triton JIT happen there, never
    during capture), and the graph is captured on the same stream it was warmed on (stale-stream autograd errors
    otherwise). ``generators`` are the non-default CUDA generators ``body`` draws from: each is registered with
    the graph (graph-safe Philox: every replay advances its offset, so every replay draws fresh numbers) and,
    like the default generator, put back to its state from before the warm-up, so capturing consumes no
    randomness. ``state`` (called before the warm-up) saves what a training body changes; it is restored before
    the capture, so the warm-up runs leave no trace and the first replay is the first real run.
    """

    def __init__(self, body: Callable[[], None], device: torch.device, freeze: tuple[nn.Module, ...],
                 warmup: int = 2, generators: Sequence[torch.Generator] = (),
                 state: Callable[[], Restorable] | None = None) -> None:
        rng_state = torch.cuda.get_rng_state(device)
        gen_states = [g.get_state() for g in generators]
        saved = state() if state is not None else None
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with frozen(*freeze), torch.cuda.stream(stream):
            for _ in range(warmup):
                body()
            if saved is not None:
                saved.restore()  # on the capture stream, before the capture (which begins with a device sync)
            self.graph = torch.cuda.CUDAGraph()
            for g in generators:
                self.graph.register_generator_state(g)
            with torch.cuda.graph(self.graph, stream=stream):
                body()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.set_rng_state(rng_state, device)
        for g, s in zip(generators, gen_states, strict=True):
            g.set_state(s)

    def replay(self) -> None:
        self.graph.replay()


class GeneratorProxy:
    """Lets a captured graph draw from whichever generator a call passes.

    A graph can only draw from generators registered before its capture, but callers pass their own (evaluation
    draws make a fresh one per grid). The graph draws from this proxy instead; :meth:`bound` copies the caller's
    state in before the replay and the advanced state back after it (host values only: no device work, no sync),
    so the caller's stream moves exactly as if the graph had drawn from it, and no other stream moves.
    """

    def __init__(self, device: torch.device) -> None:
        self.generator = torch.Generator(device=device)

    @contextlib.contextmanager
    def bound(self, rng: torch.Generator) -> Iterator[torch.Generator]:
        self.generator.set_state(rng.get_state())
        yield self.generator
        rng.set_state(self.generator.get_state())
