"""Triton SwiGLU vs activations.swiglu_reference (fp64), forward and backward."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.activations import swiglu_reference
from xgenmm_fast.ops.triton.swiglu import swiglu_triton

from ._util import DEVICE, DTYPES, TOL, as64, check, leaf


@pytest.mark.parametrize("shape", [(1, 2), (4, 7, 2 * 37), (13, 2 * 1030), (0, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_matches_reference(shape, dtype, seed):
    x = leaf(torch.randn(shape) * 2, dtype)
    y = swiglu_triton(x)
    dy = torch.randn(y.shape).to(DEVICE, dtype)
    y.backward(dy)
    (x64,) = as64(x)
    y64 = swiglu_reference(x64)
    y64.backward(dy.double().cpu())
    assert y.shape == (*shape[:-1], shape[-1] // 2) and y.dtype == dtype
    if x.numel() == 0:
        return
    check("swiglu", [y, x.grad], [y64, x64.grad], TOL[dtype])


def test_swiglu_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        swiglu_triton(torch.randn(2, 5, device=DEVICE))
