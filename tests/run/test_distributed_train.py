"""Issue 16: ``torchrun -m engine.train`` on 2 gloo processes (CPU), started by the tests as a user would.

Deterministic configuration for the comparisons: the reference path (eager fp32), ``system.threads=1``, the
tiny digits config of the resume tests. Each torchrun job takes a few seconds (two Python start-ups).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.run import ranks
from engine.run.train import main
from tests.run.test_resume import TINY as RESUME_TINY
from tests.run.test_resume import assert_bitwise_equal

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")
# The resume tests' tiny digits config, on CPU processes with a short collective timeout.
TINY = [*RESUME_TINY, "system.device=cpu", "system.threads=1", "system.dist_timeout_s=30"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def torchrun(args: list[str], nproc: int = 2, extra: list[str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *(extra or []), "-m", "engine.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def run_ok(args: list[str]) -> str:
    rc, out = finish(torchrun(args))
    assert rc == 0, out[-3000:]
    return out


def workers(proc: subprocess.Popen[str]) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of the agent, read from /proc)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != proc.pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def metrics(run: Path) -> list[dict[str, object]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def load(path: Path) -> dict[str, object]:
    state: dict[str, object] = torch.load(path, weights_only=True)
    state.pop("config")
    return state


def test_two_ranks_resume_bitwise_and_only_rank_0_writes(tmp_path: Path) -> None:
    n = 6
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [QUICK, *TINY, "log.checkpoint_every=3"]
    out = run_ok([*common, f"log.run_dir={straight}", f"train.iterations={n}"])
    assert "over 2 processes (gloo)" in out
    assert out.count("done: iterations 0→6") == 1  # only rank 0 speaks
    run_ok([*common, f"log.run_dir={split}", f"train.iterations={n // 2}"])
    run_ok(["--resume", str(split), f"train.iterations={n}"])

    a, b = load(straight / f"ckpt-{n:07d}.pt"), load(split / f"ckpt-{n:07d}.pt")
    assert_bitwise_equal(a, b)  # parameters, moments, LRs, both ranks' RNGs, data position
    assert a["world_size"] == 2
    rank_rngs = a["rank_rngs"]
    assert isinstance(rank_rngs, list) and len(rank_rngs) == 1
    assert not torch.equal(rank_rngs[0]["rng"], a["rng"])  # per-rank chain noise

    # Only rank 0 wrote: one metrics line per iteration (no duplicates from rank 1), one set of files.
    assert [m["iteration"] for m in metrics(straight)] == list(range(1, n + 1))
    assert [m["iteration"] for m in metrics(split)] == list(range(1, n + 1))
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(["ckpt-0000003.pt", "ckpt-0000006.pt", "config.yaml", "metrics.jsonl", ".lock",
                            f"recon_{n:07d}.png", f"samples_damc_{n:07d}.png", f"samples_lebm_{n:07d}.png"]), names

    # The 2-rank checkpoint resumes only on 2 ranks: one line, nothing written.
    before = sorted(p.name for p in split.iterdir())
    assert main(["--resume", str(split), f"train.iterations={n + 2}"]) == 2
    assert sorted(p.name for p in split.iterdir()) == before


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = load_config(QUICK, [*TINY, "train.batch_size=16"])
    with pytest.raises(ConfigError, match="split evenly over the 3 processes"):
        ranks.join(cfg)  # before any process group exists
    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.batch_size = 16") and not run.exists()


def test_sigint_on_one_rank_stops_every_rank_with_one_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = torchrun([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=100000", "log.checkpoint_every=100000"])
    wait_for(lambda: len(metrics(run)) >= 3, 90, "training to start")
    pids = workers(proc)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGINT)  # rank 1 only
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    assert "stopped by a signal on another rank" in out  # rank 0, the only one that speaks, did not get it
    ckpts = sorted(run.glob("ckpt-*.pt"))
    assert len(ckpts) == 1, ckpts
    state = torch.load(ckpts[0], weights_only=True)
    last = metrics(run)[-1]["iteration"]
    assert state["iteration"] == last and state["world_size"] == 2


def test_a_rank_that_dies_ends_the_job_with_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = torchrun([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=100000", "log.checkpoint_every=100000"])
    wait_for(lambda: len(metrics(run)) >= 3, 90, "training to start")
    os.kill(workers(proc)[1], signal.SIGKILL)
    t0 = time.monotonic()
    rc, out = finish(proc, timeout=90)
    assert rc != 0
    assert time.monotonic() - t0 < 60, "the job did not end promptly"
    # The clear error is torchrun's: the job failed and its root cause is rank 1's SIGKILL (torchrun then stops
    # rank 0 with SIGTERM; without torchrun, the surviving rank's own one-line error is tested in
    # tests/runtime/test_distributed.py::test_a_dead_rank_makes_the_others_raise_not_hang).
    cause = out.split("Root Cause", 1)[-1]
    assert "engine.train FAILED" in out and "Root Cause" in out, out[-3000:]
    assert "rank      : 1" in cause and "SIGKILL" in cause, cause
    assert "Traceback" not in out.split("failed (exitcode")[0]  # the workers printed none before torchrun's report


def test_elastic_restart_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    n = 150  # long enough that the kill below lands mid-run on a fast machine
    proc = torchrun([QUICK, *TINY, f"log.run_dir={run}", f"train.iterations={n}", "log.checkpoint_every=10"],
                    extra=["--max-restarts=1"])
    wait_for(lambda: len(list(run.glob("ckpt-*.pt"))) >= 1 and len(metrics(run)) >= 15, 90, "a checkpoint")
    first = workers(proc)
    assert 1 in first, f"rank 1 not found (finished already?): {first}"
    os.kill(first[1], signal.SIGKILL)
    rc, out = finish(proc, timeout=180)
    assert rc == 0, out[-3000:]
    assert "resumed" in out  # the restarted workers resumed from the checkpoint
    state = torch.load(run / f"ckpt-{n:07d}.pt", weights_only=True)
    assert state["iteration"] == n
    assert [m["iteration"] for m in metrics(run) if "event" not in m] == list(range(1, n + 1))


def test_linear_lr_scaling_is_off_by_default_and_bounded() -> None:
    from engine.learners.damc import base_learning_rates

    cfg = load_config(QUICK, TINY)
    assert base_learning_rates(cfg) == (cfg.optim.g_lr, cfg.optim.e_lr, cfg.optim.q_lr)
    scaled = load_config(QUICK, [*TINY, "train.batch_size=64", "optim.lr_scale_batch=16"])
    assert base_learning_rates(scaled) == (4 * scaled.optim.g_lr, 4 * scaled.optim.e_lr, 4 * scaled.optim.q_lr)
    with pytest.raises(ConfigError, match="optim.g_lr = 0.5 scaled by"):
        load_config(QUICK, [*TINY, "train.batch_size=64", "optim.lr_scale_batch=16", "optim.g_lr=0.5"])


def test_a_checkpoint_resumes_only_on_its_world_size(tmp_path: Path) -> None:
    from engine.run import checkpoint

    state: dict[str, object] = {"world_size": 2}
    with pytest.raises(checkpoint.CheckpointError, match="written by 2 process.*this job has 1.*torchrun with 2"):
        checkpoint.check_world(state, 1, tmp_path / "ckpt-0000001.pt")
    with pytest.raises(checkpoint.CheckpointError, match="written by 1 process.*this job has 4.*python -m engine"):
        checkpoint.check_world({}, 4, tmp_path / "ckpt-0000001.pt")
    checkpoint.check_world({}, 1, tmp_path / "x.pt")


@pytest.mark.parametrize("damage", ["world_size_text", "world_size_zero", "rank_rngs_missing", "rank_rng_garbage"])
def test_a_damaged_multi_rank_checkpoint_is_one_line(tmp_path: Path, damage: str) -> None:
    from engine.run import checkpoint

    run = tmp_path / "run"
    assert main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    path = run / "ckpt-0000002.pt"
    state = torch.load(path, weights_only=True)
    state["world_size"], state["rank_rngs"] = 2, [{"rng": state["rng"], "cpu_rng": state["cpu_rng"]}]
    checkpoint.check_state(state, path)  # the undamaged 2-rank layout passes
    if damage == "world_size_text":
        state["world_size"] = "2"
    elif damage == "world_size_zero":
        state["world_size"] = 0
    elif damage == "rank_rngs_missing":
        del state["rank_rngs"]
    else:
        state["rank_rngs"][0]["rng"] = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(checkpoint.CheckpointError) as ei:
        checkpoint.check_state(state, path)
    assert "\n" not in str(ei.value) and str(path) in str(ei.value)

