"""Training-batch loaders behind one interface: CPU (``torch``), GPU-resident (``gpu``) and NVIDIA DALI (``dali``).

Every loader is an infinite iterator of float32 ``(B, C, H, W)`` batches in [-1, 1] on the target device with
the interface of :class:`engine.data.BatchStream` (the ``torch`` loader itself): ``epoch``, ``position``,
``__len__`` (batches per epoch, drop_last), ``state_dict()`` / ``load_state_dict()`` (see :class:`Loader`).

**One sample order for all loaders.** :class:`EpochPlan` replays BatchStream's draw sequence on a CPU
``torch.Generator`` seeded from the run seed: ``randperm(N)`` for the epoch, then ``rand(B) < 0.5`` flip coins
for each of its ``N // B`` batches, then the next epoch's ``randperm``. The device loader and both DALI
pipelines take their indices *and* flip coins from it (DALI's own RNG is never used), so

* every loader visits the same images in the same order with the same flips for a given seed, independent
  of the device; for in-memory data the ``gpu`` and ``dali`` loaders (the latter with its default
  ``exact=True``) give batches *bitwise equal* to BatchStream's, so switching ``data.loader`` does not
  change a run;
* the state is BatchStream's ``state_dict`` (same keys, same generator state), so a checkpoint written with
  one loader resumes exactly with any other.

The plan draws a whole epoch's coins when the epoch starts (same generator consumption as BatchStream's
per-batch draws, just earlier) so that the GPU loader moves them to the device once per epoch rather than
paying a blocking host-to-device copy every batch; ``state_dict`` re-derives BatchStream's mid-epoch
generator state by replaying the consumed draws.

DALI (``pip install 'damc-engine[dali]'``) is imported lazily. Facts behind the design (spec
performance.md §3): CPU-only mode needs ``Pipeline(device_id=None)`` (``-1`` still initialises CUDA), every
``external_source`` gets ``dtype`` and ``ndim``, DALI is not capturable in CUDA graphs and brings little for
tiny in-memory images; see :func:`auto_kind` for what that means for ``data.loader=auto``.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from engine.data import (
    U8_TO_UNIT,
    BatchStream,
    EpochPlan,
    _check_shape,
    _check_u8,
    _Cursor,
    _list_images,
    _load_folder,
    _u8_to_float,
)

__all__ = [
    "DALI_INSTALL_HINT",
    "LOADER_KINDS",
    "DaliFolderStream",
    "DaliMemoryStream",
    "DeviceStream",
    "EpochPlan",
    "FolderSpec",
    "Loader",
    "LoaderKind",
    "auto_kind",
    "dali_available",
    "import_dali",
    "make_loader",
]

LoaderKind = Literal["auto", "dali", "gpu", "torch"]
LOADER_KINDS: tuple[str, ...] = ("auto", "dali", "gpu", "torch")
DALI_INSTALL_HINT = "pip install 'damc-engine[dali]' (or: pip install nvidia-dali-cuda120)"

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

    epoch: int
    position: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[torch.Tensor]: ...
    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class FolderSpec:
    """An image folder to train on (``torchvision.ImageFolder`` layout, labels ignored), not yet decoded.

    ``directory`` is the split folder itself (e.g. ``<root>/train``); files are ordered like
    :func:`engine.data.load_images` orders them, and ``limit`` keeps the first ``limit`` of them. Loaders
    that need the pixels in memory call :meth:`decode`; the DALI folder pipeline reads the files per batch.
    """

    directory: Path
    image_shape: tuple[int, int, int]
    limit: int | None = None

    @cached_property
    def files(self) -> list[Path]:
        """The image files in loading order (listed once; a folder of 160k files takes ~1 s to walk)."""
        files = _list_images(Path(self.directory))
        return files if self.limit is None else files[: self.limit]

    def decode(self) -> torch.Tensor:
        """All images as a uint8 ``(N, C, H, W)`` CPU tensor, exactly as ``load_images`` gives them."""
        return _load_folder(Path(self.directory), _check_shape(self.image_shape), self.limit)

    def decoded_bytes(self) -> int:
        """Size of the decoded uint8 set (what a memory-resident loader would hold)."""
        c, h, w = self.image_shape
        return len(self.files) * c * h * w


# --------------------------------------------------------------------------------------------------
# The shared sample order
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# GPU-resident torch loader
# --------------------------------------------------------------------------------------------------


class DeviceStream:
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
    ) -> None:
        _check_u8(images_u8)
        self.device = torch.device(device)
        self.plan = EpochPlan(images_u8.shape[0], batch_size, seed=seed, flip=flip)
        self.images = images_u8.to(self.device).contiguous()  # moved once; ~154 MB for CIFAR-10
        self.batch_size = self.plan.batch_size
        self._src: tuple[torch.Tensor, torch.Tensor | None] | None = None  # host tensors the device copies are of
        self._perm_dev = torch.empty(0, dtype=torch.int64)
        self._coins_dev: torch.Tensor | None = None

    @property
    def epoch(self) -> int:
        return self.plan.cursor.epoch

    @property
    def position(self) -> int:
        return self.plan.cursor.position

    @property
    def num_images(self) -> int:
        return self.plan.num_images

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def __iter__(self) -> DeviceStream:
        return self

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
        batch = self.images.index_select(0, self._perm_dev[start : start + self.batch_size])
        if self._coins_dev is not None:
            batch = torch.where(self._coins_dev[start // self.batch_size].view(-1, 1, 1, 1), batch.flip(-1), batch)
        return _u8_to_float(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.plan.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# DALI
# --------------------------------------------------------------------------------------------------


def import_dali() -> ModuleType:
    """``nvidia.dali``, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("nvidia.dali")
    except ImportError as exc:
        raise ImportError(f"data.loader=dali needs NVIDIA DALI: {DALI_INSTALL_HINT} ({exc})") from exc


