"""Checkpoints that resume bit-for-bit and survive crashes.

A checkpoint holds everything the next iteration reads: G, E, the amortizer and its EMA copy, every
optimizer (with its LR), the iteration, the run's device RNG, the global CPU/CUDA RNGs, the data stream
(epoch, position, permutation, its generator) and the resolved config. (The authors' resume silently
drops E, its optimizer and the EMA amortizer, spec §5 item 8; we keep all of them.)

Files are ``ckpt-<iteration>.pt`` in the run directory, written through a temporary file that is fsynced
and then renamed, so a crash (even ``kill -9``) leaves either the previous file set or the new complete
file, never a truncated checkpoint under a final name. Only after a new checkpoint is safely in place are
the oldest ones beyond ``keep`` removed. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.config import from_dict, to_dict
from engine.data.loaders import Loader
from engine.files import atomic_write
from engine.learner import Learner, build_learner
from engine.runtime import system

_NAME = re.compile(r"^ckpt-(\d{7,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"ckpt-{iteration:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary files are never listed)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def capture(learner: Learner, stream: Loader) -> dict[str, Any]:
    """The full training state as plain tensors and Python values (loadable with weights_only=True)."""
    nets = learner.nets
    state: dict[str, Any] = {
        "format": 1,
        "iteration": learner.iteration,
        "config": to_dict(learner.cfg),
        "generator": nets.generator.state_dict(),
        "energy": nets.energy.state_dict(),
        "opt_g": learner.opt_g.state_dict(),
        "opt_e": learner.opt_e.state_dict(),
        "rng": learner.rng.get_state(),
        "cpu_rng": torch.get_rng_state(),
        "data": stream.state_dict(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if nets.amortizer is not None:
        assert learner.amortizer_ema is not None and learner.opt_q is not None
        state["amortizer"] = nets.amortizer.state_dict()
        state["amortizer_ema"] = learner.amortizer_ema.state_dict()
        state["opt_q"] = learner.opt_q.state_dict()
    return state


def restore(learner: Learner, stream: Loader, state: dict[str, Any]) -> None:
    """Load ``state`` into a freshly built learner and stream (in place: addresses stay stable)."""
    nets = learner.nets
    nets.generator.load_state_dict(state["generator"])
    nets.energy.load_state_dict(state["energy"])
    learner.opt_g.load_state_dict(state["opt_g"])
    learner.opt_e.load_state_dict(state["opt_e"])
    if nets.amortizer is not None:
        if "amortizer" not in state:
            raise CheckpointError("checkpoint has no amortizer (it was written by an LEBM run); use method=lebm")
        assert learner.amortizer_ema is not None and learner.opt_q is not None
        nets.amortizer.load_state_dict(state["amortizer"])
        learner.amortizer_ema.load_state_dict(state["amortizer_ema"])
        learner.opt_q.load_state_dict(state["opt_q"])
    learner.rng.set_state(state["rng"])
    torch.set_rng_state(state["cpu_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    stream.load_state_dict(state["data"])
    learner.iteration = int(state["iteration"])


def estimate_bytes(learner: Learner) -> int:
    """Rough checkpoint size: fp32 weights + two Adam moments per trained parameter + the EMA copy."""
    nets = learner.nets
    trained = sum(p.numel() for m in (nets.generator, nets.energy, nets.amortizer) if m is not None
                  for p in m.parameters())
    ema = sum(p.numel() for p in learner.amortizer_ema.parameters()) if learner.amortizer_ema is not None else 0
    return 4 * (3 * trained + ema)


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Fail before training when the run directory cannot hold two checkpoints (old + new during a save)."""
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"run directory {run_dir} is not writable ({exc.strerror})") from None
    free = shutil.disk_usage(run_dir).free
    if free < 2 * need_bytes:
        raise CheckpointError(
            f"run directory {run_dir} has {free / 2**20:.0f} MiB free; a checkpoint needs about "
            f"{need_bytes / 2**20:.0f} MiB and a save briefly holds two"
        )


def save(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``ckpt-<iteration>.pt`` atomically, then prune to the newest ``keep`` files."""
    path = checkpoint_path(run_dir, int(state["iteration"]))
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as exc:
        why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        prev = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {prev.name} is intact" if prev else ""
        raise CheckpointError(f"could not write checkpoint {path} ({why}){kept}") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"could not read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise CheckpointError(f"{path} is not a checkpoint written by this engine")
    return state


def load_run(run_dir: Path, device: torch.device, path: Path | None = None) -> Learner:
    """A learner rebuilt from a run directory's latest (or a given) checkpoint, for evaluation and sampling.

    The config comes from the checkpoint itself; networks, EMA copy, optimizers, iteration and the run RNG
    are restored (the data stream is not needed to evaluate).
    """
    path = path or latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {run_dir}")
    state = load(path)
    cfg = from_dict(state["config"])
    learner = build_learner(cfg, device, system.make_generator(device, cfg.train.seed))
    nets = learner.nets
    nets.generator.load_state_dict(state["generator"])
    nets.energy.load_state_dict(state["energy"])
    if nets.amortizer is not None:
        assert learner.amortizer_ema is not None
        nets.amortizer.load_state_dict(state["amortizer"])
        learner.amortizer_ema.load_state_dict(state["amortizer_ema"])
    learner.iteration = int(state["iteration"])
    return learner
