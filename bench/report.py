"""One table from one benchmark run on this device: ``python -m bench.report``.

Runs ``pytest bench/ --benchmark-only --benchmark-json=...`` in a subprocess (or reads an existing JSON
with ``--from-json``), then prints a Markdown table: phase, the paper's figure, reference, fast, fast vs
reference, fast vs paper, projected seconds per CIFAR-10 epoch, peak memory, set-up cost, and for the
posterior chain the achieved TFLOP/s (FLOPs counted from the architecture) as a fraction of the dense
matmul rate measured in the same run.

It writes the same content as JSON (and the table as Markdown) to ``bench/results/<device-slug>.json``
only for a complete run at the paper's sizes on a GPU. CPU runs and smoke-size runs are smoke tests, not
results: they are printed, and written (as ``<slug>.smoke.json``, git-ignored) only with ``--allow-smoke``.
Every number written is a measurement from the run, or arithmetic on one (ratios, 390 × time); nothing is
estimated.

Usage:
    python -m bench.report                         # run the suite on this device, print, write if a GPU run
    python -m bench.report --from-json run.json    # assemble from ``pytest bench/ --benchmark-json=run.json``
    python -m bench.report --no-write -- -k posterior   # anything after -- goes to pytest
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.phases import ITERATIONS_PER_EPOCH, MODES, PHASES, REPO, SUITE, VARIANT_SUITE

RESULTS_DIR = REPO / "bench" / "results"
SCHEMA = 2  # 2: gpu_s per measurement, variants, the EMA row, git.source
COMMIT_ENV = "DAMC_COMMIT"  # the commit measured, as the session that sent the tree to the GPU knows it


class ReportError(RuntimeError):
    """The run cannot be turned into a report (or must not be written as a result)."""


# ---------------------------------------------------------------------------------------------------------
# Assembly: pytest-benchmark JSON -> result dict (pure; unit-tested on synthetic input)


def _measurement(bench: Mapping[str, Any]) -> dict[str, Any]:
    s, e = bench["stats"], bench.get("extra_info", {})
    return {
        "median_s": s["median"],
        "gpu_s": e.get("gpu_s"),  # CUDA-event time of the timed rounds (median); None on CPU
        "min_s": s["min"],
        "mean_s": s["mean"],
        "stddev_s": s["stddev"],
        "rounds": s["rounds"],
        "data_s": list(s.get("data", [])),
        "warmup_calls": e.get("warmup_calls"),
        "warmup_s": e.get("warmup_s"),
        "build_s": e.get("build_s"),
        "peak_mem_bytes": e.get("peak_mem_bytes"),
        "resident_mem_bytes": e.get("resident_mem_bytes"),
        "implemented": e.get("implemented", True),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def assemble(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a pytest-benchmark JSON document into the report's result dict."""
    ours = [b for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("suite") == SUITE]
    variants = [b for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("suite") == VARIANT_SUITE]
    others = [b for b in data.get("benchmarks", [])
              if b.get("extra_info", {}).get("suite") not in (SUITE, VARIANT_SUITE)]
    if not ours:
        raise ReportError("no benchmarks from bench/bench_phases.py in this run (was it deselected?)")
    envs = {json.dumps(b["extra_info"].get("env"), sort_keys=True) for b in ours}
    if len(envs) != 1:
        raise ReportError("benchmarks in this run report different devices or software stacks")
    env = ours[0]["extra_info"]["env"]

    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    matmul = None
    size = None
    status: dict[str, dict[str, Any]] = {}
    for b in ours:
        e = b["extra_info"]
        if e["phase"] == "matmul":
            rate = _ratio(e["flops_per_call"], b["stats"]["median"])
            matmul = {"dtype": e["dtype"], "n": e["n"], "reps": e["reps"], "median_s": b["stats"]["median"],
                      "tflops": rate / 1e12 if rate else None}
            continue
        by_key[(e["phase"], e["mode"])] = {**_measurement(b), "flops_per_call": e.get("flops_per_call")}
        size = size or e.get("size")
        # What each configuration was on the measuring device, as the benchmark process recorded it.
        status.setdefault(e["mode"], {"implemented": e.get("implemented"), "note": e.get("note", "")})
    sizes = (size or {}).get("sizes", "unknown")
    paper_sizes = sizes == "paper"

    rows = []
    missing = []
    for p in PHASES:
        modes = {m: by_key.get((p.key, m)) for m in MODES}
        missing += [f"{p.key}-{m}" for m, v in modes.items() if v is None]
        ref, fast = modes.get(MODES[0]), modes.get(MODES[1])
        t = {m: (v["median_s"] if v else None) for m, v in modes.items()}
        flops = next((v["flops_per_call"] for v in modes.values() if v and v.get("flops_per_call")), None)
        row: dict[str, Any] = {
            "phase": p.key,
            "label": p.label,
            "group": p.group,
            "what": p.what,
            "paper_s": p.paper_s,
            "modes": modes,
            # > 1 means the fast configuration is faster.
            "fast_vs_reference": _ratio(t[MODES[0]], t[MODES[1]]) if ref and fast else None,
            # The paper's sizes only: a tiny CPU run says nothing about the paper's A6000 figure.
            "fast_vs_paper": _ratio(p.paper_s, t[MODES[1]]) if paper_sizes else None,
            # 390 × a CIFAR-10 iteration phase: meaningless for tiny smoke sizes, so only at the paper's.
            "epoch_s": ({m: v * ITERATIONS_PER_EPOCH if v is not None else None for m, v in t.items()}
                        if p.group == "train" and paper_sizes else None),
            "flops_per_call": flops,
            "tflops": None,
            "fraction_of_matmul": None,
        }
        if flops:
            tf = {m: (flops / v / 1e12 if v else None) for m, v in t.items()}
            row["tflops"] = tf
            peak = matmul["tflops"] if matmul else None
            row["fraction_of_matmul"] = {m: _ratio(v, peak) for m, v in tf.items()}
        rows.append(row)

    _amortize_ema(rows, (size or {}).get("ema_every"))

    reasons = []
    if env.get("device_type") != "cuda":
        reasons.append("CPU run")
    if not paper_sizes:
        reasons.append(f"{sizes} sizes")
    if missing:
        reasons.append(f"missing: {', '.join(missing)}")
    if matmul is None:
        reasons.append("no matmul rate")
    return {
        "schema": SCHEMA,
        "kind": "smoke" if reasons else "measured",
        "smoke_reasons": reasons,
        "datetime": data.get("datetime"),
        "git": _git(data),
        "env": env,
        "size": size,
        "configurations": {m: status.get(m, {"implemented": None, "note": "not measured"}) for m in MODES},
        "matmul": matmul,
        "iterations_per_epoch": ITERATIONS_PER_EPOCH,
        "rows": rows,
        "variants": _variants(variants, rows),
        "other_benchmarks": [{"name": b.get("fullname", b.get("name")), "group": b.get("group"),
                              "median_s": b["stats"]["median"], "rounds": b["stats"]["rounds"],
                              "extra_info": b.get("extra_info", {})} for b in others],
    }


