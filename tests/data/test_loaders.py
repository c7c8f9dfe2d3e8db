"""The batch loaders of engine/loaders.py against the reference CPU loader (engine.data.BatchStream).

Every loader must give the same contract: float32 (B, C, H, W) in [-1, 1], drop_last epochs that visit every
index at most once (exactly N // B * B of them), flips at rate 1/2, and a state_dict that resumes bitwise.
Beyond the contract, the device loader and DALI's in-memory pipeline give batches *bitwise equal* to
BatchStream's, and DALI's folder pipeline equals the torch loader on the decoded folder (exactly for PNG and
for same-size JPEG on the CPU decoder, within a tolerance where resampling is involved). DALI runs in its
CPU-only mode (device_id=None); those tests skip when nvidia.dali is not installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.data import BatchStream, EpochPlan, FolderSpec
from engine.data.dali import DALI_INSTALL_HINT, dali_available, import_dali
from engine.data.folder import cover_geometry
from engine.data.loaders import DeviceStream, Loader, auto_kind, make_loader

HAVE_DALI = dali_available()
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia.dali not installed (pip install 'damc-engine[dali]')")

N, B, SEED = 203, 16, 7  # 12 batches per epoch, 11 images dropped


def indexed_images(n: int = N, h: int = 4, w: int = 6) -> torch.Tensor:
    """uint8 (n, 3, h, w) images that encode their index (channels 0/1, flip-invariant) and their orientation
    (channel 2: a left-to-right ramp, so a flipped image has its bright side on the left)."""
    x = torch.empty(n, 3, h, w, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0] = (idx % 256).view(-1, 1, 1).to(torch.uint8)
    x[:, 1] = (idx // 256).view(-1, 1, 1).to(torch.uint8)
    x[:, 2] = torch.linspace(10, 250, w).round().to(torch.uint8).view(1, 1, w)
    return x


def decode(batch: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Indices and flip flags of a batch of :func:`indexed_images`."""
    u8 = ((batch + 1) * 127.5).round().to(torch.int64)
    idx = (u8[:, 0, 0, 0] + 256 * u8[:, 1, 0, 0]).tolist()
    flipped = u8[:, 2, 0, 0] > u8[:, 2, 0, -1]
    return idx, flipped


def _dali_memory(images: torch.Tensor, batch_size: int, seed: int, flip: bool) -> Loader:
    from engine.data.dali import DaliMemoryStream

    return DaliMemoryStream(images, batch_size, seed=seed, flip=flip, device="cpu", num_threads=1)


def _factories() -> list[Any]:
    return [
        pytest.param(lambda x, b, s, f: BatchStream(x, b, seed=s, flip=f, device="cpu"), id="torch"),
        pytest.param(lambda x, b, s, f: DeviceStream(x, b, seed=s, flip=f, device="cpu"), id="gpu-on-cpu"),
        pytest.param(_dali_memory, id="dali-cpu", marks=needs_dali),
    ]


Factory = Callable[[torch.Tensor, int, int, bool], Loader]


# --------------------------------------------------------------------------------------------------
# The contract, for every in-memory loader
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", _factories())
def test_shapes_range_coverage_and_flip_rate(factory: Factory) -> None:
    images = indexed_images()
    stream = factory(images, B, SEED, True)
    assert isinstance(stream, Loader)
    assert len(stream) == N // B
    flips: list[torch.Tensor] = []
    for epoch in range(6):
        seen: list[int] = []
        for _ in range(len(stream)):
            x = next(stream)
            assert x.shape == (B, 3, 4, 6) and x.dtype == torch.float32 and x.device.type == "cpu"
            assert x.min() >= -1.0 and x.max() <= 1.0
            idx, flipped = decode(x)
            seen += idx
            flips.append(flipped)
        assert stream.epoch == epoch and stream.position == len(stream) * B
        # drop_last: each epoch visits N // B * B distinct images, never one twice.
        assert len(seen) == len(set(seen)) == len(stream) * B
        assert set(seen) <= set(range(N))
    rate = torch.cat(flips).float().mean().item()
    assert abs(rate - 0.5) < 0.06, rate  # 1152 coins: 5 standard deviations
    next(stream)
    assert stream.epoch == 6 and stream.position == B  # rollover happens lazily, like BatchStream


