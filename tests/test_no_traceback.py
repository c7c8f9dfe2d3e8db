"""The repo-level promise: no command prints a Python traceback for an error outside a bug.

Each command (``python -m engine.train``, ``engine.eval``, and ``engine.sample`` / ``engine.export`` where those
modules exist) runs in a subprocess over a list of bad inputs: a bad config, a corrupt checkpoint, an argument
out of range, a missing GPU, an unwritable output, a bad data file. Each must exit non-zero with exactly one line
on stderr, starting ``error:``, no ``Traceback``, and leave every file of the run directory as it was.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.run.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")
COOP = str(REPO / "configs" / "coopvae_quickstart.yaml")
DRLQ = str(REPO / "configs" / "drl_quickstart.yaml")
DUAL = str(REPO / "configs" / "dualmcmc_quickstart.yaml")
TINY = ["model.ngf=8", "model.nif=8", "model.nemb=32", "model.nz=8", "diffusion.n_steps=8",
        "langevin.posterior.n_steps=4", "langevin.prior.n_steps=4", "diffusion.updates_per_iter=2",
        "train.batch_size=16", "eval.n_samples=8", "eval.lebm_steps=2", "log.sample_every=1000",
        "log.progress=false"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished tiny run, a copy whose latest checkpoint is truncated, and assorted bad files."""
    base = tmp_path_factory.mktemp("nt")
    run = base / "run"
    assert train_main([QUICK, *TINY, f"log.run_dir={run}", "train.iterations=2", "log.checkpoint_every=1"]) == 0
    corrupt = base / "corrupt"
    shutil.copytree(run, corrupt)
    ck = corrupt / "ckpt-0000002.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    (base / "latin1.yaml").write_bytes("train: {seed: 1}  # caf\xe9\n".encode("latin-1"))
    (base / "dup.yaml").write_text("train: {seed: 1}\ntrain: {seed: 2}\n")
    (base / "a_file").write_text("x")
    (base / "empty").mkdir()
    folder = base / "folder"
    for split in ("train", "test"):
        for i in range(20):
            p = folder / split / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), i * 10, dtype=np.uint8)).save(p)
    (folder / "train" / "007.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {"base": base, "run": run, "corrupt": corrupt, "folder": folder}


def _train_cases(w: dict[str, Path]) -> list[tuple[str, list[str | bytes]]]:
    b, run = w["base"], w["run"]
    fresh = [f"log.run_dir={b / 'never'}"]
    cases: list[tuple[str, list[str | bytes]]] = [
        ("config not UTF-8", [str(b / "latin1.yaml"), *fresh]),
        ("config is a directory", [str(b), *fresh]),
        ("duplicate YAML key", [str(b / "dup.yaml"), "data.source=digits", "model.arch=digits", *fresh]),
        ("24-digit seed", [QUICK, "train.seed=123456789012345678901234", *fresh]),
        ("seed 2**64-1", [QUICK, f"train.seed={2**64 - 1}", *fresh]),
        ("inf learning rate", [QUICK, "optim.g_lr=inf", *fresh]),
        ("nan step size", [QUICK, "langevin.prior.step_size=nan", *fresh]),
        ("1e400 clip", [QUICK, "optim.grad_clip=1e400", *fresh]),
        ("octal 010", [QUICK, "train.iterations=010", *fresh]),
        ("nz too large", [QUICK, "model.nz=1000000000", *fresh]),
        ("n_steps too large", [QUICK, "diffusion.n_steps=1000000000", *fresh]),
        ("n_samples too large", [QUICK, "eval.n_samples=1000000000", *fresh]),
        ("threads too many", [QUICK, "system.threads=100000", *fresh]),
        ("does not fit in memory", [QUICK, "model.ngf=4096", "model.nz=4096", *fresh]),
        ("empty key", [QUICK, " =1", *fresh]),
        ("empty run dir", [QUICK, "log.run_dir="]),
        ("run dir under a file", [QUICK, f"log.run_dir={b / 'a_file' / 'run'}"]),
        ("non-UTF-8 path", [QUICK, b"data.root=/tmp/\xff\xfe", "data.source=folder", *fresh]),
        ("unknown flag", [QUICK, "--bogus-flag"]),
        ("resume a missing dir", ["--resume", str(b / "nope")]),
        ("resume a corrupt checkpoint", ["--resume", str(w["corrupt"]), "train.iterations=4"]),
        ("resume a finished run", ["--resume", str(run), "train.iterations=2"]),
        ("resume with a changed config", ["--resume", str(run), "train.iterations=4", "optim.g_lr=1e-3"]),
        ("truncated PNG, loader auto", [QUICK, *TINY, "data.source=folder", f"data.root={w['folder']}", *fresh]),
        ("CIFAR-10 files absent", [str(REPO / "configs" / "cifar10.yaml"), f"data.root={b / 'empty'}",
                                   "data.download=false", *fresh]),
        # CoopVAEBM's fields (engine.config.CoopVAEConfig)
        ("coopvae: unknown method", [QUICK, "method=coopvea", *fresh]),
        ("coopvae: nan reference sigma", [COOP, "coopvae.ref_sigma=nan", *fresh]),
        ("coopvae: inf EBM learning rate", [COOP, "coopvae.ebm_lr=inf", *fresh]),
        ("coopvae: zero chains", [COOP, "coopvae.n_chains=0", *fresh]),
        ("coopvae: a billion chains", [COOP, "coopvae.n_chains=1000000000", *fresh]),
        ("coopvae: negative Langevin steps", [COOP, "coopvae.langevin.n_steps=-1", *fresh]),
        ("coopvae: 1e400 step size", [COOP, "coopvae.langevin.step_size=1e400", *fresh]),
        ("coopvae: unknown key", [COOP, "coopvae.refsig=0.1", *fresh]),
        ("coopvae: an arch without its networks", [COOP, "model.arch=svhn", "data.source=folder",
                                                   f"data.root={w['folder']}", *fresh]),
        ("coopvae: huge sizes do not fit", [COOP, "coopvae.n_chains=65536", "model.arch=cifar10", "data.source=folder",
                                            f"data.root={w['folder']}", *fresh]),
        ("coopvae: resume a DAMC run as coopvae", [COOP, f"log.run_dir={run}", "train.iterations=4"]),
        # DRL's fields (engine.config.DRLConfig)
        ("drl: one level", [DRLQ, "drl.levels=1", *fresh]),
        ("drl: 1000 levels (the code's schedule stops at 501)", [DRLQ, "drl.levels=1000", *fresh]),
        ("drl: zero Langevin steps", [DRLQ, "drl.langevin_steps=0", *fresh]),
        ("drl: nan b_square", [DRLQ, "drl.b_square=nan", *fresh]),
        ("drl: zero noise scale", [DRLQ, "drl.noise_scale=0", *fresh]),
        ("drl: inf eval noise scale", [DRLQ, "drl.eval_noise_scale=inf", *fresh]),
        ("drl: beta_start above beta_end", [DRLQ, "drl.beta_start=0.5", *fresh]),
        ("drl: 1e400 learning rate", [DRLQ, "drl.lr=1e400", *fresh]),
        ("drl: EMA decay 1", [DRLQ, "drl.ema_decay=1.0", *fresh]),
        ("drl: negative warm-up", [DRLQ, "drl.warmup=-1", *fresh]),
        ("drl: recon level above the levels", [DRLQ, "drl.recon_level=7", *fresh]),
        ("drl: unknown key", [DRLQ, "drl.mcmc_steps=3", *fresh]),
        ("drl: an arch without its network", [DRLQ, "model.arch=svhn", "data.source=folder",
                                              f"data.root={w['folder']}", *fresh]),
        ("drl: huge batch does not fit", [DRLQ, "train.batch_size=65536", "model.arch=cifar10", "data.source=folder",
                                          f"data.root={w['folder']}", *fresh]),
        ("drl: resume a DAMC run as drl", [DRLQ, f"log.run_dir={run}", "train.iterations=4"]),
        # Dual-MCMC's fields (engine.config.DualMCMCConfig)
        ("dualmcmc: unknown method", [QUICK, "method=dualmcm", *fresh]),
        ("dualmcmc: nan sigma", [DUAL, "dualmcmc.sigma=nan", *fresh]),
        ("dualmcmc: zero x-chain noise scale", [DUAL, "dualmcmc.ebm_noise=0", *fresh]),
        ("dualmcmc: inf generator learning rate", [DUAL, "dualmcmc.gen_lr=inf", *fresh]),
        ("dualmcmc: beta2 of 1", [DUAL, "dualmcmc.beta2=1", *fresh]),
        ("dualmcmc: negative posterior steps", [DUAL, "dualmcmc.posterior.n_steps=-1", *fresh]),
        ("dualmcmc: 1e400 x-chain step", [DUAL, "dualmcmc.ebm_chain.step_size=1e400", *fresh]),
        ("dualmcmc: a billion evaluation steps", [DUAL, "dualmcmc.eval_steps=1000000000", *fresh]),
        ("dualmcmc: a width of 100000", [DUAL, "dualmcmc.ngf=100000", *fresh]),
        ("dualmcmc: unknown key", [DUAL, "dualmcmc.Sfactor=50", *fresh]),
        ("dualmcmc: an arch without its networks", [DUAL, "model.arch=svhn", "data.source=folder",
                                                    f"data.root={w['folder']}", *fresh]),
        ("dualmcmc: huge sizes do not fit", [DUAL, "model.arch=celeba64", "dualmcmc.ngf=4096", "dualmcmc.ndf=4096",
                                             "train.batch_size=65536", "data.source=folder",
                                             f"data.root={w['folder']}", *fresh]),
        ("dualmcmc: resume a DAMC run as dualmcmc", [DUAL, f"log.run_dir={run}", "train.iterations=4"]),
    ]
    if NO_CUDA:
        cases.append(("cuda without a GPU", [QUICK, "system.device=cuda", *fresh]))
    return cases


def _eval_cases(w: dict[str, Path]) -> list[tuple[str, list[str | bytes]]]:
    b, run = w["base"], str(w["run"])
    cases: list[tuple[str, list[str | bytes]]] = [
        ("missing run dir", [str(b / "nope")]),
        ("no checkpoint", [str(b / "empty")]),
        ("corrupt checkpoint", [str(w["corrupt"]), "--metrics", "mse"]),
        ("inf step size", [run, "--recon-step-size=inf"]),
        ("nan sigma", [run, "--sigma=nan"]),
        ("a billion chains", [run, "--chains", "1000000000"]),
        ("seed overflow", [run, "--seed", "99999999999999999999999"]),
        ("out is a directory", [run, "--metrics", "mse", "--out", str(b)]),
        ("out under a file", [run, "--metrics", "mse", "--out", str(b / "a_file" / "x.json")]),
        ("unknown metric", [run, "--metrics", "bogus"]),
        ("unknown flag", [run, "--bogus"]),
        ("bad integer", [run, "--batch", "ten"]),
    ]
    if NO_CUDA:
        cases.append(("cuda without a GPU", [run, "--metrics", "mse", "--device", "cuda"]))
    return cases


def _sample_cases(w: dict[str, Path]) -> list[tuple[str, list[str | bytes]]]:
    b, out = w["base"], str(w["base"] / "sample_out")
    return [
        ("missing run dir", [str(b / "nope"), "--n", "4", "--out", out]),
        ("no checkpoint", [str(b / "empty"), "--n", "4", "--out", out]),
        ("corrupt checkpoint", [str(w["corrupt"]), "--n", "4", "--out", out]),
        ("unknown flag", [str(w["run"]), "--n", "4", "--out", out, "--bogus"]),
    ]


def _export_cases(w: dict[str, Path]) -> list[tuple[str, list[str | bytes]]]:
    b, out = w["base"], str(w["base"] / "export_out")
    return [
        ("missing run dir", [str(b / "nope"), "--format", "pt2", "--batch", "4", "--out", out]),
        ("no checkpoint", [str(b / "empty"), "--format", "pt2", "--batch", "4", "--out", out]),
        ("corrupt checkpoint", [str(w["corrupt"]), "--format", "pt2", "--batch", "4", "--out", out]),
        ("unknown flag", [str(w["run"]), "--format", "pt2", "--batch", "4", "--out", out, "--bogus"]),
    ]


COMMANDS = [("engine.train", _train_cases), ("engine.eval", _eval_cases), ("engine.sample", _sample_cases),
            ("engine.export", _export_cases)]


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes() if st.st_size < 4096 else b"")
    return out


