"""Fused RMSNorm (Phi-3 semantics), forward and backward, as the `xgenmm_triton::rms_norm` custom op.

y = weight * (x · rsqrt(mean(x², -1) + eps)).to(x.dtype), statistics in fp32 — exactly
`norms.rms_norm_reference`. x: (..., N); weight: (N,). The forward (one row per program) saves the fp32
per-row rstd (rows,); the backward recomputes the normalized row n = x · rstd from x and rstd, in two kernels:
  dx:      one row per program (grid = rows, like the forward):
           dx = rstd · (g − n · mean(g · n)),  g = dy · weight
  dweight: a column reduction  dweight[j] = Σ_rows dy[r, j] · n[r, j].to(x.dtype)  over a grid
           (column blocks × row groups); each program walks its row range in [BLOCK_R, BLOCK_C] tiles with an
           fp32 accumulator and writes one fp32 partial row, then one torch sum over the groups.
Why two kernels: the former single backward kernel (~4·SM programs, each looping over ~rows/(4·SM) rows with
16 warps per row) ran ~8× slower than the forward on an H200 while moving 1.5× the bytes; the reasoned (not
profiled) cause is that its register use allowed 1–2 programs per SM, too few loads in flight. Both kernels
now have several programs per SM (the dx kernel one per row; the dweight kernel ~8·SM by its row-group
count), at the cost of reading x and dy twice (dx: read x, dy, write dx; dweight: read x, dy again).
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
def _rms_norm_bwd_dx_kernel(DY, X, W, RSTD, DX, stride_dy, stride_x, stride_dx, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    xf = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + row)
    n = xf * rstd
    g = dy * w
    dx = rstd * (g - n * (tl.sum(g * n, axis=0) / N))
    tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _rms_norm_bwd_dw_kernel(DY, X, RSTD, DW_PART, stride_dy, stride_x, n_rows, N, rows_per_group,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (column block, row group): partial dweight of its columns over rows [r_start, r_end)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    grp = tl.program_id(1)
    cm = cols < N
    r_start = grp * rows_per_group
    r_end = tl.minimum(r_start + rows_per_group, n_rows)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rm = rows < r_end
        rows64 = rows.to(tl.int64)  # rows · stride can exceed 2^31
        m = rm[:, None] & cm[None, :]
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=m, other=0.0)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows64, mask=rm, other=0.0)
        n = (x.to(tl.float32) * rstd[:, None]).to(x.dtype).to(tl.float32)  # as the forward rounds it
        acc += dy * n
    tl.store(DW_PART + grp.to(tl.int64) * N + cols, tl.sum(acc, axis=0), mask=cm)


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


def _dw_plan(rows: int, N: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_C, G, rows_per_group) for the dweight column reduction: grid (cdiv(N, BLOCK_C), G),
    G chosen so that the grid is ~8 programs per SM on CUDA (small blocks and few programs under the
    interpreter); rows_per_group is a multiple of BLOCK_R and no group is empty."""
    if interpreting():
        block_r, block_c, target = 16, 32, 8
    else:
        # 16 x 128 tiles, 4 warps: 94 registers at sm_90 (32 x 128 took 194, two programs per SM), so
        # ~5 programs fit per SM; ~8 per SM are launched (scripts/triton_sm90_check.py)
        block_r, block_c = 16, 128
        target = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    col_blocks = -(-N // block_c)
    tiles = -(-rows // block_r)
    g = min(max(-(-target // col_blocks), 1), tiles)
    tiles_per_group = -(-tiles // g)
    g = -(-tiles // tiles_per_group)
    return block_r, block_c, g, tiles_per_group * block_r


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
    block = next_pow2(N)
    wrap_triton(_rms_norm_bwd_dx_kernel)[(rows,)](dy2, x2, weight.contiguous(), rstd, dx, dy2.stride(0),
                                                  x2.stride(0), dx.stride(0), N,
                                                  BLOCK_N=block, num_warps=_num_warps(block))
    block_r, block_c, g, rows_per_group = _dw_plan(rows, N, x.device)
    dw_part = torch.empty((g, N), dtype=torch.float32, device=x.device)
    wrap_triton(_rms_norm_bwd_dw_kernel)[(-(-N // block_c), g)](dy2, x2, rstd, dw_part, dy2.stride(0),
                                                                x2.stride(0), rows, N, rows_per_group,
                                                                BLOCK_R=block_r, BLOCK_C=block_c,
                                                                num_warps=1 if interpreting() else 4)
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
