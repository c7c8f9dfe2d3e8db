"""Command line: ``python -m engine.train [CONFIG] [a.b=value ...] [--resume RUN_DIR] [--quiet] [--dry-run]``.

Loads and validates the config (default: ``configs/quickstart.yaml``), checks device, memory, data and run
directory (:mod:`engine.run.startup`), then trains with a progress bar, JSON-lines metrics (and optional
TensorBoard events), PNG grids (DAMC prior samples, LEBM Langevin prior samples, test reconstructions),
periodic atomic checkpoints and a final one. An existing run directory resumes from its latest checkpoint,
bit-for-bit; a second trainer on it is refused. SIGINT/SIGTERM finish the current iteration, write a
checkpoint and exit 0. Every expected failure is one ``error:`` line and a non-zero exit
(:mod:`engine.errors`). Losses stay on the device between log intervals; they are read once per
``log.log_every``, and before every grid and checkpoint (divergence check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.config import Config, ConfigError, describe_fields, dump_config, load_config
from engine.data import fixed_batch, make_loader
from engine.data.dali import dali_available
from engine.data.loaders import Loader
from engine.errors import EXIT_INTERRUPTED, EXIT_STOPPED, OneLineParser, UserError, describe_os_error, run_cli
from engine.files import LineLog, atomic_write
from engine.learners import Learner, build_learner
from engine.run import checkpoint, ranks
from engine.run.budget import check_fits
from engine.run.guard import DivergenceGuard
from engine.run.images import write_grids
from engine.run.rundir import RunLock, prepare_metrics, remove_stale_files
from engine.run.signals import StopSignals
from engine.run.startup import Start, create_run_dir, load_data, open_run, resolve_layout, undo_create
from engine.runtime import perf, system
from engine.runtime.distributed import Distributed, DistributedError, rank_seed

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


class TrainingStopped(UserError):
    """The run stopped on purpose or the machine stopped it (divergence, disk full, a bad data file met during
    training); the message says why and what is intact."""

    exit_code = EXIT_STOPPED


class TrainingInterrupted(UserError):
    """A second SIGINT/SIGTERM stopped the run at once, mid-iteration."""

    exit_code = EXIT_INTERRUPTED


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Output


def _host_metrics(metrics: dict[str, torch.Tensor], dist: Distributed) -> dict[str, float]:
    """The one device→host read per log interval; with several processes, the mean over ranks (one all-reduce)."""
    keys = sorted(metrics)
    values = dist.mean_(torch.stack([metrics[k].float() for k in keys])).tolist()
    return dict(zip(keys, values, strict=True))


def train_step(learner: Learner, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training iteration of whichever learner the run has (the loop's one call into the method)."""
    return learner.train_step(x)


class _Diverged(Exception):
    pass


class _NoLog:
    """Ranks > 0 write no metrics: a LineLog that drops every line."""

    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def append(self, line: str) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------
# The run


def train(cfg: Config, checkpoint_path: Path | None = None, argv: list[str] | None = None) -> Path:
    """Train ``cfg`` (resuming its run directory, from ``checkpoint_path`` when given); returns the run dir.

    Under torchrun every rank calls this; rank 0 owns the run directory (lock, config, metrics, grids,
    checkpoints), the others read the checkpoint it resumes from (a filesystem every node shares).
    """
    dist = ranks.join(cfg)
    clean = False
    try:
        out = _train(cfg, checkpoint_path, argv, dist)
        clean = True
        return out
    finally:
        dist.close(clean)


