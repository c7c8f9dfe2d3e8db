"""Where one call of a phase spends its GPU time: ``python -m bench.profile --out DIR`` (a CUDA machine).

Issue 14 item 4 asks to profile the posterior chain before rewriting it. This runs the fast configuration of each
phase named (default: the posterior chain, the amortizer updates and DAMC prior sampling) at the paper's sizes, warms
it up, then records one call under ``torch.profiler`` and writes the kernels sorted by total CUDA time to
``DIR/profile_<phase>.txt``, with the share of the phase each takes and the launch count. CUDA graphs are switched
off for the profile (``perf.graphs`` and ``perf.iteration_graph``): every kernel is then its own trace record, and
its GPU time is what it costs inside the graph too; the gaps between kernels are what graphs remove.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.phases import PHASE_INFO, bench_config, build_fast, phase_flops

DEFAULT = ("posterior_chain", "amortizer_updates", "sample_damc_prior")
NO_GRAPHS = ('perf.graphs="off"', 'perf.iteration_graph="off"')


def profile_phase(phase: str, out: Path, rows: int = 30) -> Path:
    device = torch.device("cuda")
    cfg = bench_config("paper", NO_GRAPHS)
    fn = build_fast(cfg, device, [phase])[phase]
    for _ in range(3):  # compile, autotune, lazy init
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    lines = [f"# {phase}: {PHASE_INFO[phase].what}",
             f"# one call, fast configuration without CUDA graphs; GPU time summed over kernels: {total / 1e3:.3f} ms"]
    flops = phase_flops(phase, cfg)
    if flops:
        rate = flops / (total / 1e6) / 1e12  # total is in µs
        lines.append(f"# counted FLOPs {flops / 1e12:.2f} TFLOP -> {rate:.1f} TFLOP/s of kernel time")
    lines.append(f"{'self GPU ms':>12} {'share':>7} {'calls':>6}  kernel / op")
    for e in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:rows]:
        lines.append(f"{e.self_device_time_total / 1e3:12.3f} {100 * e.self_device_time_total / total:6.1f}% "
                     f"{e.count:6d}  {e.key[:150]}")
    path = out / f"profile_{phase}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--phases", default=",".join(DEFAULT), help=f"comma-separated (default {','.join(DEFAULT)})")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.profile: needs a CUDA device", file=sys.stderr)
        return 2
    unknown = [p for p in args.phases.split(",") if p not in PHASE_INFO]
    if unknown:
        print(f"bench.profile: unknown phase(s) {unknown}; known: {', '.join(PHASE_INFO)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for phase in args.phases.split(","):
        path = profile_phase(phase, args.out)
        print(path.read_text())
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