def _run(module: str, args: list[str | bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True,
                          timeout=300)


@pytest.mark.parametrize(("module", "cases"), COMMANDS, ids=[m for m, _ in COMMANDS])
def test_no_command_prints_a_traceback_for_bad_input(world: dict[str, Path], module: str, cases) -> None:  # type: ignore[no-untyped-def]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not Path(spec.origin).resolve().is_relative_to(REPO.resolve()):
        pytest.skip(f"{module} does not exist on this branch")  # (an editable install may point elsewhere)
    todo = cases(world)
    before = {k: _snapshot(world[k]) for k in ("run", "corrupt", "folder")}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the start-up (imports) dominates
        results = list(pool.map(lambda c: _run(module, c[1]), todo))
    failures = []
    for (name, _), proc in zip(todo, results, strict=True):
        err = proc.stderr.decode("utf-8", "replace")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok = (proc.returncode not in (0, None) and len(lines) == 1 and lines[0].startswith("error: ")
              and "Traceback" not in err)
        if not ok:
            failures.append(f"{name}: exit {proc.returncode}, stderr {err[-600:]!r}")
    assert not failures, "\n".join(failures)
    for k, snap in before.items():
        assert _snapshot(world[k]) == snap, f"{module} changed files in {k}"
    assert not (world["base"] / "never").exists()
