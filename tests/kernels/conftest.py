"""Kernel tests run on CUDA when there is a device, else on the CPU under the Triton interpreter.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so it is set here, at conftest
import (before the test modules import xgenmm_fast.ops.triton.*). Tests marked `gpu` (bf16, torch.compile,
CUDA-only) are skipped — visibly — when no CUDA device exists; scripts/gpu_check.sh runs them.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the `gpu` marker and its skip without CUDA live in tests/conftest.py


@pytest.fixture
def seed():
    """A fresh seed per test (printed; shown on failure). XGENMM_TEST_SEED=n reproduces a run."""
    s = int(os.environ.get("XGENMM_TEST_SEED", random.SystemRandom().randrange(2 ** 31)))
    print(f"seed={s}")
    torch.manual_seed(s)
    return s


@pytest.fixture(autouse=True)
def _poisoned_output_buffers(monkeypatch):
    """Kernel outputs allocated without a zero fill (`_utils.unwritten`, `unwritten_like`) start as NaN in every kernel test, so
    an element a kernel fails to write shows up as NaN instead of as whatever the allocator left there."""
    from xgenmm_fast.ops.triton import _utils

    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_utils, "unwritten", nan_filled)
    monkeypatch.setattr(_utils, "unwritten_like", lambda t: torch.full_like(t, float("nan")))
