"""Sample quality on the 8×8 digits: features of a small digit classifier, KID and FID in those features.

Why these distances: the Inception network behind the paper's FID was trained on 299×299 natural images and says
little about 8×8 digits; a classifier trained on the digits' own training split plays its role (its penultimate
features encode digit identity and stroke shape). With only 1,497 training and 300 test digits, the kernel
inception distance (KID: the unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb/d + 1)³, Bińkowski et
al. 2018) is the primary number: it is unbiased at any sample size, so the real test split against the training
split measures the floor (≈ 0) at n = 300. FID (Fréchet distance of Gaussian fits, :func:`engine.eval.fid
.frechet_distance`) is reported beside it; it is biased upward at small n, so it is only compared at equal n.

The classifier is trained once, deterministically (seed 0, CPU), saved with its SHA-256 under ``results/digits``
(``classifier.pt`` + ``classifier.json``) and reloaded only when the checksum matches, so every study run
measures with the same network.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data.digits import DIGITS_N_TRAIN, DIGITS_SHAPE, load_digits_split
from engine.data.pixels import u8_to_float
from engine.eval.fid import frechet_distance
from engine.files import atomic_write

__all__ = ["DigitClassifier", "DigitFeatures", "FeatureSet", "digit_labels", "fid", "kid", "load_or_train_classifier",
           "train_classifier"]

FEATURES = 64  # width of the penultimate layer: the feature space of KID and FID


class DigitClassifier(nn.Module):
    """8×8 digits in [−1, 1] → 10 logits: conv 32 → conv 64 → 2×2 max-pool → 128 → ``FEATURES`` → 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, FEATURES)
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 8, 8) → (B, FEATURES), the penultimate activations."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.relu(self.fc2(F.relu(self.fc1(h.flatten(1)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def digit_labels(split: str) -> Tensor:
    """Labels (N,) int64 of ``load_digits_split(split)``, in the same order (sklearn's targets, same split)."""
    from sklearn.datasets import load_digits

    perm = np.random.RandomState(0).permutation(len(load_digits().target))  # engine.data.digits' split
    idx = perm[:DIGITS_N_TRAIN] if split == "train" else perm[DIGITS_N_TRAIN:]
    return torch.from_numpy(load_digits().target[idx].astype(np.int64))


def _images(split: str) -> Tensor:
    return u8_to_float(load_digits_split(DIGITS_SHAPE, split))


def train_classifier(epochs: int = 40, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train on the training split (Adam 1e-3, batch 64, small random shifts); returns (net, test accuracy)."""
    x, y = _images("train"), digit_labels("train")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for idx in perm.split(64):
            xb = x[idx]
            # ±1 pixel shifts (zero-padded: the digits' background is −1): features that do not hinge on position.
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
            xb = torch.roll(F.pad(xb, (1, 1, 1, 1), value=-1.0), (dy, dx), dims=(2, 3))[:, :, 1:9, 1:9]
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(_images("test")).argmax(1) == digit_labels("test")).float().mean())
    return net, acc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_or_train_classifier(directory: Path, log: object = None) -> tuple[DigitClassifier, dict[str, object]]:
    """``directory/classifier.pt`` when its SHA-256 matches ``classifier.json``; else train, save both, return.

    A file whose checksum does not match is never used (a line says so) and is replaced by a fresh training.
    """
    pt, meta_path = directory / "classifier.pt", directory / "classifier.json"
    if pt.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        data = pt.read_bytes()
        if meta.get("sha256") == _sha256(data):
            net = DigitClassifier()
            net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
            return net.eval(), meta
        if callable(log):
            log(f"{pt}: checksum does not match {meta_path.name}; training a new classifier")
    net, acc = train_classifier()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    data = buf.getvalue()
    meta = {"sha256": _sha256(data), "test_accuracy": acc, "features": FEATURES,
            "trained_on": "sklearn digits, training split (1,497 images; engine.data.digits)",
            "architecture": "conv3x3(1→32)-ReLU-conv3x3(32→64)-ReLU-maxpool2-fc(1024→128)-ReLU-fc(128→64)-ReLU"
                            "-fc(64→10); features = the 64-d ReLU output", "training": "Adam 1e-3, batch 64, "
                            "40 epochs, ±1 pixel shifts, seed 0"}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(pt, lambda f: f.write(data))
    text = json.dumps(meta, indent=2)
    atomic_write(meta_path, lambda f: f.write(text.encode()))
    return net.eval(), meta


@dataclass
class FeatureSet:
    """Standardised classifier features (N, D) float64 of one image set, and its predicted labels (N,)."""

    feats: np.ndarray
    labels: np.ndarray


class DigitFeatures:
    """The feature map of KID and FID: the classifier's penultimate features, standardised with the training
    split's per-feature mean and standard deviation (features that never fire on it are dropped), so that the
    cubic kernel of KID sees O(1) inputs and no single unit dominates."""

    def __init__(self, net: DigitClassifier) -> None:
        self.net = net.eval()
        raw = self._raw(_images("train"))
        sd = raw.std(0)
        self.live = sd > 1e-8
        self.mean, self.std = raw.mean(0)[self.live], sd[self.live]
        self.train = self.of(_images("train"))
        self.test = self.of(_images("test"))

    def _raw(self, images: Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([self.net.features(b.clamp(-1, 1)) for b in images.split(512)]).double().numpy()

    def of(self, images: Tensor) -> FeatureSet:
        """images (N, 1, 8, 8) in [−1, 1] (clamped there, as a PNG would be)."""
        raw = self._raw(images)
        with torch.no_grad():
            labels = self.net.head(torch.from_numpy(raw).float()).argmax(1).numpy()
        return FeatureSet((raw[:, self.live] - self.mean) / self.std, labels)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between feature sets (n, d), (m, d) with k(u, v) = (uᵀv/d + 1)³ (KID)."""
    d = a.shape[1]
    kaa, kbb, kab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    n, m = a.shape[0], b.shape[0]
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets."""
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
