#!/usr/bin/env bash
# The CPU rows of the benchmark suite (issue #5): bench_preprocess (Pillow vs C++, 1 and 2 threads),
# bench_planner (665k LLaVA-like samples), and the model benchmarks at tiny size on the CPU
# (bench_perceiver, bench_sft_step, bench_dpo, bench_generate), the Triton ops' host time per call
# (bench_host_overhead: kernel launches stubbed out, so it needs no GPU), each under its own time limit and all
# together under CPU_BENCH_BUDGET_S (default 720 s; about 5 minutes on 2 cores). bench_kernels is not run:
# without a GPU the Triton kernels only run under the interpreter, whose timings mean nothing. Results merge into
# RESULTS_DIR/<date>-cpu-<cpu>.json, benchmarks/report.py writes the summary and plots next to it, and a
# short table is printed last. Step logs go to CPU_BENCH_LOGS (default: a new temporary folder, printed).
# CPU_BENCH_SMOKE=1 runs every script with --smoke instead (seconds: a check that the suite runs, not
# numbers to keep). A failed or timed-out step makes the exit status 1; the other steps still run.
#
#   scripts/cpu_bench.sh RESULTS_DIR          # e.g. benchmarks/results, on a quiet machine
set -uo pipefail
source "$(dirname "$0")/lib/steps.sh"
script_setup "$@"
BUDGET=${CPU_BENCH_BUDGET_S:-720}
START=$(date +%s)
LOGS=${CPU_BENCH_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/cpu_bench.XXXXXX")}  # not in RESULTS_DIR: often the repo's
mkdir -p "$LOGS"
: >"$LOGS/steps.jsonl"
STEP_DEADLINE=$(( START + BUDGET )) STEP_LOGS=$LOGS STEP_RESERVE=20  # 20 s kept for report.py

if ! "$PY" -c "from xgenmm_fast import _ext; raise SystemExit(0 if _ext.HAS_CPP_EXT else 1)" 2>/dev/null; then
  step build_ext 300 "$PY" setup.py build_ext --inplace
fi
OUT=$("$PY" benchmarks/_common.py path "$RESULTS") || { echo "cannot name the results file"; exit 1; }
echo "results -> $OUT, logs -> $LOGS (load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
echo "[bench_kernels] not run: no GPU, and Triton interpreter timings mean nothing"

if [[ "${CPU_BENCH_SMOKE:-0}" == "1" ]]; then
  echo "CPU_BENCH_SMOKE=1: smoke sizes, the numbers are not worth keeping"
  step bench_preprocess 60 "$PY" benchmarks/bench_preprocess.py --smoke --out "$OUT"
  step bench_planner 60 "$PY" benchmarks/bench_planner.py --smoke --out "$OUT"
  step bench_perceiver 60 "$PY" benchmarks/bench_perceiver.py --smoke --out "$OUT"
  step bench_sft_step 120 "$PY" benchmarks/bench_sft_step.py --smoke --out "$OUT"
  step bench_dpo 120 "$PY" benchmarks/bench_dpo.py --smoke --out "$OUT"
  step bench_generate 120 "$PY" benchmarks/bench_generate.py --smoke --out "$OUT"
  step bench_host_overhead 60 "$PY" benchmarks/bench_host_overhead.py --smoke --out "$OUT"
else
  step bench_preprocess 120 "$PY" benchmarks/bench_preprocess.py --out "$OUT"
  step bench_planner 240 "$PY" benchmarks/bench_planner.py --out "$OUT"
  # tiny (ms per call): one thread and 20 repeats, or other jobs' load swings it several-fold (~10 s)
  step bench_perceiver 90 "$PY" benchmarks/bench_perceiver.py --size tiny --device cpu --threads 1 --repeats 20 \
    --out "$OUT"
  step bench_sft_step 180 "$PY" benchmarks/bench_sft_step.py --size tiny --device cpu --samples 16 --repeats 3 \
    --warmup 1 --out "$OUT"
  step bench_dpo 180 "$PY" benchmarks/bench_dpo.py --size tiny --device cpu --repeats 3 --out "$OUT"
  step bench_generate 180 "$PY" benchmarks/bench_generate.py --size tiny --device cpu --batch-sizes 1 8 32 \
    --repeats 3 --out "$OUT"
  # the Triton ops' host time per call, eager path vs custom op, launches stubbed out (~20 s)
  step bench_host_overhead 90 "$PY" benchmarks/bench_host_overhead.py --out "$OUT"
fi

finish_report "$OUT"
