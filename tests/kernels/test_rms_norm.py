"""Triton RMSNorm vs norms.rms_norm_reference (fp64), forward and backward."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.norms import rms_norm_reference
from xgenmm_fast.ops.triton.rms_norm import (
    _bwd_plan,
    rms_norm_bwd,
    rms_norm_fwd,
    rms_norm_triton,
)

from ._util import DEVICE, DTYPES, TOL, VARIANT, VARIANT_DTYPES, as64, check, leaf


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


def _grads_vs_reference(x, w, dy, eps=1e-5):
    """(dx, dweight) from the Triton op and from the fp64 reference, for the same rounded inputs."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    rms_norm_triton(x, w, eps).backward(dy)
    x64, w64 = as64(x, w)
    rms_norm_reference(x64, w64, eps).backward(dy.double().cpu())
    return x.grad, w.grad, x64.grad, w64.grad


# the backward: ragged row counts per program, a single row, a single column, N not a power of two, and
# enough rows for several programs (dweight partials summed across them)
@pytest.mark.parametrize("shape", [(37, 200), (130, 3072), (1, 200), (50, 1), (300, 40), (3, 100, 72)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_backward_shapes(shape, dtype, seed):
    x = torch.randn(shape).to(DEVICE, dtype) * 2
    w = (1 + 0.1 * torch.randn(shape[-1])).to(DEVICE, dtype)
    dy = torch.randn(shape).to(DEVICE, dtype)
    eps = 1e-5
    if shape[-1] == 1:
        # N = 1 is ill-conditioned for an fp32 kernel vs an fp64 reference, in both gradients: dx =
        # rstd·g·eps/(x² + eps) is all cancellation for a small eps, and dweight is one sum of ±terms.
        # A large eps and same-sign terms keep it well-conditioned (the kernels' paths are the same).
        eps, x, dy = 1.0, x.abs(), dy.abs()
    dx, dw, dx64, dw64 = _grads_vs_reference(x, w, dy, eps)
    assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == w.shape
    check("rms_norm dx", [dx], [dx64], TOL[dtype])
    check("rms_norm dweight", [dw], [dw64], TOL[dtype])


def test_backward_plan_covers_rows_with_several_programs():
    """The (300, 40) case above runs several programs (partials summed across them); every plan covers
    all rows with no program left without rows."""
    dev = torch.device(DEVICE)
    assert _bwd_plan(300, dev)[0] > 1
    for rows in [1, 2, 37, 130, 300, 16384, 100003]:
        n_prog, rpp = _bwd_plan(rows, dev)
        assert n_prog >= 1 and (n_prog - 1) * rpp < rows <= n_prog * rpp, (rows, n_prog, rpp)


def test_rms_norm_backward_strided_inputs_and_fp32_weight(seed):
    """rms_norm_bwd on row views with a row stride ≠ N (x and dy), fp16 x with an fp32 weight."""
    N = 70
    x = torch.randn(45, 2 * N).to(DEVICE, torch.float16)[:, :N]
    dy = torch.randn(45, 3 * N).to(DEVICE, torch.float32)[:, N:2 * N]
    w = (1 + 0.1 * torch.randn(N)).to(DEVICE, torch.float32)
    assert x.stride(0) != N and dy.stride(0) != N
    _, rstd = rms_norm_fwd(x, w, 1e-6)
    dx, dw = rms_norm_bwd(dy, x, w, rstd)
    assert dx.dtype == torch.float16 and dw.dtype == torch.float32
    x64, w64 = as64(x.detach().requires_grad_(), w.detach().requires_grad_())
    rms_norm_reference(x64, w64, 1e-6).backward(dy.double().cpu())
    check("rms_norm dx", [dx], [x64.grad], TOL[torch.float16])
    check("rms_norm dweight", [dw], [w64.grad], TOL[torch.float16])


@pytest.mark.parametrize("rows_per_step,prefetch,max_registers", [(2, False, None), (4, False, None), (1, True, None),
                                                                  (1, False, 64), (1, True, 64)])
@pytest.mark.parametrize("shape", [(37, 200), (1, 200), (300, 40), (3, 100, 72)])
@pytest.mark.parametrize("dtype", VARIANT_DTYPES)
@VARIANT
def test_rms_norm_backward_rows_per_step(shape, rows_per_step, prefetch, max_registers, dtype, monkeypatch, seed):
    """The backward's several-rows-per-step, prefetching and register-capped variants (BWD_TUNING, for the GPU
    sweep; the cap only matters compiled, on a GPU): the same gradients; row ranges per program that are not
    multiples of the step, a single row."""
    from xgenmm_fast.ops.triton import rms_norm as mod
    monkeypatch.setitem(mod.BWD_TUNING, "rows_per_step", rows_per_step)
    monkeypatch.setitem(mod.BWD_TUNING, "prefetch", prefetch)
    monkeypatch.setitem(mod.BWD_TUNING, "max_registers", max_registers)
    x = torch.randn(shape).to(DEVICE, dtype) * 2
    w = (1 + 0.1 * torch.randn(shape[-1])).to(DEVICE, dtype)
    dy = torch.randn(shape).to(DEVICE, dtype)
    dx, dw, dx64, dw64 = _grads_vs_reference(x, w, dy)
    check("rms_norm dx", [dx], [dx64], TOL[dtype])
    check("rms_norm dweight", [dw], [dw64], TOL[dtype])
