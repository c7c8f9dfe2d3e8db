#!/usr/bin/env bash
# Every GPU check and benchmark in one call (for a lent GPU machine with ~30 minutes of device time).
#   bash bench/gpu_all.sh            # results under $OUT (the device tool's output folder) or bench/results/gpu-run
#   bash bench/gpu_all.sh tests      # only stages 1-2; `bench` for 1 and 3 (split over two calls if one call's
#                                    # 10-minute limit is too short for all of it)
# 1. environment (GPU model, torch / triton / CUDA versions)
# 2. the GPU tests: CUDA-graph equivalence and fresh noise, no host syncs in the fast iteration, the
#    200-iteration reference-vs-fast loss curves, the Triton kernels on the real device
# 3. the benchmark suite at the paper's sizes, reference and fast side by side, and the report table
#    (bench/results/<gpu>.json / .md, copied to $OUT)
# Each stage runs even if an earlier one failed; the exit code is non-zero if any did.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
# The lent GPU image documents only `python3` (KINDS.md); use `python` where that is all there is.
PY=${PYTHON:-$(command -v python3 || command -v python)}
status=0
WHAT=${1:-all}
case $WHAT in all|tests|bench) ;; *) echo "usage: bash bench/gpu_all.sh [all|tests|bench] (got '$WHAT')" >&2; exit 2;; esac
stage() {  # stage NAME CMD...: run, tee the log, remember a failure
  local name=$1; shift
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}
stage env "$PY" - <<'PY'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for m in ("triton", "numpy", "yaml", "tqdm", "PIL", "pytest_benchmark", "sklearn", "scipy"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except ImportError:
        print(m, "MISSING")
PY
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if [ "$WHAT" != bench ]; then
  stage gpu_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/
  stage kernel_tests "$PY" -m pytest -q -p no:cacheprovider tests/kernels
fi
if [ "$WHAT" != tests ]; then
  stage bench_report "$PY" -m bench.report --out bench/results
  cp bench/results/*.json bench/results/*.md "$OUT"/ 2>/dev/null || true
fi
exit $status
