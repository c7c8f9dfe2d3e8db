"""CIFAR-10 (pickle batches / .tar.gz), SVHN (.mat) and the download helper, on files written here.

The files are written in exactly the distributed formats: CIFAR-10 batches are hand-assembled Python 2
cPickle protocol-2 streams (what the official files are), plus Python 3 re-pickles; SVHN files come from
``scipy.io.savemat`` in MATLAB v5 with the official variable layout. No test touches the network: an
autouse fixture makes any real ``urlopen`` fail the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import torch

import engine.data.cifar as cifar
import engine.data.download as download_mod
from engine.data import DatasetNotFoundError, DownloadError, load_images
from engine.data.cifar import CIFAR10_ARCHIVE, CIFAR10_DIR, load_cifar10, read_cifar_batch
from engine.data.download import download
from engine.data.svhn import SVHN_FILES, load_svhn, read_svhn_mat

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test tried to use the network: urlopen{args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def cfg(source: str, root: Path | str, download: bool = False) -> types.SimpleNamespace:
    return types.SimpleNamespace(source=source, root=str(root), download=download, flip=False)


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# --------------------------------------------------------------------------------------------------
# CIFAR-10 files in the distributed format
# --------------------------------------------------------------------------------------------------


def _py2_str(b: bytes) -> bytes:
    # Python 2 str: SHORT_BINSTRING (< 256 bytes) or BINSTRING; loaded with encoding="bytes" as bytes.
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_uint8_array(a: np.ndarray) -> bytes:
    """An ndarray as numpy 1.x under Python 2 pickled it: _reconstruct(ndarray, (0,), 'b') + BUILD state."""
    assert a.dtype == np.uint8 and a.ndim == 2
    shape = _py2_int(a.shape[0]) + _py2_int(a.shape[1]) + b"\x86"  # TUPLE2
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"  # dtype('u1', 0, 1)
        + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # (3,'|',N,N,N,-1,-1,0)
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
        + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes(order="C")) + b"tb"
    )


def py2_pickle(batch: dict[bytes, Any]) -> bytes:
    """A CIFAR-10 batch byte-for-byte in the structure of the official files (Python 2 cPickle, protocol 2)."""
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for key, value in batch.items():
        out.append(_py2_str(key))
        if isinstance(value, bytes):
            out.append(_py2_str(value))
        elif isinstance(value, list):
            out.append(b"](")  # EMPTY_LIST, MARK
            out += [_py2_int(v) if isinstance(v, int) else _py2_str(v) for v in value]
            out.append(b"e")  # APPENDS
        else:
            out.append(_py2_uint8_array(value))
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 with a pattern that tells channels, rows and columns apart, plus labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    x[0] = (c * 80 + h * 2 + (w % 2)).astype(np.uint8)  # every (c, h, w) gives a different value
    return x, rng.integers(0, 10, n).astype(np.int64)


def batch_dict(x: np.ndarray, y: np.ndarray, label: bytes) -> dict[bytes, Any]:
    # Key order of the originals; each row is R(1024) G(1024) B(1024), each plane row-major.
    return {
        b"data": x.reshape(len(x), 3072),
        b"labels": [int(v) for v in y],
        b"batch_label": label,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))],
    }


def write_cifar(root: Path, n: int = 4, fmt: str = "py2") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The five training batches and the test batch (n images each) under root/cifar-10-batches-py."""
    folder = root / CIFAR10_DIR
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([*TRAIN_BATCHES, "test_batch"]):
        x, y = cifar_images(n, seed=i)
        d = batch_dict(x, y, f"batch {i}".encode())
        if fmt == "py2":
            blob = py2_pickle(d)
        elif fmt == "py3-protocol2":
            blob = pickle.dumps(d, protocol=2)
        else:  # a Python 3 re-pickle with str keys and a modern protocol
            blob = pickle.dumps({k.decode(): v for k, v in d.items()}, protocol=pickle.HIGHEST_PROTOCOL)
        (folder / name).write_bytes(blob)
        written[name] = (x, y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    return written


def expected(written: dict[str, tuple[np.ndarray, np.ndarray]], split: str) -> tuple[np.ndarray, np.ndarray]:
    names = TRAIN_BATCHES if split == "train" else ["test_batch"]
    return np.concatenate([written[n][0] for n in names]), np.concatenate([written[n][1] for n in names])


def make_tar(src_root: Path, dest: Path, extra: dict[str, bytes] | None = None) -> bytes:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_root / CIFAR10_DIR, arcname=CIFAR10_DIR)
        for name, blob in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return dest.read_bytes()


