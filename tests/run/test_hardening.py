"""Issue 13: faults injected into training runs. Disk full at a metrics append and inside torch.save, kill -9
mid-save, torn metrics lines, a second trainer, corrupt checkpoints, divergence met at a grid, a checkpoint or
a signal, bad image files, start-up interrupts. Each ends in one line, a non-zero exit, and intact files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.files as files
import engine.run.train as train_mod
from engine.config import DataConfig
from engine.data import load_images
from engine.run import checkpoint
from engine.run.train import main
from tests.run.test_resume import TINY  # the resume tests' tiny digits config
from tests.test_files import FullDisk  # a file that fills the disk after a byte budget

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def one_error_line(err: str, only: bool = True) -> str:
    """The one ``error:`` line: the only line of a refused start (``only``), else the last line after the run's
    progress notes. Never a traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error:") for ln in lines) == 1 and (len(lines) == 1 or not only), err
    return lines[-1]


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.iterdir())}


def iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Disk full


def test_disk_full_at_a_metrics_append_stops_with_whole_lines_and_resumes(tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                           capsys) -> None:
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = [QUICK, *TINY, "log.checkpoint_every=2", "train.iterations=5"]
    real_write = os.write
    calls = {"n": 0}

    def full(fd: int, data: bytes) -> int:  # the 3rd append: 5 bytes reach the disk, then ENOSPC
        calls["n"] += 1
        if calls["n"] == 3:
            real_write(fd, data[:5])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", full)
    assert main([*args, f"log.run_dir={run}"]) == 1
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "metrics.jsonl: No space left on device (disk full) at iteration 3" in line
    assert "intact: the latest checkpoint ckpt-0000002.pt, metrics.jsonl up to iteration 2" in line
    assert f"--resume {run}" in line
    assert iterations(run) == [1, 2]  # whole lines only
    monkeypatch.setattr(files.os, "write", real_write)
    assert main(["--resume", str(run), "train.iterations=5"]) == 0
    assert main([*args, f"log.run_dir={straight}"]) == 0
    assert iterations(run) == [1, 2, 3, 4, 5]
    a = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_g"] for r in a] == [r["loss_g"] for r in b]  # the resumed run is the straight run


@pytest.mark.parametrize("budget", [0, 4096])
def test_disk_full_inside_torch_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, capsys,  # type: ignore[no-untyped-def]
                                                                   budget: int) -> None:
    run = tmp_path / "run"
    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str):  # type: ignore[no-untyped-def]
        f = real_fdopen(fd, mode)
        name = os.readlink(f"/proc/self/fd/{fd}")
        return FullDisk(f, budget) if ".ckpt-0000004.pt." in name else f

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    assert main([QUICK, *TINY, f"log.run_dir={run}", "log.checkpoint_every=2", "train.iterations=6"]) == 1
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "could not write checkpoint" in line and "ckpt-0000004.pt (disk full)" in line
    assert "the previous checkpoint ckpt-0000002.pt is intact" in line and "up to iteration 4" in line
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt-0000002.pt"]
    checkpoint.load(run / "ckpt-0000002.pt")
    monkeypatch.setattr(files.os, "fdopen", real_fdopen)
    assert main(["--resume", str(run), "train.iterations=6"]) == 0
    assert checkpoint.load(run / "ckpt-0000006.pt")["iteration"] == 6


# ---------------------------------------------------------------------------------------------------------
# kill -9, torn lines, stale temporary files


