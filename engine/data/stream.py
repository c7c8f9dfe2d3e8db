"""The training-batch order and the CPU batch stream (spec ``damc.md`` §3 "Data").

The reference loader is torchvision's ``RandomHorizontalFlip(0.5) -> ToTensor -> Normalize(0.5, 0.5)`` with
``batch_size=128, shuffle=True, drop_last=True``; images reach the model as float32 in [-1, 1] and there is no
dequantisation. This module reproduces it without torchvision:

* :class:`EpochPlan` is the sample order: a per-epoch ``randperm`` and per-batch flip coins from its own CPU
  generator seeded with the run seed, with a resumable state. Every loader (this module's :class:`BatchStream`,
  and the GPU-resident and DALI loaders of :mod:`engine.data.loaders` / :mod:`engine.data.dali`) draws from it,
  so all serve the same batches and their checkpointed states are interchangeable.
* :class:`BatchStream` is the CPU loader: an infinite, exactly resumable iterator of fixed-shape batches,
  the uint8 -> [-1, 1] conversion done on the target device.
* :func:`fixed_batch` gives the first ``n`` images (no flip) for reconstruction grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.data.pixels import check_u8, u8_to_float

__all__ = ["BatchStream", "Cursor", "EpochPlan", "PlanBacked", "fixed_batch"]


@dataclass(frozen=True)
class Cursor:
    """Immutable snapshot of an :class:`EpochPlan` (cheap: tensors are shared, never mutated)."""

    epoch: int
    position: int
    permutation: torch.Tensor  # (N,) int64, CPU
    coins: torch.Tensor | None  # (N // B, B) bool, CPU; rows < base_k are unused after a restore
    base_state: torch.Tensor  # generator state after perm + base_k batches of coins (BatchStream's state then)
    base_k: int


class EpochPlan:
    """BatchStream's shuffle + flip-coin sequence, epoch by epoch, with BatchStream-compatible state.

    Generator consumption is identical to BatchStream's: ``randperm(n)``, then ``rand(batch_size)`` per batch
    (only when ``flip``), ``n // batch_size`` batches per epoch. Here the coins of an epoch are drawn right
    after its permutation (one small tensor the GPU loader ships once); the live generator therefore always
    sits at the end of the current epoch's draws, and :meth:`state_dict` rebuilds BatchStream's mid-epoch
    generator state by replaying the consumed draws from ``base_state`` (at most ``n // batch_size`` tiny
    draws, at checkpoint time only).

    Several processes (``torchrun``, :mod:`engine.runtime.distributed`) share one plan: every rank builds the same
    plan from the same seed (``batch_size`` is the *global* batch) and ``rank`` / ``world_size`` pick its shard,
    the contiguous slice ``[rank·b, (rank+1)·b)`` of every global batch with ``b = batch_size / world_size``
    (:attr:`local_batch_size`). :meth:`next_batch` returns that slice, so the union over ranks of one global
    batch is exactly the single-process batch, and the state is the same on every rank.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, flip: bool, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the {world_size} "
                             "processes; choose a multiple of the world size")
        if num_images < batch_size:
            raise ValueError(
                f"data set has {num_images} images but batch_size is {batch_size}: with drop_last no full batch "
                "can be formed (use a smaller batch_size or more data)"
            )
        self.num_images = int(num_images)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.batches_per_epoch = self.num_images // self.batch_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_batch_size = self.batch_size // self.world_size
        self.shard_offset = self.rank * self.local_batch_size  # this rank's first row in every global batch
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        perm = torch.randperm(self.num_images, generator=self.generator)
        self.cursor = self._start(0, 0, perm)

    def _draw_coins(self, first: int) -> torch.Tensor | None:
        """Coins for batches ``first..`` of the epoch; one ``rand(B)`` per batch, exactly like BatchStream."""
        if not self.flip:
            return None
        coins = torch.zeros(self.batches_per_epoch, self.batch_size, dtype=torch.bool)
        for k in range(first, self.batches_per_epoch):
            coins[k] = torch.rand(self.batch_size, generator=self.generator) < 0.5
        return coins

    def _start(self, epoch: int, position: int, perm: torch.Tensor) -> Cursor:
        base_state = self.generator.get_state()
        base_k = position // self.batch_size
        return Cursor(epoch, position, perm, self._draw_coins(base_k), base_state, base_k)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Advance by one global batch: ``(indices (b,) int64, coins (b,) bool or None, start)`` for this rank's
        shard (b = :attr:`local_batch_size`); ``start`` is the global batch's offset in the permutation."""
        c = self.cursor
        if c.position + self.batch_size > self.num_images:  # lazy rollover, like BatchStream
            c = self.cursor = self._start(c.epoch + 1, 0, torch.randperm(self.num_images, generator=self.generator))
        start = c.position
        lo, hi = start + self.shard_offset, start + self.shard_offset + self.local_batch_size
        idx = c.permutation[lo:hi]
        coins = None if c.coins is None else c.coins[start // self.batch_size, self.shard_offset : hi - start]
        self.cursor = Cursor(c.epoch, start + self.batch_size, c.permutation, c.coins, c.base_state, c.base_k)
        return idx, coins, start

    def state_dict(self, cursor: Cursor | None = None) -> dict[str, Any]:
        """BatchStream's state for ``cursor`` (default: the current one)."""
        c = self.cursor if cursor is None else cursor
        g = torch.Generator(device="cpu")
        g.set_state(c.base_state)
        if self.flip:
            for _ in range(c.position // self.batch_size - c.base_k):
                torch.rand(self.batch_size, generator=g)
        return {
            "epoch": c.epoch,
            "position": c.position,
            "permutation": c.permutation.clone(),
            "generator": g.get_state(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_images": self.num_images,
            "flip": self.flip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts any BatchStream / loader state with matching data set size, batch size and flip."""
        n = self.num_images
        perm = torch.as_tensor(state["permutation"], dtype=torch.int64).cpu()
        if perm.shape != (n,):
            raise ValueError(f"stream state is for {perm.numel()} images but this stream has {n}")
        for key, mine in (("num_images", n), ("batch_size", self.batch_size), ("flip", self.flip)):
            if key in state and state[key] != mine:
                raise ValueError(f"stream state has {key}={state[key]!r} but this stream has {key}={mine!r}")
        position = int(state["position"])
        if position % self.batch_size or not 0 <= position <= n:
            raise ValueError(f"stream state has position={position}, not a multiple of batch_size within [0, {n}]")
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu().clone())
        self.cursor = self._start(int(state["epoch"]), position, perm.clone())


class PlanBacked:
    """The loader interface every :class:`EpochPlan`-driven loader shares (see ``engine.data.loaders.Loader``).

    ``epoch`` is the 0-based index of the epoch the next batch comes from (a rollover happens lazily on the next
    call) and ``position`` how many entries of the current permutation have been consumed. Loaders that keep
    batches in flight (DALI) override :attr:`_front` with the state of the next batch the consumer receives.
    """

    plan: EpochPlan

    @property
    def _front(self) -> Cursor:
        return self.plan.cursor

    @property
    def epoch(self) -> int:
        return self._front.epoch

    @property
    def position(self) -> int:
        return self._front.position

    @property
    def num_images(self) -> int:
        return self.plan.num_images

    def __len__(self) -> int:
        """Number of batches per epoch (drop_last)."""
        return self.plan.batches_per_epoch

    def __iter__(self) -> PlanBacked:
        return self

    def __next__(self) -> torch.Tensor:  # each loader's own batch
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return self.plan.state_dict(self._front)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_state_dict(state)


class BatchStream(PlanBacked):
    """Infinite iterator of ``(batch_size, C, H, W)`` float32 batches in [-1, 1] on ``device``.

    The order and flips come from an :class:`EpochPlan` (its own CPU generator seeded with ``seed``, so the
    global RNG used by the sampler is untouched): a fresh ``randperm`` per epoch, incomplete final batches
    dropped (the reference uses ``drop_last=True``), and with ``flip=True`` each image mirrored with
    probability 0.5. Every loader in :mod:`engine.data.loaders` uses the same plan, so they all serve the same
    batches and their states are interchangeable.

    ``epoch`` is the 0-based index of the epoch the next batch comes from (until a rollover happens
    lazily on the next call) and ``position`` is how many entries of the current permutation have been
    consumed. :meth:`state_dict` / :meth:`load_state_dict` restore the stream bitwise.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        flip: bool,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_u8(images_u8)
        self.plan = EpochPlan(images_u8.shape[0], batch_size, seed=seed, flip=flip, rank=rank, world_size=world_size)
        self.images = images_u8
        # batch_size: the batches this stream yields (this rank's shard of the global batch).
        self.batch_size, self.seed, self.flip = self.plan.local_batch_size, self.plan.seed, self.plan.flip
        self.device = torch.device(device)
        # Pinned host memory + non_blocking lets the small uint8 copy overlap with GPU work; only
        # meaningful (and only allowed) when copying from CPU to CUDA.
        self._pin = self.device.type == "cuda" and images_u8.device.type == "cpu"

    @property
    def permutation(self) -> torch.Tensor:
        return self.plan.cursor.permutation

    def __next__(self) -> torch.Tensor:
        idx, coins, _ = self.plan.next_batch()
        batch = self.images.index_select(0, idx.to(self.images.device))
        if self._pin:
            batch = batch.pin_memory()
        # Transfer the uint8 batch (4x smaller than fp32) and do flip + normalisation on the device.
        batch = batch.to(self.device, non_blocking=self._pin)
        if coins is not None:
            mask = coins.to(self.device).view(-1, 1, 1, 1)
            batch = torch.where(mask, batch.flip(-1), batch)
        return u8_to_float(batch)


def fixed_batch(images_u8: torch.Tensor, n: int, device: torch.device | str) -> torch.Tensor:
    """The first ``n`` images as float32 in [-1, 1] on ``device``, no augmentation.

    Used for reconstruction grids (on the test split), so the same images are shown every time.
    """
    check_u8(images_u8)
    if not 1 <= n <= images_u8.shape[0]:
        raise ValueError(f"fixed_batch needs 1 <= n <= {images_u8.shape[0]} (number of images), got n={n}")
    return u8_to_float(images_u8[:n].to(torch.device(device)))