def test_py2_helper_writes_what_pickle_reads_like_the_originals() -> None:
    x, y = cifar_images(3, seed=0)
    blob = py2_pickle(batch_dict(x, y, b"training batch 1 of 5"))
    # The opening bytes of the official data_batch_1: PROTO 2, dict, then SHORT_BINSTRING 'data'.
    assert blob.startswith(b"\x80\x02}(U\x04data")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob and b"_codecs" not in blob
    d = pickle.loads(blob, encoding="bytes")
    assert set(d) == {b"data", b"labels", b"batch_label", b"filenames"}
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (3, 3072)
    assert d[b"labels"] == y.tolist() and d[b"filenames"][1] == b"img_00001.png"


@pytest.mark.parametrize("fmt", ["py2", "py3-protocol2", "py3-str-keys"])
def test_cifar_batches_load_exact_pixels_in_chw(tmp_path: Path, fmt: str) -> None:
    written = write_cifar(tmp_path, n=4, fmt=fmt)
    for split, n in (("train", 20), ("test", 4)):
        x, y = load_cifar10(tmp_path, split)
        ex, ey = expected(written, split)
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), ex)  # batches 1..5 in order
        np.testing.assert_array_equal(y.numpy(), ey)
    # Layout: byte k of a row is channel k // 1024, row (k % 1024) // 32, column k % 32.
    x, _ = load_cifar10(tmp_path, "train")
    row = written["data_batch_1"][0][0].reshape(3072)
    for c, h, w in [(0, 0, 1), (1, 5, 30), (2, 31, 0), (2, 7, 9)]:
        assert x[0, c, h, w] == row[c * 1024 + h * 32 + w] == c * 80 + h * 2 + w % 2
    assert torch.equal(x[0, 1, :, 0], torch.arange(0, 64, 2, dtype=torch.uint8) + 80)  # varies with h only
    # The same through load_images; root may also be the batch folder itself.
    via_cfg = load_images(cfg("cifar10", tmp_path), (3, 32, 32), "train")
    assert torch.equal(via_cfg, x)
    assert torch.equal(load_images(cfg("cifar10", tmp_path / CIFAR10_DIR), (3, 32, 32), "test"),
                       load_cifar10(tmp_path, "test")[0])


def test_cifar_limit_and_shape_check(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, n=4)
    ex, ey = expected(written, "train")
    for limit in (1, 4, 6, 20, 1000):
        x, y = load_cifar10(tmp_path, "train", limit=limit)
        np.testing.assert_array_equal(x.numpy(), ex[:limit])
        np.testing.assert_array_equal(y.numpy(), ey[:limit])
    assert load_images(cfg("cifar10", tmp_path), (3, 32, 32), "train", limit=6).shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        load_images(cfg("cifar10", tmp_path), (1, 28, 28), "train")
    with pytest.raises(ValueError, match="data.root"):
        load_images(cfg("cifar10", ""), (3, 32, 32), "train")


