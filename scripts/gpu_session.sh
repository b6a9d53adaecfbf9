#!/usr/bin/env bash
# Everything a GPU lease is for, in one call: build once, then scripts/gpu_check.sh (kernel tests and
# benchmarks) and scripts/gpu_bench.sh (end-to-end benchmarks), sharing one deadline so the whole run
# stays under GPU_SESSION_BUDGET_S (default 540 s, inside one 600 s device call). Prepare on the CPU side
# first: `bash scripts/gpu_wheels.sh`, then call the device with carry [".whl"] and
#
#   bash scripts/gpu_session.sh "$OUT"
#
# The device tool brings back at most 8 files from $OUT, so the run works in a temporary folder and leaves
# in OUTDIR: the results JSON and Markdown (<date>-<device>.json/.md, kernel rows included), steps.txt, and
# logs.tar.gz (every log and junit XML), and the sweeps' JSON when gpu_check ran them (GPU_CHECK_SWEEP=1) or
# the kernel profile's (GPU_CHECK_PROFILE). Copy the results JSON into benchmarks/results/ here and run
# benchmarks/report.py --readme README.md. GPU_SESSION_PARTS=check (or bench) runs one of the two scripts
# only, check alone with the whole budget; with both, gpu_check gets at most GPU_SESSION_CHECK_S seconds
# (default 300) and gpu_bench the rest. One call is cheaper than two: each call rebuilds the extension.
set -uo pipefail
source "$(dirname "$0")/lib/steps.sh"
script_setup "$@"
OUTDIR=$RESULTS
WORK=$(mktemp -d)
mkdir -p "$WORK/check" "$WORK/bench"
START=$(date +%s)
BUDGET=${GPU_SESSION_BUDGET_S:-540}
PARTS=${GPU_SESSION_PARTS:-check,bench}
[[ "$PARTS" =~ ^(check|bench|check,bench)$ ]] || { echo "GPU_SESSION_PARTS: check, bench or check,bench; got $PARTS"; exit 2; }
echo "== build"
# A failed CUDA build must not waste the lease: fall back to the C++-only extension (the Triton kernels
# need none of it) and go on; gpu_check's cuda_ext step then fails and says so.
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout 240 "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1; then
  echo "CUDA build failed (tail below); building without CUDA and going on"
  tail -n 25 "$WORK/build.log"
  cp "$WORK/build.log" "$OUTDIR/build_cuda_failed.log"
  XGENMM_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout 120 "$PY" setup.py build_ext --inplace >"$WORK/build_cpu.log" 2>&1 \
    || { echo "CPU build failed too"; tail -n 20 "$WORK/build_cpu.log"; }
fi
echo "build done at $(( $(date +%s) - START ))s"
export XGENMM_SKIP_BUILD=1 GPU_BENCH_SKIP_KERNELS=1
# one results file for the kernel rows (written by gpu_check.sh) and the end-to-end rows (gpu_bench.sh)
export GPU_BENCH_OUT=$("$PY" benchmarks/_common.py path "$WORK/bench")
rc_check=0 rc_bench=0

# What comes back is what lies in OUTDIR when the call ends, also when the device tool stops it at its
# limit: collect after each part, not only at the end (each collect overwrites the previous one).
collect() {
  cp "$WORK"/bench/*.json "$WORK"/bench/*.md "$WORK"/check/sweep_attention_tiles.json \
    "$WORK"/check/sweep_rms_norm.json "$WORK"/check/profile_kernels.json "$OUTDIR"/ 2>/dev/null
  cat "$WORK"/check/steps.jsonl "$WORK"/bench/steps.jsonl >"$OUTDIR/steps.txt" 2>/dev/null
  tar czf "$OUTDIR/logs.tar.gz" -C "$WORK" .
}
left=$(( BUDGET - ($(date +%s) - START) ))
# gpu_check: at most GPU_SESSION_CHECK_S (default 300; its steps took ~200 s on an H200 without the sweep);
# gpu_bench gets whatever is left when it is done
share=$(( left < ${GPU_SESSION_CHECK_S:-300} ? left : ${GPU_SESSION_CHECK_S:-300} ))
[[ "$PARTS" == "check" ]] && share=$left
if [[ "$PARTS" == *check* ]]; then
  echo "== gpu_check ($share s)"
  GPU_CHECK_BUDGET_S=$share bash scripts/gpu_check.sh "$WORK/check"; rc_check=$?
  collect
fi
left=$(( BUDGET - ($(date +%s) - START) ))
if [[ "$PARTS" == *bench* ]]; then
  echo "== gpu_bench ($left s)"
  GPU_BENCH_BUDGET_S=$left bash scripts/gpu_bench.sh "$WORK/bench"; rc_bench=$?
fi
collect
# last, so that it is in the tail the device tool returns: did every GPU test run and pass (issue #4)?
[[ "$PARTS" == *check* ]] && { echo "== GPU tests:"; timeout 30 "$PY" scripts/gpu_run_summary.py "$WORK/check"; }
echo "== gpu_session: check rc=$rc_check, bench rc=$rc_bench, total $(( $(date +%s) - START ))s; in $OUTDIR:"
ls "$OUTDIR"
exit $(( rc_check != 0 || rc_bench != 0 ))
