"""MNIST IDX reader and the anomaly-detection split of spec §4, on files written here and on the real set."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import pytest

import engine.data.download as download_mod
import engine.data.mnist as mnist
from engine.data import load_images, load_mnist_anomaly
from engine.data.mnist import MNIST_FILES, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
S3 = "https://ossci-datasets.s3.amazonaws.com/mnist/"
LECUN = "http://yann.lecun.com/exdb/mnist/"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test tried to use the network: urlopen{args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


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
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as ei:
        load_mnist_anomaly(tmp_path, 1, "train")
    msg = str(ei.value)
    for part in (str(tmp_path), *MNIST_FILES.values(), "t10k-images-idx3-ubyte.gz", S3, "data.download=true"):
        assert part in msg, (part, msg)
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


def gz_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_corrupt_idx_files_give_clean_errors(tmp_path: Path) -> None:
    x, y = fake_mnist(tmp_path, gz=True)
    path = tmp_path / (MNIST_FILES["train_images"] + ".gz")
    good = path.read_bytes()
    cases = [
        (good[: len(good) // 2], "truncated or corrupt"),  # gzip stream cut short: EOFError inside gzip
        (good[:10] + bytes(b ^ 0xFF for b in good[10:40]) + good[40:], "truncated or corrupt"),  # bad deflate
        (good[:-4] + b"\0\0\0\0", "truncated or corrupt"),  # wrong length trailer
        (b"not gzip at all", "truncated or corrupt"),
        (gzip.compress(bytes([0, 0, 8, 3, 0, 0])), "shorter than its 16-byte header"),
        (gzip.compress(bytes([0, 0, 8, 3]) + b"\xff" * 12), "header promises"),  # huge dims, no overflow
    ]
    for blob, pattern in cases:
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=pattern) as ei:
            load_mnist_anomaly(tmp_path, 1, "train")
        assert path.name in str(ei.value)
    path.write_bytes(good)
    load_mnist_anomaly(tmp_path, 1, "train")  # restored: loads again

    # Well-formed IDX files with the wrong content are named too.
    lab = tmp_path / (MNIST_FILES["test_labels"] + ".gz")
    for blob, bad, pattern in [
        (gz_bytes(y[50:-1]), lab, "expected 20 labels"),
        (gz_bytes(np.full(20, 11)), lab, "labels must be digits 0..9"),
        (gz_bytes(x[50:, :27]), tmp_path / (MNIST_FILES["test_images"] + ".gz"), r"\(N, 28, 28\)"),
    ]:
        saved = bad.read_bytes()
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=pattern) as ei:
            load_mnist_anomaly(tmp_path, 1, "test")
        assert bad.name in str(ei.value)
        bad.write_bytes(saved)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        load_images(SimpleNamespace(source="mnist", root=str(tmp_path)), (3, 32, 32), "train")


def test_download_fetches_only_missing_files_and_falls_back_to_the_next_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    y = (np.arange(30) % 10).astype(np.uint8)
    parts = {"train_images": x[:20], "train_labels": y[:20], "test_images": x[20:], "test_labels": y[20:]}
    served = {key: gz_bytes(arr) for key, arr in parts.items()}
    # Our gz files stand in for the published ones: give them their own md5 as the "published" sums.
    for key, blob in served.items():
        remote = dataclasses.replace(mnist._MNIST_REMOTE[key], md5=hashlib.md5(blob).hexdigest())
        monkeypatch.setitem(mnist._MNIST_REMOTE, key, remote)
    calls: list[str] = []

    def fake_fetch(url: str, out: BinaryIO, timeout: float) -> None:
        calls.append(url)
        stem = url.rsplit("/", 1)[1][: -len(".gz")]
        key = next(k for k, v in MNIST_FILES.items() if v == stem)
        if url.startswith(S3) and key == "test_images":
            raise urllib.error.HTTPError(url, 503, "Slow Down", None, None)  # type: ignore[arg-type]
        out.write(served[key])

    monkeypatch.setattr(download_mod, "_fetch", fake_fetch)
    write_idx(tmp_path / MNIST_FILES["train_images"], parts["train_images"], gz=False)  # the user's raw file
    cfg = SimpleNamespace(source="mnist", root=str(tmp_path), heldout_digit=2, download=True)
    tr = load_images(cfg, (1, 28, 28), "train")
    assert calls == [S3 + "train-labels-idx1-ubyte.gz", S3 + "t10k-images-idx3-ubyte.gz",
                     LECUN + "t10k-images-idx3-ubyte.gz", S3 + "t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MNIST_FILES["train_images"], *(MNIST_FILES[k] + ".gz" for k in served if k != "train_images")]
    )
    assert tr.shape[0] == int(0.8 * int((y != 2).sum()))
    load_images(cfg, (1, 28, 28), "test")
    assert len(calls) == 4  # everything is there now


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST data not present")
def test_real_mnist_files_are_read_losslessly(monkeypatch: pytest.MonkeyPatch) -> None:
    # md5 of the uncompressed originals (published; see the data README): the reader loses nothing.
    published = {
        "train_images": ((60000, 28, 28), "6bbc9ace898e44ae57da46a324031adb"),
        "train_labels": ((60000,), "a25bea736e30d166cdddb491f175f624"),
        "test_images": ((10000, 28, 28), "2646ac647ad5339dbf082846283269ea"),
        "test_labels": ((10000,), "27ae3e4e09519cfbb04c329615203637"),
    }
    for key, (shape, digest) in published.items():
        arr = read_idx(SHARED_MNIST / (MNIST_FILES[key] + ".gz"))
        assert arr.shape == shape
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        assert hashlib.md5(header + arr.tobytes()).hexdigest() == digest
    labels = np.concatenate([read_idx(SHARED_MNIST / (MNIST_FILES[k] + ".gz"))
                             for k in ("train_labels", "test_labels")])
    assert np.bincount(labels).tolist() == [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]

    # The user's gz files differ from the published containers: with download on they are used as they
    # are (never checked against the .gz md5s, never re-fetched).
    def no_fetch(*args: Any) -> None:
        raise AssertionError("existing files must not be downloaded again")

    monkeypatch.setattr(download_mod, "_fetch", no_fetch)
    cfg = SimpleNamespace(source="mnist", root=str(SHARED_MNIST), heldout_digit=4, download=True)
    tr, te = load_images(cfg, (1, 28, 28), "train"), load_images(cfg, (1, 28, 28), "test", limit=100)
    n_normal = 70000 - 6824
    assert tr.shape == (int(0.8 * n_normal), 1, 28, 28) and te.shape == (100, 1, 28, 28)
    assert 25 < tr.float().mean().item() < 40  # MNIST's mean pixel is ~33.3