def dali_available() -> bool:
    try:
        import_dali()
    except ImportError:
        return False
    return True


def _lut() -> list[float]:
    # The table BatchStream looks up (x / 127.5 - 1 for every byte), so the DALI lookup gives bitwise the same
    # floats (DALI's crop_mirror_normalize computes (x - 127.5) * (1 / 127.5), which is one ulp off for 174 of
    # the 256 values).
    return U8_TO_UNIT.tolist()


class _DaliStream:
    """Drives a DALI pipeline whose inputs are all ``external_source`` nodes fed from an :class:`EpochPlan`.

    We feed each batch ourselves (``feed_input``) instead of handing DALI a callback, so we know exactly which
    plan state each in-flight batch came from: ``prefetch`` batches are kept in flight (DALI works on them
    while the trainer computes), and ``state_dict`` reports the state *before* the oldest in-flight batch,
    i.e. what the consumer has actually received. ``load_state_dict`` drains the in-flight batches.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, flip: bool, device: torch.device | str,
                 num_threads: int | None, prefetch: int) -> None:
        import_dali()  # the install hint if DALI is missing
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DALI loaders run on 'cpu' or 'cuda' devices, got {self.device}")
        self.gpu = self.device.type == "cuda"
        self.plan = EpochPlan(num_images, batch_size, seed=seed, flip=flip)
        self.batch_size = self.plan.batch_size
        self.prefetch = max(1, int(prefetch))
        self.num_threads = int(num_threads or max(1, min(4, os.cpu_count() or 1)))
        self._inflight: deque[_Cursor] = deque()  # plan state before each fed, not yet returned batch
        self._started = False
        self.pipe = self._pipeline()

    # -- to be provided by subclasses -------------------------------------------------------------
    def _graph(self, fn: Any, types: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _feed(self, idx: torch.Tensor, coins: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------
    def _pipeline(self) -> Any:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        device_id = None  # CPU-only mode; -1 would still initialise CUDA (DALI#5261)
        if self.gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        # seed: DALI's RNG is unused (coins come from the plan) but seeded anyway so nothing is left to chance.
        # exec_dynamic: outputs are owned by the returned tensors, so torch.from_dlpack is zero-copy and safe
        # to keep past the next iteration.
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                        seed=self.plan.seed % (2**31), prefetch_queue_depth=self.prefetch, exec_dynamic=True)
        with pipe:
            pipe.set_outputs(self._graph(fn, types))
        pipe.build()
        return pipe

    def _flip_normalize(self, fn: Any, types: Any, images: Any, mirror: Any, channels: int, exact: bool) -> Any:
        """CHW uint8 images -> mirrored (per-sample coin), float32 CHW in [-1, 1]."""
        if not exact:
            # One op: flip + cast + normalise (+ HWC->CHW if needed); within 1 ulp (6e-8) of x / 127.5 - 1.
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                            mean=[127.5] * channels, std=[127.5] * channels, mirror=mirror)
        # Two ops, bitwise equal to BatchStream: the flip (and layout) on uint8, then a 256-entry lookup table.
        flipped = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW",
                                           mean=[0.0] * channels, std=[1.0] * channels, mirror=mirror)
        return fn.lookup_table(flipped, keys=list(range(256)), values=_lut(), dtype=types.FLOAT)

    @property
    def _front(self) -> _Cursor:
        """Plan state of the next batch the consumer will receive."""
        return self._inflight[0] if self._inflight else self.plan.cursor

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
        return self.plan.batches_per_epoch

    def __iter__(self) -> _DaliStream:
        return self

    def _feed_next(self) -> None:
        # The cursor before the draw is the consumer's state once the batches before this one are returned
        # (at an epoch end it is BatchStream's pending-rollover state, exactly as BatchStream reports it).
        cursor = self.plan.cursor
        idx, coins, _ = self.plan.next_batch()
        mirror = np.zeros(self.batch_size, np.int32) if coins is None else coins.numpy().astype(np.int32)
        self._feed(idx, mirror)
        self._inflight.append(cursor)

    def _fill(self) -> None:
        if not self._started:
            # The first schedule_run runs `prefetch_queue_depth` iterations, so feed that many first.
            for _ in range(self.prefetch):
                self._feed_next()
            self.pipe.schedule_run()
            self._started = True
        while len(self._inflight) < self.prefetch:
            self._feed_next()
            self.pipe.schedule_run()

    def __next__(self) -> torch.Tensor:
        self._fill()
        (out,) = self.pipe.outputs()
        self._inflight.popleft()
        self._fill()  # queue the next batch before handing this one over, so DALI overlaps with training
        tensor = out.as_tensor()
        if self.gpu:
            with torch.cuda.device(self.device):
                return torch.from_dlpack(tensor)
        return torch.from_dlpack(tensor)

    def state_dict(self) -> dict[str, Any]:
        return self.plan.state_dict(self._front)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Drain what DALI already works on; it belongs to the old position.
        while self._inflight:
            self.pipe.outputs()
            self._inflight.popleft()
        self.plan.load_state_dict(state)
        if self._started:
            self._fill()


class DaliMemoryStream(_DaliStream):
    """DALI pipeline over an in-memory uint8 ``(N, C, H, W)`` data set (CIFAR-10, SVHN, MNIST).

    Per batch the plan's indices gather a ``(B, C, H, W)`` uint8 batch in host memory (numpy fancy indexing on
    the tensor's own storage, no second copy of the data set), which goes in through ``external_source``
    with the flip coins as a second ``external_source``. On a GPU the batch is copied to the device by DALI
    and flipped + normalised there; with ``device="cpu"`` it is DALI's CPU-only mode (``device_id=None``).
    ``exact=True`` (default) gives batches bitwise equal to BatchStream's (crop_mirror_normalize to uint8 +
    lookup table); ``exact=False`` does flip + normalise in one crop_mirror_normalize (<= 1 ulp apart).
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        flip: bool,
        device: torch.device | str,
        exact: bool = True,
        num_threads: int | None = None,
        prefetch: int = 2,
    ) -> None:
        _check_u8(images_u8)
        self._np = images_u8.cpu().contiguous().numpy()
        self.exact = bool(exact)
        super().__init__(images_u8.shape[0], batch_size, seed=seed, flip=flip, device=device,
                         num_threads=num_threads, prefetch=prefetch)

    def _graph(self, fn: Any, types: Any) -> Any:
        images = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="CHW", device="cpu")
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0, device="cpu")
        if self.gpu:
            images = images.gpu()
        return self._flip_normalize(fn, types, images, mirror, self._np.shape[1], self.exact)

    def _feed(self, idx: torch.Tensor, coins: np.ndarray) -> None:
        self.pipe.feed_input("images", self._np[idx.numpy()], layout="CHW")
        self.pipe.feed_input("mirror", coins)


