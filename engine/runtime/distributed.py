"""Several processes on one or more machines: torchrun's environment, the process groups, per-rank seeds, and
the few collectives the training loop needs. PyTorch's own stack only: ``torchrun`` starts the processes,
NCCL (GPU) or gloo (CPU) carries the collectives; nothing here manages processes. Gradients are averaged with
one flat all-reduce per update (:meth:`Distributed.average_grads_` says why not ``DistributedDataParallel``).

Semantics (README "Several GPUs"):

* ``train.batch_size`` is the global batch; each of the W ranks trains on its contiguous shard of every global
  batch (:class:`~engine.data.stream.EpochPlan`), so one global iteration sees exactly the single-process batch.
* Randomness: rank 0 uses the run seed itself, so a 1-process ``torchrun`` is the plain run; rank r > 0 uses
  :func:`rank_seed` (a SeedSequence of (seed, r)): independent streams for the chains and the amortizer draws.
  Parameters start identical on every rank (built from the run seed, then broadcast by DDP).
* Control decisions that must agree (stop on a signal, divergence, a failed save) go through a small gloo group
  on the host (:meth:`Distributed.any`), so deciding never waits on the GPU stream; metrics are averaged over
  ranks on the device (:meth:`Distributed.mean_`) once per log interval.
* A rank that dies breaks every later collective: the others raise (gloo closes the connection at once; NCCL
  after ``system.dist_timeout_s``) and exit non-zero; torchrun's agent then stops the job, or restarts it from the
  last checkpoint with ``--max-restarts``.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.distributed_c10d import PrefixStore, Store
from torch.distributed.rendezvous import rendezvous

from engine.errors import EXIT_BAD_INPUT, EXIT_STOPPED, UserError

__all__ = ["Distributed", "DistributedError", "LaunchError", "from_env", "rank_seed"]

# torchrun sets these (torch.distributed.run); RANK without WORLD_SIZE is a broken environment.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(UserError, RuntimeError):
    """The distributed environment is unusable (bad torchrun variables, no device for a rank, a peer that died);
    the message is one line, the exit status 1."""

    exit_code = EXIT_STOPPED


class LaunchError(DistributedError):
    """torchrun's variables are inconsistent: bad input, nothing was started or written (exit status 2)."""

    exit_code = EXIT_BAD_INPUT


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNG streams: ``seed`` itself for rank 0, else 63 bits of SeedSequence((seed, rank))
    (independent of the run seed's neighbours, unlike seed + rank)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process (single process: rank 0 of 1, not launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (or another launcher that sets RANK / WORLD_SIZE / LOCAL_RANK)


def from_env(env: Mapping[str, str] | None = None) -> Launch:
    """Read torchrun's variables; raise :class:`DistributedError` (one line) when they are inconsistent."""
    env = os.environ if env is None else env
    present = [k for k in _ENV if k in env]
    if not present:
        return Launch()
    if len(present) != len(_ENV):
        missing = ", ".join(k for k in _ENV if k not in env)
        raise LaunchError(f"distributed launch: {', '.join(present)} set but {missing} missing; start with "
                               "torchrun --nproc_per_node=N -m engine.train ...")
    try:
        rank, world, local = (int(env[k]) for k in _ENV)
    except ValueError:
        raise LaunchError("distributed launch: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                               + ", ".join(f"{k}={env[k]!r}" for k in _ENV)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise LaunchError(f"distributed launch: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need "
                               "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return Launch(rank, world, local, launched=True)


def _attempt_store(launch: Launch, timeout: datetime.timedelta) -> Store:
    """torchrun's store (``env://``: MASTER_ADDR / MASTER_PORT), keyed by the restart attempt.

    With ``--max-restarts`` torchrun's agent restarts the workers against the same store, where the process group's
    keys of the failed attempt (every rank's gloo address) are still present: a restarted rank could read a dead
    peer's address and fail with "Connection refused" (seen here in about half of the restarts). A prefix per
    attempt (``TORCHELASTIC_RESTART_COUNT``) gives every attempt fresh keys.
    """
    store, _, _ = next(rendezvous("env://", rank=launch.rank, world_size=launch.world_size, timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return PrefixStore(f"damc/attempt-{attempt}", store)


class Distributed:
    """This process's place in the job, and the collectives of the training loop.

    A single process (``python -m engine.train``) gets an instance with ``world_size == 1`` whose collectives are
    no-ops, so the loop has one code path. Under torchrun, :meth:`start` initialises the default process group
    (NCCL on CUDA, gloo on CPU) plus a gloo group for host-side control decisions.
    """

    def __init__(self, launch: Launch, device: torch.device, backend: str | None,
                 control: Any = None) -> None:
        self.launch, self.device, self.backend, self._control = launch, device, backend, control

    # -- who am I ---------------------------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def active(self) -> bool:
        """A process group exists (launched by torchrun, even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes checkpoints, grids, metrics and TensorBoard events."""
        return self.launch.rank == 0

    # -- set-up -----------------------------------------------------------------------------------------------

    @classmethod
    def single(cls, device: torch.device) -> Distributed:
        return cls(Launch(), device, None)

    @classmethod
    def start(cls, launch: Launch, want: str, timeout_s: float) -> Distributed:
        """Initialise the process groups for ``launch`` and pick this rank's device.

        ``want`` is ``system.device``: ``auto`` / ``cuda`` give rank r the GPU ``LOCAL_RANK`` (NCCL), ``cpu`` (or
        ``auto`` without a GPU) runs every rank on the CPU (gloo). Every failure is one :class:`DistributedError`.
        """
        if not launch.launched:
            raise DistributedError("Distributed.start needs a torchrun launch (RANK / WORLD_SIZE / LOCAL_RANK)")
        cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        if cuda:
            if not torch.cuda.is_available():
                raise DistributedError("system.device = 'cuda' but no CUDA device is visible to this rank")
            if launch.local_rank >= torch.cuda.device_count():
                raise DistributedError(f"LOCAL_RANK={launch.local_rank} but this machine shows "
                                       f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= the GPU count")
            device = torch.device("cuda", launch.local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if not dist.is_initialized():
                dist.init_process_group(backend, store=_attempt_store(launch, timeout), rank=launch.rank,
                                        world_size=launch.world_size, timeout=timeout,
                                        device_id=device if cuda else None)
            # Host-side decisions (signals, divergence, save failures) on their own CPU group: deciding never
            # waits on queued GPU work.
            control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
        except (RuntimeError, ValueError, OSError) as exc:
            raise DistributedError(f"could not join the process group ({backend}): {str(exc).splitlines()[0]}"
                                   ) from None
        return cls(launch, device, backend, control)

    def close(self, clean: bool = True) -> None:
        """Leave the job. ``clean``: every rank got here normally, so wait for the others first (a rank that tears
        its gloo connections down while a peer still uses them can abort the peer at exit)."""
        if not (self.active and dist.is_initialized()):
            return
        if clean:
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # a peer already left: nothing to wait for
                dist.barrier(group=self._control)
        dist.destroy_process_group()
        # Drop our reference too: a process group that outlives destroy_process_group is torn down during
        # interpreter finalization, where gloo's threads can abort the process ("terminate called without an
        # active exception", exit -6) after a run that finished cleanly.
        self._control = None
        gc.collect()

    # -- collectives ------------------------------------------------------------------------------------------

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (host-side; one small gloo all-reduce)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        self._collective(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control))
        return bool(t[0])

    def mean_(self, values: torch.Tensor) -> torch.Tensor:
        """Average ``values`` (on this rank's device) over ranks, in place; the metrics of a log interval."""
        if self.active and self.world_size > 1:
            self._collective(lambda: dist.all_reduce(values, op=dist.ReduceOp.SUM))
            values.div_(self.world_size)
        return values

    def average_grads_(self, module: nn.Module) -> None:
        """Average ``module``'s gradients over ranks, in place: one all-reduce of one flat buffer (issue 16).

        Called between backward and the clip (``engine.runtime.updates.optimizer_step``), so every rank clips and
        steps with the global batch's gradient. Why not ``DistributedDataParallel``: DDP reduces only what a call
        of the wrapper's ``forward`` produced, but the amortizer's loss goes through three entry points
        (``cond_embedding``, ``null_embedding``, ``forward``), and the Langevin chains call G and E dozens of times
        per iteration for input gradients only, which a DDP wrapper would have to be kept out of. One flat
        all-reduce per update (CIFAR-10 sizes: G 18.9 M fp32 values, 76 MB; E 0.07 M; Q 14.4 M) serves every
        call pattern and every update, and bucketing adds nothing for three single-tensor reductions. It gives up
        DDP's overlap of communication with the backward pass (an estimate, not measured: ~0.5 ms for G's 76 MB
        on NVLink at ~150 GB/s, under 1 % of the iteration); bench/bench_ddp.py times both on ≥ 2 GPUs.
        A gradient that is None on a rank (a parameter this update did not reach) is averaged as zeros, so every
        rank sends the same layout.
        """
        if not self.active or self.world_size == 1:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)  # (N,) one contiguous buffer
        self._collective(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
        flat.div_(self.world_size)
        torch._foreach_copy_(grads, list(_unflatten_dense_tensors(flat, grads)))

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere (host-side, pickled over gloo)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        self._collective(lambda: dist.gather_object(obj, out, dst=0, group=self._control))
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (host-side)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=0, group=self._control))
        return box[0]

    def barrier(self) -> None:
        if self.active:
            self._collective(lambda: dist.barrier(group=self._control))

    def same_everywhere(self, values: Sequence[float]) -> bool:
        """True when every rank holds the same ``values`` (iteration counts, LRs: a cheap consistency check)."""
        gathered = self.gather(list(values))
        verdict = None if gathered is None else all(g == gathered[0] for g in gathered)
        return bool(self.broadcast(verdict))

    def _collective(self, fn: Any) -> None:
        try:
            fn()
        except (RuntimeError, ValueError, OSError) as exc:  # a peer died, or the timeout passed
            raise DistributedError(f"rank {self.rank}: a collective with the other {self.world_size - 1} rank(s) "
                                   f"failed ({str(exc).splitlines()[0][:200]}); another rank probably stopped or "
                                   "died; see its output") from None
