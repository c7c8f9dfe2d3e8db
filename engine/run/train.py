"""Command line: ``python -m engine.train [CONFIG] [a.b=value ...] [--resume RUN_DIR] [--quiet] [--dry-run]``.

Loads and validates the config (default: ``configs/quickstart.yaml``), checks data and run directory, then
trains with a progress bar, JSON-lines metrics (and optional TensorBoard events), PNG grids (DAMC prior
samples, LEBM Langevin prior samples, test reconstructions), periodic atomic checkpoints and a final one.
An existing run directory resumes from its latest checkpoint, bit-for-bit. SIGINT/SIGTERM finish the current
iteration, write a checkpoint and exit 0. Uses CUDA when present, else CPU. Losses stay on the device
between log intervals; they are read once per ``log.log_every``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch

from engine.config import Config, ConfigError, dump_config, load_config, resume_differences, to_dict
from engine.data import FolderSpec, fixed_batch, load_images, make_loader
from engine.files import atomic_write
from engine.learner import Learner, build_learner, damc_prior_latents, lebm_prior_latents, reconstruct, train_step
from engine.models import IMAGE_SHAPES
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.run.guard import DivergenceGuard
from engine.run.images import save_grid
from engine.runtime import perf, system
from engine.runtime.fast import build_chains

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (divergence); the message says why and what was kept."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Preparation: everything that can fail on bad input fails here, before the first iteration


def load_data(cfg: Config) -> tuple[torch.Tensor | FolderSpec, torch.Tensor, int]:
    """The training source (decoded uint8, or an undecoded folder for DALI), a few test images, and the
    training-set size; a data problem becomes one clear config error before anything is written."""
    shape = IMAGE_SHAPES[cfg.model.arch]
    train_source: torch.Tensor | FolderSpec
    try:
        if cfg.data.source == "folder" and cfg.data.loader in ("auto", "dali"):
            # Listed now (fails fast on a missing folder); decoded by the loader, or streamed by DALI.
            train_source = FolderSpec(Path(cfg.data.root) / (cfg.data.train_subdir or "train"), shape,
                                      cfg.data.limit or None)
            n_train = len(train_source.files)
        else:
            train_source = load_images(cfg.data, shape, "train", limit=cfg.data.limit or None)
            n_train = int(train_source.shape[0])
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}): {exc}") from None
    if n_train < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: larger than the {n_train} training images")
    n_test = max(1, cfg.eval.n_samples // 2)
    try:
        test_images = load_images(cfg.data, shape, "test", limit=n_test)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _say(f"no test split ({exc}); reconstruction grids use training images")
        test_images = load_images(cfg.data, shape, "train", limit=n_test)
    return train_source, test_images, n_train


def prepare_run_dir(cfg: Config) -> tuple[Path, dict[str, Any] | None]:
    """Create the run directory; return the latest checkpoint's state when the run is being resumed.

    A resumed run must use the same config except for fields that do not change the computation
    (``RESUMABLE_CHANGES``: iteration budget, logging, evaluation, device, data location).
    """
    run_dir = Path(cfg.log.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"log.run_dir = {str(run_dir)!r}: cannot create it ({exc.strerror})") from None
    state = None
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        state = checkpoint.load(latest)
        diffs = resume_differences(state["config"], to_dict(cfg))
        if diffs:
            raise ConfigError(f"log.run_dir = {str(run_dir)!r}: holds a run with a different config; "
                              f"changed: {'; '.join(diffs)}. Choose another log.run_dir")
        if state["iteration"] >= cfg.train.iterations:
            raise ConfigError(f"log.run_dir = {str(run_dir)!r}: already finished {state['iteration']} of "
                              f"train.iterations = {cfg.train.iterations}; raise train.iterations to continue")
    return run_dir, state


def _tensorboard(cfg: Config, run_dir: Path) -> Any:
    if not cfg.log.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("log.tensorboard = true: needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


# ---------------------------------------------------------------------------------------------------------
# Output


def _grid_style(height: int) -> dict[str, int]:
    # 8×8 digits are drawn 4× so that a grid is legible; grey separators between black-background cells.
    return {"scale": max(1, 32 // height), "pad_value": 128}


def write_grids(learner: Learner, x_test: torch.Tensor, run_dir: Path, seed: int) -> None:
    """PNG grids with a fixed eval RNG, so successive grids differ only because the model changed."""
    cfg = learner.cfg
    rng = system.make_generator(learner.device, seed)
    n, tag = cfg.eval.n_samples, f"{learner.iteration:07d}"
    style = _grid_style(x_test.shape[-1])
    nets = learner.nets
    with torch.no_grad():
        if nets.amortizer is not None:
            z_damc = damc_prior_latents(learner, n, rng)
            save_grid(nets.generator(z_damc), run_dir / f"samples_damc_{tag}.png", **style)
    z = lebm_prior_latents(learner, n, cfg.eval.lebm_steps, cfg.eval.lebm_step_size, rng)
    with torch.no_grad():
        save_grid(nets.generator(z), run_dir / f"samples_lebm_{tag}.png", **style)
    recon = reconstruct(learner, x_test, cfg.eval.recon_steps, cfg.eval.recon_step_size, rng)
    # Rows alternate: 8 test images, then their 8 reconstructions.
    cols = 8
    pairs = [t for i in range(0, x_test.shape[0], cols) for t in (x_test[i:i + cols], recon[i:i + cols])]
    save_grid(torch.cat(pairs), run_dir / f"recon_{tag}.png", nrow=cols, **style)


def _host_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The one device→host read per log interval."""
    keys = sorted(metrics)
    values = torch.stack([metrics[k].float() for k in keys]).tolist()
    return dict(zip(keys, values, strict=True))