def test_kill_9_mid_save_leaves_temporaries_that_the_next_start_removes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import engine.run.checkpoint as ck
        real = ck.torch.save
        def dying(obj, f):
            if obj["iteration"] == 3:
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the save
            real(obj, f)
        ck.torch.save = dying
        from engine.run.train import main
        main({[QUICK, *TINY, f"log.run_dir={run}", "log.checkpoint_every=1", "train.iterations=6"]!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL
    stale = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".ckpt-0000003.pt.")
    (run / ".config.yaml.x1y2z3.tmp").write_text("left by a kill during a config write")
    (run / ".recon_0000002.png.abc.tmp").write_bytes(b"\x89PNG")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "loss_g": 0.1')  # a torn last line
    assert checkpoint.latest_checkpoint(run).name == "ckpt-0000002.pt"  # type: ignore[union-attr]
    assert main(["--resume", str(run), "train.iterations=4"]) == 0
    err = capsys.readouterr().err
    assert "removed 3 temporary files left by an interrupted write" in err
    assert "dropped a torn last line" in err and "removed 1 lines after iteration 2" in err
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert iterations(run) == [1, 2, 3, 4]


def test_a_crash_before_the_first_checkpoint_leaves_no_duplicate_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=3"]) == 0
    for ck in checkpoint.list_checkpoints(run):
        ck.unlink()  # as if the process died before its first save
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=3"]) == 0
    assert iterations(run) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------
# A second trainer


def test_a_second_trainer_is_refused_with_the_holder_named(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", QUICK, *TINY, f"log.run_dir={run}",
                             "train.iterations=100000", "log.checkpoint_every=2"],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").exists() or len(iterations(run)) < 3:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() - t0 < 180
            time.sleep(0.05)
        assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=100000"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "another trainer is using it" in line and f"pid {proc.pid} on " in line and "engine.train" in line
        assert main(["--resume", str(run), "train.iterations=100000"]) == 2  # --resume too
        assert f"pid {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    # kill -9 released the lock: the run resumes
    done = checkpoint.load(checkpoint.latest_checkpoint(run))["iteration"]  # type: ignore[arg-type]
    assert main(["--resume", str(run), f"train.iterations={done + 1}"]) == 0
    its = iterations(run)
    assert its == list(range(1, done + 2))  # no duplicated or reordered lines


# ---------------------------------------------------------------------------------------------------------
# Corrupt checkpoints


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def _corrupt(kind: str, path: Path) -> None:
    if kind == "zero-byte":
        path.write_bytes(b"")
        return
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return
    if kind == "malicious":
        torch.save({"format": 1, "payload": Evil()}, path)
        return
    state = torch.load(path, weights_only=True)
    if kind == "missing-key":
        del state["opt_e"]
    elif kind == "wrong-shape":
        k = next(iter(state["generator"]))
        state["generator"][k] = torch.zeros(3)
    elif kind == "nan-weights":
        k = next(iter(state["energy"]))
        state["energy"][k] = torch.full_like(state["energy"][k], float("nan"))
    elif kind == "duplicate-position":
        state["data"]["permutation"][0] = state["data"]["permutation"][1]
    elif kind == "bad-position":
        state["data"]["position"] = 10**12
    elif kind == "bad-config":
        state["config"]["train"]["seed"] = -5
    elif kind == "other-format":
        state["format"] = 2
    elif kind == "bad-rng":
        state["rng"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(state, path)


CORRUPTIONS = ["zero-byte", "truncated", "text", "malicious", "missing-key", "wrong-shape", "nan-weights",
               "duplicate-position", "bad-position", "bad-config", "other-format", "bad-rng"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "log.checkpoint_every=2", "train.iterations=4"]) == 0
    return run


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_latest_checkpoint_is_refused_naming_the_older_intact_one(two_checkpoints: Path, tmp_path: Path,
                                                                             capsys, kind: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    _corrupt(kind, run / "ckpt-0000004.pt")
    before = snapshot(run)
    assert main(["--resume", str(run), "train.iterations=6"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "ckpt-0000004.pt" in line and "ckpt-0000002.pt is intact: use --checkpoint" in line, line
    assert "weights_only=False" not in line and "pwned" not in line
    assert snapshot(run) == before  # config.yaml and everything else untouched
    # eval refuses it the same way
    from engine.eval.cli import main as eval_main

    assert eval_main([str(run), "--metrics", "mse", "--limit", "8", "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "ckpt-0000004.pt" in line and "ckpt-0000002.pt is intact" in line


def test_resume_from_an_older_checkpoint_sets_the_newer_aside(two_checkpoints: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    _corrupt("truncated", run / "ckpt-0000004.pt")
    assert main(["--checkpoint", str(run / "ckpt-0000002.pt"), "train.iterations=5"]) == 0
    assert "set aside the newer ckpt-0000004.pt" in capsys.readouterr().err
    assert (run / "ckpt-0000004.pt.set-aside").is_file()
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt-0000002.pt", "ckpt-0000004.pt",
                                                                  "ckpt-0000005.pt"]
    assert iterations(run) == [1, 2, 3, 4, 5]
    assert main(["--checkpoint", str(tmp_path / "elsewhere" / "ckpt-0000002.pt"), "train.iterations=9"]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------
# Divergence met at a signal, a grid, a checkpoint


def _poison(monkeypatch, at: int, what: str) -> None:  # type: ignore[no-untyped-def]
    real = train_mod.train_step

    def step(learner, x):  # type: ignore[no-untyped-def]
        out = real(learner, x)
        if learner.iteration == at:
            if what == "loss":
                out["loss_e"] = out["loss_e"] * float("nan")
            elif what == "weights":
                with torch.no_grad():
                    next(learner.nets.generator.parameters()).fill_(float("nan"))
            elif what == "second-signal":  # what the handler raises on a second SIGINT/SIGTERM
                raise KeyboardInterrupt
            elif what == "sigint":
                out["loss_e"] = out["loss_e"] * float("nan")
                os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train_mod, "train_step", step)


def test_sigint_during_a_diverged_run_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _poison(monkeypatch, 3, "sigint")
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=50", "log.log_every=100",
                 "log.checkpoint_every=2"]) == 1
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "non-finite loss_e (iteration 3)" in line and "kept the last good checkpoint ckpt-0000002.pt" in line
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt-0000002.pt"]


def test_a_second_signal_stops_at_once_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _poison(monkeypatch, 3, "second-signal")
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=50", "log.checkpoint_every=2"]) == 130
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "stopped at once by a second signal at iteration 3" in line  # iteration 3 ran, its bookkeeping did not
    assert "intact: the latest checkpoint ckpt-0000002.pt, metrics.jsonl up to iteration 2" in line
    assert iterations(run) == [1, 2] and not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_divergence_is_caught_before_a_grid(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _poison(monkeypatch, 3, "loss")
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=50", "log.log_every=100",
                 "log.sample_every=4", "log.checkpoint_every=100"]) == 1
    assert "non-finite loss_e (iteration 3)" in one_error_line(capsys.readouterr().err, only=False)
    assert not list(run.glob("*.png"))  # no grid of a diverged model


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _poison(monkeypatch, 4, "weights")
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=50", "log.log_every=100",
                 "log.checkpoint_every=2"]) == 1
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "non-finite weights of generator (iteration 4)" in line and "ckpt-0000002.pt" in line
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt-0000002.pt"]


# ---------------------------------------------------------------------------------------------------------
# Start-up: interrupts, devices, image files, layouts


def test_ctrl_c_during_start_up_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def interrupted(*a, **k):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "load_data", interrupted)
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 130
    assert "interrupted (Ctrl-C) during start-up" in one_error_line(capsys.readouterr().err)
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line_before_any_write(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "system.device=cuda"]) == 2
    assert "system.device = 'cuda' but no CUDA device is visible" in one_error_line(capsys.readouterr().err)
    assert not run.exists()


