"""Training-batch loader throughput (images/s) per loader, with pytest-benchmark.

Run: ``pytest bench/bench_loaders.py --benchmark-only`` (``-s`` also prints one summary line per loader).

Data:
* ``cifar10``: CIFAR-10-sized in-memory uint8 data (synthetic 50,000 x 3 x 32 x 32; loaders never look at
  the pixel values) -> ``torch`` (BatchStream), ``gpu`` (DeviceStream), ``dali`` (DaliMemoryStream, exact
  and single-op variants).
* ``jpeg256``: a folder of 256 x 256 JPEGs written to a temporary directory (CelebA-HQ-256-like) ->
  ``torch`` / ``gpu`` after decoding the folder once (the decode time is reported as ``startup_s``), and
  ``dali`` decoding every batch (nvJPEG on a GPU, CPU decoder in CPU-only mode).
* ``cifar10-jpeg``: the JPEG copy of CIFAR-10 at ``../shared/data/cifar10-jpeg/train`` when present
  (skipped otherwise): ``torch`` after decode-once, and ``dali`` per-batch decoding.

Each timed round pulls ``batches`` batches and synchronises the device once at the end, so the number is
the loader's sustained cost per batch when nothing else runs. ``extra_info`` holds ``images_per_s``,
``per_batch_ms``, the loader, device and sizes.

Loader share of the training iteration (issue goal: under 2 %): divide ``per_batch_ms`` by the fast training
iteration's time (mean seconds of the training-step benchmark in ``bench/results``, same device and batch
size), or set ``DAMC_FAST_ITER_MS`` to that time and this file adds ``share_of_iteration`` to extra_info.
On a GPU the ``gpu`` and ``dali`` loaders run asynchronously with respect to the host; the synchronised
per-batch time is an upper bound on what they add to an iteration.

CPU runs use small sizes (about 30 s in all on 2 cores); DAMC_BENCH_LOADER_ROUNDS overrides the rounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.data import BatchStream, FolderSpec
from engine.data.dali import dali_available
from engine.data.loaders import DeviceStream

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
HAVE_DALI = dali_available()
BATCH = 128
ROUNDS = int(os.environ.get("DAMC_BENCH_LOADER_ROUNDS", "5"))
CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train"

needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia.dali not installed (pip install 'damc-engine[dali]')")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _timed(benchmark: Any, loader: Any, batches: int, batch: int, info: dict[str, Any]) -> None:
    """Time ``batches`` batches per round; report images/s and per-batch time in extra_info."""
    x = next(loader)  # builds DALI's pipeline buffers / first transfers outside the timing
    _sync()
    assert x.dtype == torch.float32 and x.shape[0] == batch and x.device.type == DEVICE.type

    def run() -> None:
        for _ in range(batches):
            next(loader)
        _sync()

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    per_batch = stats.stats.median / batches  # median: robust to a noisy shared CPU
    info = {"device": torch.cuda.get_device_name(DEVICE) if GPU else "cpu", "torch": torch.__version__,
            "batch": batch, "batches_per_round": batches, "per_batch_ms": per_batch * 1e3,
            "images_per_s": batch / per_batch, **info}
    iter_ms = os.environ.get("DAMC_FAST_ITER_MS")
    if iter_ms:
        info["share_of_iteration"] = per_batch * 1e3 / float(iter_ms)
    benchmark.extra_info.update(info)
    print(f"\n{info['data']:>12} {info['loader']:>10}: {info['images_per_s']:>12,.0f} images/s, "
          f"{info['per_batch_ms']:.3f} ms/batch of {batch}" + (f", startup {info['startup_s']:.2f} s"
                                                                if "startup_s" in info else ""))


# --------------------------------------------------------------------------------------------------
# CIFAR-10-sized in-memory data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_u8() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g)


def _memory_loader(kind: str, images: torch.Tensor) -> Any:
    if kind == "torch":
        return BatchStream(images, BATCH, seed=0, flip=True, device=DEVICE)
    if kind == "gpu":
        return DeviceStream(images, BATCH, seed=0, flip=True, device=DEVICE)
    from engine.data.dali import DaliMemoryStream

    return DaliMemoryStream(images, BATCH, seed=0, flip=True, device=DEVICE, exact=kind == "dali")


@pytest.mark.parametrize("kind", ["torch", "gpu", pytest.param("dali", marks=needs_dali),
                                  pytest.param("dali-fused", marks=needs_dali)])
def test_loader_cifar10_memory(benchmark: Any, cifar_u8: torch.Tensor, kind: str) -> None:
    loader = _memory_loader(kind, cifar_u8)
    _timed(benchmark, loader, 50 if GPU else 20, BATCH,
           {"data": "cifar10", "loader": kind, "images": cifar_u8.shape[0], "image_shape": [3, 32, 32]})


# --------------------------------------------------------------------------------------------------
# Folders of JPEGs
# --------------------------------------------------------------------------------------------------


def _write_jpegs(root: Path, n: int, size: int) -> Path:
    """``n`` smooth random RGB JPEGs (quality 90, like typical CelebA-HQ exports), two class subfolders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def jpeg256(tmp_path_factory: pytest.TempPathFactory) -> FolderSpec:
    n = 1024 if GPU else 48
    return FolderSpec(_write_jpegs(tmp_path_factory.mktemp("jpeg256"), n, 256), (3, 256, 256))


def _folder_loader(kind: str, spec: FolderSpec, batch: int) -> tuple[Any, dict[str, Any]]:
    info: dict[str, Any] = {"images": len(spec.files), "image_shape": list(spec.image_shape)}
    if kind == "dali":
        from engine.data.dali import DaliFolderStream

        t0 = time.perf_counter()
        loader = DaliFolderStream(spec, batch, seed=0, flip=True, device=DEVICE)
        info["startup_s"] = time.perf_counter() - t0
        return loader, info
    t0 = time.perf_counter()
    images = spec.decode()  # PIL, threaded: what load_images does at start-up
    info["startup_s"] = time.perf_counter() - t0
    info["decode_images_per_s"] = images.shape[0] / info["startup_s"]
    stream_cls: Callable[..., Any] = DeviceStream if kind == "gpu" else BatchStream
    return stream_cls(images, batch, seed=0, flip=True, device=DEVICE), info


@pytest.mark.parametrize("kind", ["torch", "gpu", pytest.param("dali", marks=needs_dali)])
def test_loader_jpeg256_folder(benchmark: Any, jpeg256: FolderSpec, kind: str) -> None:
    batch = 64 if GPU else 8
    loader, info = _folder_loader(kind, jpeg256, batch)
    batches = min(len(loader), 10 if GPU else 5)
    _timed(benchmark, loader, batches, batch, {"data": "jpeg256", "loader": kind, **info})


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} not present")
@pytest.mark.parametrize("kind", ["torch", pytest.param("dali", marks=needs_dali)])
def test_loader_cifar10_jpeg_folder(benchmark: Any, kind: str) -> None:
    # The whole 50k set on a GPU machine; a slice on CPU so that decode-once stays a couple of seconds.
    spec = FolderSpec(CIFAR_JPEG, (3, 32, 32), limit=None if GPU else 4096)
    loader, info = _folder_loader(kind, spec, BATCH)
    _timed(benchmark, loader, 30 if GPU else 10, BATCH, {"data": "cifar10-jpeg", "loader": kind, **info})
