"""Fused linear cross-entropy for the decoupled two-part biased LM head (SPEC §1.4), never building the
full (N, V) logits.

logits = cat((h Wᵀ + b)[:, :num_base], h Aᵀ + a)   — h (N, E), W (rows ≥ num_base, E), b (rows,),
A (n_add, E), a (n_add,); targets (N,) with -100 ignored.

Tokens are processed in chunks of `chunk_rows` (derived from the vocabulary size and a memory budget,
see `chunk_rows_for`). Per chunk: two torch matmuls give the base (C, num_base) and extra (C, n_add)
logits in h's dtype (the two parts are never concatenated); one Triton program per row computes the
fp32 log-sum-exp over both parts, the row loss lse − logit[target], and — when gradients are wanted —
overwrites the logits in place with d loss/d logits = (softmax − onehot) · row_scale. The chunk's
gradient then flows into dh, dW[:num_base], db[:num_base], dA, da by matmuls, and the chunk buffer is
reused. For the scalar CE loss this happens in the forward (the gradients are stashed and scaled by the
incoming grad in backward: 3 matmuls per chunk instead of 4); for the per-token log-prob variant (DPO)
the backward recomputes each chunk's logits because its incoming gradient is per row.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..loss import IGNORE_INDEX, linear_cross_entropy_reference, linear_token_logprobs_reference
from ._utils import interpreting, triton_custom_op, usable

DEFAULT_CHUNK_BYTES = 1 << 30  # logits buffer budget per chunk (env XGENMM_CE_CHUNK_BYTES overrides)


def chunk_rows_for(n_rows: int, vocab: int, dtype: torch.dtype, budget_bytes: int | None = None) -> int:
    """Tokens per chunk so that one (chunk, vocab) logits buffer in `dtype` fits `budget_bytes`.

    Rounded down to a multiple of 64 (matmul-friendly) when above 64, at least 1, at most n_rows."""
    if budget_bytes is None:
        budget_bytes = int(os.environ.get("XGENMM_CE_CHUNK_BYTES", DEFAULT_CHUNK_BYTES))
    elem = torch.empty((), dtype=dtype).element_size()
    rows = max(1, budget_bytes // max(1, vocab * elem))
    if rows > 64:
        rows -= rows % 64
    return max(1, min(rows, max(1, n_rows)))


@triton.jit
def _ce_rows_kernel(BASE, EXTRA, TARGETS, ROW_SCALE, ROW_LOSS, stride_base, stride_extra, NB, NE,
                    ignore_index, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, BLOCK_E: tl.constexpr):
    """One row: loss = lse − logit[t] (0 if t is ignored); optionally logits ← (softmax − onehot)·scale."""
    row = tl.program_id(0).to(tl.int64)
    base = BASE + row * stride_base
    extra = EXTRA + row * stride_extra
    t = tl.load(TARGETS + row).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    eoffs = tl.arange(0, BLOCK_E)
    # pass 1: online max / sum-exp over the base part, then the (small) additional part
    m = -float("inf")
    s = 0.0
    for start in range(0, NB, BLOCK):
        x = tl.load(base + start + offs, mask=start + offs < NB, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, NE, BLOCK_E):
        x = tl.load(extra + start + eoffs, mask=start + eoffs < NE, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    ignored = t == ignore_index
    t_safe = tl.where(ignored, 0, t)
    in_base = t_safe < NB
    x_t = tl.load(tl.where(in_base, base + t_safe, extra + (t_safe - NB))).to(tl.float32)
    tl.store(ROW_LOSS + row, tl.where(ignored, 0.0, lse - x_t))
    if WRITE_GRAD:
        scale = tl.load(ROW_SCALE + row).to(tl.float32)
        scale = tl.where(ignored, 0.0, scale)
        for start in range(0, NB, BLOCK):
            cols = start + offs
            cm = cols < NB
            x = tl.load(base + cols, mask=cm, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale
            tl.store(base + cols, g.to(BASE.dtype.element_ty), mask=cm)
        for start in range(0, NE, BLOCK_E):
            cols = start + eoffs
            cm = cols < NE
            x = tl.load(extra + cols, mask=cm, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols + NB == t, 1.0, 0.0)) * scale
            tl.store(extra + cols, g.to(EXTRA.dtype.element_ty), mask=cm)


def _rows_kernel(base, extra, targets, row_scale, row_loss, write_grad: bool):
    C, NB = base.shape
    NE = extra.shape[1]
    if C == 0:
        return
    if interpreting():
        block, warps = min(1024, triton.next_power_of_2(max(NB, 1))), 1
    else:
        block, warps = 4096, 8
    block_e = max(16, triton.next_power_of_2(max(NE, 1)))
    wrap_triton(_ce_rows_kernel)[(C,)](base, extra, targets, row_scale, row_loss, base.stride(0),
                                       extra.stride(0), NB, NE, IGNORE_INDEX, WRITE_GRAD=write_grad,
                                       BLOCK=block, BLOCK_E=block_e, num_warps=warps)


def _chunk_logits(hc, weight, bias, add_weight, add_bias, num_base):
    base = F.linear(hc, weight[:num_base], None if bias is None else bias[:num_base])
    extra = F.linear(hc, add_weight, add_bias)
    return base.contiguous(), extra.contiguous()


def _accumulate_grads(base_g, extra_g, hc, weight, add_weight, num_base, dh_c, dW, db, dA, da):
    """base_g/extra_g hold d loss/d logits of this chunk; add their contribution to every gradient."""
    torch.mm(base_g, weight[:num_base], out=dh_c)
    dh_c.addmm_(extra_g, add_weight)
    dW[:num_base].addmm_(base_g.t().to(dW.dtype), hc.to(dW.dtype))
    dA.addmm_(extra_g.t().to(dA.dtype), hc.to(dA.dtype))
    if db is not None:
        db[:num_base] += base_g.sum(0, dtype=torch.float32)
    if da is not None:
        da += extra_g.sum(0, dtype=torch.float32)


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,))


@triton_custom_op("xgenmm_triton::linear_ce_fwd")
def linear_ce_fwd(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, add_weight: torch.Tensor,
                  add_bias: torch.Tensor | None, num_base: int, targets: torch.Tensor, reduction: str,
                  chunk_rows: int, compute_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (loss fp32 scalar, dh, dW, db, dA, da); the gradients are empty unless compute_grad."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'sum' or 'mean', got {reduction!r}")
    N = h.shape[0]
    targets = targets.contiguous()
    valid = targets != IGNORE_INDEX
    row_scale = valid.float()
    if reduction == "mean":
        row_scale = row_scale / valid.sum().float()
    row_loss = torch.empty((N,), dtype=torch.float32, device=h.device)
    if compute_grad:
        dh = torch.empty_like(h)
        dW = torch.zeros_like(weight)
        dA = torch.zeros_like(add_weight)
        db = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) if bias is not None else None
        da = torch.zeros(add_bias.shape, dtype=torch.float32, device=h.device) if add_bias is not None else None
    for s in range(0, N, chunk_rows):
        e = min(N, s + chunk_rows)
        hc = h[s:e]
        base, extra = _chunk_logits(hc, weight, bias, add_weight, add_bias, num_base)
        _rows_kernel(base, extra, targets[s:e], row_scale[s:e], row_loss[s:e], compute_grad)
        if compute_grad:
            _accumulate_grads(base, extra, hc, weight, add_weight, num_base, dh[s:e], dW, db, dA, da)
    loss = row_loss.sum() if reduction == "sum" else row_loss.sum() / valid.sum().float()
    if not compute_grad:
        return loss, _empty(h), _empty(h), _empty(h), _empty(h), _empty(h)
    return (loss, dh, dW, db.to(bias.dtype) if db is not None else _empty(h), dA,
            da.to(add_bias.dtype) if da is not None else _empty(h))


def _ce_setup(ctx, inputs, output):
    bias, add_bias = inputs[2], inputs[4]
    ctx.has_bias, ctx.has_add_bias = bias is not None, add_bias is not None
    ctx.save_for_backward(*output[1:])


def _ce_backward(ctx, g, *_unused):
    dh, dW, db, dA, da = ctx.saved_tensors
    if dh.numel() == 0 and dW.numel() == 0:
        raise RuntimeError("linear_cross_entropy: backward reached an op called with compute_grad=False")
    return (dh * g.to(dh.dtype), dW * g.to(dW.dtype), db * g.to(db.dtype) if ctx.has_bias else None,
            dA * g.to(dA.dtype), da * g.to(da.dtype) if ctx.has_add_bias else None, None, None, None, None, None)


linear_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


@triton_custom_op("xgenmm_triton::linear_logprobs_fwd")
def linear_logprobs_fwd(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        add_weight: torch.Tensor, add_bias: torch.Tensor | None, num_base: int,
                        targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """-> log p(target) per row (N,) fp32; 0 where target == -100."""
    N = h.shape[0]
    targets = targets.contiguous()
    row_loss = torch.empty((N,), dtype=torch.float32, device=h.device)
    for s in range(0, N, chunk_rows):
        e = min(N, s + chunk_rows)
        base, extra = _chunk_logits(h[s:e], weight, bias, add_weight, add_bias, num_base)
        _rows_kernel(base, extra, targets[s:e], row_loss[s:e], row_loss[s:e], False)
    return -row_loss


@triton_custom_op("xgenmm_triton::linear_logprobs_bwd")
def linear_logprobs_bwd(grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        add_weight: torch.Tensor, add_bias: torch.Tensor | None, num_base: int,
                        targets: torch.Tensor, chunk_rows: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recompute each chunk's logits; d logp/d logits = −(softmax − onehot) · grad_row."""
    N = h.shape[0]
    targets = targets.contiguous()
    row_scale = (-grad.float()).contiguous()
    scratch = torch.empty((N,), dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h)
    dW, dA = torch.zeros_like(weight), torch.zeros_like(add_weight)
    db = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) if bias is not None else None
    da = torch.zeros(add_bias.shape, dtype=torch.float32, device=h.device) if add_bias is not None else None
    for s in range(0, N, chunk_rows):
        e = min(N, s + chunk_rows)
        hc = h[s:e]
        base, extra = _chunk_logits(hc, weight, bias, add_weight, add_bias, num_base)
        _rows_kernel(base, extra, targets[s:e], row_scale[s:e], scratch[s:e], True)
        _accumulate_grads(base, extra, hc, weight, add_weight, num_base, dh[s:e], dW, db, dA, da)
    return (dh, dW, db.to(bias.dtype) if db is not None else _empty(h), dA,
            da.to(add_bias.dtype) if da is not None else _empty(h))


