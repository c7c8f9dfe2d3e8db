"""Checkpoints that resume bit-for-bit, survive crashes and are checked before they are trusted.

A checkpoint holds everything the next iteration reads: every network and optimizer of the learner (for DAMC:
G, E, the amortizer and its EMA copy, each optimizer with its LR; the names are the learner's, see
:meth:`engine.learners.base.Learner.networks`), the iteration, the run's device RNG, the global CPU/CUDA RNGs,
the data stream (epoch, position, permutation, its generator) and the resolved config, whose ``method`` says
which learner wrote it. (The authors' DAMC resume silently drops E, its optimizer and the EMA amortizer, spec §5
item 8; we keep all of them.)

Files are ``ckpt-<iteration>.pt`` in the run directory, written through a temporary file that is fsynced
and then renamed, so a crash (even ``kill -9``) leaves either the previous file set or the new complete
file, never a truncated checkpoint under a final name. Only after a new checkpoint is safely in place are
the oldest ones beyond ``keep`` removed. Loading uses ``torch.load(weights_only=True)`` and then
:func:`check_state`: every key the restore reads, its type and shape, a valid data position, and finite
weights; any failure is one :class:`CheckpointError` line naming the file and what is wrong.
"""

from __future__ import annotations

import errno
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine import learners
from engine.config import ConfigError, from_dict, to_dict
from engine.data.loaders import Loader
from engine.errors import EXIT_STOPPED, UserError, describe_os_error
from engine.files import atomic_write
from engine.learners import Learner, build_learner
from engine.learners.memory import human_bytes
from engine.runtime import system

_NAME = re.compile(r"^ckpt-(\d{7,})\.pt$")
_CUDA_RNG_BYTES = 16  # a CUDA generator's state (seed + offset); a CPU generator's is torch.get_rng_state()'s size
SET_ASIDE_SUFFIX = ".set-aside"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read or is not usable; the message names the file and the cause."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, permissions); the message names what is intact."""

    exit_code = EXIT_STOPPED


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


