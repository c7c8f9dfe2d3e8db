"""Start-up of a training run: everything that can fail on bad input fails here, before anything is written.

Order (each step raises one-line errors, see :mod:`engine.errors`): the device (``system.device=cuda`` without
a GPU), the data layout under ``data.root`` (:func:`engine.data.sources.resolve_source`), the memory estimate
(:mod:`engine.run.budget`), the run directory (:func:`open_run`: the lock, the checkpoint to resume and its
config), the data (:func:`load_data`: decoded now, or header-checked for DALI). Only after all of them does
the trainer create the directory (:func:`create_run_dir`) and write into it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import Config, ConfigError, from_dict, resume_differences, to_dict
from engine.data import FolderSpec, load_images
from engine.data.sources import resolve_source
from engine.errors import describe_os_error
from engine.models import IMAGE_SHAPES
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.run.rundir import LOCK_NAME, RunLock

__all__ = ["Data", "Start", "create_run_dir", "load_data", "open_run", "resolve_layout", "undo_create"]


def resolve_layout(cfg: Config) -> tuple[Config, str | None]:
    """``cfg`` with ``data.source`` switched to ``folder`` when ``data.root`` is an image-folder export."""
    source, note = resolve_source(cfg.data)
    if source == cfg.data.source:
        return cfg, None
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source)), note  # type: ignore[arg-type]


@dataclass
class Data:
    train: torch.Tensor | FolderSpec  # decoded uint8 (N, C, H, W), or a header-checked folder for DALI
    test: torch.Tensor  # uint8 images for the reconstruction grids
    n_train: int
    notes: list[str]


def load_data(cfg: Config, dali_folder: bool) -> Data:
    """The training source, a few test images and the training-set size; a data problem (missing, unreadable,
    a bad image file, a decompression bomb) becomes one :class:`ConfigError` line naming the file.

    ``dali_folder``: the loader will stream the folder with DALI, so it is only listed and header-checked here;
    every other loader gets the decoded set now, so a bad file fails before anything is written.
    """
    shape = IMAGE_SHAPES[cfg.model.arch]
    train: torch.Tensor | FolderSpec
    notes: list[str] = []
    try:
        if cfg.data.source == "folder" and dali_folder:
            train = FolderSpec(Path(cfg.data.root) / cfg.data.train_subdir, shape, cfg.data.limit or None)
            train.check_headers()
            n_train = len(train.files)
        else:
            train = load_images(cfg.data, shape, "train", limit=cfg.data.limit or None)
            n_train = int(train.shape[0])
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}): {exc}") from None
    if n_train < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: larger than the {n_train} training images")
    n_test = max(1, cfg.eval.n_samples // 2)
    # A seeded spread over the test split (folders are class-sorted: their first files are one class).
    seed = cfg.train.seed
    try:
        test = load_images(cfg.data, shape, "test", limit=n_test, spread_seed=seed)
    except FileNotFoundError as exc:
        notes.append(f"no test split ({exc}); reconstruction grids use training images")
        try:
            test = load_images(cfg.data, shape, "train", limit=n_test, spread_seed=seed)
        except (FileNotFoundError, ValueError, OSError) as exc2:
            raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}): {exc2}") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}), test split: {exc}") from None
    return Data(train, test, n_train, notes)


@dataclass
class Start:
    """The run directory as found at start-up (nothing written yet)."""

    run_dir: Path
    lock: RunLock | None  # held when the directory already existed
    state: dict[str, Any] | None  # the checkpoint to resume, checked
    state_path: Path | None
    chosen: bool  # the checkpoint was chosen with --checkpoint (newer ones are set aside)


def open_run(cfg: Config, chosen: Path | None = None) -> Start:
    """Lock an existing run directory and read the checkpoint to resume (the latest, or ``chosen``).

    A resumed run must use the same config except for fields that do not change the computation
    (``RESUMABLE_CHANGES``: iteration budget, logging, evaluation, device, data location). A checkpoint that
    cannot be used is refused with the older intact one named (``--checkpoint`` resumes from it).
    """
    run_dir = Path(cfg.log.run_dir)
    where = f"log.run_dir = {str(run_dir)!r}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{where}: exists and is not a directory")
    if not run_dir.exists():
        if chosen is not None:
            raise ConfigError(f"--checkpoint {chosen}: the run directory {run_dir} does not exist")
        return Start(run_dir, None, None, None, False)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot lock it ({describe_os_error(exc)})") from None
    try:
        if chosen is not None:
            path = run_dir / chosen.name if chosen.parent.resolve() == run_dir.resolve() else None
            if path is None or path not in checkpoint.list_checkpoints(run_dir):
                names = ", ".join(p.name for p in checkpoint.list_checkpoints(run_dir)) or "none"
                raise ConfigError(f"--checkpoint {chosen}: not a checkpoint of {run_dir} (its checkpoints: {names})")
        else:
            path = checkpoint.latest_checkpoint(run_dir)
        if path is None:
            return Start(run_dir, lock, None, None, False)
        try:
            state = checkpoint.load(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{checkpoint.describe_fallback(run_dir, path)} (newer checkpoints are set "
                                  "aside, not deleted)") from None
        # Through from_dict: fields added since the run was written read as their defaults, not as changes.
        diffs = resume_differences(to_dict(from_dict(state["config"])), to_dict(cfg))
        if diffs:
            raise ConfigError(f"{where}: holds a run with a different config; changed: {'; '.join(diffs)}. "
                              "Choose another log.run_dir")
        if state["iteration"] >= cfg.train.iterations:
            raise ConfigError(f"{where}: already finished {state['iteration']} of train.iterations = "
                              f"{cfg.train.iterations}; raise train.iterations to continue")
        return Start(run_dir, lock, state, path, chosen is not None)
    except BaseException:
        lock.release()
        raise


def create_run_dir(run_dir: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created (deepest last), for :func:`undo_create`."""
    missing = []
    p = run_dir
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"log.run_dir = {str(run_dir)!r}: cannot create it ({describe_os_error(exc)})") from None
    return list(reversed(missing))


def undo_create(created: list[Path]) -> None:
    """Remove the directories this start-up created, if they hold nothing but the lock file."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            (d / LOCK_NAME).unlink(missing_ok=True)
            d.rmdir()
