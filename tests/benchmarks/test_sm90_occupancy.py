"""scripts/triton_sm90_check.ctas_per_sm, the occupancy column of the static sm_90 check: thread blocks per
SM by registers (per-warp allocation in units of 256), warps and shared memory, against values worked out by
hand from the compute capability 9.0 limits (65536 registers, 64 warps, 32 blocks, 228 KB shared per SM)."""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("triton_sm90_check",
                                               os.path.join(ROOT, "scripts", "triton_sm90_check.py"))
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


@pytest.mark.parametrize("registers,warps,shared,expected", [
    (72, 16, 0, 1),      # RMSNorm backward at its default: 72·32 = 2304 per warp -> 28 warps -> one 16-warp block
    (64, 16, 0, 2),      # 2048 per warp -> 32 warps -> two
    (32, 16, 0, 4),      # registers allow 8, warps (64 per SM) allow 4
    (127, 8, 0, 2),      # 4064 -> 4096 per warp -> 16 warps -> two 8-warp blocks
    (255, 4, 0, 2),      # 8160 -> 8192 per warp -> 8 warps -> two 4-warp blocks
    (16, 1, 0, 32),      # the 32-block limit
    (32, 4, 100 * 1024, 2),  # shared: 233472 // (102400 + 1024) = 2
    (32, 4, 227 * 1024, 1),
])  # fmt: skip
def test_ctas_per_sm(registers, warps, shared, expected):
    assert check.ctas_per_sm(registers, warps, shared) == expected
