"""Tests for engine/data (spec damc.md §3 "Data"): the digits and folder sources, BatchStream, fixed_batch."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import BatchStream, fixed_batch, load_images

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CPU = torch.device("cpu")


def cfg(source: str = "folder", root: str = "", flip: bool = False, **kw: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        source=source, root=root, train_subdir="train", test_subdir="test", flip=flip, **kw
    )


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    pytest.importorskip("sklearn")
    return load_images(cfg("digits"), (1, 8, 8), "train"), load_images(cfg("digits"), (1, 8, 8), "test")


def test_digits_shapes_and_range(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    train, test = digits
    assert train.shape == (1497, 1, 8, 8) and test.shape == (300, 1, 8, 8)
    for t in (train, test):
        assert t.dtype == torch.uint8 and t.device.type == "cpu" and t.is_contiguous()
    assert int(train.min()) == 0 and int(train.max()) == 255
    # Only the 17 values round(v * 255 / 16), v = 0..16, can occur.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(torch.cat([train, test])).tolist()) <= allowed


def test_digits_split_disjoint_complete_and_deterministic(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    from sklearn.datasets import load_digits

    train, test = digits
    raw = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    perm = np.random.RandomState(0).permutation(len(raw))
    assert np.array_equal(train[:, 0].numpy(), raw[perm[:1497]])
    assert np.array_equal(test[:, 0].numpy(), raw[perm[1497:]])
    assert not set(perm[:1497]) & set(perm[1497:])
    again = load_images(cfg("digits"), (1, 8, 8), "train")
    assert torch.equal(train, again)
    assert torch.equal(load_images(cfg("digits"), (1, 8, 8), "test", limit=10), test[:10])


def test_digits_wrong_shape_and_bad_args() -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        load_images(cfg("digits"), (3, 32, 32), "train")
    with pytest.raises(ValueError, match="split"):
        load_images(cfg("digits"), (1, 8, 8), "val")
    with pytest.raises(ValueError, match="unknown data source"):
        load_images(cfg("imagenet"), (1, 8, 8), "train")


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_load_order_resize_and_modes(tmp_path: Path) -> None:
    solid = lambda v, h, w: np.full((h, w, 3), v, dtype=np.uint8)
    # Class subfolders, mixed formats, mixed sizes, one upper-case extension, one ignored non-image.
    _write(tmp_path / "train" / "b_class" / "x.png", solid(30, 16, 16))  # 2x downscale
    _write(tmp_path / "train" / "a_class" / "2.PNG", solid(20, 8, 8))  # already 8x8
    _write(tmp_path / "train" / "a_class" / "1.bmp", solid(10, 4, 4))  # upscale
    _write(tmp_path / "train" / "b_class" / "y.jpg", solid(200, 12, 24))  # non-square: resize + crop
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    grad = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[None, :, None], (8, 1, 3))  # 8x24, varies along x
    _write(tmp_path / "test" / "g.png", grad)

    x = load_images(cfg(root=str(tmp_path)), (3, 8, 8), "train")
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and x.is_contiguous()
    # Sorted by relative path: a_class/1.bmp, a_class/2.PNG, b_class/x.png, b_class/y.jpg.
    assert x[0].eq(10).all() and x[1].eq(20).all() and x[2].eq(30).all()
    assert (x[3].int() - 200).abs().max() <= 3  # JPEG is lossy

    # Non-square 8x24 -> shorter side to 8 (no resize needed) -> centre crop of columns 8..15.
    g = load_images(cfg(root=str(tmp_path)), (3, 8, 8), "test")
    assert torch.equal(g[0, 0], torch.from_numpy(grad[:, 8:16, 0].copy()))

    gray = load_images(cfg(root=str(tmp_path)), (1, 8, 8), "train", limit=2)
    assert gray.shape == (2, 1, 8, 8) and gray[0].eq(10).all()


def test_folder_resize_is_bilinear_like_pil(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    _write(tmp_path / "train" / "r.png", arr)
    x = load_images(cfg(root=str(tmp_path)), (3, 8, 8), "train")
    ref = np.asarray(Image.fromarray(arr).resize((8, 8), Image.BILINEAR))
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), ref)


def test_folder_missing_or_empty_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        load_images(cfg(root=str(tmp_path / "nope")), (3, 8, 8), "train")
    msg = str(ei.value)
    assert str(tmp_path / "nope" / "train") in msg and ".jpg" in msg and ".png" in msg

    (tmp_path / "train" / "cls").mkdir(parents=True)
    (tmp_path / "train" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as ei:
        load_images(cfg(root=str(tmp_path)), (3, 8, 8), "train")
    msg = str(ei.value)
    assert str(tmp_path / "train") in msg and "no image files" in msg and ".webp" in msg


def test_folder_corrupt_file_names_the_file(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / "train" / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    bad = tmp_path / "train" / "3_bad.jpg"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="3_bad.jpg"):
        load_images(cfg(root=str(tmp_path)), (3, 8, 8), "train")


def test_cifar10_jpeg_subset() -> None:
    root = SHARED_DATA / "cifar10-jpeg"
    if not (root / "train").is_dir():
        pytest.skip(f"{root} not present")
    x = load_images(cfg(root=str(root)), (3, 32, 32), "train", limit=256)
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.uint8
    mean = x.float().mean().item()
    assert 60 < mean < 200 and x.float().std().item() > 20
    y = load_images(cfg(root=str(root)), (3, 32, 32), "test", limit=8)
    assert y.shape == (8, 3, 32, 32)


# --------------------------------------------------------------------------------------------------
# BatchStream / fixed_batch
# --------------------------------------------------------------------------------------------------


def indexed_images(n: int, asymmetric: bool = False) -> torch.Tensor:
    """Image i is constant i (n <= 256); with ``asymmetric`` the right half is 255 - i instead."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 6).clone()
    if asymmetric:
        x[..., 3:] = 255 - x[..., 3:]
    return x


