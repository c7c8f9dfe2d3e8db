"""MNIST IDX reader and the anomaly-detection split of spec §4, on files written here and on the real set."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.data import MNIST_FILES, load_images, load_mnist_anomaly, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def fake_mnist(root: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    y = (np.arange(n_train + n_test) % 10).astype(np.uint8)
    write_idx(root / MNIST_FILES["train_images"], x[:n_train], gz)
    write_idx(root / MNIST_FILES["train_labels"], y[:n_train], gz)
    write_idx(root / MNIST_FILES["test_images"], x[n_train:], gz)
    write_idx(root / MNIST_FILES["test_labels"], y[n_train:], gz)
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_anomaly_split_follows_the_protocol(tmp_path: Path, gz: bool) -> None:
    x, y = fake_mnist(tmp_path, gz=gz)
    tr, tr_lab = load_mnist_anomaly(tmp_path, 3, "train")
    te, te_lab = load_mnist_anomaly(tmp_path, 3, "test")
    n_normal = int((y != 3).sum())
    assert tr.shape == (int(0.8 * n_normal), 1, 28, 28) and int(tr_lab.sum()) == 0
    assert te.shape[0] == n_normal - tr.shape[0] + int((y == 3).sum())
    assert int(te_lab.sum()) == int((y == 3).sum())  # every held-out image is in test, labelled 1
    # exact protocol: RandomState(42) permutes the normals, test is re-permuted with the same object
    normal = x[y != 3]
    rng = np.random.RandomState(42)
    normal = normal[rng.permutation(len(normal))]
    np.testing.assert_array_equal(tr.numpy()[:, 0], normal[: tr.shape[0]])
    test_pool = np.concatenate([normal[tr.shape[0]:], x[y == 3]])
    np.testing.assert_array_equal(te.numpy()[:, 0], test_pool[rng.permutation(len(test_pool))])
    cfg = SimpleNamespace(source="mnist", root=str(tmp_path), heldout_digit=3)
    assert load_images(cfg, (1, 28, 28), "train").shape == tr.shape


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_anomaly(tmp_path, 1, "train")
    fake_mnist(tmp_path, gz=False)
    path = tmp_path / MNIST_FILES["test_images"]
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is truncated"):
        load_mnist_anomaly(tmp_path, 1, "test")
    path.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST data not present")
def test_real_mnist_split_sizes() -> None:
    tr, _ = load_mnist_anomaly(SHARED_MNIST, 1, "train")
    te, lab = load_mnist_anomaly(SHARED_MNIST, 1, "test")
    n_ones = 7877  # digit 1 in the 70,000 MNIST images
    assert tr.shape == (int(0.8 * (70000 - n_ones)), 1, 28, 28)
    assert int(lab.sum()) == n_ones and te.shape[0] == 70000 - n_ones - tr.shape[0] + n_ones