def rng_state(learner: Learner) -> dict[str, Any]:
    """This process's random state: the run's device RNG and the global CPU (and CUDA) generators."""
    state: dict[str, Any] = {"rng": learner.rng.get_state(), "cpu_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def capture(learner: Learner, stream: Loader, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The full training state as plain tensors and Python values (loadable with weights_only=True).

    ``ranks``: every rank's :func:`rng_state` in rank order, gathered to rank 0 (several processes). Rank 0's
    goes where a single process keeps its own, so a one-process file is unchanged and evaluation reads any
    checkpoint alike; ranks 1.. go to ``rank_rngs`` beside ``world_size``. Networks, optimizers and the data
    position are the same on every rank (asserted at every checkpoint, ``engine.run.ranks``), so one copy serves.
    """
    state: dict[str, Any] = {"format": 1, "iteration": learner.iteration, "config": to_dict(learner.cfg)}
    state.update({k: m.state_dict() for k, m in learner.networks().items()})
    state.update({k: o.state_dict() for k, o in learner.optimizers().items()})
    state.update(rng=learner.rng.get_state(), cpu_rng=torch.get_rng_state(), data=stream.state_dict())
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if ranks is not None and len(ranks) > 1:
        state["world_size"] = len(ranks)
        state["rank_rngs"] = ranks[1:]
    return state


def nonfinite_weights(learner: Learner) -> list[str]:
    """Names of networks holding a non-finite weight (one host sync; called before a checkpoint is written)."""
    named = list(learner.networks().items())
    flags = torch.stack([torch.stack([torch.isfinite(p).all() for p in m.parameters()]).all() for _, m in named])
    return [k for (k, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}")


def check_state(state: dict[str, Any], path: Path) -> None:
    """Everything :func:`restore` / :func:`load_run` read is present, well-typed and finite; else one line."""
    if not isinstance(state.get("iteration"), int) or state["iteration"] < 0:
        raise _fail(path, f"'iteration' is {state.get('iteration')!r}, not a non-negative integer")
    if not isinstance(state.get("config"), dict):
        raise _fail(path, "'config' is missing")
    try:
        cfg = from_dict(state["config"])
    except ConfigError as exc:
        raise _fail(path, f"its config is invalid ({exc})") from None
    nets, opts = learners.get(cfg.method).state_keys(cfg)
    for key in [*nets, *opts, "data"]:
        if not isinstance(state.get(key), dict):
            raise _fail(path, f"'{key}' is missing or not a mapping")
    cpu_size = torch.get_rng_state().numel()
    for key, sizes in (("rng", (cpu_size, _CUDA_RNG_BYTES)), ("cpu_rng", (cpu_size,))):
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.numel() not in sizes:
            want = " or ".join(map(str, sizes))
            raise _fail(path, f"'{key}' is missing or not a generator state (uint8 tensor of {want} bytes)")
    for key in nets:
        for name, t in state[key].items():
            if not isinstance(t, torch.Tensor):
                raise _fail(path, f"'{key}.{name}' is not a tensor")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _fail(path, f"'{key}.{name}' holds non-finite values (a diverged state); not a good "
                            "checkpoint")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or world < 1:
        raise _fail(path, f"'world_size' is {world!r}, not a positive integer")
    extra = state.get("rank_rngs", [])
    if world > 1 and (not isinstance(extra, list) or len(extra) != world - 1):
        raise _fail(path, f"'rank_rngs' does not hold the random state of ranks 1..{world - 1}")
    for i, ranked in enumerate(extra if world > 1 else []):
        for key, sizes in (("rng", (cpu_size, _CUDA_RNG_BYTES)), ("cpu_rng", (cpu_size,))):
            t = ranked.get(key) if isinstance(ranked, dict) else None
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.numel() not in sizes:
                raise _fail(path, f"'rank_rngs' of rank {i + 1}: '{key}' is missing or not a generator state")
    data = state["data"]
    for key in ("epoch", "position", "permutation", "generator"):
        if key not in data:
            raise _fail(path, f"data position: '{key}' is missing")
    perm = data["permutation"]
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.dtype != torch.int64:
        raise _fail(path, "data position: 'permutation' is not a 1-D int64 tensor")
    if not torch.equal(perm.sort().values, torch.arange(perm.numel())):
        raise _fail(path, f"data position: 'permutation' is not a permutation of 0..{perm.numel() - 1}")
    epoch, position = data["epoch"], data["position"]
    if not isinstance(epoch, int) or epoch < 0 or not isinstance(position, int) or not 0 <= position <= perm.numel():
        raise _fail(path, f"data position: epoch {epoch!r} / position {position!r} are invalid for "
                    f"{perm.numel()} images")


def check_world(state: dict[str, Any], world_size: int, path: Path) -> None:
    """A checkpoint resumes bit-for-bit only on the world size that wrote it (every rank's RNG stream and data
    shard depend on it); anything else is one line."""
    saved = int(state.get("world_size", 1))
    if saved != world_size:
        how = "python -m engine.train" if saved == 1 else f"torchrun with {saved} processes in all"
        raise _fail(path, f"was written by {saved} process(es) and this job has {world_size}; a resume is exact "
                    f"only on the same world size: resume with {how} (the global batch stays train.batch_size)")


def restore(learner: Learner, stream: Loader, state: dict[str, Any], path: Path | None = None, rank: int = 0,
            world_size: int = 1) -> None:
    """Load ``state`` into a freshly built learner and stream (in place: addresses stay stable); rank ``rank`` of
    ``world_size`` processes takes its own random state.

    Any mismatch (a tensor of the wrong shape, a data position for another data set, another world size) is a
    :class:`CheckpointError` naming ``path``.
    """
    where = path if path is not None else Path("(state)")
    check_world(state, world_size, where)
    check_method(state, learner.method, where)
    rngs = state if rank == 0 else state["rank_rngs"][rank - 1]
    try:
        for key, module in learner.networks().items():
            module.load_state_dict(state[key])
        for key, opt in learner.optimizers().items():
            opt.load_state_dict(state[key])
        learner.rng.set_state(rngs["rng"])
        torch.set_rng_state(rngs["cpu_rng"])
        if "cuda_rng" in rngs and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rngs["cuda_rng"])
        stream.load_state_dict(state["data"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise _fail(where, f"does not fit this run ({_first_line(exc)})") from None
    learner.iteration = int(state["iteration"])


def check_method(state: dict[str, Any], method: str, path: Path) -> None:
    """One line when a checkpoint was written by another method than the run that loads it."""
    saved = state.get("config", {}).get("method")
    if saved != method:
        raise _fail(path, f"was written by a {saved} run; this run's method is {method} (set method={saved} to "
                    "resume or evaluate it, or use another run directory)")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``'RuntimeError: <message on one line, at most limit chars>'`` (load_state_dict puts the cause on line 2)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def estimate_bytes(learner: Learner) -> int:
    """Rough checkpoint size: fp32 weights of every network (EMA copies included) + two Adam moments per optimized
    parameter."""
    weights = sum(p.numel() for m in learner.networks().values() for p in m.parameters())
    moments = sum(p.numel() for o in learner.optimizers().values() for g in o.param_groups for p in g["params"])
    return 4 * (weights + 2 * moments)


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Fail before training when the run directory cannot hold two checkpoints (old + new during a save)."""
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        probe.unlink(missing_ok=True)
        raise CheckpointError(f"run directory {run_dir} is not writable ({describe_os_error(exc)})") from None
    free = shutil.disk_usage(run_dir).free
    if free < 2 * need_bytes:
        raise CheckpointError(
            f"run directory {run_dir} has {human_bytes(free)} free; a checkpoint needs about "
            f"{human_bytes(need_bytes)} and a save briefly holds two ({human_bytes(2 * need_bytes)})"
        )


def save(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``ckpt-<iteration>.pt`` atomically, then prune to the newest ``keep`` files."""
    path = checkpoint_path(run_dir, int(state["iteration"]))
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as exc:  # torch may report a failed write as RuntimeError("unexpected pos")
        if isinstance(exc, OSError):
            why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        else:
            why = _first_line(exc)
        prev = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {prev.name} is intact" if prev else "; no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {path} ({why}){kept}") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint (:func:`check_state`); every failure is one line naming the file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(path, f"cannot be read ({describe_os_error(exc)})") from None
    if size == 0:
        raise _fail(path, "is empty (0 bytes): a copy or transfer that did not finish?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False, i.e. running whatever code the file holds: never.
        raise _fail(path, "holds Python objects that a weights-only load refuses (not written by this engine, "
                    "or altered); not loaded") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        first = _first_line(exc).split(". ")[0].rstrip(".")  # torch adds advice sentences after the cause
        raise _fail(path, f"is truncated or corrupt ({first}; {human_bytes(size)})") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({describe_os_error(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any other unpickling failure means the same thing to the user
        raise _fail(path, f"cannot be read ({_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise _fail(path, "is not a checkpoint written by this engine (no format marker)")
    check_state(state, path)
    return state


def describe_fallback(run_dir: Path, bad: Path, flag: str = "--checkpoint") -> str:
    """``'; ckpt-0000300.pt is intact: use --checkpoint RUN/ckpt-0000300.pt'``, or that none is (loads them)."""
    for older in reversed(list_checkpoints(run_dir)):
        if older == bad or older.name >= bad.name:
            continue
        try:
            load(older)
        except CheckpointError:
            continue
        return f"; the older {older.name} is intact: use {flag} {older}"
    return "; no older intact checkpoint exists"


def set_aside_newer(run_dir: Path, chosen: Path) -> list[str]:
    """Rename the checkpoints newer than ``chosen`` to ``*.pt.set-aside`` (kept, no longer listed or pruned)."""
    moved = []
    for p in list_checkpoints(run_dir):
        if p.name > chosen.name:
            p.rename(p.with_name(p.name + SET_ASIDE_SUFFIX))
            moved.append(p.name)
    return moved


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
    try:
        for key, module in learner.networks().items():
            module.load_state_dict(state[key])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise _fail(path, f"does not fit its own config ({_first_line(exc)})") from None
    learner.iteration = int(state["iteration"])
    return learner
