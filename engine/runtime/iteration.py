"""The whole training iteration as one CUDA graph (issue 14 item 3; ``perf.iteration_graph``), and side streams
for its independent parts (``perf.side_streams``).

Steps 1-7 of Algorithm 1 (``engine.learners.damc.iteration_updates``: mask, conditional draw, posterior and prior
chains, the M amortizer updates, the G and E updates) are device work only, so they are captured once per batch
shape and replayed every iteration: one launch instead of ~10⁴. While the body runs for the capture (and its
warm-up), every loop of :class:`~engine.runtime.fast.FastChains` runs inline instead of replaying its own graph
(:attr:`IterationGraphs.capturing`). What this needs and how it is met:

* randomness: the body draws only from the run's generator ``learner.rng``, registered with the graph (every
  replay advances its Philox offset; checkpoints save it, so resume stays exact);
* optimizer steps without host work: fused, capturable Adam/AdamW (``fused_optim``); E's and Q's learning rates
  are device tensors that the closed-form LR schedule writes between replays. G's stays a Python float, because
  ``engine.run.train`` writes it into the JSON log as it is; a float LR is baked into the graph, so the host-side
  LRs are part of the capture key and the graph is captured again when they decay (every ``lr_decay_every``
  iterations until the floor: a few seconds per 1,000 iterations);
* warm-up runs are real training steps: parameters, optimizer state and the generators are saved before and
  restored after them (:class:`~engine.runtime.updates.StateSnapshot`), so the first replay is the first update;
* an optimizer's ``load_state_dict`` (resume, divergence rollback) replaces its state tensors: the
  :func:`~engine.runtime.updates.make_capturable` hook drops the graph, and the next iteration captures again;
* LR decay and the EMA update (steps 8-9) stay outside, decided by the host's iteration count.

Side streams: the prior chain (E only) does not depend on the posterior chain, and the amortizer updates (Q only)
do not depend on the G and E updates. With ``side_streams`` on, the posterior chain and the amortizer updates are
forked onto their own streams inside the capture (the graph records the branches as parallel), and joined where
their results are needed: after the prior chain, and at the end of the body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from engine.runtime.chains import IterationBody, LoopState
from engine.runtime.graphs import CapturedGraph
from engine.runtime.updates import StateSnapshot

__all__ = ["IterationGraphs", "SideStreams"]


class IterationGraphs:
    """Captured iterations, one per (batch shape, host-side LRs); see the module docstring."""

    def __init__(self, learner: LoopState) -> None:
        self.learner = learner
        self._inside = False
        self._entries: dict[tuple[object, ...], tuple[CapturedGraph, Tensor, dict[str, Tensor]]] = {}

    @property
    def capturing(self) -> bool:
        """True while the body runs for the capture or its warm-up: the loops then run inline."""
        return self._inside

    def clear(self) -> None:
        self._entries.clear()

    def _host_lrs(self) -> tuple[float, ...]:
        lr = self.learner
        return tuple(float(g["lr"]) for o in (lr.opt_g, lr.opt_e, lr.opt_q) if o is not None
                     for g in o.param_groups if not isinstance(g["lr"], Tensor))

    def run(self, body: IterationBody, x: Tensor, join: Callable[[], None]) -> dict[str, Tensor]:
        """Replay the iteration on batch x (B, C, H, W), capturing it first if needed; the diagnostics are copied
        out of the graph's memory (one stack), so they survive the next replay."""
        key = (tuple(x.shape), x.dtype, x.device, self._host_lrs())
        entry = self._entries.get(key)
        if entry is None:
            self._entries.clear()  # a stale key (an LR that moved): free its memory pool
            entry = self._entries[key] = self._capture(body, x, join)
        graph, xbuf, outs = entry
        xbuf.copy_(x)
        graph.replay()
        names = list(outs)
        flat = torch.stack([outs[n] for n in names])  # (K,) fp32, new memory
        return dict(zip(names, flat.unbind(0), strict=True))

    def _capture(self, body: IterationBody, x: Tensor,
                 join: Callable[[], None]) -> tuple[CapturedGraph, Tensor, dict[str, Tensor]]:
        lr = self.learner
        xbuf = x.detach().clone()
        outs: dict[str, Tensor] = {}

        def captured() -> None:
            self._inside = True
            try:
                res = body(xbuf)
                join()  # every side stream back into the capture stream before the capture ends
            finally:
                self._inside = False
            outs.clear()
            outs.update(res)  # the last run is the capture: these are the graph's output tensors

        nets = lr.nets
        modules: list[nn.Module] = [m for m in (nets.generator, nets.energy, nets.amortizer) if m is not None]
        opts = [o for o in (lr.opt_g, lr.opt_e, lr.opt_q) if o is not None]
        graph = CapturedGraph(captured, lr.device, (), generators=(lr.rng,),
                              state=lambda: StateSnapshot(modules, opts))
        return graph, xbuf, outs


def _identity(t: Tensor) -> Tensor:
    return t


class SideStreams:
    """Fork/join of independent work onto side streams, only while ``active()`` (inside the iteration capture)."""

    def __init__(self, device: torch.device, enabled: bool, active: Callable[[], bool]) -> None:
        self.device, self.enabled = device, enabled
        self._active = active
        self._streams: list[torch.cuda.Stream] = []
        self._next = 0
        self._pending: list[torch.cuda.Stream] = []

    def _stream(self) -> torch.cuda.Stream:
        if len(self._streams) < 2:
            self._streams.append(torch.cuda.Stream(self.device))
        s = self._streams[self._next % len(self._streams)]
        self._next += 1
        return s

    @contextlib.contextmanager
    def fork(self, *inputs: Tensor) -> Iterator[Callable[[Tensor], Tensor]]:
        """Run the block on a side stream that first waits for the current one; ``inputs`` (made on the current
        stream) and the outputs passed through the yielded function are marked as used on both streams, so the
        allocator never hands their memory to other work while the branch may still read it."""
        if not (self.enabled and self._active()):
            yield _identity
            return
        cur = torch.cuda.current_stream(self.device)
        side = self._stream()
        side.wait_stream(cur)
        for t in inputs:
            t.record_stream(side)

        def hand_back(t: Tensor) -> Tensor:
            t.record_stream(cur)
            return t

        with torch.cuda.stream(side):
            yield hand_back
        self._pending.append(side)

    def join(self) -> None:
        """The current stream waits for every forked branch."""
        if not self._pending:
            return
        cur = torch.cuda.current_stream(self.device)
        for s in self._pending:
            cur.wait_stream(s)
        self._pending.clear()
