"""Fused RMSNorm (Phi-3 semantics), forward and backward, as the `xgenmm_triton::rms_norm` custom op.

y = weight * (x · rsqrt(mean(x², -1) + eps)).to(x.dtype), statistics in fp32 — exactly
`norms.rms_norm_reference`. x: (..., N); weight: (N,). The forward (one row per program) saves the fp32
per-row rstd (rows,); the backward recomputes the normalized row n = x · rstd from x and rstd, one pass over
x and dy: ~4 programs per SM, each walking a contiguous range of rows,
  dx = rstd · (g − n · mean(g · n)),  g = dy · weight      (stored per row)
  dweight = Σ_rows dy · n.to(x.dtype)                      (an fp32 partial row per program, then one torch sum)
Timed on an H200 (bench_kernels rms_norm_fwd_bwd, 16384 x 3072 bf16, eager do_bench): 0.61 ms fwd+bwd with
this kernel, 0.85 ms with a two-kernel variant (a one-row-per-program dx kernel plus a tiled dweight column
reduction, commits b3ef7d7..18a0a4b, reverted). Those times are mostly the host's, not the kernels': the H200
SFT profile (benchmarks/results/2026-11-26-nvidia-h200-sft-profile.json) has all RMSNorm kernels of a step
(129 forward calls with the checkpointed recompute, 65 backward, ~11k rows each) at 11.0 ms, which at the
forward row's rate leaves ~0.08 ms per backward call: ~0.18 ms fwd+bwd at 16k rows, ~60% of the copy
bandwidth (an estimate; #4's target is 70%). bench_kernels now times this row from a CUDA graph
(GRAPH_TIMED). The static check (scripts/triton_sm90_check.py, CTA/SM column) has the backward at 72
registers at 16 warps, one program per SM with one row's loads in flight (the forward, 32 registers, fits
four); BWD_TUNING's variants (prefetch, several rows per step, 8 or 32 warps, a register cap) raise the rows
in flight, and benchmarks/sweep_rms_norm.py times them on a GPU, also from a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..norms import rms_norm_reference
from ._utils import interpreting, next_pow2, row_view, triton_custom_op, usable


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
def _bwd_row_grads(x, dy, rstd, w, DX_ROW, cols, m, N, dw):
    """One row: stores dx = rstd · (g − n · mean(g · n)) (g = dy · w, n = x · rstd), returns dw + dy · n (n
    rounded to x's dtype, as the forward rounds it)."""
    xf = x.to(tl.float32)
    dyf = dy.to(tl.float32)
    n = xf * rstd
    g = dyf * w
    dx = rstd * (g - n * (tl.sum(g * n, axis=0) / N))
    tl.store(DX_ROW + cols, dx.to(DX_ROW.dtype.element_ty), mask=m)
    return dw + dyf * n.to(x.dtype).to(tl.float32)


@triton.jit
def _load_row(DY, X, RSTD, row, row_end, cols, m, stride_dy, stride_x):
    """x, dy and rstd of `row`; past row_end (the prefetch one row beyond the last) x and dy are zeros and
    rstd is the last row's (every program has a row: _bwd_plan)."""
    mask = m & ((row + tl.zeros_like(cols)) < row_end)  # (a scalar & a vector mask fails under the interpreter)
    row64 = tl.cast(row, tl.int64)
    x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0)
    dy = tl.load(DY + row64 * stride_dy + cols, mask=mask, other=0.0)
    rstd = tl.load(RSTD + tl.minimum(row, row_end - 1))
    return x, dy, rstd


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, N,
                         rows_per_program, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr):
    # program pid: rows [pid · rows_per_program, ...) — dx for each, and its partial dweight row;
    # BLOCK_R rows per step (BLOCK_R = 1 without PREFETCH: the kernel measured on the H200, one row per step).
    # PREFETCH (BLOCK_R = 1): the next row is loaded before this row's work, so that its memory latency
    # overlaps this row's reduction and store. Without it a program has one row's loads in flight, and at
    # 16 warps and 72 registers one program fits on an SM (scripts/triton_sm90_check.py, CTA/SM column).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    row0 = pid * rows_per_program
    if BLOCK_R == 1:
        dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if PREFETCH:
            row_end = tl.minimum(row0 + rows_per_program, n_rows)
            x_next, dy_next, rstd_next = _load_row(DY, X, RSTD, row0, row_end, cols, m, stride_dy, stride_x)
            for r in range(row0, row_end):
                x, dy, rstd = x_next, dy_next, rstd_next
                x_next, dy_next, rstd_next = _load_row(DY, X, RSTD, r + 1, row_end, cols, m, stride_dy, stride_x)
                dw = _bwd_row_grads(x, dy, rstd, w, DX + tl.cast(r, tl.int64) * stride_dx, cols, m, N, dw)
        else:
            for i in range(0, rows_per_program):
                row = (row0 + i).to(tl.int64)
                if row < n_rows:
                    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
                    dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0)
                    rstd = tl.load(RSTD + row)
                    dw = _bwd_row_grads(x, dy, rstd, w, DX + row * stride_dx, cols, m, N, dw)
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
# rows per step (BLOCK_R), programs per SM, warps (None: one per 256 columns, at most 16), prefetch (one row
# per step only: the next row's loads issued before this row's work; unmeasured), max_registers (Triton's
# maxnreg; None: the compiler's choice. 64 at 16 warps fits two programs per SM instead of one, for 8 bytes
# of spills at sm_90 by the static check; unmeasured). The defaults are the kernel run on the H200 (its
# eager 0.61 ms was host time; ~0.18 ms device time by the SFT profile, see the module docstring).
BWD_TUNING = dict(rows_per_step=1, programs_per_sm=4, num_warps=None, prefetch=False, max_registers=None)


def _num_warps(block_n: int) -> int:
    return 1 if interpreting() else min(16, max(1, block_n // 256))


@triton_custom_op("xgenmm_triton::rms_norm_fwd")
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


@triton_custom_op("xgenmm_triton::rms_norm_bwd")
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    x2, dy2 = row_view(x), row_view(dy)
    rows = x2.shape[0]
    dx = torch.empty((rows, N), dtype=x.dtype, device=x.device)
    if rows == 0 or N == 0:
        return dx.view(x.shape), torch.zeros_like(weight)
    rstd = rstd.contiguous()
    prefetch = bool(BWD_TUNING.get("prefetch", False))
    if prefetch and BWD_TUNING["rows_per_step"] != 1:
        raise ValueError(f"rms_norm BWD_TUNING: prefetch needs rows_per_step=1, got {BWD_TUNING['rows_per_step']}")
    n_prog, rows_per_program = _bwd_plan(rows, x.device)
    dw_part = torch.empty((n_prog, N), dtype=torch.float32, device=x.device)
    block = next_pow2(N)
    warps = BWD_TUNING["num_warps"] or _num_warps(block)
    max_registers = BWD_TUNING.get("max_registers")
    extra = {"maxnreg": int(max_registers)} if max_registers and not interpreting() else {}
    wrap_triton(_rms_norm_bwd_kernel)[(n_prog,)](dy2, x2, weight.contiguous(), rstd, dx, dw_part, dy2.stride(0),
                                                 x2.stride(0), dx.stride(0), rows, N, rows_per_program,
                                                 BLOCK_R=BWD_TUNING["rows_per_step"], BLOCK_N=block,
                                                 PREFETCH=prefetch,
                                                 num_warps=1 if interpreting() else warps, **extra)
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
