#!/usr/bin/env bash
# Every GPU check and benchmark in one call (for a lent GPU machine with ~30 minutes of device time).
#   bash bench/gpu_all.sh            # results under $OUT (the device tool's output folder) or bench/results/gpu-run
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
status=0
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
stage env python - <<'PY'
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
stage gpu_tests python -m pytest -q -m gpu -p no:cacheprovider tests/
stage kernel_tests python -m pytest -q -p no:cacheprovider tests/kernels
stage bench_report python -m bench.report --out bench/results
cp bench/results/*.json bench/results/*.md "$OUT"/ 2>/dev/null || true
exit $status
