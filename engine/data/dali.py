"""NVIDIA DALI loaders (``data.loader=dali``): in-memory uint8 sets and image folders (nvJPEG decode).

Both pipelines take their indices *and* flip coins from an :class:`~engine.data.stream.EpochPlan` (DALI's own RNG
is never used), so they visit the same images in the same order with the same flips as every other loader, and
their state is BatchStream's. Facts behind the design (spec performance.md §3): CPU-only mode needs
``Pipeline(device_id=None)`` (``-1`` still initialises CUDA), every ``external_source`` gets ``dtype`` and
``ndim``, DALI is not capturable in CUDA graphs and brings little for tiny in-memory images. DALI
(``pip install 'damc-engine[dali]'``) is imported lazily.
"""

from __future__ import annotations

import importlib
import io
import os
from collections import deque
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from engine.data.folder import cover_geometry
from engine.data.pixels import U8_TO_UNIT, check_shape, check_u8
from engine.data.stream import Cursor, EpochPlan, PlanBacked

if TYPE_CHECKING:
    from engine.data.folder import FolderSpec

__all__ = ["DALI_INSTALL_HINT", "DaliFolderStream", "DaliMemoryStream", "dali_available", "import_dali"]

DALI_INSTALL_HINT = "pip install 'damc-engine[dali]' (or: pip install nvidia-dali-cuda120)"


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


class _DaliStream(PlanBacked):
    """Drives a DALI pipeline whose inputs are all ``external_source`` nodes fed from an :class:`EpochPlan`.

    We feed each batch ourselves (``feed_input``) instead of handing DALI a callback, so we know exactly which
    plan state each in-flight batch came from: ``prefetch`` batches are kept in flight (DALI works on them
    while the trainer computes), and ``state_dict`` reports the state *before* the oldest in-flight batch,
    i.e. what the consumer has actually received. ``load_state_dict`` drains the in-flight batches.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, flip: bool, device: torch.device | str,
                 num_threads: int | None, prefetch: int, rank: int = 0, world_size: int = 1) -> None:
        import_dali()  # the install hint if DALI is missing
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DALI loaders run on 'cpu' or 'cuda' devices, got {self.device}")
        self.gpu = self.device.type == "cuda"
        # Several processes: this rank's shard of every global batch, fed by us from the shared plan. (DALI's
        # readers shard with shard_id / num_shards; our external_source pipelines take the plan's shard instead,
        # which keeps every loader's batches and checkpointed state identical.)
        self.plan = EpochPlan(num_images, batch_size, seed=seed, flip=flip, rank=rank, world_size=world_size)
        self.batch_size = self.plan.local_batch_size  # rows per pipeline run
        self.prefetch = max(1, int(prefetch))
        self.num_threads = int(num_threads or max(1, min(4, os.cpu_count() or 1)))
        self._inflight: deque[Cursor] = deque()  # plan state before each fed, not yet returned batch
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
    def _front(self) -> Cursor:
        """Plan state of the next batch the consumer will receive."""
        return self._inflight[0] if self._inflight else self.plan.cursor

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

    def _batch_files(self) -> str:
        """What the oldest in-flight batch read (named in a decode error); in-memory sets have no files."""
        return ""

    def __next__(self) -> torch.Tensor:
        self._fill()
        try:
            (out,) = self.pipe.outputs()
        except RuntimeError as exc:
            # A file DALI cannot decode (truncated past its header) breaks the pipeline; name the batch's files.
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            useful = [ln for ln in lines if "failure" in ln.lower()] or [ln for ln in lines if "error" in ln.lower()]
            cause = (useful or lines or [type(exc).__name__])[0].rstrip(",")
            raise ValueError(f"DALI could not decode a batch{self._batch_files()} ({cause})") from None
        self._inflight.popleft()
        self._fill()  # queue the next batch before handing this one over, so DALI overlaps with training
        tensor = out.as_tensor()
        if self.gpu:
            with torch.cuda.device(self.device):
                return from_dlpack(tensor)
        return from_dlpack(tensor)

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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_u8(images_u8)
        self._np = images_u8.cpu().contiguous().numpy()
        self.exact = bool(exact)
        super().__init__(images_u8.shape[0], batch_size, seed=seed, flip=flip, device=device,
                         num_threads=num_threads, prefetch=prefetch, rank=rank, world_size=world_size)

    def _graph(self, fn: Any, types: Any) -> Any:
        images = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="CHW", device="cpu")
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0, device="cpu")
        if self.gpu:
            images = images.gpu()
        return self._flip_normalize(fn, types, images, mirror, self._np.shape[1], self.exact)

    def _feed(self, idx: torch.Tensor, coins: np.ndarray) -> None:
        self.pipe.feed_input("images", self._np[idx.numpy()], layout="CHW")
        self.pipe.feed_input("mirror", coins)


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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.spec = spec
        self.shape = check_shape(spec.image_shape)
        self.files = spec.files
        self.exact = bool(exact)
        # Per-file (nh, nw, top, left), filled from each file's header the first time it is fed.
        self._geometry = np.full((len(self.files), 4), -1, dtype=np.int32)
        # Indices of the in-flight batches, oldest first: the pipeline is always refilled to `prefetch` batches right
        # after one is consumed, so a bounded deque drops exactly the consumed batch.
        self._fed_ids: deque[list[int]] = deque(maxlen=max(1, int(prefetch)))
        super().__init__(len(self.files), batch_size, seed=seed, flip=flip, device=device,
                         num_threads=num_threads, prefetch=prefetch, rank=rank, world_size=world_size)

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
            self._geometry[i] = cover_geometry(iw, ih, self.shape[1], self.shape[2])
        return np.frombuffer(data, dtype=np.uint8)

    def _batch_files(self) -> str:
        if not self._fed_ids:
            return ""
        ids = self._fed_ids[0]
        names = ", ".join(str(self.files[i]) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
        return f" of files {names}"

    def _feed(self, idx: torch.Tensor, coins: np.ndarray) -> None:
        ids = idx.tolist()
        self._fed_ids.append(ids)
        encoded = [self._read(i) for i in ids]
        geo = self._geometry[ids]
        self.pipe.feed_input("encoded", encoded)
        self.pipe.feed_input("size", [g[:2].astype(np.float32) for g in geo])
        self.pipe.feed_input("anchor", [np.ascontiguousarray(g[2:]) for g in geo])
        self.pipe.feed_input("mirror", coins)