def _git(data: Mapping[str, Any]) -> dict[str, Any]:
    """One commit for the whole report. ``DAMC_COMMIT`` (e.g. ``b011f0d`` or ``b011f0d+dirty``), set by whoever
    sent the tree to the measuring machine, wins: that machine's copy may carry other git metadata (the first H100
    run's said ``faa5336+dirty`` for a tree that was ``b011f0d``). Otherwise pytest-benchmark's ``commit_info``."""
    pinned = os.environ.get(COMMIT_ENV, "").strip()
    if pinned:
        commit, _, flag = pinned.partition("+")
        return {"commit": commit, "dirty": flag == "dirty", "branch": None, "source": COMMIT_ENV}
    info = data.get("commit_info") or {}
    return {"commit": info.get("id"), "dirty": info.get("dirty"), "branch": info.get("branch"),
            "source": "git metadata of the measuring copy (pytest-benchmark commit_info)"}


def _amortize_ema(rows: list[dict[str, Any]], ema_every: int | None) -> None:
    """The DAMC iteration's s/epoch includes the EMA update, which runs once every ``ema_every`` iterations and is
    timed on its own (the timed rounds of the iteration row need not contain one)."""
    by = {r["phase"]: r for r in rows}
    it, ema = by.get("train_iteration"), by.get("ema_update")
    if not it or not ema or not it["epoch_s"] or not ema_every:
        return
    for m, v in it["epoch_s"].items():
        e = (ema["modes"].get(m) or {}).get("median_s")
        if v is not None and e is not None:
            it["epoch_s"][m] = v + ITERATIONS_PER_EPOCH * e / ema_every
    it["epoch_includes_ema_every"] = ema_every


