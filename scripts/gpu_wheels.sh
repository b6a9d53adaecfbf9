#!/usr/bin/env bash
# Prepare, on a CPU machine with PyPI access, the wheels the GPU machine lacks (SPEC §6: Python 3.12,
# torch/triton/transformers/pillow there, but no omegaconf, DeepSpeed or Liger, and no network).
# They land in .whl/ (git-ignored); a device run carries .whl and scripts/gpu_env.sh installs them there.
#
#   bash scripts/gpu_wheels.sh            # then carry [".whl"] in the device call
#
# Pure-Python wheels are taken as published; the sdist-only ones (deepspeed, antlr4) are built here
# without ops (DS_BUILD_OPS=0: DeepSpeed JIT-builds what it needs on the GPU). Each package is pinned
# once, so two versions never meet in .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
rm -rf "$DEST" && mkdir -p "$DEST"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
PY=${PYTHON:-python3}
# binary wheels for Python 3.12 (pydantic-core is the only compiled one; pydantic pins its exact version)
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$DEST" \
  omegaconf==2.3.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions hjson==3.1.0 liger-kernel==0.8.5 2>&1 | grep -v "is ignored" || true
# sdist-only packages, built into py3-none-any wheels here
SRC=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$SRC" deepspeed==0.19.8 antlr4-python3-runtime==4.9.3 \
  2>&1 | grep -v "is ignored" || true
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$SRC"/*.tar.gz \
  2>&1 | grep -v "is ignored" || true
rm -rf "$SRC"
n=$(ls "$DEST"/*.whl | wc -l)
[[ $n -ge 10 ]] || { echo "gpu_wheels: expected 10 wheels in $DEST, got $n" >&2; exit 1; }
ls "$DEST"
du -sh "$DEST"
