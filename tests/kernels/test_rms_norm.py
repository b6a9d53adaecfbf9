"""Triton RMSNorm vs norms.rms_norm_reference (fp64), forward and backward."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.norms import rms_norm_reference
from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton

from ._util import DEVICE, DTYPES, TOL, as64, check, leaf


@pytest.mark.parametrize("shape", [(1, 8), (3, 5, 96), (17, 200), (2, 1, 3072), (0, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference(shape, dtype, seed):
    x = leaf(torch.randn(shape) * 3, dtype)
    w = leaf(1 + 0.1 * torch.randn(shape[-1]), dtype)
    dy = torch.randn(shape).to(DEVICE, dtype)
    y = rms_norm_triton(x, w, 1e-5)
    y.backward(dy)
    x64, w64 = as64(x, w)
    y64 = rms_norm_reference(x64, w64, 1e-5)
    y64.backward(dy.double().cpu())
    assert y.dtype == dtype and y.shape == x.shape
    if x.numel() == 0:
        assert x.grad.shape == x.shape and torch.all(w.grad == 0)
        return
    check("rms_norm", [y, x.grad, w.grad], [y64, x64.grad, w64.grad], TOL[dtype])


def test_rms_norm_strided_input_and_fp32_weight(seed):
    """A non-contiguous row view and a weight of another dtype (promotion as in the reference)."""
    base = torch.randn(6, 2 * 40).to(DEVICE, torch.float16)
    x = base[:, :40].detach().requires_grad_()
    w = leaf(torch.randn(40), torch.float32)
    y = rms_norm_triton(x, w, 1e-6)
    ref = rms_norm_reference(x.detach(), w.detach(), 1e-6)
    assert y.dtype == ref.dtype == torch.float32
    check("rms_norm", [y], [ref], TOL[torch.float16])
