#!/usr/bin/env bash
# GPU check for the Triton kernels and the CUDA anyres kernel (issue #4): build the extension (csrc/**/*.cu too),
# run the `gpu`-marked kernel tests (bf16, torch.compile, CUDA dispatch, anyres kernel vs C++) and all of tests/kernels
# on CUDA, the kernel benchmarks, and print a short table last. Everything lands under RESULTS_DIR. Budget: < 8 min.
#
#   scripts/gpu_check.sh RESULTS_DIR
set -uo pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,6p' "$0"; exit 2
fi
RESULTS=$1
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
unset TRITON_INTERPRET
START=$(date +%s)
status=0
step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to RESULTS/NAME.log, record rc
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >>"$RESULTS/steps.jsonl"
  [[ $rc -ne 0 ]] && status=1
  echo "[$name] rc=$rc ($(( $(date +%s) - t0 ))s) -> $RESULTS/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} >"$RESULTS/env.txt" 2>&1
: >"$RESULTS/steps.jsonl"

# a CUDA torch turns setup.py's CUDA hook on: csrc/**/*.cu (the anyres packing kernel) join _C
step build_ext 180 "$PY" setup.py build_ext --inplace
step cuda_ext 30 "$PY" -c "from xgenmm_fast import _C; assert hasattr(_C, 'anyres_preprocess_cuda'), 'built without CUDA'"
step pytest_gpu 150 "$PY" -m pytest -m gpu tests/kernels -q -rs -p no:cacheprovider \
  --junitxml="$RESULTS/pytest_gpu.xml"
step pytest_kernels 120 "$PY" -m pytest tests/kernels -q -rs -p no:cacheprovider \
  --junitxml="$RESULTS/pytest_kernels.xml"
step bench 180 "$PY" benchmarks/bench_kernels.py --out "$RESULTS/bench_kernels.json" --rep-ms 100

echo "== total $(( $(date +%s) - START ))s; steps:"; cat "$RESULTS/steps.jsonl"
echo "== pytest (gpu-marked):"; tail -n 3 "$RESULTS/pytest_gpu.log"
echo "== pytest (all kernels on CUDA):"; tail -n 3 "$RESULTS/pytest_kernels.log"
echo "== benchmark table:"; tail -n 14 "$RESULTS/bench.log"
exit $status