def test_cifar_tar_gz_gives_the_same_arrays_and_is_extracted(tmp_path: Path) -> None:
    written = write_cifar(tmp_path / "src", n=3)
    root = tmp_path / "root"
    root.mkdir()
    make_tar(tmp_path / "src", root / CIFAR10_ARCHIVE.name)
    from_tar = {s: load_cifar10(root, s) for s in ("train", "test")}
    for s in ("train", "test"):
        from_folder = load_cifar10(tmp_path / "src", s)
        assert torch.equal(from_tar[s][0], from_folder[0]) and torch.equal(from_tar[s][1], from_folder[1])
        np.testing.assert_array_equal(from_tar[s][0].numpy(), expected(written, s)[0])
    # Extracted next to the archive (byte-identical, extras too, no temp files) and used from then on.
    folder = root / CIFAR10_DIR
    assert leftovers(folder) == sorted([*TRAIN_BATCHES, "test_batch", "batches.meta"])
    for name in TRAIN_BATCHES:
        assert (folder / name).read_bytes() == (tmp_path / "src" / CIFAR10_DIR / name).read_bytes()
    (root / CIFAR10_ARCHIVE.name).unlink()
    assert torch.equal(load_cifar10(root, "train")[0], from_tar["train"][0])


def test_cifar_tar_in_read_only_root_is_read_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_cifar(tmp_path / "src", n=2)
    make_tar(tmp_path / "src", tmp_path / CIFAR10_ARCHIVE.name)

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    x, _ = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(x.numpy(), written["test_batch"][0])
    assert "reading the batches from the archive" in capsys.readouterr().err
    assert leftovers(tmp_path / CIFAR10_DIR) == []


