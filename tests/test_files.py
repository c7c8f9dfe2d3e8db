"""Crash-safe writes (engine/files.py) and the one CLI error path (engine/errors.py), with injected faults."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine.files as files
from engine.errors import OneLineParser, UserError, describe_os_error, one_line, run_cli
from engine.files import LineLog, atomic_write, remove_stale_temporaries, repair_torn_tail, strict_json, truncate_lines

REPO = Path(__file__).resolve().parents[1]


class FullDisk:
    """A file whose write stores ``budget`` bytes in total, then raises ENOSPC (optionally after a short write)."""

    def __init__(self, f, budget: int) -> None:  # type: ignore[no-untyped-def]
        self._f, self.budget = f, budget

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        data = bytes(data)
        if len(data) > self.budget:
            self._f.write(data[: self.budget])  # a partial write reaches the disk first, as on a real full disk
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._f, name)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.mark.parametrize("budget", [0, 10, 1000, 100_000])
def test_enospc_at_the_file_write_during_torch_save_leaves_the_old_file(tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                        budget: int) -> None:
    path = tmp_path / "ckpt-0000001.pt"
    atomic_write(path, lambda f: torch.save({"old": torch.ones(3)}, f))
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), budget))
    with pytest.raises(OSError) as info:
        atomic_write(path, lambda f: torch.save({"new": torch.zeros(100_000)}, f))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert "disk full" in describe_os_error(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_real_write_limit_during_torch_save(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), which torch reports as
    'RuntimeError: unexpected pos'; atomic_write re-raises the OSError itself and leaves nothing behind."""
    code = (
        "import resource, signal, torch, sys\n"
        "from pathlib import Path\n"
        "from engine.files import atomic_write\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "p = Path(sys.argv[1]) / 'x.pt'\n"
        "try:\n"
        "    atomic_write(p, lambda f: torch.save({'a': torch.zeros(1_000_000)}, f))\n"
        "except OSError as e:\n"
        "    print('OSError', e.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.stdout.strip() == f"OSError {errno.EFBIG}", out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [0, 1, 7, 30])
def test_a_line_append_is_whole_or_nothing_under_enospc(tmp_path: Path, monkeypatch, cut: int) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "metrics.jsonl"
    log = LineLog(path)
    log.append(json.dumps({"iteration": 1, "loss": 0.5}))
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1 and cut:
            return real_write(fd, data[:cut])  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError) as info:
        log.append(json.dumps({"iteration": 2, "loss": 0.25}))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before  # truncated back: no partial line
    monkeypatch.setattr(files.os, "write", real_write)
    log.append(json.dumps({"iteration": 2, "loss": 0.25}))
    log.close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("tail", [b"", b"{", b'{"iteration": 3, "lo', b"x" * 70_000])
def test_a_torn_last_line_is_dropped(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "m.jsonl"
    whole = b'{"iteration": 1}\n{"iteration": 2}\n'
    path.write_bytes(whole + tail)
    assert repair_torn_tail(path) == len(tail)
    assert path.read_bytes() == whole
    path.write_bytes(b"no newline at all")
    assert repair_torn_tail(path) == 17 and path.read_bytes() == b""
    assert repair_torn_tail(tmp_path / "absent") == 0


def test_truncate_lines_cuts_at_the_first_rejected_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(json.dumps({"iteration": i}).encode() + b"\n" for i in range(1, 8)))
    assert truncate_lines(path, lambda line: json.loads(line)["iteration"] <= 4) == 3
    assert [json.loads(x)["iteration"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert truncate_lines(path, lambda line: True) == 0


def test_stale_temporaries_are_removed_by_pattern_only(tmp_path: Path) -> None:
    for name in (".ckpt-0000002.pt.abc123.tmp", ".config.yaml.q1w2.tmp", ".recon_0000001.png.zz.tmp",
                 ".eval-0000002.json.k.tmp", "ckpt-0000002.pt", "notes.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, ["ckpt-*.pt", "config.yaml", "recon_*.png"])
    assert sorted(removed) == [".ckpt-0000002.pt.abc123.tmp", ".config.yaml.q1w2.tmp", ".recon_0000001.png.zz.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".eval-0000002.json.k.tmp", "ckpt-0000002.pt", "notes.tmp"]


def test_strict_json_replaces_non_finite_values() -> None:
    found: list[str] = []
    out = strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf"), "e": "x"}}, "", found)
    assert out == {"a": None, "b": [1.0, None], "c": {"d": None, "e": "x"}}
    assert found == ["a", "b[1]", "c.d"]
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------
# The error path


@pytest.mark.parametrize(
    ("exc", "code", "fragment"),
    [
        (UserError("bad value\nsecond line"), 2, "error: bad value second line"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/metrics.jsonl"), 1,
         "error: /x/metrics.jsonl: No space left on device (disk full)"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/f"), 1, "error: /ro/f: Read-only file system"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/p"), 1, "error: /p: Permission denied"),
        (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C) during start-up"),
        (MemoryError(), 1, "error: out of memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: 9 GB"), 1,
         "error: out of memory ([enforce fail"),
    ],
)
def test_run_cli_turns_every_expected_failure_into_one_line(capsys, exc: BaseException, code: int,  # type: ignore[no-untyped-def]
                                                            fragment: str) -> None:
    def body() -> int:
        raise exc

    assert run_cli(body) == code
    err = capsys.readouterr().err
    assert err.startswith(fragment) and err.count("\n") == 1, err


def test_run_cli_keeps_the_traceback_of_a_bug() -> None:
    def body() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(body)


def test_one_line_and_the_parser(capsys) -> None:  # type: ignore[no-untyped-def]
    assert one_line("a\n  b\tc") == "a b c" and len(one_line("x" * 5000)) == 2000
    p = OneLineParser(prog="prog")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--n", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --n: invalid int value: 'x' (see prog --help)") and err.count("\n") == 1
