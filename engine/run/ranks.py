"""What the processes of one run must agree on, and how a training run joins them (README "Several GPUs").

One process (``python -m engine.train``) gets :meth:`Distributed.single`, whose collectives are identities, so the
trainer has one code path. Under ``torchrun`` every rank runs the same trainer; this module keeps them in step:

* :func:`join` reads torchrun's variables, refuses a global batch that does not divide over the ranks (one line,
  before any process group exists) and starts the groups (:meth:`Distributed.start`).
* :func:`together` runs one start-up step on every rank and turns a failure on any rank into a failure on all:
  the failing rank raises its own one-line error, the others say that another rank failed. Without it a rank
  that refused its input would leave the others waiting in the next collective until ``system.dist_timeout_s``.
* :func:`fingerprint` / :func:`check_replicas`: the replicas must stay identical (same iteration, LRs and
  weights): gradients are averaged by one all-reduce whose result is the same on every rank, so the
  optimizer steps are too. Checked bit-for-bit at start-up and at every checkpoint, where the host syncs anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from engine.config import Config, ConfigError
from engine.errors import EXIT_STOPPED, UserError
from engine.learners import Learner
from engine.runtime import system
from engine.runtime.distributed import Distributed, from_env

__all__ = ["ReplicaMismatch", "check_replicas", "fingerprint", "join", "together"]

T = TypeVar("T")


class OtherRankFailed(UserError):
    """Another rank failed during start-up; its own error line says why."""

    exit_code = EXIT_STOPPED


class ReplicaMismatch(UserError):
    """The ranks' copies of the networks or optimizers differ (different code or data on some node, or a bug)."""

    exit_code = EXIT_STOPPED


def join(cfg: Config) -> Distributed:
    """This process's place in the run: a single process, or a rank of a torchrun job (groups started)."""
    launch = from_env()
    if not launch.launched:
        return Distributed.single(system.resolve_device(cfg.system))
    world = launch.world_size
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: the global batch must split evenly over the "
                          f"{world} processes (each trains on batch_size / {world}); use a multiple of {world}")
    return Distributed.start(launch, cfg.system.device, cfg.system.dist_timeout_s)


def together(dist: Distributed, step: Callable[[], T], what: str) -> T:
    """``step()`` on this rank; when it raises on any rank, every rank raises (the failing one its own error).

    Expected failures only reach here as exceptions of ``step``; a KeyboardInterrupt (torchrun forwards Ctrl-C to
    every rank) passes through untouched, so every rank reports its own interruption.
    """
    error: Exception | None = None
    out: T | None = None
    try:
        out = step()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks learned of it
        error = exc
    if dist.any(error is not None):
        if error is not None:
            raise error
        raise OtherRankFailed(f"rank {dist.rank}: another rank failed during {what} (its error line says why); "
                              "nothing was written by this rank")
    return out  # type: ignore[return-value]  # step() returned normally on this rank


def fingerprint(learner: Learner) -> list[float]:
    """Iteration, every optimizer's LR and step count, and per network the float64 sum and absolute sum of its
    weights: equal on every rank when the replicas are equal (one host read; checkpoint time only)."""
    values: list[float] = [float(learner.iteration)]
    for opt in learner.optimizers().values():
        values.append(float(opt.param_groups[0]["lr"]))
        steps = [s["step"] for s in opt.state.values() if "step" in s]
        values.append(float(steps[0]) if steps else 0.0)
    sums = [torch.stack([torch.cat([p.detach().double().flatten() for p in m.parameters()]).sum(),
                         torch.cat([p.detach().double().abs().flatten() for p in m.parameters()]).sum()])
            for m in learner.networks().values()]
    values += torch.cat(sums).tolist()
    return values


def check_replicas(dist: Distributed, learner: Learner, when: str) -> None:
    """Raise :class:`ReplicaMismatch` on every rank when the ranks' fingerprints differ (no-op for one process)."""
    if dist.world_size == 1:
        return
    if not dist.same_everywhere(fingerprint(learner)):
        raise ReplicaMismatch(f"rank {dist.rank}: the ranks' copies of the networks or optimizers differ {when} "
                              "(iteration, learning rates, weight sums); every node must run the same code on the "
                              "same data")