class _Evil:
    """Unpickling this runs os.system: the classic pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('os').getcwd()",))


def test_cifar_forbidden_globals_are_refused(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, n=2)
    folder = tmp_path / CIFAR10_DIR
    marker = tmp_path / "pwned"
    x, y = written["data_batch_2"]
    d = batch_dict(x, y, b"evil")
    for payload, name in [
        (pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2), os.system.__module__ + ".system"),
        (pickle.dumps({**d, b"batch_label": _EvalEvil()}, protocol=2), "__builtin__.eval"),  # protocol 2 spelling
        (pickle.dumps({**d, b"x": np.load}, protocol=2), "numpy.load"),  # numpy, but not an array
    ]:
        (folder / "data_batch_2").write_bytes(payload)
        with pytest.raises(ValueError) as ei:
            load_cifar10(tmp_path, "train")
        msg = str(ei.value)
        assert "data_batch_2" in msg and "refusing to unpickle" in msg and name in msg, msg
        assert not marker.exists()
    # The payload really would have run under a plain pickle.load: the refusal is what stopped it.
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_cifar_truncated_or_garbage_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, n=3)
    path = tmp_path / CIFAR10_DIR / "data_batch_3"
    good = path.read_bytes()
    for bad in (good[: len(good) // 2], good[:-1], b"", b"\x00garbage" * 10, good[:40]):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=r"data_batch_3 is truncated or corrupt"):
            load_cifar10(tmp_path, "train")
        with pytest.raises(ValueError, match=r"data_batch_3 is truncated or corrupt"):
            read_cifar_batch(path)


def test_cifar_wrong_content_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, n=3)
    path = tmp_path / CIFAR10_DIR / "test_batch"
    x, y = cifar_images(3, seed=9)
    cases = [
        ([1, 2, 3], "expected a pickled dict"),
        ({b"data": x.reshape(3, 3072)}, "b'labels'"),
        ({b"data": x.reshape(3, 3072).astype(np.float32), b"labels": [0, 1, 2]}, "uint8 array of shape"),
        ({b"data": x.reshape(3, 3072)[:, :3000], b"labels": [0, 1, 2]}, r"\(N, 3072\)"),
        ({b"data": x.reshape(3, 3072), b"labels": [0, 1]}, "3 images but b'labels' has shape"),
        ({b"data": x.reshape(3, 3072), b"labels": [0, 1, 12]}, "labels outside 0..9"),
    ]
    for obj, pattern in cases:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError, match=pattern) as ei:
            load_cifar10(tmp_path, "test")
        assert str(path) in str(ei.value)


def test_cifar_missing_says_where_what_and_how(tmp_path: Path) -> None:
    for split, names in (("train", TRAIN_BATCHES), ("test", ["test_batch"])):
        with pytest.raises(DatasetNotFoundError) as ei:
            load_images(cfg("cifar10", tmp_path), (3, 32, 32), split)
        msg = str(ei.value)
        assert isinstance(ei.value, FileNotFoundError)  # what the trainer turns into one config error
        for part in (str(tmp_path), CIFAR10_DIR, *names, CIFAR10_ARCHIVE.name, CIFAR_URL, "data.download=true"):
            assert part in msg, (part, msg)
    # An incomplete batch folder is not enough (and without download, nothing is fetched).
    write_cifar(tmp_path, n=2)
    (tmp_path / CIFAR10_DIR / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4"):
        load_cifar10(tmp_path, "train")
    assert load_cifar10(tmp_path, "test")[0].shape == (2, 3, 32, 32)


def test_cifar_corrupt_or_wrong_archive(tmp_path: Path) -> None:
    write_cifar(tmp_path / "src", n=2)
    blob = make_tar(tmp_path / "src", tmp_path / "full.tar.gz")
    archive = tmp_path / CIFAR10_ARCHIVE.name
    for bad in (blob[: len(blob) // 2], blob[:100], b"not a tarball at all"):
        archive.write_bytes(bad)
        with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz is truncated or corrupt"):
            load_cifar10(tmp_path, "train")
    # A tar without the batches (e.g. the CIFAR-100 or the binary version).
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match=r"does not contain cifar-10-batches-py/data_batch_1"):
        load_cifar10(tmp_path, "train")
    assert not (tmp_path / CIFAR10_DIR).exists()


def test_cifar_archive_members_cannot_escape_or_link(tmp_path: Path) -> None:
    write_cifar(tmp_path / "src", n=2)
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    # Members with absolute or ".." paths are never written: only the expected names are read.
    make_tar(tmp_path / "src", root / CIFAR10_ARCHIVE.name, extra={"../escaped": b"x", "/tmp/abs_escape": b"y"})
    load_cifar10(root, "test")
    assert not (tmp_path / "a" / "escaped").exists() and leftovers(root) == sorted([CIFAR10_ARCHIVE.name, CIFAR10_DIR])
    # A batch that is a symlink inside the archive is refused.
    with tarfile.open(root / CIFAR10_ARCHIVE.name, "w:gz") as tar:
        for name in [*TRAIN_BATCHES, "test_batch"]:
            info = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    (root / CIFAR10_DIR).rename(root / "old")
    with pytest.raises(ValueError, match="data_batch_1 is not a regular file"):
        load_cifar10(root, "train")


# --------------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------------


class FakeNet:
    """Stands in for ``engine.data.download._fetch``: serves bytes per URL, or fails like a dead network."""

    def __init__(self, files: dict[str, bytes] | None = None, cut: int | None = None) -> None:
        self.files = files or {}
        self.cut = cut
        self.calls: list[str] = []

    def __call__(self, url: str, out: BinaryIO, timeout: float) -> None:
        self.calls.append(url)
        assert timeout > 0
        if url not in self.files:
            raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))
        blob = self.files[url]
        if self.cut is not None:  # the connection drops after `cut` bytes
            out.write(blob[: self.cut])
            raise http.client.IncompleteRead(blob[: self.cut], len(blob) - self.cut)
        out.write(blob)


def test_download_puts_the_file_in_place_only_when_md5_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = os.urandom(3000)
    net = FakeNet({"https://example.org/f.bin": blob})
    monkeypatch.setattr(download_mod, "_fetch", net)
    dest = tmp_path / "sub" / "f.bin"
    assert download("https://example.org/f.bin", dest, md5(blob)) == dest
    assert dest.read_bytes() == blob and leftovers(dest.parent) == ["f.bin"]

    other = tmp_path / "g.bin"
    with pytest.raises(DownloadError, match="checksum") as ei:
        download("https://example.org/f.bin", other, "0" * 32)
    assert md5(blob) in str(ei.value) and "0" * 32 in str(ei.value)
    assert not other.exists() and leftovers(tmp_path) == ["sub"]

    with pytest.raises(DownloadError, match="Temporary failure in name resolution"):
        download("https://example.org/missing", other, md5(blob))
    assert leftovers(tmp_path) == ["sub"]

    monkeypatch.setattr(download_mod, "_fetch", FakeNet({"https://example.org/f.bin": blob}, cut=1000))
    with pytest.raises(DownloadError, match="IncompleteRead|bytes read"):
        download("https://example.org/f.bin", other, md5(blob))
    assert leftovers(tmp_path) == ["sub"]


def test_download_through_urllib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real _fetch: urlopen (faked here) with a timeout, streamed to disk."""
    blob = os.urandom(5000)
    seen: dict[str, Any] = {}

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        seen.update(url=url, timeout=timeout)
        if "down" in url:
            raise urllib.error.URLError("[Errno 101] Network is unreachable")
        return io.BytesIO(blob)  # a context manager with read(), like an HTTPResponse

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    download("https://example.org/x", tmp_path / "x", md5(blob))
    assert (tmp_path / "x").read_bytes() == blob and seen["timeout"] == download_mod.DOWNLOAD_TIMEOUT_S
    with pytest.raises(DownloadError, match="Network is unreachable"):
        download("https://down.example.org/y", tmp_path / "y", md5(blob))
    assert leftovers(tmp_path) == ["x"]


