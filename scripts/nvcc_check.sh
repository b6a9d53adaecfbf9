#!/usr/bin/env bash
# CI compile check of the CUDA sources (no GPU needed): every csrc/**/*.cu is compiled for sm_90
# (H100 / H200) with plain nvcc, host-compiler warnings on and every warning an error. The .cu files
# include no torch headers, so nothing else is needed; setup.py compiles the same files into
# xgenmm_fast._C when torch is a CUDA build.
#
#   scripts/nvcc_check.sh            (NVCC=/path/to/nvcc to pick a compiler)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-}
if [[ -z "$NVCC" ]]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=$(command -v nvcc)
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    NVCC=/usr/local/cuda/bin/nvcc
  else
    echo "nvcc_check: nvcc not found (not on PATH, not /usr/local/cuda/bin/nvcc); install the CUDA toolkit" \
         "or set NVCC=/path/to/nvcc" >&2
    exit 1
  fi
fi

mapfile -t SOURCES < <(find csrc -name '*.cu' | sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "nvcc_check: no .cu files under csrc/ (nothing to check)"
  exit 0
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "nvcc_check: $("$NVCC" --version | tail -n 1)"
status=0
for src in "${SOURCES[@]}"; do
  cmd=("$NVCC" -arch=sm_90 -std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -I csrc
       --Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror --resource-usage
       -c "$src" -o "$OUT/$(basename "$src").o")
  echo "+ ${cmd[*]}"
  if "${cmd[@]}" >"$OUT/log" 2>&1; then
    grep -E "registers|spill" "$OUT/log" | sed 's/^/    /' || true
    echo "nvcc_check: ok   $src"
  else
    cat "$OUT/log" >&2
    echo "nvcc_check: FAILED $src" >&2
    status=1
  fi
done
exit $status
