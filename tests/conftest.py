"""Set before any test imports xgenmm_fast: without a GPU, Triton kernels run under the interpreter
(read when kernels are defined, so it must precede the first import of xgenmm_fast.ops.triton). The
Triton backends are then registered but not preferred on the CPU: every other test keeps the defaults.

Tests marked `gpu` (bf16, torch.compile, CUDA kernels, the model on CUDA) are skipped — visibly — when
no CUDA device exists; scripts/gpu_check.sh runs them on a GPU machine.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (bf16, torch.compile, CUDA kernels); skipped without one")
    config.addinivalue_line("markers", "variant: an off-by-default kernel variant (a GPU sweep candidate); "
                                       "scripts/gpu_check.sh runs these after the default paths' tests")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run by scripts/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
