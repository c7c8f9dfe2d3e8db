"""Where one call of a phase spends its time: ``python -m bench.profile --out DIR`` (a CUDA machine; ``--device cpu
--sizes smoke`` runs the same code on a CPU, for its test).

Issue 14 asks to profile before rewriting. This builds the fast configuration of each phase named (default: the
posterior chain, the amortizer updates and DAMC prior sampling) at the paper's sizes, warms it up, records one call
under ``torch.profiler`` and writes ``DIR/profile_<phase>.txt``:

* the kernels (ops on a CPU) sorted by their own time, with their share and launch count;
* on a GPU, the timeline of that one call: the kernel count, the time the GPU was busy (kernel time summed) and the
  span from the first kernel's start to the last one's end. busy/span near 100 % is compute- or memory-bound; far
  below it, the gaps between kernels (launch latency, even inside a CUDA graph) are what costs, and fewer, fused
  kernels are the cure. The 100-step sampler and the amortizer updates are the phases to read this way.

By default the phase runs as benchmarked, CUDA graphs included: CUPTI records every kernel a graph replay runs. With
``--no-graphs`` each kernel is launched from the host (``perf.graphs`` and ``perf.iteration_graph`` off), which adds
the CPU side of each op to the trace. A phase that fails is reported in its file and on stderr, and the others
still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.env import out_dir_problem
from bench.phases import PHASE_INFO, Sizes, bench_config, build_fast, phase_flops

DEFAULT = ("posterior_chain", "amortizer_updates", "sample_damc_prior")
NO_GRAPHS = ('perf.graphs="off"', 'perf.iteration_graph="off"')


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeline(events: Sequence[object]) -> dict[str, float] | None:
    """Kernel count, busy time (sum of kernel durations, µs) and span (first start to last end, µs) of the device
    events in a profile (``prof.events()``); None when the profile holds no device kernels (a CPU run)."""
    ranges = [(e.time_range.start, e.time_range.end) for e in events  # type: ignore[attr-defined]
              if getattr(e, "device_type", None) == DeviceType.CUDA and e.time_range.end > e.time_range.start]  # type: ignore[attr-defined]
    if not ranges:
        return None
    busy = float(sum(end - start for start, end in ranges))
    span = float(max(end for _, end in ranges) - min(start for start, _ in ranges))
    durations = [end - start for start, end in ranges]
    return {"kernels": float(len(ranges)), "busy_us": busy, "span_us": span,
            "median_kernel_us": float(statistics.median(durations))}


def profile_phase(phase: str, out: Path, device: torch.device, sizes: Sizes = "paper", graphs: bool = True,
                  rows: int = 30) -> Path:
    cfg = bench_config(sizes, () if graphs else NO_GRAPHS)
    fn = build_fast(cfg, device, [phase])[phase]
    for _ in range(3):  # compile, autotune, capture, lazy init
        fn()
    _sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    unit = "GPU" if cuda else "CPU"
    how = "as benchmarked (CUDA graphs where the fast plan captures)" if graphs else "without CUDA graphs"
    lines = [f"# {phase}: {PHASE_INFO[phase].what}",
             f"# one call, fast configuration {how}, {sizes} sizes, {device.type}; "
             f"{unit} time summed over {'kernels' if cuda else 'ops'}: {total / 1e3:.3f} ms"]
    span = timeline(list(prof.events())) if cuda else None
    if span is not None:
        lines.append(f"# timeline: {span['kernels']:.0f} kernels, busy {span['busy_us'] / 1e3:.3f} ms of a "
                     f"{span['span_us'] / 1e3:.3f} ms span ({100 * span['busy_us'] / max(span['span_us'], 1e-9):.0f}"
                     f"% busy), median kernel {span['median_kernel_us']:.1f} µs")
    flops = phase_flops(phase, cfg)
    if flops and cuda:
        rate = flops / (total / 1e6) / 1e12  # total is in µs
        lines.append(f"# counted FLOPs {flops / 1e12:.2f} TFLOP -> {rate:.1f} TFLOP/s of kernel time")
    lines.append(f"{'self ' + unit + ' ms':>12} {'share':>7} {'calls':>6}  {'kernel' if cuda else 'op'}")
    for e in sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:rows]:
        t = getattr(e, attr)
        lines.append(f"{t / 1e3:12.3f} {100 * t / total:6.1f}% {e.count:6d}  {e.key[:150]}")
    path = out / f"profile_{phase}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--phases", default=",".join(DEFAULT), help=f"comma-separated (default {','.join(DEFAULT)})")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--sizes", default="paper", choices=("paper", "smoke"))
    ap.add_argument("--no-graphs", action="store_true", help="launch every kernel from the host (graphs off)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.profile: no CUDA device here (--device cpu --sizes smoke runs on a CPU)", file=sys.stderr)
        return 2
    phases = args.phases.split(",")
    unknown = [p for p in phases if p not in PHASE_INFO]
    if unknown:
        print(f"bench.profile: unknown phase(s) {unknown}; known: {', '.join(PHASE_INFO)}", file=sys.stderr)
        return 2
    problem = out_dir_problem("bench.profile", args.out)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    device = torch.device(args.device)
    failed: list[str] = []
    for phase in phases:
        try:
            path = profile_phase(phase, args.out, device, args.sizes, graphs=not args.no_graphs)
            print(path.read_text())
        except Exception as exc:  # noqa: BLE001 - one phase's failure must not cost the others' profiles
            failed.append(phase)
            traceback.print_exc()
            msg = f"# {phase}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
            (args.out / f"profile_{phase}.txt").write_text(msg)
            print(msg, file=sys.stderr)
        torch._dynamo.reset()
    if failed:
        print(f"bench.profile: {len(failed)} phase(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