def test_cifar_download_verifies_then_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar(tmp_path / "src", n=2)
    blob = make_tar(tmp_path / "src", tmp_path / "served.tar.gz")
    net = FakeNet({CIFAR_URL: blob})
    monkeypatch.setattr(download_mod, "_fetch", net)
    root = tmp_path / "new" / "root"  # created on demand

    # Served bytes differ from the published archive: rejected, nothing left behind.
    with pytest.raises(DatasetNotFoundError) as ei:
        load_images(cfg("cifar10", root, download=True), (3, 32, 32), "train")
    msg = str(ei.value)
    assert "checksum" in msg and CIFAR10_ARCHIVE.md5 in msg and CIFAR_URL in msg
    assert net.calls == [CIFAR_URL] and not (tmp_path / "new").exists()

    # With the served archive's md5 published, it is downloaded, kept and extracted.
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", dataclasses.replace(CIFAR10_ARCHIVE, md5=md5(blob)))
    x = load_images(cfg("cifar10", root, download=True), (3, 32, 32), "train")
    np.testing.assert_array_equal(x.numpy(), expected(written, "train")[0])
    assert (root / CIFAR10_ARCHIVE.name).read_bytes() == blob
    assert leftovers(root) == sorted([CIFAR10_ARCHIVE.name, CIFAR10_DIR])
    load_images(cfg("cifar10", root, download=True), (3, 32, 32), "test")
    assert net.calls == [CIFAR_URL, CIFAR_URL]  # not fetched again


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("cifar10", [CIFAR10_ARCHIVE.name, CIFAR_URL, "data_batch_1"]),
        ("svhn", ["train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"]),
        ("mnist", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                   "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"]),
    ],
)
def test_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expect: list[str]) -> None:
    def offline(url: str, timeout: float) -> Any:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    shape = {"cifar10": (3, 32, 32), "svhn": (3, 32, 32), "mnist": (1, 28, 28)}[source]
    with pytest.raises(DatasetNotFoundError) as ei:
        load_images(cfg(source, tmp_path / "data", download=True), shape, "train")
    msg = str(ei.value)
    for part in [str(tmp_path / "data"), "Network is unreachable", "by hand", "data.download=false", *expect]:
        assert part in msg, (part, msg)
    assert not (tmp_path / "data").exists()  # no partial files, not even the folder made for them


# --------------------------------------------------------------------------------------------------
# SVHN (.mat)
# --------------------------------------------------------------------------------------------------