def ids(batch: torch.Tensor) -> list[int]:
    """Recover image indices from a batch of indexed_images (left column holds i or 255 - i)."""
    return torch.round((batch[:, 0, 0, 0] + 1) * 127.5).long().tolist()


def test_stream_shape_range_and_epoch_coverage() -> None:
    n, bs = 50, 8
    s = BatchStream(indexed_images(n), bs, seed=0, flip=False, device=CPU)
    assert len(s) == 6
    seen: list[list[int]] = []
    for e in range(3):
        ep: list[int] = []
        for _ in range(len(s)):
            b = next(s)
            assert s.epoch == e  # rollover is lazy: the next epoch starts with its first batch
            assert b.shape == (bs, 1, 4, 6) and b.dtype == torch.float32
            assert b.min() >= -1 and b.max() <= 1
            ep += ids(b)
        assert len(set(ep)) == len(ep) == 48  # each index at most once; 2 dropped (drop_last)
        assert s.position == 48
        seen.append(ep)
    assert seen[0] != seen[1]  # reshuffled each epoch
    assert s.epoch == 2
    next(s)
    assert s.epoch == 3 and s.position == bs


def test_stream_visits_every_index_exactly_once_when_divisible() -> None:
    s = BatchStream(indexed_images(64), 16, seed=3, flip=False, device=CPU)
    ep = [i for _ in range(4) for i in ids(next(s))]
    assert sorted(ep) == list(range(64))


def test_stream_values_and_fixed_batch() -> None:
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).view(6, 1, 1, 1)
    ref = (x.float() / 255 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)
    fb = fixed_batch(x, 6, CPU)
    assert torch.equal(fb, ref) and fb[0].item() == -1.0 and fb[-1].item() == 1.0
    s = BatchStream(x, 6, seed=0, flip=False, device=CPU)
    b = next(s)
    assert torch.equal(torch.sort(b.flatten()).values, ref.flatten())
    assert torch.equal(
        fixed_batch(indexed_images(10), 3, "cpu"), fixed_batch(indexed_images(10), 10, "cpu")[:3]
    )
    with pytest.raises(ValueError):
        fixed_batch(x, 7, CPU)