def _cover_geometry(iw: int, ih: int, h: int, w: int) -> tuple[int, int, int, int]:
    """``(nh, nw, top, left)`` of engine.data's ``_resize_cover``: shorter side (relative to the target) to
    the target, floor for the other side, then torchvision's CenterCrop offsets (Python's round)."""
    if (iw, ih) == (w, h):
        return h, w, 0, 0
    if iw * h <= ih * w:
        nw, nh = w, (ih * w) // iw
    else:
        nw, nh = (iw * h) // ih, h
    return nh, nw, int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))


class DaliFolderStream(_DaliStream):
    """DALI pipeline over an image folder: encoded bytes in, decoded + resized + flipped + normalised out.

    Files are read in the plan's order (so a resume is exact and the order equals the ``torch`` loader's on
    the decoded folder), fed as encoded bytes through ``external_source`` and decoded by
    ``fn.decoders.image`` (``device="mixed"``: nvJPEG on the GPU; ``"cpu"`` in CPU-only mode). Geometry
    follows engine.data's folder loader: images of the target size are untouched; others are resized with
    the shorter side (relative to the target) to the target, the other side floored, and centre-cropped with
    torchvision's rounding -- the sizes and crop offsets are computed here in Python from the image header,
    exactly as engine.data does, and passed per sample to ``fn.resize(size=...)`` / ``fn.slice``.

    Where it differs from the PIL path (measured on CPU, DALI 2.4): the CPU decoder matches PIL bit for bit
    on JPEG and PNG here (both libjpeg-turbo) but nvJPEG on the GPU may differ by a level or two; resampling
    (DALI's antialiased linear vs PIL's BILINEAR) agrees to +-1 level inside the image but differs at the
    outermost pixel row/column (PIL renormalises truncated filters, DALI clamps the edge), by more the larger
    the downscale factor (up to ~3 levels at 4x, ~11 at 8x); grayscale targets convert with DALI's
    coefficients instead of PIL's ``convert("L")`` (+-1). EXIF orientation is ignored, as in PIL's path.
    """

    def __init__(
        self,
        spec: FolderSpec,
        batch_size: int,
        *,
        seed: int,
        flip: bool,
        device: torch.device | str,
        exact: bool = True,
        num_threads: int | None = None,
        prefetch: int = 2,
    ) -> None:
        self.spec = spec
        self.shape = _check_shape(spec.image_shape)
        self.files = spec.files
        self.exact = bool(exact)
        # Per-file (nh, nw, top, left), filled from each file's header the first time it is fed.
        self._geometry = np.full((len(self.files), 4), -1, dtype=np.int32)
        super().__init__(len(self.files), batch_size, seed=seed, flip=flip, device=device,
                         num_threads=num_threads, prefetch=prefetch)

    def _graph(self, fn: Any, types: Any) -> Any:
        c, h, w = self.shape
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
        size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1, device="cpu")
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1, device="cpu")
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0, device="cpu")
        images = fn.decoders.image(encoded, device="mixed" if self.gpu else "cpu",
                                   output_type=types.RGB if c == 3 else types.GRAY, adjust_orientation=False)
        # Linear with antialiasing = PIL's BILINEAR filter when downscaling; the identity for same-size images.
        images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
        # Absolute start per sample (an argument input, which DALI keeps on the CPU for GPU ops too).
        images = fn.slice(images, start=anchor, shape=[h, w], axes=[0, 1])
        return self._flip_normalize(fn, types, images, mirror, c, self.exact)

    def _read(self, i: int) -> np.ndarray:
        path = self.files[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"could not read image file {path}: {exc}") from exc
        if self._geometry[i, 0] < 0:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(data)) as im:  # header only; also rejects non-images early
                    iw, ih = im.size
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                raise ValueError(f"could not decode image file {path}: {exc}") from exc
            self._geometry[i] = _cover_geometry(iw, ih, self.shape[1], self.shape[2])
        return np.frombuffer(data, dtype=np.uint8)

    def _feed(self, idx: torch.Tensor, coins: np.ndarray) -> None:
        ids = idx.tolist()
        encoded = [self._read(i) for i in ids]
        geo = self._geometry[ids]
        self.pipe.feed_input("encoded", encoded)
        self.pipe.feed_input("size", [g[:2].astype(np.float32) for g in geo])
        self.pipe.feed_input("anchor", [np.ascontiguousarray(g[2:]) for g in geo])
        self.pipe.feed_input("mirror", coins)