def write_svhn(path: Path, n: int, seed: int = 0, compress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A file laid out like train_32x32.mat: X (32, 32, 3, N) uint8 = (H, W, C, N), y (N, 1) in 1..10."""
    savemat = pytest.importorskip("scipy.io").savemat
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    x[..., 0] = (c * 80 + h * 2 + (w % 2)).astype(np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": x, "y": y}, format="5", do_compression=compress)
    return x, y


@pytest.mark.parametrize("compress", [False, True])
def test_svhn_transposes_to_chw_and_maps_label_10_to_0(tmp_path: Path, compress: bool) -> None:
    xr, yr = write_svhn(tmp_path / "train_32x32.mat", 12, compress=compress)
    write_svhn(tmp_path / "test_32x32.mat", 5, seed=1, compress=compress)
    x, y = load_svhn(tmp_path, "train")
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    np.testing.assert_array_equal(x.numpy(), xr.transpose(3, 2, 0, 1))
    for c, h, w in [(0, 0, 1), (1, 5, 30), (2, 31, 0)]:
        assert x[0, c, h, w] == xr[h, w, c, 0] == c * 80 + h * 2 + w % 2
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert int(yr[9, 0]) == 10 and int(y[9]) == 0
    assert load_images(cfg("svhn", tmp_path), (3, 32, 32), "test").shape == (5, 3, 32, 32)
    lim = load_images(cfg("svhn", tmp_path), (3, 32, 32), "train", limit=4)
    assert torch.equal(lim, x[:4])
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        load_images(cfg("svhn", tmp_path), (3, 64, 64), "train")


def test_svhn_missing_corrupt_and_malformed_name_the_file(tmp_path: Path) -> None:
    pytest.importorskip("scipy.io")
    with pytest.raises(DatasetNotFoundError) as ei:
        load_images(cfg("svhn", tmp_path), (3, 32, 32), "test")
    msg = str(ei.value)
    for part in (str(tmp_path), "test_32x32.mat", SVHN_FILES["test"].urls[0], "data.download=true"):
        assert part in msg
    path = tmp_path / "train_32x32.mat"
    write_svhn(path, 20)
    good = path.read_bytes()
    for bad in (good[: len(good) // 2], good[:200], b"", b"MATLAB? no" * 30):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="train_32x32.mat is truncated or corrupt"):
            load_svhn(tmp_path, "train")
    from scipy.io import savemat

    for variables, pattern in [
        ({"A": np.zeros((2, 2))}, "expected variables X and y"),
        ({"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1))}, r"uint8 of shape \(32, 32, 3, N\)"),
        ({"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((2, 1))}, r"\(32, 32, 3, N\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, "2 images but 3 labels"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.zeros((2, 1))}, "labels outside 1..10"),
    ]:
        savemat(str(path), variables)
        with pytest.raises(ValueError, match=pattern) as ei:
            read_svhn_mat(path)
        assert str(path) in str(ei.value)


def test_svhn_without_scipy_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import ...` fail
    (tmp_path / "train_32x32.mat").write_bytes(b"x")
    with pytest.raises(ImportError, match="pip install scipy"):
        load_svhn(tmp_path, "train")


def test_svhn_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xr, _ = write_svhn(tmp_path / "served" / "test_32x32.mat", 3)
    blob = (tmp_path / "served" / "test_32x32.mat").read_bytes()
    url = SVHN_FILES["test"].urls[0]
    net = FakeNet({url: blob})
    monkeypatch.setattr(download_mod, "_fetch", net)
    root = tmp_path / "svhn"
    with pytest.raises(DatasetNotFoundError, match="checksum"):  # not the published file
        load_svhn(root, "test", download=True)
    assert leftovers(root) == []
    monkeypatch.setitem(SVHN_FILES, "test", dataclasses.replace(SVHN_FILES["test"], md5=md5(blob)))
    x = load_images(cfg("svhn", root, download=True), (3, 32, 32), "test")
    np.testing.assert_array_equal(x.numpy(), xr.transpose(3, 2, 0, 1))
    assert leftovers(root) == ["test_32x32.mat"] and net.calls == [url, url]
