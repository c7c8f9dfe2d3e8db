"""Issue 3: bit-for-bit resume, clean stops on signals, crash safety, full disks, divergence."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine.run.train as train_mod
from engine.run import checkpoint
from engine.run.guard import DivergenceGuard
from engine.run.train import main

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
TINY = ["model.ngf=8", "model.nif=8", "model.nemb=32", "model.nz=8", "diffusion.n_steps=8",
        "langevin.posterior.n_steps=4", "langevin.prior.n_steps=4", "diffusion.updates_per_iter=2",
        "diffusion.ema_every=2", "optim.lr_decay_every=3", "train.batch_size=16", "eval.n_samples=8",
        "eval.lebm_steps=2", "log.sample_every=1000", "log.log_every=1", "log.progress=false"]


def flat(state: object, prefix: str = "") -> dict[str, object]:
    """Every leaf of a (nested) checkpoint dict, keyed by path."""
    if isinstance(state, dict):
        out: dict[str, object] = {}
        for k, v in state.items():
            out |= flat(v, f"{prefix}{k}/")
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, v in enumerate(state):
            out |= flat(v, f"{prefix}{i}/")
        return out
    return {prefix: state}


def assert_bitwise_equal(a: dict[str, object], b: dict[str, object]) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        va, vb = fa[k], fb[k]
        if isinstance(va, torch.Tensor):
            assert isinstance(vb, torch.Tensor) and va.dtype == vb.dtype and torch.equal(va, vb), k
        else:
            assert va == vb, k


@pytest.mark.parametrize("method", ["damc", "lebm"])
def test_stop_and_resume_is_bitwise_identical(tmp_path: Path, method: str) -> None:
    n = 6
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [QUICK, f"method={method}", *TINY]
    assert main([*common, f"log.run_dir={straight}", f"train.iterations={n}"]) == 0
    assert main([*common, f"log.run_dir={split}", f"train.iterations={n // 2}"]) == 0
    assert main(["--resume", str(split), f"train.iterations={n}"]) == 0  # the saved config, a longer budget
    a = torch.load(straight / f"ckpt-{n:07d}.pt", weights_only=True)
    b = torch.load(split / f"ckpt-{n:07d}.pt", weights_only=True)
    a.pop("config"), b.pop("config")
    assert_bitwise_equal(a, b)  # every parameter, optimizer moment, LR, RNG and data position
    # the resumed run really did resume: its metrics continue from n/2
    its = [json.loads(line)["iteration"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert its == list(range(1, n + 1))


def test_resume_refuses_a_changed_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=4", "optim.g_lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "optim.g_lr (0.0002 in the run, 0.001 now)" in err
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 2
    assert "already finished 2" in capsys.readouterr().err


def test_checkpoints_are_pruned_to_keep_k(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=5", "log.checkpoint_every=1",
                 "log.keep_checkpoints=2"]) == 0
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt-0000004.pt", "ckpt-0000005.pt"]


def _spawn(run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.run.train", QUICK, *TINY, f"log.run_dir={run}", "train.iterations=100000",
         *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(cond, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()[1]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_iteration_writes_checkpoint_and_exits_zero(tmp_path: Path, sig: signal.Signals) -> None:
    run = tmp_path / "run"
    proc = _spawn(run)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"stopped by {sig.name}" in err and f"--resume {run}" in err
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    state = checkpoint.load(latest)
    done = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert state["iteration"] == done[-1]  # the iteration under way was finished and saved


def test_kill_9_never_corrupts_the_latest_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _spawn(run, "log.checkpoint_every=1", "log.keep_checkpoints=2")
    _wait_for(lambda: len(checkpoint.list_checkpoints(run)) >= 2, proc)
    time.sleep(0.3)  # land the kill at an arbitrary point, quite possibly mid-save
    proc.kill()
    proc.communicate(timeout=60)
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    state = checkpoint.load(latest)  # loads with weights_only=True: complete, not truncated
    # resume from it and finish a few more iterations
    target = state["iteration"] + 2
    assert main(["--resume", str(run), f"train.iterations={target}"]) == 0
    assert checkpoint.load(checkpoint.latest_checkpoint(run))["iteration"] == target  # type: ignore[arg-type]


def test_full_disk_at_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    good = checkpoint.latest_checkpoint(run)
    assert good is not None
    before = good.read_bytes()

    def full_disk(obj: object, f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match=r"disk full.*ckpt-0000002.pt is intact"):
        checkpoint.save(run, {"iteration": 3, "format": 1}, keep=3)
    assert good.read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if "ckpt" in p.name) == ["ckpt-0000002.pt"]


def test_no_space_or_unusable_run_dir_fails_before_training(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([QUICK, *TINY, f"log.run_dir={blocker}/run", "train.iterations=2"]) == 2
    assert "cannot create it" in capsys.readouterr().err
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 2
    err = capsys.readouterr().err
    assert "B free; a checkpoint needs about" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()  # the directory this start created is removed again


def _inject_nan_at(monkeypatch, at: int, key: str = "loss_e", times: int = 1) -> None:  # type: ignore[no-untyped-def]
    real = train_mod.train_step
    hits = {"n": 0}

    def step(learner, x):  # type: ignore[no-untyped-def]
        out = real(learner, x)
        if learner.iteration == at and hits["n"] < times:
            hits["n"] += 1
            out[key] = out[key] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "train_step", step)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _inject_nan_at(monkeypatch, 5, "energy_neg")
    run = tmp_path / "run"
    rc = main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=10", "log.checkpoint_every=2",
               "log.log_every=3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite energy_neg (iteration 5)" in err and "ckpt-0000004.pt" in err
    assert checkpoint.latest_checkpoint(run).name == "ckpt-0000004.pt"  # type: ignore[union-attr]


def test_divergence_rollback_continues_with_a_new_seed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _inject_nan_at(monkeypatch, 5, "loss_g")
    run = tmp_path / "run"
    rc = main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=8", "log.checkpoint_every=2",
               "train.on_divergence=rollback"])
    assert rc == 0
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rb = [e for e in events if e.get("event") == "rollback"]
    assert len(rb) == 1 and rb[0]["iteration"] == 4 and "loss_g (iteration 5)" in rb[0]["reason"]
    assert checkpoint.load(checkpoint.latest_checkpoint(run))["iteration"] == 8  # type: ignore[arg-type]


def test_guard_reads_nothing_until_asked_and_names_the_first_bad_iteration() -> None:
    g = DivergenceGuard()
    ok = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    g.update(ok, 1)
    assert g.problem() is None
    g.update({"a": torch.tensor(float("inf")), "b": torch.tensor(2.0)}, 2)
    g.update({"a": torch.tensor(float("nan")), "b": torch.tensor(float("nan"))}, 3)
    assert g.problem() == "a (iteration 2), b (iteration 3)"
    g.reset()
    assert g.problem() is None


def test_tensorboard_events_beside_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2", "log.tensorboard=true"]) == 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_load_run_rebuilds_the_trained_networks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=3"]) == 0
    learner = checkpoint.load_run(run, torch.device("cpu"))
    state = checkpoint.load(checkpoint.latest_checkpoint(run))  # type: ignore[arg-type]
    assert learner.iteration == 3 and learner.cfg.model.nz == 8
    for k, v in learner.nets.amortizer.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(v, state["amortizer"][k])
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load_run(tmp_path / "empty", torch.device("cpu"))