class _StopSignals:
    """SIGINT/SIGTERM set a flag checked between iterations; a second signal stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: give up on the clean stop
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config) -> Path:
    train_source, test_images, n_train = load_data(cfg)  # before anything is written
    run_dir, resume_state = prepare_run_dir(cfg)
    device = system.setup(cfg.system)
    stream, loader_kind = make_loader(cfg.data.loader, train_source, cfg.train.batch_size, seed=cfg.train.seed,
                                      flip=cfg.data.flip, device=device, log=_say)
    x_test = fixed_batch(test_images, min(max(1, cfg.eval.n_samples // 2), test_images.shape[0]), device)
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, device, system.make_generator(device, cfg.train.seed))
    plan, note = perf.resolve(cfg.perf, device)
    if note:
        _say(note)
    system.apply_perf(plan, device)
    checkpoint.check_writable(run_dir, checkpoint.estimate_bytes(learner))
    tb = _tensorboard(cfg, run_dir)
    atomic_write(run_dir / "config.yaml", lambda f: f.write(dump_config(cfg).encode()))
    if resume_state is not None:
        checkpoint.restore(learner, stream, resume_state)
        _say(f"resumed {run_dir} at iteration {learner.iteration}")
    learner.chains = build_chains(learner, plan)  # after restore: graphs capture the restored weights in place
    last_saved = learner.iteration

    def save() -> None:
        nonlocal last_saved
        problem = guard.problem()  # never write a diverged state
        if problem is not None:
            raise _Diverged(problem)
        checkpoint.save(run_dir, checkpoint.capture(learner, stream), cfg.log.keep_checkpoints)
        last_saved = learner.iteration

    total, start_it = cfg.train.iterations, learner.iteration
    guard, rollbacks = DivergenceGuard(), 0
    bar = None
    if cfg.log.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_it, dynamic_ncols=True, desc=f"{cfg.method} {cfg.model.arch}",
                   file=sys.stderr)
    _say(f"run dir {run_dir} | device {device} | {plan.describe()} | loader {loader_kind} | {n_train} images | "
         f"iterations {start_it}→{total} at batch {cfg.train.batch_size}")
    t_start = t_last = time.perf_counter()
    last_it = start_it
    log_file: TextIO
    with open(run_dir / "metrics.jsonl", "a") as log_file, _StopSignals() as stop:
        while learner.iteration < total and stop.received is None:
            try:
                metrics = train_step(learner, next(stream))
                it = learner.iteration
                guard.update(metrics, it)
                if it % cfg.log.log_every == 0 or it == total:
                    problem = guard.problem()
                    if problem is not None:
                        raise _Diverged(problem)
                    now = time.perf_counter()
                    host = _host_metrics(metrics)
                    record = {"iteration": it, "time_s": round(now - t_start, 3),
                              "it_per_s": round((it - last_it) / max(now - t_last, 1e-9), 4),
                              "lr_g": learner.opt_g.param_groups[0]["lr"], **host}
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    if tb is not None:
                        for k, v in host.items():
                            tb.add_scalar(k, v, it)
                    if bar is not None:
                        shown: dict[str, str] = {k: f"{host[k]:.4g}" for k in ("loss_g", "loss_e", "loss_q")
                                                 if k in host}
                        bar.set_postfix(shown)
                    t_last, last_it = now, it
                if bar is not None:
                    bar.update(1)
                if it % cfg.log.sample_every == 0 or it == total:
                    write_grids(learner, x_test, run_dir, cfg.train.seed + 1)
                if it % cfg.log.checkpoint_every == 0:
                    save()
            except _Diverged as div:
                kept = checkpoint.latest_checkpoint(run_dir)
                where = f"kept the last good checkpoint {kept.name}" if kept else "no checkpoint had been written"
                if cfg.train.on_divergence == "stop" or kept is None or rollbacks >= cfg.train.max_rollbacks:
                    raise TrainingStopped(f"non-finite {div}; stopped, {where}") from None
                rollbacks += 1
                checkpoint.restore(learner, stream, checkpoint.load(kept))
                # A different seed for the chains and the amortizer draws from here on; the data order is kept.
                learner.rng.manual_seed(cfg.train.seed + 1_000_003 * rollbacks)
                guard.reset()
                log_file.write(json.dumps({"iteration": learner.iteration, "event": "rollback",
                                           "reason": str(div), "rollback": rollbacks}) + "\n")
                _say(f"non-finite {div}; rolled back to {kept.name} with a new seed ({rollbacks}/"
                     f"{cfg.train.max_rollbacks})")
                if bar is not None:
                    bar.reset(total=total)
                    bar.update(learner.iteration)
        if learner.iteration != last_saved:
            save()
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    if stop.received is not None:
        _say(f"stopped by {stop.received} at iteration {learner.iteration}; checkpoint written. "
             f"Resume with: python -m engine.train --resume {run_dir}")
    else:
        _say(f"done: iterations {start_it}→{learner.iteration} in {time.perf_counter() - t_start:.1f} s; "
             f"checkpoint and grids in {run_dir}")
    return run_dir


class _Diverged(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help=f"YAML config (default: {DEFAULT_CONFIG.name}, or the "
                        "run's saved config.yaml with --resume)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.iterations=100")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (batch jobs); same as log.progress=false")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `python -m engine.train a.b=1` with the default config
        config = None
    if args.resume is not None:
        saved = Path(args.resume) / "config.yaml"
        if config is None:
            if not saved.is_file():
                print(f"error: --resume {args.resume}: no config.yaml there", file=sys.stderr)
                return 2
            config = str(saved)
        overrides.append(f"log.run_dir={args.resume}")
    if args.quiet:
        overrides.append("log.progress=false")
    try:
        cfg = load_config(config if config is not None else DEFAULT_CONFIG, overrides)
        if args.dry_run:
            print(dump_config(cfg), end="")
            return 0
        train(cfg)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