def _png(path: Path, value: int, size: int = 8, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size) if mode == "L" else (size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_folder(root: Path, size: int = 8, mode: str = "L") -> Path:
    for split, n in (("train", 24), ("test", 16)):
        for i in range(n):
            _png(root / split / ("a" if i % 2 else "b") / f"{i:03d}.png", 0 if i % 2 else 255, size, mode)
    return root


def _bomb(path: Path, w: int = 30000, h: int = 30000) -> None:
    """A PNG header declaring w x h pixels (900 megapixels) in a file of a few dozen bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


BAD_FILES = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "text-as-jpg": lambda p: p.with_suffix(".jpg").write_text("this is not an image\n"),
    "bomb": _bomb,  # 900 megapixels: PIL's own limit refuses it
    "bomb-81mpx": lambda p: _bomb(p, 9000, 9000),  # under PIL's warning threshold, over ours (64 Mpx)
}


@pytest.mark.parametrize("loader", ["auto", "torch", "dali"])
@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_a_bad_image_file_is_one_line_before_any_write(tmp_path: Path, capsys, loader: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    root = make_folder(tmp_path / "data")
    target = root / "train" / "a" / "005.png"
    BAD_FILES[bad](target)
    run = tmp_path / "run"
    assert main([QUICK, *TINY, "data.source=folder", f"data.root={root}", f"data.loader={loader}",
                 f"log.run_dir={run}", "train.iterations=2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    named = target.with_suffix(".jpg") if bad == "text-as-jpg" else target
    assert str(named) in line, line
    if bad.startswith("bomb"):
        assert ("900000000 pixels" in line or "9000x9000 pixels" in line) and "decompression bomb" in line
    assert not run.exists()


def test_image_folder_export_of_cifar10_is_read_as_a_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = make_folder(tmp_path / "cifar", size=32, mode="RGB")
    run = tmp_path / "run"
    cifar = [str(REPO / "configs" / "cifar10.yaml"), f"data.root={root}", "model.ngf=4", "model.nif=4",
             "model.nemb=16", "model.ndf=16", "model.unet_nf=1", "diffusion.n_steps=4",
             "langevin.posterior.n_steps=1", "langevin.prior.n_steps=1", "diffusion.updates_per_iter=1",
             "train.batch_size=8", "eval.n_samples=4", "eval.lebm_steps=1", "log.progress=false",
             "log.final_grids=false"]
    assert main([*cifar, f"log.run_dir={run}", "train.iterations=1"]) == 0
    err = capsys.readouterr().err
    assert "holds image folders (train/, test/) rather than the cifar10 files: reading it as data.source=folder" in err
    assert "source: folder" in (run / "config.yaml").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*cifar, f"data.root={empty}", "data.download=false", f"log.run_dir={tmp_path / 'r2'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "CIFAR-10 not found" in line and "set data.source=folder" in line


def test_reconstruction_images_of_a_folder_are_a_seeded_spread(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    cfg = DataConfig(source="folder", root=str(root))
    first = load_images(cfg, (1, 8, 8), "test", limit=4)
    assert set(first.flatten().tolist()) == {0}  # sorted order: the first 4 files are all class a (black)
    spread = load_images(cfg, (1, 8, 8), "test", limit=8, spread_seed=0)
    assert {0, 255} <= set(spread.flatten().tolist())  # both classes
    assert torch.equal(spread, load_images(cfg, (1, 8, 8), "test", limit=8, spread_seed=0))  # seeded
    assert not torch.equal(spread, load_images(cfg, (1, 8, 8), "test", limit=8, spread_seed=1))


def test_final_grids_can_be_skipped(tmp_path: Path) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    assert main([QUICK, *TINY, f"log.run_dir={on}", "train.iterations=2"]) == 0
    assert main([QUICK, *TINY, f"log.run_dir={off}", "train.iterations=2", "log.final_grids=false"]) == 0
    assert len(list(on.glob("*_0000002.png"))) == 3 and not list(off.glob("*.png"))
    assert (off / "ckpt-0000002.pt").is_file()


def test_help_and_show_config_list_every_field(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train.batch_size = 128  [>= 1 and <= 65536]  images per iteration" in out
    assert "system.threads = 1" in out and "log.final_grids = True" in out and "exit status" in out
    assert main(["--show-config"]) == 0
    shown = capsys.readouterr().out
    assert "langevin.prior.step_size = 0.4" in shown and "perf.preset = 'reference'" in shown


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 3.5])
def test_a_real_ctrl_c_at_any_moment_of_start_up_is_one_line(tmp_path: Path, delay: float) -> None:
    """SIGINT while torch is imported, the config read, the data loaded or the loop started: never a traceback.
    Before the loop: exit 130 with one line; once training runs: the clean stop (checkpoint, exit 0)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", QUICK, *TINY, f"log.run_dir={run}",
                             "train.iterations=100000"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    if proc.returncode == 130:
        assert "interrupted (Ctrl-C) during start-up" in one_error_line(err)
        assert not checkpoint.list_checkpoints(run)
    else:
        assert proc.returncode == 0 and "stopped by SIGINT" in err, err
        checkpoint.load(checkpoint.latest_checkpoint(run))  # type: ignore[arg-type]


def test_a_ctrl_c_that_an_import_swallows_is_still_one_line() -> None:
    """torch 2.11's C++ NumPy initialisation clears a KeyboardInterrupt raised inside it, leaving NumPy half-imported:
    the command must still stop with the start-up line (130), not run on into a traceback."""
    code = textwrap.dedent("""
        import os, signal, time
        from engine.errors import entry_point

        def load():
            try:  # an import that swallows the interrupt, as torch's NumPy initialisation does
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass
            def main():
                raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'")
            return main

        entry_point(load)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted (Ctrl-C) during start-up" in one_error_line(proc.stderr)


def test_a_failure_in_the_final_grids_never_costs_the_final_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def full(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "samples_damc_0000003.png"))

    monkeypatch.setattr(train_mod, "write_grids", full)
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=3"]) == 1
    line = one_error_line(capsys.readouterr().err, only=False)
    assert "samples_damc_0000003.png: No space left on device (disk full) at iteration 3" in line
    assert "intact: the latest checkpoint ckpt-0000003.pt" in line
    assert checkpoint.load(run / "ckpt-0000003.pt")["iteration"] == 3