@pytest.mark.parametrize("factory", _factories())
def test_no_flip_means_no_flip(factory: Factory) -> None:
    stream = factory(indexed_images(), B, SEED, False)
    for _ in range(2 * len(stream)):
        assert not decode(next(stream))[1].any()


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("factory", _factories())
def test_bitwise_equal_to_batchstream(factory: Factory, flip: bool) -> None:
    """Same seed, same images: same batches bit for bit and the same state at every step (3+ epochs)."""
    images = torch.randint(0, 256, (N, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = BatchStream(images, B, seed=SEED, flip=flip, device="cpu")
    stream = factory(images, B, SEED, flip)
    for _ in range(3 * len(ref) + 2):
        assert torch.equal(next(stream), next(ref))
        mine, theirs = stream.state_dict(), ref.state_dict()
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(torch.as_tensor(mine[key]), torch.as_tensor(theirs[key])), key


@pytest.mark.parametrize("factory", _factories())
def test_resume_is_bitwise(factory: Factory) -> None:
    images = indexed_images()
    first = factory(images, B, SEED, True)
    for _ in range(len(first) + 5):  # mid-epoch, after a rollover
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(2 * len(first))]
    resumed = factory(images, B, SEED, True)
    next(resumed)  # a used stream must be fully reset by load_state_dict (in-flight DALI batches included)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (state["epoch"], state["position"])
    for want in expected:
        assert torch.equal(next(resumed), want)


@pytest.mark.parametrize("factory", _factories())
def test_state_is_interchangeable_with_batchstream(factory: Factory) -> None:
    """A checkpoint written with one loader resumes exactly with another (both directions)."""
    images = indexed_images()
    ref = BatchStream(images, B, seed=SEED, flip=True, device="cpu")
    for _ in range(len(ref) + 3):
        next(ref)
    other = factory(images, B, SEED, True)
    other.load_state_dict(ref.state_dict())
    for _ in range(len(ref)):
        assert torch.equal(next(other), next(ref))
    back = BatchStream(images, B, seed=SEED, flip=True, device="cpu")
    back.load_state_dict(other.state_dict())
    for _ in range(3):
        assert torch.equal(next(back), next(other))


def test_state_mismatch_is_refused() -> None:
    stream = DeviceStream(indexed_images(), B, seed=SEED, flip=True, device="cpu")
    state = BatchStream(indexed_images(), B * 2, seed=SEED, flip=True, device="cpu").state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        stream.load_state_dict(state)
    with pytest.raises(ValueError, match="images"):
        stream.load_state_dict(BatchStream(indexed_images(N - 1), B, seed=SEED, flip=True, device="cpu").state_dict())


def test_plan_follows_the_documented_draw_sequence_for_odd_sizes() -> None:
    """randperm(n) per epoch, then rand(B) < 0.5 per batch, lazy rollover; the state's generator is where a
    generator drawing batch by batch would be (so checkpoints stay valid whatever the draw schedule)."""
    for n, b in ((5, 5), (17, 3), (64, 1)):
        plan = EpochPlan(n, b, seed=3, flip=True)
        g = torch.Generator().manual_seed(3)
        perm, pos = torch.randperm(n, generator=g), 0
        for _ in range(3 * (n // b) + 1):
            if pos + b > n:
                perm, pos = torch.randperm(n, generator=g), 0
            want_idx, want_coins = perm[pos : pos + b], torch.rand(b, generator=g) < 0.5
            pos += b
            idx, coins, start = plan.next_batch()
            assert start == pos - b and torch.equal(idx, want_idx) and torch.equal(coins, want_coins)
            assert torch.equal(plan.state_dict()["generator"], g.get_state())


# --------------------------------------------------------------------------------------------------
# DALI CPU mode: in-memory pipeline details
# --------------------------------------------------------------------------------------------------


@needs_dali
def test_dali_single_op_normalisation_within_one_ulp() -> None:
    from engine.data.dali import DaliMemoryStream

    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(32, 3, 1, 1)
    fused = DaliMemoryStream(images, 8, seed=1, flip=True, device="cpu", exact=False, num_threads=1)
    ref = BatchStream(images, 8, seed=1, flip=True, device="cpu")
    for _ in range(6):
        assert (next(fused) - next(ref)).abs().max().item() <= 6e-8  # (x - 127.5) / 127.5 vs x / 127.5 - 1


@needs_dali
def test_dali_grayscale_memory() -> None:
    from engine.data.dali import DaliMemoryStream

    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    stream = DaliMemoryStream(images, 8, seed=2, flip=False, device="cpu", num_threads=1, prefetch=1)
    ref = BatchStream(images, 8, seed=2, flip=False, device="cpu")
    for _ in range(7):
        assert torch.equal(next(stream), next(ref))


@needs_dali
def test_dali_gpu_graph_is_well_formed() -> None:
    """The GPU variant (mixed decoder, .gpu()) cannot run here, but DALI checks ops and arguments when the
    graph is defined, which needs no device: catch typos in the GPU-only branches."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    from engine.data.dali import DaliMemoryStream

    stream = DaliMemoryStream(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), 4, seed=0, flip=True, device="cpu",
                              num_threads=1)
    stream.gpu = True
    for exact in (True, False):
        stream.exact = exact
        pipe = Pipeline(batch_size=4, num_threads=1, device_id=0, exec_dynamic=True)
        with pipe:
            pipe.set_outputs(stream._graph(fn, types))  # defined, never built (the folder graph: below)


# --------------------------------------------------------------------------------------------------
# DALI CPU mode: the folder pipeline
# --------------------------------------------------------------------------------------------------


def _write_folder(root: Path, n: int, fmt: str, size: tuple[int, int] | list[tuple[int, int]], mode: str = "RGB",
                  seed: int = 0) -> Path:
    """``n`` smooth random images (realistic for JPEG) in two class subfolders, like ImageFolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = size if isinstance(size, list) else [size] * n
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        coarse = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC).convert(mode)
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
        img.save(folder / f"{i:04d}.{ext}", format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return root


def _dali_folder(spec: FolderSpec, batch_size: int, seed: int, flip: bool, prefetch: int = 2) -> Loader:
    from engine.data.dali import DaliFolderStream

    return DaliFolderStream(spec, batch_size, seed=seed, flip=flip, device="cpu", num_threads=1, prefetch=prefetch)


@needs_dali
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_dali_folder_matches_torch_loader(tmp_path: Path, fmt: str) -> None:
    """40 same-size files: DALI's CPU decoder vs PIL through the torch loader, batch by batch (same order)."""
    spec = FolderSpec(_write_folder(tmp_path, 40, fmt, (16, 16)), (3, 16, 16))
    stream = _dali_folder(spec, 8, SEED, True)
    ref = BatchStream(spec.decode(), 8, seed=SEED, flip=True, device="cpu")
    assert len(stream) == len(ref) == 5
    for _ in range(3 * len(ref)):
        x, want = next(stream), next(ref)
        assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        if fmt == "PNG":
            assert torch.equal(x, want)  # lossless decode + exact normalisation
        else:
            # Both decode with libjpeg-turbo here and agree bit for bit; allow 2 levels because the library
            # versions bundled with PIL and DALI (nvImageCodec) may differ in IDCT / chroma upsampling, and
            # nvJPEG on the GPU does.
            assert (x - want).abs().max().item() <= 2 / 127.5 + 1e-6
            assert (x - want).abs().mean().item() <= 0.25 / 127.5


@needs_dali
def test_dali_folder_coverage_flip_and_resume(tmp_path: Path) -> None:
    """Lossless files that encode their index: coverage, flips and resume read straight off the pixels."""
    from PIL import Image

    images = indexed_images(40, 8, 8)
    for i in range(40):
        (tmp_path / f"c{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"c{i % 3}" / f"{i:03d}.png")
    spec = FolderSpec(tmp_path, (3, 8, 8))
    order = [int(p.stem) for p in spec.files]  # loading order: the index of each file position
    stream = _dali_folder(spec, 6, SEED, True)
    flips = []
    for _ in range(4):
        seen = []
        for _ in range(len(stream)):
            idx, flipped = decode(next(stream))
            seen += idx
            flips.append(flipped)
        assert len(seen) == len(set(seen)) == 36 and set(seen) <= set(order)
    assert abs(torch.cat(flips).float().mean().item() - 0.5) < 0.15  # 144 coins: > 3.5 standard deviations

    next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(8)]
    resumed = _dali_folder(spec, 6, SEED, True, prefetch=1)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(resumed), want)


@needs_dali
def test_dali_folder_resize_matches_pil_closely(tmp_path: Path) -> None:
    """Sources of other sizes and aspect ratios: same geometry as engine.data (cover + centre crop); the
    resampling filters agree to one level inside the image, not at the outermost rows / columns."""
    sizes = [(24, 20), (20, 28), (33, 16), (16, 16), (40, 40), (17, 23)]
    spec = FolderSpec(_write_folder(tmp_path, 12, "PNG", sizes), (3, 16, 16))
    stream = _dali_folder(spec, 4, SEED, False)
    ref = BatchStream(spec.decode(), 4, seed=SEED, flip=False, device="cpu")
    for _ in range(len(ref)):
        levels = ((next(stream) - next(ref)) * 127.5).abs()
        assert levels[..., 1:-1, 1:-1].max().item() <= 1.0 + 1e-3
        assert levels.max().item() <= 6.0
        assert levels.mean().item() <= 0.5


@needs_dali
def test_dali_folder_grayscale(tmp_path: Path) -> None:
    spec = FolderSpec(_write_folder(tmp_path, 10, "PNG", (12, 12), mode="L"), (1, 12, 12), limit=9)
    stream = _dali_folder(spec, 3, SEED, True)
    ref = BatchStream(spec.decode(), 3, seed=SEED, flip=True, device="cpu")
    for _ in range(2 * len(ref)):
        assert torch.equal(next(stream), next(ref))


@needs_dali
def test_dali_folder_gpu_graph(tmp_path: Path) -> None:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    spec = FolderSpec(_write_folder(tmp_path, 4, "PNG", (8, 8)), (3, 8, 8))
    stream = _dali_folder(spec, 2, SEED, True)
    stream.gpu = True
    pipe = Pipeline(batch_size=2, num_threads=1, device_id=0, exec_dynamic=True)
    with pipe:
        pipe.set_outputs(stream._graph(fn, types))  # mixed decoder + GPU ops: defined, never built


@needs_dali
def test_dali_folder_bad_file_names_the_file(tmp_path: Path) -> None:
    _write_folder(tmp_path, 4, "PNG", (8, 8))
    (tmp_path / "class0" / "broken.png").write_bytes(b"not an image")
    stream = _dali_folder(FolderSpec(tmp_path, (3, 8, 8)), 5, SEED, False)
    with pytest.raises(ValueError, match="broken.png"):
        next(stream)


def test_cover_geometry_shared_by_pil_and_dali() -> None:
    assert cover_geometry(16, 16, 16, 16) == (16, 16, 0, 0)
    assert cover_geometry(178, 218, 64, 64) == (78, 64, 7, 0)  # CelebA: width fits, height cropped
    assert cover_geometry(40, 20, 16, 16) == (16, 32, 0, 8)
    assert cover_geometry(19, 16, 16, 16) == (16, 19, 0, 2)  # round(1.5) == 2
    assert cover_geometry(21, 16, 16, 16) == (16, 21, 0, 2)  # round(2.5) == 2: banker's rounding, as torchvision


# --------------------------------------------------------------------------------------------------
# Choosing a loader
# --------------------------------------------------------------------------------------------------


def test_auto_rule() -> None:
    mb = 1 << 20
    assert auto_kind(folder=False, data_bytes=150 * mb, cuda=False, dali=True, gpu_budget_bytes=10**12) == "torch"
    assert auto_kind(folder=False, data_bytes=150 * mb, cuda=True, dali=True, gpu_budget_bytes=1000 * mb) == "gpu"
    assert auto_kind(folder=True, data_bytes=150 * mb, cuda=True, dali=True, gpu_budget_bytes=1000 * mb) == "gpu"
    assert auto_kind(folder=True, data_bytes=9000 * mb, cuda=True, dali=True, gpu_budget_bytes=1000 * mb) == "dali"
    assert auto_kind(folder=True, data_bytes=9000 * mb, cuda=True, dali=False, gpu_budget_bytes=1000 * mb) == "torch"
    assert auto_kind(folder=False, data_bytes=9000 * mb, cuda=True, dali=True, gpu_budget_bytes=1000 * mb) == "torch"


def _hide_dali(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import nvidia.dali` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)


def test_auto_without_gpu_is_torch_with_one_line() -> None:
    lines: list[str] = []
    loader, kind = make_loader("auto", indexed_images(), B, seed=SEED, flip=True, device="cpu", log=lines.append)
    assert kind == "torch" and isinstance(loader, BatchStream)
    assert len(lines) == 1 and "no CUDA device" in lines[0]


def test_gpu_without_gpu_falls_back_with_one_line() -> None:
    lines: list[str] = []
    loader, kind = make_loader("gpu", indexed_images(), B, seed=SEED, flip=True, device="cpu", log=lines.append)
    assert kind == "torch" and isinstance(loader, BatchStream)
    assert len(lines) == 1 and "data.loader=gpu" in lines[0]


def test_dali_missing_falls_back_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_dali(monkeypatch)
    with pytest.raises(ImportError, match="damc-engine\\[dali\\]"):
        import_dali()
    lines: list[str] = []
    loader, kind = make_loader("dali", indexed_images(), B, seed=SEED, flip=True, device="cpu", log=lines.append)
    assert kind == "torch" and isinstance(loader, BatchStream)
    assert len(lines) == 1 and "DALI is not importable" in lines[0] and DALI_INSTALL_HINT in lines[0]
    # A folder is decoded for the fallback loader, exactly as load_images would.
    spec = FolderSpec(_write_folder(tmp_path, 20, "PNG", (8, 8)), (3, 8, 8))
    lines.clear()
    loader, kind = make_loader("dali", spec, 4, seed=SEED, flip=False, device="cpu", log=lines.append)
    assert kind == "torch" and len(lines) == 1
    assert torch.equal(loader.images, spec.decode())


def test_auto_on_gpu_big_folder_without_dali_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Simulated GPU (nothing touches the device before the first batch): the folder is over the budget and
    DALI is missing, so auto takes the host loader and says why in one line."""
    _hide_dali(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = FolderSpec(_write_folder(tmp_path, 6, "PNG", (8, 8)), (3, 8, 8))
    lines: list[str] = []
    loader, kind = make_loader("auto", spec, 2, seed=SEED, flip=True, device="cuda", log=lines.append,
                               gpu_budget_bytes=100)
    assert kind == "torch" and isinstance(loader, BatchStream)
    assert len(lines) == 1 and "DALI is not importable" in lines[0]


def test_explicit_choices_log_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    loader, kind = make_loader("torch", indexed_images(), B, seed=SEED, flip=True, device="cpu", log=lines.append)
    assert kind == "torch" and isinstance(loader, BatchStream)
    if HAVE_DALI:
        from engine.data.dali import DaliFolderStream, DaliMemoryStream

        loader, kind = make_loader("dali", indexed_images(), B, seed=SEED, flip=True, device="cpu",
                                   log=lines.append, dali_options={"num_threads": 1})
        assert kind == "dali" and isinstance(loader, DaliMemoryStream)
        spec = FolderSpec(_write_folder(tmp_path, 6, "PNG", (8, 8)), (3, 8, 8))
        loader, kind = make_loader("dali", spec, 2, seed=SEED, flip=True, device="cpu", log=lines.append)
        assert kind == "dali" and isinstance(loader, DaliFolderStream) and next(loader).shape == (2, 3, 8, 8)
    assert lines == []
    with pytest.raises(ValueError, match="data.loader"):
        make_loader("fast", indexed_images(), B, seed=SEED, flip=True, device="cpu")
