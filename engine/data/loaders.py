"""Training-batch loaders behind one interface: CPU (``torch``), GPU-resident (``gpu``) and NVIDIA DALI (``dali``).

Every loader is an infinite iterator of float32 ``(B, C, H, W)`` batches in [-1, 1] on the target device with
the interface of :class:`~engine.data.stream.BatchStream` (the ``torch`` loader itself): ``epoch``, ``position``,
``__len__`` (batches per epoch, drop_last), ``state_dict()`` / ``load_state_dict()`` (see :class:`Loader`).

**One sample order for all loaders.** :class:`~engine.data.stream.EpochPlan` replays BatchStream's draw sequence
on a CPU ``torch.Generator`` seeded from the run seed: ``randperm(N)`` for the epoch, then ``rand(B) < 0.5`` flip
coins for each of its ``N // B`` batches, then the next epoch's ``randperm``. The device loader and both DALI
pipelines (:mod:`engine.data.dali`) take their indices *and* flip coins from it, so

* every loader visits the same images in the same order with the same flips for a given seed, independent
  of the device; for in-memory data the ``gpu`` and ``dali`` loaders (the latter with its default
  ``exact=True``) give batches *bitwise equal* to BatchStream's, so switching ``data.loader`` does not
  change a run;
* the state is BatchStream's ``state_dict`` (same keys, same generator state), so a checkpoint written with
  one loader resumes exactly with any other.

The plan draws a whole epoch's coins when the epoch starts (same generator consumption as BatchStream's
per-batch draws, just earlier) so that the GPU loader moves them to the device once per epoch rather than
paying a blocking host-to-device copy every batch; ``state_dict`` re-derives BatchStream's mid-epoch
generator state by replaying the consumed draws. See :func:`auto_kind` for what ``data.loader=auto`` picks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from engine.data.dali import DALI_INSTALL_HINT, DaliFolderStream, DaliMemoryStream, import_dali
from engine.data.folder import FolderSpec
from engine.data.pixels import check_u8, u8_to_float
from engine.data.stream import BatchStream, EpochPlan, PlanBacked

__all__ = [
    "GPU_DATA_FRACTION",
    "LOADER_KINDS",
    "DeviceStream",
    "Loader",
    "LoaderKind",
    "auto_kind",
    "make_loader",
]

LoaderKind = Literal["auto", "dali", "gpu", "torch"]
LOADER_KINDS: tuple[str, ...] = ("auto", "dali", "gpu", "torch")

#: Default share of the GPU's memory the ``auto`` rule lets a device-resident uint8 data set take: CIFAR-10
#: (154 MB), CelebA-64 (2.0 GB) and CelebA-HQ-256 (5.9 GB) all fit an 80 GB card with room for training.
GPU_DATA_FRACTION = 0.25

_log = logging.getLogger(__name__)


@runtime_checkable
class Loader(Protocol):
    """What the trainer and the checkpoint code need from a batch source (BatchStream's interface).

    ``epoch``: 0-based epoch of the next batch (a rollover happens lazily on the next call); ``position``:
    entries of the current epoch's permutation already consumed (a multiple of the batch size).
    """

    @property
    def epoch(self) -> int: ...
    @property
    def position(self) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[torch.Tensor]: ...
    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DeviceStream(PlanBacked):
    """The whole uint8 data set resident on ``device``; per batch: index_select, flip, normalise there.

    Batches are bitwise equal to :class:`~engine.data.BatchStream`'s for the same images, seed and flip
    (same :class:`EpochPlan` sequence, same ``torch.where(coin, x.flip(-1), x)`` and ``x / 127.5 - 1``;
    float division is correctly rounded on CPU and CUDA alike). Per epoch, the permutation and the epoch's
    coins go to the device in one non-blocking copy each; per batch there is no host-to-device transfer and
    no host synchronisation, only ~5 small kernels (gather, flip, where, convert, two in-place scalar ops)
    on B x 3 KB of data. On a CPU device it is simply an in-memory loader.
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
        self.device = torch.device(device)
        self.plan = EpochPlan(images_u8.shape[0], batch_size, seed=seed, flip=flip, rank=rank, world_size=world_size)
        self.images = images_u8.to(self.device).contiguous()  # moved once; ~154 MB for CIFAR-10
        self.batch_size = self.plan.local_batch_size  # this rank's shard of the global batch
        self._src: tuple[torch.Tensor, torch.Tensor | None] | None = None  # host tensors the device copies are of
        self._perm_dev = torch.empty(0, dtype=torch.int64)
        self._coins_dev: torch.Tensor | None = None

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t.to(self.device)
        # Pinned + non_blocking: the copy is queued on the stream instead of stalling the host until the GPU
        # has drained all queued work (a pageable copy would); the caching host allocator keeps the pinned
        # buffer alive until the copy has run.
        return t.pin_memory().to(self.device, non_blocking=True)

    def __next__(self) -> torch.Tensor:
        _, _, start = self.plan.next_batch()
        c = self.plan.cursor
        if self._src is None or self._src[0] is not c.permutation or self._src[1] is not c.coins:
            # New epoch (or restored state): ship the epoch's permutation and coins once.
            self._src = (c.permutation, c.coins)
            self._perm_dev = self._to_device(c.permutation)
            self._coins_dev = None if c.coins is None else self._to_device(c.coins)
        lo, b = self.plan.shard_offset, self.batch_size  # this rank's rows of the global batch at `start`
        batch = self.images.index_select(0, self._perm_dev[start + lo : start + lo + b])
        if self._coins_dev is not None:
            coins = self._coins_dev[start // self.plan.batch_size, lo : lo + b]
            batch = torch.where(coins.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return u8_to_float(batch)


def auto_kind(*, folder: bool, data_bytes: int, cuda: bool, dali: bool, gpu_budget_bytes: int) -> str:
    """The ``data.loader=auto`` rule (a pure function, so it is tested without a GPU).

    * No CUDA device: ``torch`` (BatchStream). DALI's CPU mode is for CI, not speed.
    * The decoded uint8 set fits ``gpu_budget_bytes``: ``gpu`` (folders are decoded once at start-up). The
      data set is static (flip is the only augmentation), so re-decoding every epoch buys nothing, and the
      device loader has no per-batch host work, transfer or synchronisation; it is bitwise identical to
      BatchStream. DALI would add a per-batch Python feed + pipeline hop, cannot sit inside a CUDA graph,
      and is reported no faster than a plain loader on CIFAR-sized images (spec performance.md §3).
    * Too big for the device: a folder with DALI installed -> ``dali`` (nvJPEG decode per batch, nothing held
      in memory); anything else -> ``torch`` (host-resident, pinned non-blocking copies).
    """
    if not cuda:
        return "torch"
    if data_bytes <= gpu_budget_bytes:
        return "gpu"
    return "dali" if folder and dali else "torch"


def _gpu_budget(device: torch.device, fraction: float) -> int:
    return int(torch.cuda.get_device_properties(device).total_memory * fraction)


def make_loader(
    kind: str,
    source: torch.Tensor | FolderSpec,
    batch_size: int,
    *,
    seed: int,
    flip: bool,
    device: torch.device | str,
    log: Callable[[str], None] | None = None,
    gpu_budget_bytes: int | None = None,
    dali_options: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Loader, str]:
    """Build the loader for ``data.loader = kind``; returns ``(loader, chosen kind)``.

    ``source`` is a uint8 ``(N, C, H, W)`` tensor (from ``load_images``) or a :class:`FolderSpec` (decoded
    here unless the chosen loader is DALI). ``auto`` follows :func:`auto_kind`. An explicit ``gpu`` without
    a CUDA device, or ``dali`` without an importable DALI, falls back to what ``auto`` picks. Each fallback is
    reported as exactly one line through ``log`` (default: this module's logger at WARNING); a choice that
    needs no fallback logs nothing (the caller logs the returned kind). ``dali`` with a CPU ``device`` runs
    DALI's CPU-only mode (what CI tests). ``dali_options``: extra keyword arguments for the DALI stream
    (``exact``, ``num_threads``, ``prefetch``). ``rank`` / ``world_size``: this process's shard of the global
    ``batch_size`` (:class:`~engine.data.stream.EpochPlan`); every loader yields ``batch_size / world_size`` rows.
    """
    if kind not in LOADER_KINDS:
        raise ValueError(f"data.loader must be one of {', '.join(LOADER_KINDS)}; got {kind!r}")
    say = log if log is not None else _log.warning
    device = torch.device(device)
    folder = isinstance(source, FolderSpec)
    if not isinstance(source, FolderSpec):
        check_u8(source)
    cuda = device.type == "cuda" and torch.cuda.is_available()

    # Import DALI only where the answer matters (an explicit request, or auto on a GPU with a folder): the
    # import takes about a second and CPU runs never need it.
    dali_error: str | None = None
    if kind == "dali" or (kind == "auto" and cuda and folder):
        try:
            import_dali()
        except ImportError as exc:
            dali_error = str(exc.__cause__ or exc)

    def auto() -> str:
        if not cuda:
            return "torch"
        data_bytes = source.decoded_bytes() if isinstance(source, FolderSpec) else source.numel()
        budget = gpu_budget_bytes if gpu_budget_bytes is not None else _gpu_budget(device, GPU_DATA_FRACTION)
        return auto_kind(folder=folder, data_bytes=data_bytes, cuda=cuda, dali=dali_error is None,
                         gpu_budget_bytes=budget)

    chosen = kind
    if kind == "auto":
        chosen = auto()
        if not cuda:
            say(f"data.loader=auto: no CUDA device ({device}), using the CPU loader 'torch'")
        elif chosen == "torch" and folder and dali_error is not None:
            say(f"data.loader=auto: the decoded folder exceeds the GPU budget and DALI is not importable "
                f"({dali_error}; {DALI_INSTALL_HINT}), using the host loader 'torch'")
    elif kind == "dali" and dali_error is not None:
        chosen = auto()
        say(f"data.loader=dali: NVIDIA DALI is not importable ({dali_error}; {DALI_INSTALL_HINT}), "
            f"using '{chosen}'")
    elif kind == "gpu" and not cuda:
        chosen = "torch"
        say(f"data.loader=gpu: no CUDA device ({device}), using the CPU loader 'torch'")

    opts = dict(dali_options or {})
    if chosen == "dali" and world_size > 1:
        opts.update(rank=rank, world_size=world_size)
    if chosen == "dali":
        if isinstance(source, FolderSpec):
            return DaliFolderStream(source, batch_size, seed=seed, flip=flip, device=device, **opts), chosen
        return DaliMemoryStream(source, batch_size, seed=seed, flip=flip, device=device, **opts), chosen
    images = source.decode() if isinstance(source, FolderSpec) else source
    shard = {"rank": rank, "world_size": world_size}
    if chosen == "gpu":
        return DeviceStream(images, batch_size, seed=seed, flip=flip, device=device, **shard), chosen
    return BatchStream(images, batch_size, seed=seed, flip=flip, device=device, **shard), chosen
