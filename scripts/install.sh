#!/usr/bin/env bash
# Install xgenmm-fast (and its C++ extension) into the current Python environment.
#
# torch is installed first, and only if missing: a bare `torch` requirement inside pip's isolated build
# environment would pull a multi-GB CUDA build, so the package is built with --no-build-isolation against
# the torch already here (on these CPU machines: the local torch 2.13.0 CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q "setuptools>=64" wheel pybind11 ninja numpy
"$PY" -m pip install -q --no-build-isolation -e ".[test]"
