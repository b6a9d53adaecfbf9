#!/usr/bin/env bash
# The benchmark suite on a GPU machine (issue #5): build the extension (CUDA kernels included), then
# bench_kernels, bench_preprocess (Pillow, C++ and CUDA paths), bench_perceiver, bench_sft_step, bench_dpo
# and bench_generate (released size), each under its own time limit and all together under
# GPU_BENCH_BUDGET_S (default 515 s, so the run stays under 9 min on an H100). bench_planner is CPU-only:
# scripts/cpu_bench.sh runs it.
# Results merge into RESULTS_DIR/<date>-<device>.json; benchmarks/report.py writes the Markdown summary next
# to it (and plots where matplotlib is installed); a short table is printed last. A failed, timed-out or
# unreached step makes the exit status 1; the other steps still run. Logs: RESULTS_DIR/<step>.log.
#
#   scripts/gpu_bench.sh RESULTS_DIR
set -uo pipefail
source "$(dirname "$0")/lib/steps.sh"
script_setup "$@"
unset TRITON_INTERPRET
BUDGET=${GPU_BENCH_BUDGET_S:-515}
START=$(date +%s)
STEP_DEADLINE=$(( START + BUDGET )) STEP_LOGS=$RESULTS STEP_RESERVE=20  # 20 s kept for report.py
source scripts/gpu_env.sh  # carried wheels (.whl, from scripts/gpu_wheels.sh): omegaconf, DeepSpeed, Liger
: >"$RESULTS/steps.jsonl"

{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  for m in triton transformers numpy PIL matplotlib flash_attn liger_kernel deepspeed; do
    "$PY" -c "import $m; print('$m', getattr($m, '__version__', 'present'))" 2>/dev/null || echo "$m: not installed"
  done
} >"$RESULTS/env.txt" 2>&1
missing=$(grep -o '^[a-z_A-Z]*: not installed' "$RESULTS/env.txt" | cut -d: -f1 | tr '\n' ' ')
[[ -n "$missing" ]] && echo "not installed (what needs them is skipped or reduced): $missing"
echo "  PIL: Pillow baselines of bench_preprocess; matplotlib: plots (run report.py elsewhere);" \
  "flash_attn: the library row of the attention kernels; deepspeed, liger_kernel: bench_sft_step's" \
  "ZeRO-2 and Liger variants (carry .whl from scripts/gpu_wheels.sh)"

OUT=$("$PY" benchmarks/_common.py path "$RESULTS") || { echo "cannot name the results file"; exit 1; }
echo "results -> $OUT"

# sizes: chosen so that the steps total about 8 minutes on an H100 (estimates, see benchmarks/README.md)
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# a CUDA torch adds csrc/**/*.cu (setup.py); gpu_session.sh builds once and sets XGENMM_SKIP_BUILD=1
[[ "${XGENMM_SKIP_BUILD:-0}" == "1" ]] || step build_ext 180 "$PY" setup.py build_ext --inplace
# gpu_session.sh has gpu_check.sh run the kernel benchmarks (bench_kernels, bench_perceiver) into the same file
# (GPU_BENCH_SKIP_KERNELS=1)
[[ "${GPU_BENCH_SKIP_KERNELS:-0}" == "1" ]] || step bench_kernels 110 "$PY" benchmarks/bench_kernels.py --out "$OUT" --rep-ms 100
step bench_preprocess 40 "$PY" benchmarks/bench_preprocess.py --out "$OUT"
# the whole perceiver resampler fwd+bwd vs the original algorithm (issue #4's >= 3x target), 40 tiles:
# estimated 20-30 s (import, Triton compile, 3 rows x 2 sides x 100 ms do_bench)
[[ "${GPU_BENCH_SKIP_KERNELS:-0}" == "1" ]] || step bench_perceiver 45 "$PY" benchmarks/bench_perceiver.py --size released \
  --device cuda --images 8 --rep-ms 100 --profile --out "$OUT"
step bench_sft_step 150 "$PY" benchmarks/bench_sft_step.py --size released --device cuda --samples 16 \
  --repeats 3 --warmup 1 --out "$OUT"
step bench_dpo 90 "$PY" benchmarks/bench_dpo.py --size released --device cuda --checkpointing --repeats 3 \
  --warmup 1 --out "$OUT"
step bench_generate 90 "$PY" benchmarks/bench_generate.py --size released --device cuda --repeats 3 --out "$OUT"

finish_report "$OUT"
