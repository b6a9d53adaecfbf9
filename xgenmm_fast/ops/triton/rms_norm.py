"""Fused RMSNorm (Phi-3 semantics), forward and backward, as the `xgenmm_triton::rms_norm` custom op.

y = weight * (x · rsqrt(mean(x², -1) + eps)).to(x.dtype), statistics in fp32 — exactly
`norms.rms_norm_reference`. x: (..., N); weight: (N,). The forward (one row per program) saves the fp32
per-row rstd (rows,); the backward recomputes the normalized row n = x · rstd from x and rstd, one pass over
x and dy: ~4 programs per SM, each walking a contiguous range of rows,
  dx = rstd · (g − n · mean(g · n)),  g = dy · weight      (stored per row)
  dweight = Σ_rows dy · n.to(x.dtype)                      (an fp32 partial row per program, then one torch sum)
Measured on an H200 (bench_kernels rms_norm_fwd_bwd, 16384 x 3072 bf16): 0.61 ms fwd+bwd with this kernel;
a two-kernel variant (a one-row-per-program dx kernel plus a tiled dweight column reduction, reading x and dy
twice, commits b3ef7d7..18a0a4b) took 0.85 ms and was reverted. Both are far from the copy bandwidth
(#4's target: 70%); the cause is not profiled yet (benchmarks/profile_kernels.py --only rms_norm_fwd_bwd).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..norms import rms_norm_reference
from ._utils import interpreting, next_pow2, row_view, usable


@triton.jit
def _rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, N, eps, BLOCK_N: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    eps = tl.cast(eps, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / N + eps)
    n = (xf * rstd).to(x.dtype).to(tl.float32)  # Phi-3: cast back to the input dtype before the scale
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * n).to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, N,
                         rows_per_program, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    # program pid: rows [pid · rows_per_program, ...) — dx for each, and its partial dweight row;
    # BLOCK_R rows per step (BLOCK_R = 1: the kernel measured on the H200, one row per step)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    row0 = pid * rows_per_program
    if BLOCK_R == 1:
        dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for i in range(0, rows_per_program):
            row = (row0 + i).to(tl.int64)
            if row < n_rows:
                x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
                xf = x.to(tl.float32)
                dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
                rstd = tl.load(RSTD + row)
                n = xf * rstd
                g = dy * w
                dx = rstd * (g - n * (tl.sum(g * n, axis=0) / N))
                tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=m)
                dw += dy * n.to(x.dtype).to(tl.float32)  # as the forward rounds it
        tl.store(DW_PART + pid.to(tl.int64) * N + cols, dw, mask=m)
    else:
        # BLOCK_R rows at a time: more loads in flight per program, one loop without a branch
        dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
        row_end = tl.minimum(row0 + rows_per_program, n_rows)
        for r0 in range(row0, row_end, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            rm = rows < row_end
            rows64 = rows.to(tl.int64)[:, None]
            mm = rm[:, None] & m[None, :]
            x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mm, other=0.0)
            xf = x.to(tl.float32)
            dy = tl.load(DY + rows64 * stride_dy + cols[None, :], mask=mm, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=rm, other=0.0)
            n = xf * rstd[:, None]
            g = dy * w[None, :]
            dx = rstd[:, None] * (g - n * (tl.sum(g * n, axis=1) / N)[:, None])
            tl.store(DX + rows64 * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mm)
            dw += tl.sum(dy * n.to(x.dtype).to(tl.float32), axis=0)
        tl.store(DW_PART + pid.to(tl.int64) * N + cols, dw, mask=m)


# Launch options of the backward, a table so that a GPU sweep can vary them (benchmarks/sweep_rms_norm.py):
# rows per step (BLOCK_R), programs per SM, warps (None: one per 256 columns, at most 16). The defaults are
# the kernel measured on an H200 (0.61 ms fwd+bwd at 16384 x 3072 bf16).
BWD_TUNING = dict(rows_per_step=1, programs_per_sm=4, num_warps=None)


def _num_warps(block_n: int) -> int:
    return 1 if interpreting() else min(16, max(1, block_n // 256))


@triton_op("xgenmm_triton::rms_norm_fwd", mutates_args={})
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., N), weight (N,) -> (y (..., N) in promote(x, weight) dtype, rstd (rows,) fp32)."""
    N = x.shape[-1]
    x2 = row_view(x)
    rows = x2.shape[0]
    y = torch.empty((rows, N), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty((rows,), dtype=torch.float32, device=x.device)
    if rows > 0:
        block = next_pow2(N)
        wrap_triton(_rms_norm_fwd_kernel)[(rows,)](x2, weight.contiguous(), y, rstd, x2.stride(0), y.stride(0),
                                                   N, eps, BLOCK_N=block, num_warps=_num_warps(block))
    return y.view(x.shape), rstd


def _bwd_plan(rows: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward: BWD_TUNING["programs_per_sm"] programs per SM on CUDA
    (4 under the interpreter), no program without rows."""
    per_sm = BWD_TUNING["programs_per_sm"]
    target = per_sm * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    n_prog = max(1, min(rows, target))
    rows_per_program = -(-rows // n_prog)
    return -(-rows // rows_per_program), rows_per_program


@triton_op("xgenmm_triton::rms_norm_bwd", mutates_args={})
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    x2, dy2 = row_view(x), row_view(dy)
    rows = x2.shape[0]
    dx = torch.empty((rows, N), dtype=x.dtype, device=x.device)
    if rows == 0 or N == 0:
        return dx.view(x.shape), torch.zeros_like(weight)
    rstd = rstd.contiguous()
    n_prog, rows_per_program = _bwd_plan(rows, x.device)
    dw_part = torch.empty((n_prog, N), dtype=torch.float32, device=x.device)
    block = next_pow2(N)
    warps = BWD_TUNING["num_warps"] or _num_warps(block)
    wrap_triton(_rms_norm_bwd_kernel)[(n_prog,)](dy2, x2, weight.contiguous(), rstd, dx, dw_part, dy2.stride(0),
                                                 x2.stride(0), dx.stride(0), rows, N, rows_per_program,
                                                 BLOCK_R=BWD_TUNING["rows_per_step"], BLOCK_N=block,
                                                 num_warps=1 if interpreting() else warps)
    return dx.view(x.shape), dw_part.sum(0).to(weight.dtype)


def _setup(ctx, inputs, output):
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy.contiguous(), x, weight, rstd)
    return dx, dw, None


rms_norm_fwd.register_autograd(_backward, setup_context=_setup)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same signature and result as `norms.rms_norm_reference`."""
    if not usable(x, weight):
        return rms_norm_reference(x, weight, eps)
    return rms_norm_fwd(x, weight, float(eps))[0]
