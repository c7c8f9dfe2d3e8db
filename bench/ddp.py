"""Multi-GPU scaling of the training iteration (issue 16): iterations/s at 1, 2, 4, 8 GPUs and the efficiency.

    python -m bench.ddp --gpus 1,2,4,8 [--sizes paper|smoke] [--iterations 20] [--warmup 5] [--out FILE.json]

For each GPU count N the driver starts ``torchrun --standalone --nproc_per_node=N -m bench.ddp --worker ...``
(two nodes: run the worker yourself under ``torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT``
on both, README "Several GPUs"). Each worker builds the learner the way ``engine.run.train`` does (the same seed
on every rank, ``rank_seed`` for the chains, ``perf.resolve(..., world_size)``, gradients averaged by
``Distributed.average_grads_``), feeds random images (timing does not depend on pixel values), warms up, and
times ``--iterations`` iterations between two ``cuda.synchronize``-ed barriers. Rows:

* ``weak``: every GPU keeps the paper's batch (global batch 128·N); efficiency = it/s(N) / it/s(1).
* ``strong``: the global batch stays 128 (128 / N per GPU); efficiency = it/s(N) / (N · it/s(1)).
* ``launch=plain``: one process without torchrun, beside torchrun's world size 1 (the overhead of the
  distributed machinery on one GPU: the per-iteration stop agreement is the only addition).
* ``sync=none`` beside ``sync=flat`` at the same N: the ranks train without averaging (timing only, the replicas
  drift): the difference is what the gradient all-reduce costs, i.e. the most DDP's overlap of communication
  with the backward pass could save.

Without N GPUs a row is skipped and says so; ``--device cpu`` runs the same code on gloo (a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.phases import REPO, bench_config
from engine.learners import build_learner
from engine.learners.damc import train_step
from engine.runtime import perf, system
from engine.runtime.distributed import Distributed, from_env, rank_seed
from engine.runtime.fast import build_chains


def _worker(args: argparse.Namespace) -> None:
    launch = from_env()
    if launch.launched:
        dist = Distributed.start(launch, args.device, 600.0)
    else:  # the plain `python` row: no process group at all
        want = "cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu"
        dist = Distributed.single(torch.device(want))
    world = dist.world_size
    per_gpu = args.batch if args.scaling == "weak" else args.batch // world
    cfg = bench_config(args.sizes, [f"train.batch_size={per_gpu * world}", f"perf.preset={args.preset}",
                                    f"system.device={'cuda' if dist.device.type == 'cuda' else 'cpu'}"])
    device = dist.device
    system.setup(dataclasses.replace(cfg.system, device=device.type))
    plan, _ = perf.resolve(cfg.perf, device, world)
    system.apply_perf(plan, device)
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, device, system.make_generator(device, rank_seed(cfg.train.seed, dist.rank)))
    if world > 1 and args.sync == "flat":
        learner.grad_sync = dist.average_grads_
    learner.chains = build_chains(learner, plan)
    from engine.models import IMAGE_SHAPES

    g = torch.Generator().manual_seed(dist.rank)
    x = (torch.rand(per_gpu, *IMAGE_SHAPES[cfg.model.arch], generator=g) * 2 - 1).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()

    for _ in range(args.warmup):
        train_step(learner, x)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        train_step(learner, x)
    sync()
    seconds = time.perf_counter() - t0
    times = dist.gather(seconds)
    if dist.is_main:
        assert times is not None
        row = {"gpus": world, "launch": "torchrun" if launch.launched else "plain", "scaling": args.scaling,
               "sync": args.sync, "preset": args.preset,
               "sizes": args.sizes, "batch_per_gpu": per_gpu, "global_batch": per_gpu * world,
               "iterations": args.iterations, "seconds": max(times), "it_per_s": args.iterations / max(times),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "commit": os.environ.get("DAMC_COMMIT", "unknown")}
        print("ROW " + json.dumps(row), flush=True)
    dist.close()


def _launch(n: int, args: argparse.Namespace, scaling: str, sync_mode: str, plain: bool = False
            ) -> dict[str, Any] | None:
    launcher = [] if plain else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd = [sys.executable, *launcher, "-m", "bench.ddp", "--worker", f"--sizes={args.sizes}",
           f"--device={args.device}", f"--preset={args.preset}",
           f"--iterations={args.iterations}", f"--warmup={args.warmup}", f"--batch={args.batch}",
           f"--scaling={scaling}", f"--sync={sync_mode}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not rows:
        print(f"{n} process(es), {scaling}, sync={sync_mode}: failed (rc {proc.returncode}):\n"
              f"{(proc.stdout + proc.stderr)[-2000:]}", file=sys.stderr)
        return None
    return rows[0]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    available = torch.cuda.device_count() if args.device != "cpu" else os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    base: dict[str, float] = {}
    if 1 in args.gpus:  # world size 1 under torchrun vs plain python: the cost of the distributed machinery itself
        plain = _launch(1, args, "weak", "flat", plain=True)
        if plain is not None:
            rows.append(plain)
            print(f"1 GPU  plain python        : {plain['it_per_s']:.3f} it/s", flush=True)
    for n in args.gpus:
        if n > available:
            print(f"{n} process(es): skipped ({available} {'GPU' if args.device != 'cpu' else 'CPU core'}(s) here)",
                  file=sys.stderr)
            continue
        for scaling in ("weak", "strong"):
            if scaling == "strong" and args.batch % n:
                continue
            for sync_mode in (("flat", "none") if n > 1 else ("flat",)):
                row = _launch(n, args, scaling, sync_mode)
                if row is None:
                    continue
                if n == 1:
                    base[scaling] = row["it_per_s"]
                if scaling in base:
                    ideal = base[scaling] * (1 if scaling == "weak" else n)
                    row["efficiency"] = row["it_per_s"] / ideal
                rows.append(row)
                eff = f", efficiency {row['efficiency']:.2f}" if "efficiency" in row else ""
                print(f"{n} GPU(s) {scaling:6s} sync={sync_mode:4s}: {row['it_per_s']:.3f} it/s "
                      f"(global batch {row['global_batch']}){eff}", flush=True)
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ddp", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gpus", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--sizes", choices=("paper", "smoke"), default="paper")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--preset", choices=("reference", "fast"), default="fast")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=128, help="per-GPU batch (weak) / global batch (strong)")
    p.add_argument("--scaling", choices=("weak", "strong"), default="weak", help=argparse.SUPPRESS)
    p.add_argument("--sync", choices=("flat", "none"), default="flat", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per torchrun job")
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        _worker(args)
        return 0
    rows = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.out)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
