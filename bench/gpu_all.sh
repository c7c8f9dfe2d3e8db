#!/usr/bin/env bash
# Every GPU check and the benchmark at the paper's sizes in ONE call of at most 8 minutes (issue 14).
#
#   DAMC_COMMIT=<commit>[+dirty] bash bench/gpu_all.sh [all|tests|bench|decide|tensorrt]
#
# Set DAMC_COMMIT where the tree is checked out, e.g. `git rev-parse --short HEAD` plus "+dirty" if
# `git status --porcelain` is not empty, and pass the literal value: the measuring machine gets a copy of the
# working tree whose git metadata may name another commit (the first H100 run's did). The report records it.
#
# Stages run in order, each under its own time limit (`timeout`); a stage that runs out is killed and reported,
# and the later stages still run. The limits keep the whole call under DAMC_GPU_BUDGET_S (default 450 s), leaving
# time for the benchmark and the report whatever the tests do:
#   env             environment: GPU model, torch / triton / CUDA versions, nvidia-smi
#   gpu_tests       pytest -m gpu tests/: CUDA graphs, the whole-iteration graph, side streams, exact resume and
#                   rollback on the fast path, evaluation draws on their own generator, no host syncs, the
#                   200-iteration reference-vs-fast loss curves                                       (≤ 150 s)
#   kernel_tests    tests/kernels on the device (compiled Triton, not the interpreter)               (≤ 60 s)
#   bench_main      bench/bench_phases.py + bench_device.py: every phase, reference and fast side by side, the
#                   bf16 matmul rate; wall and CUDA-event GPU time -> $OUT/bench_main.json (+ .jsonl)  (≤ 210 s)
#   profile         python -m bench.profile: one call of the posterior chain, the Q updates and the prior
#                   sampling under torch.profiler, kernels by GPU time -> $OUT/profile_*.txt          (≤ 90 s)
#   bench_variants  bench/bench_variants.py: the fast plan's open choices (U-Net fp32/bf16, hoisted sampler,
#                   per-loop vs one graph, side streams, G's first/last layer, NCHW, cudnn limits), as long as
#                   the budget allows; max-autotune only if DAMC_BENCH_MAX_AUTOTUNE=1 -> $OUT/bench_variants.jsonl
#   ddp             python -m bench.ddp: iterations/s and efficiency at 1, 2, 4, 8 GPUs (only with >= 2 GPUs)
#   report          python -m bench.report: bench/results/<gpu>.json and .md (copied to $OUT); a run cut short
#                   is written as <gpu>.smoke.json / .md and says what is missing                    (≤ 25 s)
# With `all`, the tests come first and the benchmark is guaranteed its time; the profile and the variants get what
# is left (often nothing after slow tests): `bash bench/gpu_all.sh bench` in a second call gives them the budget.
# `decide` (at most the budget; ≈ 5 min estimated from its stage limits, not yet run on a GPU) is for the switches written without a GPU (perf.sampler_kernel, combo_kernels, merge_unet;
# `auto` leaves them off until measured): their GPU tests, the fast rows of the phases they change, their variants
# (DAMC_DECIDE_VARIANTS, a pytest -k expression; the Q updates and the sampling first, the whole iteration after
# the profile) and the profile; the report is a .smoke file beside the full one. What the launch cuts should be
# (counted offline by python -m bench.codegen): bench/results/codegen-torch-2.11.md.
# `tensorrt` (at most the budget; not yet run: no lent GPU has had the extra) needs the tensorrt extra installed
# first, which this script cannot do (the lent machines reach no package index; README "TensorRT"):
#   pip install "torch==2.13.0" -e ".[dev,tensorrt]" && bash bench/gpu_all.sh tensorrt
# It runs the -m tensorrt tests (converter support, ONNX parser, engine vs the engine) and bench/bench_export.py,
# whose tensorrt-per-step-bf16 row sits beside the engine, pt2 and AOTInductor rows -> $OUT/bench_export.json.
# The bench_kernels / bench_loaders rows of the first H100 run are not repeated (time); run them with
# `pytest bench/bench_kernels.py bench/bench_loaders.py --benchmark-only` when there is time.
# The exit code is non-zero if any stage failed or timed out.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
# The lent GPU image documents only `python3`; use `python` where that is all there is.
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${DAMC_GPU_BUDGET_S:-450}
status=0
WHAT=${1:-all}
case $WHAT in all|tests|bench|decide|tensorrt) ;;
  *) echo "usage: bash bench/gpu_all.sh [all|tests|bench|decide|tensorrt] (got '$WHAT')" >&2; exit 2;; esac