def _variants(benches: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    fast = {r["phase"]: (r["modes"].get(MODES[1]) or {}) for r in rows}
    out = []
    for b in benches:
        e = b["extra_info"]
        m = _measurement(b)
        base = fast.get(e["phase"], {})
        out.append({"variant": e["variant"], "phase": e["phase"], "overrides": e.get("overrides"),
                    "question": e.get("question"), "plan": e.get("plan"), **m,
                    "fast_median_s": base.get("median_s"), "fast_gpu_s": base.get("gpu_s"),
                    # > 1: the variant is faster than the fast configuration on this phase
                    "speedup_vs_fast": _ratio(base.get("median_s"), m["median_s"])})
    return out


# ---------------------------------------------------------------------------------------------------------
# Rendering


def fmt_s(t: float | None) -> str:
    if t is None:
        return "—"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def fmt_x(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def _pair(a: str, b: str) -> str:
    return a if a == b == "—" else f"{a} / {b}"


def _paper_cell(row: Mapping[str, Any]) -> str:
    p = row["paper_s"]
    if p is None:
        return "—"
    if row["group"] == "train":
        return f"{fmt_s(p)} ({p * ITERATIONS_PER_EPOCH / 60:.1f} min/epoch)"
    return fmt_s(p)


def _epoch_cell(row: Mapping[str, Any], epoch: Mapping[str, float | None], ref_m: str, fast_m: str,
                paper_sizes: bool) -> str:
    if row["group"] != "train":
        return "—"
    if not paper_sizes:
        return "n/a"
    return _pair(fmt_s(epoch.get(ref_m)), fmt_s(epoch.get(fast_m)))


def _median(v: Mapping[str, Any] | None) -> float | None:
    return v["median_s"] if v else None


def _setup(v: Mapping[str, Any] | None) -> float | None:
    return (v.get("build_s") or 0.0) + (v.get("warmup_s") or 0.0) if v else None


def _tflops_cell(row: Mapping[str, Any], mode: str) -> str:
    tf, frac = (row["tflops"] or {}).get(mode), (row["fraction_of_matmul"] or {}).get(mode)
    if tf is None:
        return "—"
    return f"{tf:.3g}" + (f" ({100 * frac:.1f}%)" if frac is not None else "")


def render(result: Mapping[str, Any]) -> str:
    """The Markdown table with its header lines and footnotes."""
    env, size, mm = result["env"], result.get("size") or {}, result.get("matmul")
    ref_m, fast_m = MODES[0], MODES[1]
    paper_sizes = size.get("sizes") == "paper"
    commit = result["git"].get("commit") or "unknown"
    dirty = "+dirty" if result["git"].get("dirty") else ""
    lines = [f"### DAMC benchmark: {env['device_name']}", ""]
    if result["kind"] != "measured":
        lines += [f"**SMOKE RUN ({'; '.join(result['smoke_reasons'])}): checks that everything runs. Not a "
                  "performance result; not comparable with the paper.**", ""]
    versions = [f"torch {env.get('torch')}", f"triton {env.get('triton') or '—'}", f"CUDA {env.get('cuda') or '—'}",
                f"cuDNN {env.get('cudnn') or '—'}", f"Python {env.get('python')}"]
    source = result["git"].get("source")
    lines.append(f"Measured {result.get('datetime') or '?'} at commit `{commit[:12]}{dirty}`"
                 + (f" (from {source})" if source else "") + "; " + ", ".join(versions)
                 + (f"; {env.get('cpu_threads')} CPU thread(s)" if env.get("device_type") != "cuda" else "") + ".")
    if size:
        lines.append(f"Sizes: {size.get('sizes')} ({size.get('arch')}, nz {size.get('nz')}, ngf {size.get('ngf')}; "
                     f"training batch {size.get('train_batch')}, sampling batch {size.get('sample_batch')}; "
                     f"LEBM posterior {size.get('lebm_posterior_steps')} steps).")
    for m in MODES:
        c = result["configurations"][m]
        note = c.get("note") or ""
        lines.append(f"`{m}`: {'**' + note + '**' if c.get('implemented') is False else note}.")
    mm_label = "matmul"
    if mm:
        mm_label = f"{mm['dtype']} matmul"
        lines.append(f"Dense {mm_label} rate measured in this run: {mm['tflops']:.3g} TFLOP/s ({mm['n']}³).")
    lines.append("")
    head = ["phase", "paper (A6000)", ref_m, fast_m, f"GPU time {ref_m} / {fast_m}", f"{fast_m} vs {ref_m}",
            f"{fast_m} vs paper",
            f"s/epoch {ref_m} / {fast_m}", f"peak mem {ref_m} / {fast_m}", f"set-up {ref_m} / {fast_m}",
            f"TFLOP/s {ref_m} / {fast_m} (% of {mm_label})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        ref, fast = row["modes"].get(ref_m), row["modes"].get(fast_m)
        vs_paper = fmt_x(row["fast_vs_paper"]) if row["paper_s"] is not None else "—"
        if row["paper_s"] is not None and not paper_sizes:
            vs_paper = "n/a"
        cells = [
            row["label"],
            _paper_cell(row),
            fmt_s(_median(ref)),
            fmt_s(_median(fast)),
            _pair(fmt_s(ref and ref.get("gpu_s")), fmt_s(fast and fast.get("gpu_s"))),
            fmt_x(row["fast_vs_reference"]),
            vs_paper,
            _epoch_cell(row, row["epoch_s"] or {}, ref_m, fast_m, paper_sizes),
            _pair(fmt_bytes(ref and ref.get("peak_mem_bytes")), fmt_bytes(fast and fast.get("peak_mem_bytes"))),
            _pair(fmt_s(_setup(ref)), fmt_s(_setup(fast))),
            _pair(_tflops_cell(row, ref_m), _tflops_cell(row, fast_m)) if row["tflops"] else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rounds = sorted({v["rounds"] for r in result["rows"] for v in r["modes"].values() if v})
    warm = sorted({v["warmup_calls"] for r in result["rows"] for v in r["modes"].values() if v and
                   v.get("warmup_calls") is not None})
    lines += [
        "",
        f"Times are medians over {'/'.join(map(str, rounds))} timed rounds after "
        f"{'/'.join(map(str, warm)) or '?'} warm-up call(s); every timed call ends with a device synchronize. "
        f"`{fast_m} vs {ref_m}` = {ref_m} time / {fast_m} time (> 1× is faster); `{fast_m} vs paper` = paper "
        f"figure / {fast_m} time. s/epoch = {result['iterations_per_epoch']} × the phase's time (CIFAR-10 at "
        "batch 128). Peak memory: `torch.cuda.max_memory_allocated` over warm-up and timed rounds, weights "
        "and optimizer state included. Set-up: building the phase plus the warm-up calls (compilation, graph "
        "capture, autotuning). TFLOP/s: the posterior chain's FLOPs counted from the architecture "
        "(G + E forward and input gradient, bench/flops.py) / its median time. Sampling rows call the engine's "
        "sampling functions (`damc_prior_images`, `lebm_prior_latents`, `reconstruct`); the fast "
        "configuration speeds them up only as far as those functions use it.",
    ]
    ema_every = next((r.get("epoch_includes_ema_every") for r in result["rows"] if r.get("epoch_includes_ema_every")),
                     None)
    lines += ["", "GPU time: CUDA events around each timed call on the current stream (median of the timed rounds); "
              "wall time minus the host's launch latency before the first kernel and the final synchronize."
              + (f" The DAMC iteration's s/epoch adds 1/{ema_every} of the EMA row (one EMA update every "
                 f"{ema_every} iterations)." if ema_every else "")]
    variants = result.get("variants") or []
    if variants:
        lines += ["", f"Variants of `{fast_m}` (the choices issue 14 leaves to this measurement; > 1× = the variant is "
                  "faster on that phase):", "",
                  "| variant | overrides | phase | time | GPU time | fast | variant vs fast | what it decides |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in variants:
            lines.append(f"| {v['variant']} | `{' '.join(v.get('overrides') or [])}` | {v['phase']} | "
                         f"{fmt_s(v['median_s'])} | {fmt_s(v.get('gpu_s'))} | {fmt_s(v.get('fast_median_s'))} | "
                         f"{fmt_x(v.get('speedup_vs_fast'))} | {v.get('question') or ''} |")
    others = result.get("other_benchmarks") or []
    if others:
        lines += ["", "Other benchmarks in this run:", "", "| benchmark | median | rounds |", "|---|---|---|"]
        lines += [f"| `{o['name']}` | {fmt_s(o['median_s'])} | {o['rounds']} |" for o in others]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Writing


def result_paths(result: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    stem = result["env"]["device_slug"] + ("" if result["kind"] == "measured" else ".smoke")
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_result(result: Mapping[str, Any], table: str, out_dir: Path, *, allow_smoke: bool) -> tuple[Path, Path]:
    """Write ``<slug>.json`` and ``<slug>.md``; smoke runs only with ``allow_smoke`` and labelled ``.smoke``."""
    if result["kind"] != "measured" and not allow_smoke:
        raise ReportError(f"not writing a result: this is a smoke run ({'; '.join(result['smoke_reasons'])}); "
                          "pass --allow-smoke to write a git-ignored <slug>.smoke.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = result_paths(result, out_dir)
    json_path.write_text(json.dumps({**result, "table_markdown": table}, indent=1, ensure_ascii=False) + "\n")
    md_path.write_text(table)
    return json_path, md_path


# ---------------------------------------------------------------------------------------------------------
# CLI


def read_run(path: Path) -> dict[str, Any]:
    """A pytest-benchmark JSON document, or a ``.jsonl`` stream of its benchmark records (``DAMC_BENCH_STREAM``,
    bench/conftest.py: what a run killed by a time limit had finished), wrapped as one."""
    if path.suffix == ".jsonl":
        benches = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        when = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat()
        return {"benchmarks": benches, "datetime": when, "commit_info": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def merge(data: dict[str, Any], paths: Sequence[Path]) -> dict[str, Any]:
    """``data`` with the benchmarks of each JSON / JSONL in ``paths`` appended (files that do not exist are skipped:
    a stage that timed out before its first benchmark writes none)."""
    benches = list(data.get("benchmarks", []))
    for path in paths:
        if not path.is_file():
            print(f"bench.report: {path} not found; its benchmarks are not in this report", file=sys.stderr)
            continue
        benches += read_run(path).get("benchmarks", [])
    return {**data, "benchmarks": benches}


def run_benchmarks(json_out: Path, pytest_args: Sequence[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "bench"), "--benchmark-only", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={json_out}", *pytest_args]
    print("+ " + " ".join(cmd), file=sys.stderr)
    # pytest's own output goes to stderr so that stdout carries the table alone (``> table.md`` works).
    return subprocess.call(cmd, cwd=REPO, stdout=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-json", type=Path,
                    help="assemble from an existing pytest-benchmark JSON (or a DAMC_BENCH_STREAM .jsonl), run nothing")
    ap.add_argument("--merge-json", type=Path, action="append", default=[],
                    help="add the benchmarks of another pytest-benchmark JSON of the same run (e.g. the variants, "
                         "run as a separate stage); a missing file is skipped with a note")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default bench/results)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--allow-smoke", "--allow-cpu", action="store_true", dest="allow_smoke",
                    help="also write CPU / smoke-size / partial runs, as a git-ignored <slug>.smoke.json")
    args = ap.parse_args(argv)

    try:
        if args.from_json is not None:
            data = read_run(args.from_json)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bench.json"
                rc = run_benchmarks(path, pytest_args)
                if rc != 0:
                    raise ReportError(f"pytest exited with {rc}; nothing written (a failed run is not a result)")
                data = json.loads(path.read_text())
        data = merge(data, args.merge_json)
        result = assemble(data)
        table = render(result)
        print(table)
        if args.no_write:
            return 0
        if result["kind"] != "measured" and not args.allow_smoke:
            # Printing a smoke run is the point of running on CPU; refusing to store it is not an error.
            print(f"bench.report: smoke run ({'; '.join(result['smoke_reasons'])}): printed, not written "
                  "(--allow-smoke writes a git-ignored <slug>.smoke.json)", file=sys.stderr)
            return 0
        json_path, md_path = write_result(result, table, args.out, allow_smoke=args.allow_smoke)
        print(f"bench.report: wrote {json_path} and {md_path}", file=sys.stderr)
    except ReportError as exc:
        print(f"bench.report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
