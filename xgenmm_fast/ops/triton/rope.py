"""Rotary position embedding (rotate-half, HF Phi-3 convention) on q and k in one launch, fwd + bwd.

q (..., Hq, D), k (..., Hkv, D) with the same leading dims — packed (total, H, D) or padded (B, T, H, D);
cos, sin broadcastable to (..., 1, D). With halves x = [x1, x2], c = [c1, c2], s = [s1, s2]:
  forward   y1 = x1·c1 − x2·s1,   y2 = x2·c2 + x1·s2
  backward  dx1 = g1·c1 + g2·s2,  dx2 = g2·c2 − g1·s1      (the transpose of the forward rotation)
One program per token row handles every q head and every k head of that row; cos/sin are read once.
q/k may be strided views (e.g. slices of a fused qkv projection) as long as the head dim is contiguous.
cos/sin get no gradient (they are functions of positions only).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..rope import apply_rope_reference
from ._utils import interpreting, next_pow2, triton_custom_op, usable


@triton.jit
def _rotate_tile(X, Y, row, stride_xr, stride_xh, stride_yr, stride_yh, c1, c2, s1, s2, H, HALF,
                 BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    m = (heads < H) & (cols < HALF)
    xp = X + row * stride_xr + heads * stride_xh + cols
    x1 = tl.load(xp, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(xp + HALF, mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    yp = Y + row * stride_yr + heads * stride_yh + cols
    tl.store(yp, y1.to(Y.dtype.element_ty), mask=m)
    tl.store(yp + HALF, y2.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(Q, K, COS, SIN, QO, KO, stride_qr, stride_qh, stride_kr, stride_kh, stride_cr, stride_sr,
                 stride_qor, stride_qoh, stride_kor, stride_koh, HQ, HKV, HALF,
                 BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
                 BACKWARD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    cm = cols < HALF
    c1 = tl.load(COS + row * stride_cr + cols, mask=cm, other=0.0).to(tl.float32)
    c2 = tl.load(COS + row * stride_cr + HALF + cols, mask=cm, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + row * stride_sr + cols, mask=cm, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + row * stride_sr + HALF + cols, mask=cm, other=0.0).to(tl.float32)
    _rotate_tile(Q, QO, row, stride_qr, stride_qh, stride_qor, stride_qoh, c1, c2, s1, s2, HQ, HALF,
                 BLOCK_HQ, BLOCK_HALF, BACKWARD)
    _rotate_tile(K, KO, row, stride_kr, stride_kh, stride_kor, stride_koh, c1, c2, s1, s2, HKV, HALF,
                 BLOCK_HKV, BLOCK_HALF, BACKWARD)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., H, D) -> (R, H, D) with a contiguous head dim."""
    x3 = x.reshape(-1, x.shape[-2], x.shape[-1])
    return x3 if x3.stride(-1) == 1 else x3.contiguous()


def _launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool):
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"rope: q {tuple(q.shape)} and k {tuple(k.shape)} must share leading dims and head dim")
    D = q.shape[-1]
    if D % 2:
        raise ValueError(f"rope: head dim must be even, got {D}")
    lead = q.shape[:-2]
    q3, k3 = _rows(q), _rows(k)
    R = q3.shape[0]
    c2 = cos.expand(*lead, 1, D).reshape(R, D)
    s2 = sin.expand(*lead, 1, D).reshape(R, D)
    c2 = c2 if c2.stride(-1) == 1 else c2.contiguous()
    s2 = s2 if s2.stride(-1) == 1 else s2.contiguous()
    qo = torch.empty(q3.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k3.shape, dtype=k.dtype, device=k.device)
    if R:
        half = D // 2
        wrap_triton(_rope_kernel)[(R,)](
            q3, k3, c2, s2, qo, ko, q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), c2.stride(0),
            s2.stride(0), qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1), q3.shape[1], k3.shape[1], half,
            BLOCK_HQ=next_pow2(q3.shape[1]), BLOCK_HKV=next_pow2(k3.shape[1]), BLOCK_HALF=next_pow2(half),
            BACKWARD=backward, num_warps=1 if interpreting() else 4)
    return qo.view(q.shape), ko.view(k.shape)


@triton_custom_op("xgenmm_triton::rope_fwd")
def rope_fwd(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(q, k, cos, sin, backward=False)


@triton_custom_op("xgenmm_triton::rope_bwd")
def rope_bwd(dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(dq, dk, cos, sin, backward=True)


def _setup(ctx, inputs, output):
    _, _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = rope_bwd(dq, dk, cos, sin)
    return dq, dk, None, None


rope_fwd.register_autograd(_backward, setup_context=_setup)


def apply_rope_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Same signature and result as `rope.apply_rope_reference`."""
    if not usable(q, k, cos, sin):
        return apply_rope_reference(q, k, cos, sin)
    return rope_fwd(q, k, cos, sin)