def _lp_setup(ctx, inputs, output):
    h, weight, bias, add_weight, add_bias, num_base, targets, chunk_rows = inputs
    ctx.num_base, ctx.chunk_rows = num_base, chunk_rows
    ctx.has_bias, ctx.has_add_bias = bias is not None, add_bias is not None
    ctx.save_for_backward(h, weight, bias, add_weight, add_bias, targets)


def _lp_backward(ctx, grad):
    h, weight, bias, add_weight, add_bias, targets = ctx.saved_tensors
    dh, dW, db, dA, da = linear_logprobs_bwd(grad.contiguous(), h, weight, bias, add_weight, add_bias,
                                             ctx.num_base, targets, ctx.chunk_rows)
    return (dh, dW, db if ctx.has_bias else None, dA, da if ctx.has_add_bias else None, None, None, None)


linear_logprobs_fwd.register_autograd(_lp_backward, setup_context=_lp_setup)


def _check(h, weight, add_weight, num_base, targets):
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"fused linear CE: expected h (N, E) and targets (N,), got {tuple(h.shape)} "
                         f"and {tuple(targets.shape)}")
    if num_base > weight.shape[0] or weight.shape[1] != h.shape[1] or add_weight.shape[1] != h.shape[1]:
        raise ValueError(f"fused linear CE: weight {tuple(weight.shape)} / add_weight {tuple(add_weight.shape)} "
                         f"do not fit h {tuple(h.shape)} with num_base={num_base}")


