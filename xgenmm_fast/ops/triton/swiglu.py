"""Fused SwiGLU core (Phi-3 MLP): out = up · silu(gate) from the (..., 2I) gate_up tensor (gate first).

Forward reads gate_up once and writes (..., I); backward reads gate_up and dout once and writes the
(..., 2I) gradient directly (no chunk/cat):
  dgate = dout · up · σ(gate) · (1 + gate · (1 − σ(gate))),   dup = dout · silu(gate).
Math in fp32, results rounded to the input dtype (matches `activations.swiglu_reference`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..activations import swiglu_reference
from ._utils import interpreting, row_view, triton_custom_op, usable


@triton.jit
def _swiglu_fwd_kernel(GU, OUT, stride_gu, stride_out, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < I
    gate = tl.load(GU + row * stride_gu + cols, mask=m, other=0.0).to(tl.float32)
    up = tl.load(GU + row * stride_gu + I + cols, mask=m, other=0.0).to(tl.float32)
    out = up * gate * tl.sigmoid(gate)
    tl.store(OUT + row * stride_out + cols, out.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(DOUT, GU, DGU, stride_dout, stride_gu, stride_dgu, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < I
    gate = tl.load(GU + row * stride_gu + cols, mask=m, other=0.0).to(tl.float32)
    up = tl.load(GU + row * stride_gu + I + cols, mask=m, other=0.0).to(tl.float32)
    dout = tl.load(DOUT + row * stride_dout + cols, mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    silu = gate * sig
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))
    tl.store(DGU + row * stride_dgu + cols, dgate.to(DGU.dtype.element_ty), mask=m)
    tl.store(DGU + row * stride_dgu + I + cols, (dout * silu).to(DGU.dtype.element_ty), mask=m)


def _block(I: int) -> tuple[int, int]:
    if interpreting():
        return min(1024, triton.next_power_of_2(max(I, 1))), 1
    return 1024, 4


@triton_custom_op("xgenmm_triton::swiglu_fwd")
def swiglu_fwd(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (..., 2I) -> up · silu(gate) (..., I)."""
    two_i = gate_up.shape[-1]
    if two_i % 2:
        raise ValueError(f"swiglu: last dim of gate_up must be even (gate then up), got {two_i}")
    I = two_i // 2
    gu = row_view(gate_up)
    rows = gu.shape[0]
    out = torch.empty((rows, I), dtype=gate_up.dtype, device=gate_up.device)
    if rows and I:
        block, warps = _block(I)
        wrap_triton(_swiglu_fwd_kernel)[(rows, triton.cdiv(I, block))](gu, out, gu.stride(0), out.stride(0), I,
                                                                       BLOCK=block, num_warps=warps)
    return out.view(*gate_up.shape[:-1], I)


@triton_custom_op("xgenmm_triton::swiglu_bwd")
def swiglu_bwd(dout: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    I = gate_up.shape[-1] // 2
    gu, do = row_view(gate_up), row_view(dout)
    rows = gu.shape[0]
    dgu = torch.empty((rows, 2 * I), dtype=gate_up.dtype, device=gate_up.device)
    if rows and I:
        block, warps = _block(I)
        wrap_triton(_swiglu_bwd_kernel)[(rows, triton.cdiv(I, block))](do, gu, dgu, do.stride(0), gu.stride(0),
                                                                       dgu.stride(0), I, BLOCK=block,
                                                                       num_warps=warps)
    return dgu.view(gate_up.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dout):
    (gate_up,) = ctx.saved_tensors
    return swiglu_bwd(dout, gate_up)


swiglu_fwd.register_autograd(_backward, setup_context=_setup)


def swiglu_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """Same signature and result as `activations.swiglu_reference`."""
    if not usable(gate_up):
        return swiglu_reference(gate_up)
    return swiglu_fwd(gate_up)