if [ -z "${DAMC_COMMIT:-}" ]; then
  DAMC_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)+unpinned"
  echo "warning: DAMC_COMMIT not set; recording '$DAMC_COMMIT' (this copy's git metadata, maybe not the tree sent)" >&2
fi
export DAMC_COMMIT

limit() {  # limit CAP RESERVE: seconds for a stage, at most CAP, leaving RESERVE for the stages after it
  local left=$((BUDGET - SECONDS - $2))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
stage() {  # stage NAME SECONDS CMD...: run under a time limit, log to $OUT/NAME.log, remember a failure
  local name=$1 secs=$2; shift 2
  if [ "$secs" -lt 10 ]; then
    echo "=== $name: skipped (${secs} s left in the ${BUDGET} s budget; run it in another call)" | tee "$OUT/$name.log"
    return
  fi
  echo "=== $name (limit ${secs} s): $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$secs" "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  local why=""
  [ $rc -eq 124 ] && why=" (TIMED OUT)"
  echo "=== $name: rc=$rc$why in $((SECONDS - t0)) s (total $SECONDS s)" | tee -a "$OUT/$name.log"
  tail -n 30 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}

stage env 30 "$PY" - <<'PY'
import importlib, os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("commit", os.environ.get("DAMC_COMMIT"))
for m in ("triton", "numpy", "yaml", "tqdm", "PIL", "pytest_benchmark", "sklearn", "scipy"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except ImportError:
        print(m, "MISSING")
PY
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
if [ "$WHAT" = tensorrt ]; then
  stage trt_import 60 "$PY" -c "from engine.export import to_tensorrt as t; w = t.unavailable(); print(w or 'torch_tensorrt imports'); raise SystemExit(1 if w else 0)"
  stage trt_tests "$(limit 240 150)" "${PYTEST[@]}" -m tensorrt -rs tests/export/test_tensorrt.py
  stage bench_export "$(limit 300 0)" "${PYTEST[@]}" bench/bench_export.py --benchmark-only -rs \
    "--benchmark-json=$OUT/bench_export.json"
  echo "=== gpu_all: done in $SECONDS s, status $status"
  exit $status
fi
if [ "$WHAT" = decide ]; then
  DECIDE=${DAMC_DECIDE_VARIANTS:-"sampler_kernel or combo_kernels or merge_unet"}
  # only what the candidates touch (all of tests/kernels takes > 60 s on the device)
  stage kernel_tests "$(limit 120 300)" "${PYTEST[@]}" tests/kernels/test_squash_block.py \
    tests/kernels/test_engine_parity.py tests/runtime/test_merged_unet.py \
    "tests/runtime/test_fast_gpu.py::test_unmeasured_switches_in_graphs_match_the_default_fast_path"
  rm -f "$OUT"/bench_main.json* "$OUT"/bench_variants.json*
  DAMC_BENCH_STREAM="$OUT/bench_main.jsonl" stage bench_main "$(limit 120 180)" "${PYTEST[@]}" bench/bench_phases.py \
    --benchmark-only -k "fast and (sample_damc_prior or damc_draw or amortizer_updates or train_iteration)" \
    "--benchmark-json=$OUT/bench_main.json"
  # the two missed targets' phases first; the whole iteration with what time is left (same stream, appended)
  DAMC_BENCH_STREAM="$OUT/bench_variants.jsonl" stage bench_variants "$(limit 120 90)" "${PYTEST[@]}" \
    bench/bench_variants.py --benchmark-only -k "($DECIDE) and not train_iteration"
  stage profile "$(limit 60 25)" "$PY" -m bench.profile --out "$OUT" --phases sample_damc_prior,amortizer_updates
  DAMC_BENCH_STREAM="$OUT/bench_variants.jsonl" stage bench_variants_iteration "$(limit 90 25)" "${PYTEST[@]}" \
    bench/bench_variants.py --benchmark-only -k "($DECIDE) and train_iteration"
  main="$OUT/bench_main.json"
  [ -s "$main" ] || main="$OUT/bench_main.jsonl"  # the stream, when the stage was cut short
  stage report 25 "$PY" -m bench.report --from-json "$main" --merge-json "$OUT/bench_variants.jsonl" \
    --out "$OUT" --allow-smoke
  echo "=== gpu_all: done in $SECONDS s, status $status"
  exit $status
fi
if [ "$WHAT" != bench ]; then
  reserve=0
  [ "$WHAT" = all ] && reserve=240  # bench_main + report must still fit
  stage gpu_tests "$(limit 150 $((reserve + 60)))" "${PYTEST[@]}" -m gpu --durations=15 tests/
  stage kernel_tests "$(limit 60 "$reserve")" "${PYTEST[@]}" tests/kernels
fi
if [ "$WHAT" != tests ]; then
  # Each finished benchmark is also streamed to a .jsonl (bench/conftest.py): a stage killed by its time limit
  # keeps what it measured (pytest-benchmark writes its JSON only at the end).
  rm -f "$OUT"/bench_main.json* "$OUT"/bench_variants.json*
  DAMC_BENCH_STREAM="$OUT/bench_main.jsonl" stage bench_main "$(limit 210 30)" "${PYTEST[@]}" bench/bench_phases.py \
    bench/bench_device.py --benchmark-only "--benchmark-json=$OUT/bench_main.json"
  # CoopVAEBM's iteration and its EBM chain (900 chains), Dual-MCMC's iteration and its two chains (batch 100), DRL's
  # iteration, one level's chain and the T-level sampler, reference vs fast, at the authors' CIFAR-10 sizes.
  DAMC_BENCH_STREAM="$OUT/bench_learners.jsonl" stage bench_learners "$(limit 180 30)" "${PYTEST[@]}" \
    bench/bench_coopvae.py bench/bench_dualmcmc.py bench/bench_drl.py --benchmark-only \
    "--benchmark-json=$OUT/bench_learners.json"
  # One call of the posterior chain, the Q updates and the prior sampling under torch.profiler (issue 14 item 4).
  stage profile "$(limit 90 30)" "$PY" -m bench.profile --out "$OUT"
  # Multi-GPU scaling (issue 16) only where there are >= 2 GPUs (the lent machines have one).
  ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "${ngpu:-0}" -ge 2 ]; then
    stage ddp "$(limit 240 60)" "$PY" -m bench.ddp --out "$OUT/ddp.json"
  else
    echo "=== ddp: skipped (${ngpu:-0} GPU here; python -m bench.ddp needs >= 2)" | tee "$OUT/ddp.log"
  fi
  select="not max_autotune"
  [ "${DAMC_BENCH_MAX_AUTOTUNE:-0}" = 1 ] && select="variant"
  DAMC_BENCH_STREAM="$OUT/bench_variants.jsonl" stage bench_variants "$(limit 400 30)" "${PYTEST[@]}" \
    bench/bench_variants.py --benchmark-only -k "$select"
  main="$OUT/bench_main.json"
  [ -s "$main" ] || main="$OUT/bench_main.jsonl"  # the stream, when the stage was cut short
  if [ -s "$main" ]; then
    stage report 25 "$PY" -m bench.report --from-json "$main" --merge-json "$OUT/bench_variants.jsonl" \
      --out bench/results --allow-smoke
    cp bench/results/*.json bench/results/*.md "$OUT"/ 2>/dev/null || true
  else
    echo "=== report: no benchmark finished in bench_main; nothing to report" | tee "$OUT/report.log"
    status=1
  fi
fi
echo "=== gpu_all: done in $SECONDS s, status $status"
exit $status