def linear_cross_entropy_triton(h, weight, bias, add_weight, add_bias, num_base, targets, reduction="sum",
                                chunk_rows: int | None = None):
    """Same signature and result as `loss.linear_cross_entropy_reference` (fp32 scalar)."""
    if not usable(h, weight, add_weight, targets):
        return linear_cross_entropy_reference(h, weight, bias, add_weight, add_bias, num_base, targets, reduction)
    h2, t2 = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if h2.stride(-1) != 1:
        h2 = h2.contiguous()
    _check(h2, weight, add_weight, num_base, t2)
    vocab = num_base + add_weight.shape[0]
    rows = chunk_rows or chunk_rows_for(h2.shape[0], vocab, h.dtype)
    need = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (h, weight, bias, add_weight, add_bias))
    return linear_ce_fwd(h2, weight, bias, add_weight, add_bias, int(num_base), t2, reduction, int(rows), need)[0]


def linear_token_logprobs_triton(h, weight, bias, add_weight, add_bias, num_base, targets,
                                 chunk_rows: int | None = None):
    """Same signature and result as `loss.linear_token_logprobs_reference`: (N,) fp32."""
    if not usable(h, weight, add_weight, targets):
        return linear_token_logprobs_reference(h, weight, bias, add_weight, add_bias, num_base, targets)
    _check(h, weight, add_weight, num_base, targets)
    vocab = num_base + add_weight.shape[0]
    rows = chunk_rows or chunk_rows_for(h.shape[0], vocab, h.dtype)
    return linear_logprobs_fwd(h if h.stride(-1) == 1 else h.contiguous(), weight, bias, add_weight, add_bias,
                               int(num_base), targets, int(rows))