def test_stream_seeding() -> None:
    imgs = indexed_images(40, asymmetric=True)
    first = next(BatchStream(imgs, 10, seed=5, flip=True, device=CPU))
    s1 = BatchStream(imgs, 10, seed=5, flip=True, device=CPU)
    s2 = BatchStream(imgs, 10, seed=5, flip=True, device=CPU)
    s3 = BatchStream(imgs, 10, seed=6, flip=True, device=CPU)
    b1 = [next(s1) for _ in range(9)]
    b2 = [next(s2) for _ in range(9)]
    b3 = [next(s3) for _ in range(9)]
    assert torch.equal(first, b1[0])
    assert all(torch.equal(p, q) for p, q in zip(b1, b2, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(b1, b3, strict=True))
    # The stream's generator is private: the global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    next(s1)
    assert torch.equal(before, torch.random.get_rng_state())


def test_stream_flip_statistics() -> None:
    n = 100
    imgs = indexed_images(n, asymmetric=True)
    s = BatchStream(imgs, 50, seed=1, flip=True, device=CPU)
    flips, total = 0, 0
    for _ in range(80):
        b = next(s)
        u8 = torch.round((b + 1) * 127.5).to(torch.uint8)
        left, right = u8[:, 0, 0, 0].long(), u8[:, 0, 0, -1].long()
        assert torch.equal(left + right, torch.full_like(left, 255))  # each image intact (maybe mirrored)
        # Unflipped: left column < 128 (value i < 100); flipped: left column is 255 - i.
        flipped = left > 127
        whole = torch.where(flipped.view(-1, 1, 1), u8[:, 0].flip(-1), u8[:, 0])
        idx = torch.where(flipped, right, left)
        assert torch.equal(whole, imgs[idx, 0])
        flips += int(flipped.sum())
        total += len(flipped)
    assert total == 4000
    assert abs(flips / total - 0.5) < 0.04  # ~5 sigma for Binomial(4000, 0.5)
    s_off = BatchStream(imgs, 50, seed=1, flip=False, device=CPU)
    assert all((torch.round((next(s_off) + 1) * 127.5)[:, 0, 0, 0] < 128).all() for _ in range(10))


def test_stream_state_dict_resume_is_bitwise() -> None:
    imgs = torch.randint(0, 256, (37, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ref = BatchStream(imgs, 8, seed=11, flip=True, device=CPU)
    for _ in range(6):  # into the 2nd epoch (4 batches/epoch)
        next(ref)
    state = ref.state_dict()
    assert state["epoch"] == 1 and state["position"] == 16
    expected = [next(ref) for _ in range(10)]

    resumed = BatchStream(imgs, 8, seed=999, flip=True, device=CPU)  # different seed: state must win
    next(resumed)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and resumed.position == 16
    got = [next(resumed) for _ in range(10)]
    assert all(torch.equal(p, q) for p, q in zip(expected, got, strict=True))

    # The state survives a torch.save round trip (checkpoints) and is not aliased to the live stream.
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = BatchStream(imgs, 8, seed=0, flip=True, device=CPU)
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(p, next(again)) for p in expected)

    with pytest.raises(ValueError, match="images"):
        BatchStream(imgs[:30], 8, seed=0, flip=True, device=CPU).load_state_dict(state)


def test_stream_rejects_too_few_images_and_bad_input() -> None:
    with pytest.raises(ValueError) as ei:
        BatchStream(indexed_images(5), 128, seed=0, flip=False, device=CPU)
    assert "5" in str(ei.value) and "128" in str(ei.value)
    with pytest.raises(ValueError, match="uint8"):
        BatchStream(torch.zeros(10, 1, 4, 4), 2, seed=0, flip=False, device=CPU)


@pytest.mark.gpu
def test_stream_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    imgs = indexed_images(64, asymmetric=True)
    a = BatchStream(imgs, 16, seed=2, flip=True, device=CPU)
    b = BatchStream(imgs, 16, seed=2, flip=True, device=torch.device("cuda"))
    for _ in range(6):
        xb = next(b)
        assert xb.is_cuda
        assert torch.equal(next(a), xb.cpu())


def test_folder_truncated_or_empty_images_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for ext in ("png", "jpg", "bmp", "webp"):
        d = tmp_path / ext
        _write(d / "train" / "0_ok.png", np.zeros((16, 16, 3), np.uint8))
        bad = d / "train" / f"1_bad.{ext}"
        _write(bad, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # noisy: no tiny compressed form
        full = bad.read_bytes()
        for blob in (full[: len(full) // 2], full[:30], b""):
            bad.write_bytes(blob)
            with pytest.raises(ValueError, match=f"could not decode image file .*1_bad.{ext}"):
                load_images(cfg(root=str(d)), (3, 16, 16), "train")
        bad.write_bytes(full)
        assert load_images(cfg(root=str(d)), (3, 16, 16), "train").shape == (2, 3, 16, 16)
