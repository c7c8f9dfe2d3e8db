"""Command line: ``python -m engine.train [CONFIG] [a.b=value ...] [--dry-run]``.

Loads and validates the config (default: ``configs/quickstart.yaml``), prepares the run directory, then
trains with a progress bar, JSON-lines metrics, PNG grids (DAMC prior samples, LEBM Langevin prior samples,
test reconstructions) every ``log.sample_every`` iterations and a final checkpoint. Uses CUDA when present,
else CPU. Losses stay on the device between log intervals; they are read once per ``log.log_every``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from engine import system
from engine.config import Config, ConfigError, dump_config, load_config, to_dict
from engine.data import BatchStream, fixed_batch, load_images
from engine.images import save_grid
from engine.learner import (
    Learner,
    build_learner,
    damc_prior_latents,
    lebm_prior_latents,
    reconstruct,
    train_step,
)
from engine.models import IMAGE_SHAPES

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
CHECKPOINT_NAME = "checkpoint.pt"


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory, refuse to overwrite an existing run, save the resolved config."""
    run_dir = Path(cfg.log.run_dir)
    if (run_dir / CHECKPOINT_NAME).exists():
        raise ConfigError(f"log.run_dir = {str(run_dir)!r}: already holds a finished run ({CHECKPOINT_NAME}); "
                          "choose another log.run_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(run_dir / "config.yaml", lambda f: f.write(dump_config(cfg).encode()))
    except OSError as exc:
        raise ConfigError(f"log.run_dir = {str(run_dir)!r}: cannot write there ({exc.strerror})") from None
    return run_dir


def save_checkpoint(learner: Learner, path: Path) -> None:
    """Everything needed to sample or continue: weights, EMA copy, optimizers, iteration, RNG, config."""
    nets = learner.nets
    state: dict[str, Any] = {
        "iteration": learner.iteration,
        "config": to_dict(learner.cfg),
        "generator": nets.generator.state_dict(),
        "energy": nets.energy.state_dict(),
        "opt_g": learner.opt_g.state_dict(),
        "opt_e": learner.opt_e.state_dict(),
        "rng": learner.rng.get_state(),
    }
    if nets.amortizer is not None:
        assert learner.amortizer_ema is not None and learner.opt_q is not None
        state.update(amortizer=nets.amortizer.state_dict(), amortizer_ema=learner.amortizer_ema.state_dict(),
                     opt_q=learner.opt_q.state_dict())
    _atomic_write(path, lambda f: torch.save(state, f))


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
            save_grid(nets.generator(damc_prior_latents(learner, n, rng)), run_dir / f"samples_damc_{tag}.png",
                      **style)
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


def load_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and a few test images (uint8); a data problem becomes one clear config error."""
    shape = IMAGE_SHAPES[cfg.model.arch]
    try:
        train_images = load_images(cfg.data, shape, "train", limit=cfg.data.limit or None)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise ConfigError(f"data ({cfg.data.source}, root {cfg.data.root!r}): {exc}") from None
    if train_images.shape[0] < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: larger than the "
                          f"{train_images.shape[0]} training images")
    try:
        test_images = load_images(cfg.data, shape, "test", limit=max(1, cfg.eval.n_samples // 2))
    except (FileNotFoundError, ValueError) as exc:
        print(f"no test split ({exc}); reconstruction grids use training images", file=sys.stderr)
        test_images = train_images
    return train_images, test_images


def train(cfg: Config) -> Path:
    train_images, test_images = load_data(cfg)  # before anything is written
    run_dir = prepare_run_dir(cfg)
    device = system.setup(cfg.system)
    stream = BatchStream(train_images, cfg.train.batch_size, seed=cfg.train.seed, flip=cfg.data.flip,
                         device=device)
    x_test = fixed_batch(test_images, min(max(1, cfg.eval.n_samples // 2), test_images.shape[0]), device)

    system.seed_init(cfg.train.seed)
    rng = system.make_generator(device, cfg.train.seed)
    learner = build_learner(cfg, device, rng)
    grid_seed = cfg.train.seed + 1

    total = cfg.train.iterations
    metrics_path = run_dir / "metrics.jsonl"
    bar = None
    if cfg.log.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, dynamic_ncols=True, desc=f"{cfg.method} {cfg.model.arch}", file=sys.stderr)
    t_start = t_last = time.perf_counter()
    last_it = 0
    print(f"run dir {run_dir} | device {device} | {train_images.shape[0]} training images | "
          f"{total} iterations at batch {cfg.train.batch_size}", file=sys.stderr)
    with open(metrics_path, "a") as log_file:
        while learner.iteration < total:
            metrics = train_step(learner, next(stream))
            it = learner.iteration
            if it % cfg.log.log_every == 0 or it == total:
                now = time.perf_counter()
                host = _host_metrics(metrics)
                its = (it - last_it) / max(now - t_last, 1e-9)
                if not all(math.isfinite(v) for v in host.values()):
                    bad = ", ".join(k for k, v in host.items() if not math.isfinite(v))
                    raise FloatingPointError(f"iteration {it}: non-finite {bad}; stopping")
                record = {"iteration": it, "time_s": round(now - t_start, 3), "it_per_s": round(its, 4),
                          "lr_g": learner.opt_g.param_groups[0]["lr"], **host}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if bar is not None:
                    bar.set_postfix(loss_g=f"{host['loss_g']:.4g}", loss_e=f"{host['loss_e']:.3g}",
                                    **({"loss_q": f"{host['loss_q']:.3g}"} if "loss_q" in host else {}))
                t_last, last_it = now, it
            if bar is not None:
                bar.update(1)
            if it % cfg.log.sample_every == 0 or it == total:
                write_grids(learner, x_test, run_dir, grid_seed)
    if bar is not None:
        bar.close()
    save_checkpoint(learner, run_dir / CHECKPOINT_NAME)
    print(f"done: {total} iterations in {time.perf_counter() - t_start:.1f} s; checkpoint and grids in "
          f"{run_dir}", file=sys.stderr)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.iterations=100")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `python -m engine.train a.b=1` with the default config
        config = None
    try:
        cfg = load_config(config if config is not None else DEFAULT_CONFIG, overrides)
        if args.dry_run:
            print(dump_config(cfg), end="")
            return 0
        train(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