def _train(cfg: Config, checkpoint_path: Path | None, argv: list[str] | None, dist: Distributed) -> Path:
    device, main = dist.device, dist.is_main
    cfg, layout_note = resolve_layout(cfg)
    ranks.together(dist, lambda: check_fits(cfg, device), "the memory check")  # before any work
    start = ranks.together(dist, lambda: open_run(cfg, checkpoint_path) if main else None, "start-up")
    created: list[Path] = []
    threads = torch.get_num_threads()
    # Notices are printed once start-up has succeeded: a refused start prints its one error line only.
    notes: list[str] = [layout_note] if layout_note else []
    try:
        if not main:  # the other ranks resume from the checkpoint rank 0 chose (read from the shared filesystem)
            chosen = dist.broadcast(None)
            start = ranks.together(dist, lambda: _follow(cfg, chosen), "start-up")
        elif dist.active:
            assert start is not None
            dist.broadcast((str(start.state_path), start.chosen) if start.state_path is not None else None)
            ranks.together(dist, lambda: None, "start-up")
        assert start is not None
        st = start

        def build() -> tuple[Learner, Loader, str, torch.Tensor, perf.PerfPlan, int]:
            _tensorboard_writer(cfg)
            folder_dali = cfg.data.loader == "dali" or (cfg.data.loader == "auto" and device.type == "cuda"
                                                        and dali_available())
            data = load_data(cfg, dali_folder=folder_dali)
            notes.extend(data.notes)
            system.setup(cfg.system)
            try:
                stream, loader_kind = make_loader(cfg.data.loader, data.train, cfg.train.batch_size,
                                                  seed=cfg.train.seed, flip=cfg.data.flip, device=device,
                                                  log=notes.append, rank=dist.rank, world_size=dist.world_size)
            except ValueError as exc:
                raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}): {exc}") from None
            x_test = fixed_batch(data.test, min(max(1, cfg.eval.n_samples // 2), data.test.shape[0]), device)
            # Every rank initialises the networks from the run seed (identical replicas); rank r's chains and
            # draws, and its global generators from here on, use rank_seed(seed, r) (rank 0: the seed itself).
            system.seed_init(cfg.train.seed)
            seed = rank_seed(cfg.train.seed, dist.rank)
            learner = build_learner(cfg, device, system.make_generator(device, seed))
            if dist.rank > 0:
                system.seed_init(seed)
            plan, perf_note = perf.resolve(cfg.perf, device, dist.world_size)
            if perf_note:
                notes.append(perf_note)
            system.apply_perf(plan, device)
            if st.state is not None and st.state_path is not None:
                try:
                    checkpoint.restore(learner, stream, st.state, st.state_path, dist.rank, dist.world_size)
                except checkpoint.CheckpointError as exc:
                    raise checkpoint.CheckpointError(
                        f"{exc}{checkpoint.describe_fallback(st.run_dir, st.state_path)}") from None
            if dist.world_size > 1:
                learner.grad_sync = dist.average_grads_
            return learner, stream, loader_kind, x_test, plan, data.n_train

        learner, stream, loader_kind, x_test, plan, n_train = ranks.together(dist, build, "start-up")
        ranks.check_replicas(dist, learner, "at start-up")

        def claim() -> RunLock | None:
            # Nothing has been written so far. From here on the run directory is ours (rank 0's).
            nonlocal created
            if not main:
                return None
            lock = st.lock
            if lock is None:
                created = create_run_dir(st.run_dir)
                lock = RunLock(st.run_dir)
                lock.acquire()
            try:
                checkpoint.check_writable(st.run_dir, checkpoint.estimate_bytes(learner))
            except checkpoint.CheckpointError:
                lock.release()
                undo_create(created)
                raise
            created = []
            return lock

        lock = ranks.together(dist, claim, "start-up")
        if main:
            for note in notes:
                _say(note)
        return _run(cfg, st.run_dir, lock, learner, stream, loader_kind, x_test, plan, st, n_train, argv, dist)
    finally:
        if start is not None and start.lock is not None:
            start.lock.release()
        torch.set_num_threads(threads)


def _follow(cfg: Config, chosen: tuple[str, bool] | None) -> Start:
    """A non-zero rank's view of the run directory: rank 0's checkpoint (checked here too), no lock."""
    run_dir = Path(cfg.log.run_dir)
    if chosen is None:
        return Start(run_dir, None, None, None, False)
    path = Path(chosen[0])
    return Start(run_dir, None, checkpoint.load(path), path, chosen[1])


def _prepare_dir(run_dir: Path, lock: RunLock, learner: Learner, start: Start, argv: list[str] | None) -> None:
    lock.claim(argv)
    removed = remove_stale_files(run_dir)
    if removed:
        _say(f"removed {len(removed)} temporary files left by an interrupted write ({', '.join(removed[:3])}"
             f"{' ...' if len(removed) > 3 else ''})")
    if start.chosen and start.state_path is not None:
        moved = checkpoint.set_aside_newer(run_dir, start.state_path)
        if moved:
            _say(f"resuming from {start.state_path.name}: set aside the newer {', '.join(moved)} "
                 f"(renamed *{checkpoint.SET_ASIDE_SUFFIX})")
    for note in prepare_metrics(run_dir / "metrics.jsonl", learner.iteration):
        _say(note)


def _tensorboard_writer(cfg: Config) -> Any:
    """The SummaryWriter class when ``log.tensorboard`` is on (checked at start-up), else None."""
    if not cfg.log.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("log.tensorboard = true: needs the tensorboard package (pip install tensorboard)") \
            from None
    return SummaryWriter


def _run(cfg: Config, run_dir: Path, lock: RunLock | None, learner: Learner, stream: Loader, loader_kind: str,
         x_test: torch.Tensor, plan: perf.PerfPlan, start: Start, n_train: int, argv: list[str] | None,
         dist: Distributed) -> Path:
    def prepare() -> Any:
        if lock is None:  # ranks > 0 write nothing
            return None
        try:
            _prepare_dir(run_dir, lock, learner, start, argv)
            writer = _tensorboard_writer(cfg)
            tb = writer(log_dir=str(run_dir / "tensorboard")) if writer is not None else None
            atomic_write(run_dir / "config.yaml", lambda f: f.write(dump_config(cfg).encode()))
        except OSError as exc:  # before the loop: config.yaml, the lock note, metrics repair
            raise TrainingStopped(f"run directory {run_dir}: {describe_os_error(exc)}; its checkpoints and "
                                  "metrics are intact") from None
        if start.state_path is not None:
            _say(f"resumed {run_dir} at iteration {learner.iteration} from {start.state_path.name}")
        return tb

    try:
        tb = ranks.together(dist, prepare, "start-up")
        learner.set_plan(plan)  # after restore: graphs capture the restored weights in place
        return _loop(cfg, run_dir, learner, stream, loader_kind, plan, n_train, x_test, tb, dist)
    finally:
        if lock is not None:
            lock.release()


def _loop(cfg: Config, run_dir: Path, learner: Learner, stream: Loader, loader_kind: str, plan: perf.PerfPlan,
          n_train: int, x_test: torch.Tensor, tb: Any, dist: Distributed) -> Path:
    total, start_it = cfg.train.iterations, learner.iteration
    guard, rollbacks = DivergenceGuard(), 0
    last_saved, last_logged = learner.iteration, learner.iteration
    main = dist.is_main
    say = _say if main else (lambda msg: None)

    def check() -> None:
        """Host sync: the guard's flags (losses, energies, latents since the last check), agreed over ranks:
        one rank's NaN stops (or rolls back) every rank at the same iteration."""
        problem = guard.problem()
        if dist.any(problem is not None):
            raise _Diverged(problem or f"values on another rank (iteration {learner.iteration})")

    def save() -> None:
        nonlocal last_saved
        check()
        bad = checkpoint.nonfinite_weights(learner)  # never write (and later trust) a diverged state
        if dist.any(bool(bad)):
            raise _Diverged(f"weights of {', '.join(bad) or 'a network on another rank'} (iteration "
                            f"{learner.iteration})")
        ranks.check_replicas(dist, learner, f"at iteration {learner.iteration}")
        rngs = dist.gather(checkpoint.rng_state(learner))  # every rank's random state, on rank 0
        failed: checkpoint.CheckpointWriteError | None = None
        if main:
            try:
                checkpoint.save(run_dir, checkpoint.capture(learner, stream, rngs), cfg.log.keep_checkpoints)
            except checkpoint.CheckpointWriteError as exc:
                failed = exc
        if dist.any(failed is not None):
            raise failed or checkpoint.CheckpointWriteError(
                f"rank 0 could not write the checkpoint of iteration {learner.iteration} (its error says why)")
        last_saved = learner.iteration

    def intact() -> str:
        kept = checkpoint.latest_checkpoint(run_dir)
        ck = f"the latest checkpoint {kept.name}" if kept else "no checkpoint had been written"
        return f"intact: {ck}, metrics.jsonl up to iteration {last_logged}"

    bar = None
    if cfg.log.progress and main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_it, dynamic_ncols=True, desc=f"{cfg.method} {cfg.model.arch}",
                   file=sys.stderr)
    procs = f" over {dist.world_size} processes ({dist.backend})" if dist.world_size > 1 else ""
    say(f"run dir {run_dir} | device {learner.device} | {plan.describe()} | loader {loader_kind} | {n_train} images "
        f"| iterations {start_it}→{total} at batch {cfg.train.batch_size}{procs}")
    t_start = t_last = time.perf_counter()
    last_it = start_it
    resume = f"python -m engine.train --resume {run_dir}"
    stop = StopSignals()
    try:
        with (LineLog(run_dir / "metrics.jsonl") if main else _NoLog()) as log, stop:
            # One small host all-reduce per iteration (several processes): a signal on any rank stops every rank
            # after the same iteration, with one checkpoint.
            while learner.iteration < total and not dist.any(stop.received is not None):
                try:
                    try:
                        batch = next(stream)
                    except ValueError as exc:  # a file the loader could not decode (DALI decodes per batch)
                        if dist.world_size > 1:
                            # Only this rank met the file (each decodes its own shard): a checkpoint would need
                            # every rank in the same collective, so stop now; the others stop at their next one.
                            raise TrainingStopped(f"rank {dist.rank}: data: {exc}; stopped at iteration "
                                                  f"{learner.iteration}; {intact()}; replace the file and "
                                                  "resume") from None
                        save()
                        raise TrainingStopped(f"data: {exc}; stopped at iteration {learner.iteration} with a "
                                              "checkpoint; replace the file and resume (removing it changes the "
                                              "data set, which a resume refuses)") from None
                    metrics = train_step(learner, batch)
                    it = learner.iteration
                    guard.update(metrics, it)
                    if it % cfg.log.log_every == 0 or it == total:
                        check()
                        now = time.perf_counter()
                        host = _host_metrics(metrics, dist)
                        record = {"iteration": it, "time_s": round(now - t_start, 3),
                                  "it_per_s": round((it - last_it) / max(now - t_last, 1e-9), 4),
                                  **learner.learning_rates(), **host}
                        log.append(json.dumps(record, allow_nan=False))
                        last_logged = it
                        if tb is not None:
                            for k, v in host.items():
                                tb.add_scalar(k, v, it)
                        if bar is not None:
                            bar.set_postfix({k: f"{host[k]:.4g}" for k in ("loss_g", "loss_e", "loss_q") if k in host})
                        t_last, last_it = now, it
                    if bar is not None:
                        bar.update(1)
                    # The checkpoint first: a failure while drawing grids (memory, disk) never costs it. Grids read
                    # no RNG and change no state, so the order does not change what is saved.
                    if it % cfg.log.checkpoint_every == 0 or it == total:
                        save()
                    if it % cfg.log.sample_every == 0 or (it == total and cfg.log.final_grids):
                        check()  # never draw grids of a diverged model
                        if main:
                            write_grids(learner, x_test, run_dir, cfg.train.seed + 1)
                except _Diverged as div:
                    # Rank 0's listing decides, so every rank rolls back to the same file.
                    latest = dist.broadcast(checkpoint.latest_checkpoint(run_dir) if main else None)
                    kept = Path(latest) if latest is not None else None
                    where = f"kept the last good checkpoint {kept.name}" if kept else "no checkpoint had been written"
                    if cfg.train.on_divergence == "stop" or kept is None or rollbacks >= cfg.train.max_rollbacks:
                        raise TrainingStopped(f"non-finite {div}; stopped, {where}") from None
                    rollbacks += 1
                    checkpoint.restore(learner, stream, checkpoint.load(kept), kept, dist.rank, dist.world_size)
                    # A different seed for the chains and the amortizer draws from here on (per rank); the data
                    # order is kept.
                    learner.rng.manual_seed(rank_seed(cfg.train.seed + 1_000_003 * rollbacks, dist.rank))
                    guard.reset()
                    log.append(json.dumps({"iteration": learner.iteration, "event": "rollback", "reason": str(div),
                                           "rollback": rollbacks}))
                    say(f"non-finite {div}; rolled back to {kept.name} with a new seed ({rollbacks}/"
                         f"{cfg.train.max_rollbacks})")
                    if bar is not None:
                        bar.reset(total=total)
                        bar.update(learner.iteration)
            if learner.iteration != last_saved:
                try:
                    save()
                except _Diverged as div:
                    kept = checkpoint.latest_checkpoint(run_dir)
                    where = f"kept the last good checkpoint {kept.name}" if kept else "no checkpoint had been written"
                    raise TrainingStopped(f"non-finite {div}; stopped, {where}") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"stopped at once by a second {stop.received or 'signal'} at iteration "
                                  f"{learner.iteration}; {intact()}. Resume with: {resume}") from None
    except checkpoint.CheckpointWriteError as exc:
        raise TrainingStopped(f"{exc}; metrics.jsonl is intact up to iteration {last_logged}. Free space and "
                              f"resume with: {resume}") from None
    except (DistributedError, ranks.ReplicaMismatch) as exc:  # a peer died or hung, or the replicas drifted
        raise TrainingStopped(f"{exc}; stopped at iteration {learner.iteration}; {intact()}. Resume with the same "
                              f"torchrun command (--resume {run_dir})") from None
    except OSError as exc:
        raise TrainingStopped(f"could not write {describe_os_error(exc)} at iteration {learner.iteration}; "
                              f"{intact()}. Free space and resume with: {resume}") from None
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    if learner.iteration < total:  # a signal, here or on another rank
        by = stop.received or "a signal on another rank"
        say(f"stopped by {by} at iteration {learner.iteration}; checkpoint written. Resume with: {resume}")
    else:
        say(f"done: iterations {start_it}→{learner.iteration} in {time.perf_counter() - t_start:.1f} s; "
             f"checkpoint and grids in {run_dir}")
    return run_dir


# ---------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    fields = "\n".join(describe_fields())
    parser = OneLineParser(
        prog="python -m engine.train", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config fields (override any as section.key=value; default [allowed] doc):\n{fields}\n\n"
               "exit status: 0 done or stopped cleanly by SIGINT/SIGTERM; 2 bad input (nothing written); "
               "1 stopped (divergence, disk full; the message names what is intact); 130 interrupted")
    parser.add_argument("config", nargs="?", help=f"YAML config (default: {DEFAULT_CONFIG.name}, or the "
                        "run's saved config.yaml with --resume)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.iterations=100")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--checkpoint", metavar="CKPT", help="resume from this checkpoint of the run instead of the "
                        "latest (newer ones are renamed *.set-aside)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (batch jobs); same as log.progress=false")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--show-config", action="store_true", help="print every config field with its default, "
                        "allowed range and doc, and exit")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.show_config:
        print("\n".join(describe_fields()))
        return 0
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `python -m engine.train a.b=1` with the default config
        config = None
    if args.checkpoint is not None and args.resume is None:
        args.resume = str(Path(args.checkpoint).parent)
    if args.resume is not None:
        saved = Path(args.resume) / "config.yaml"
        if config is None:
            if not saved.is_file():
                raise UserError(f"--resume {args.resume}: no config.yaml there (not a run directory)")
            config = str(saved)
        overrides.append(f"log.run_dir={args.resume}")
    if args.quiet:
        overrides.append("log.progress=false")
    cfg = load_config(config if config is not None else DEFAULT_CONFIG, overrides)
    if args.dry_run:
        sys.stdout.write(dump_config(cfg))
        return 0
    train(cfg, Path(args.checkpoint) if args.checkpoint else None,
          argv=["python -m engine.train", *(sys.argv[1:] if argv is None else argv)])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main())