# --------------------------------------------------------------------------------------------------
# Choosing a loader
# --------------------------------------------------------------------------------------------------


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
) -> tuple[Loader, str]:
    """Build the loader for ``data.loader = kind``; returns ``(loader, chosen kind)``.

    ``source`` is a uint8 ``(N, C, H, W)`` tensor (from ``load_images``) or a :class:`FolderSpec` (decoded
    here unless the chosen loader is DALI). ``auto`` follows :func:`auto_kind`. An explicit ``gpu`` without
    a CUDA device, or ``dali`` without an importable DALI, falls back to what ``auto`` picks. Each fallback is
    reported as exactly one line through ``log`` (default: this module's logger at WARNING); a choice that
    needs no fallback logs nothing (the caller logs the returned kind). ``dali`` with a CPU ``device`` runs
    DALI's CPU-only mode (what CI tests). ``dali_options``: extra keyword arguments for the DALI stream
    (``exact``, ``num_threads``, ``prefetch``).
    """
    if kind not in LOADER_KINDS:
        raise ValueError(f"data.loader must be one of {', '.join(LOADER_KINDS)}; got {kind!r}")
    say = log if log is not None else _log.warning
    device = torch.device(device)
    folder = isinstance(source, FolderSpec)
    if not isinstance(source, FolderSpec):
        _check_u8(source)
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
    if chosen == "dali":
        if isinstance(source, FolderSpec):
            return DaliFolderStream(source, batch_size, seed=seed, flip=flip, device=device, **opts), chosen
        return DaliMemoryStream(source, batch_size, seed=seed, flip=flip, device=device, **opts), chosen
    images = source.decode() if isinstance(source, FolderSpec) else source
    if chosen == "gpu":
        return DeviceStream(images, batch_size, seed=seed, flip=flip, device=device), chosen
    return BatchStream(images, batch_size, seed=seed, flip=flip, device=device), chosen
