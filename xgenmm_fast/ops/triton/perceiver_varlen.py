"""Perceiver-resampler attention over packed media keys (forward + backward): masked tokens are absent.

Layouts (`attention.perceiver_attention_varlen_reference` is the reference, same signature):
  q (N, H, L, D) latent queries; k_media/v_media (total_media, H, D), chunk n's visible media keys at
  rows [cu_media[n], cu_media[n + 1]); cu_media (N + 1,) int32; k_latent/v_latent (N, H, L, D).
  max_media ≥ every chunk's key count (sizes the backward grid; computed from cu_media when None).
out = softmax(q·[k_media(n); k_latent]ᵀ·scale)·[v_media(n); v_latent], without concatenating the sources:
each program reads its chunk's media key range, then the latents, with one online softmax (the block
loops `_fwd_source` / `_dq_block` / `_dkdv_block` are shared with the masked kernel in
perceiver_attention.py, called here without a mask and with the chunk's key range as the source).
All chunks and heads run in one launch. Tensors may be strided views with a contiguous head dim (the
model's q and latent k/v are (tile, head, latent) views of (tile, latent, head·D) projections).

Backward: delta = rowsum(dO · O) (one pass, `_flash.backward_delta`), a dQ kernel over both sources, and one
dK/dV launch whose programs cover, for each chunk, cdiv(max_media, BLOCK_N) media key blocks (those past the
chunk's count exit at once) and then the latent key blocks. Each program owns its key rows: no atomics (with
perceiver_attention.ATOMIC_DQ, off by default, the dK/dV programs add dQ by atomics and no dQ kernel runs). A
chunk with no media keys is fine: its queries see only the latents, so no query row is ever empty.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..attention import perceiver_attention_varlen_reference
from . import _utils
from . import perceiver_attention as _pa
from ._flash import backward_delta
from ._utils import interpreting, lastdim_contig, triton_custom_op, usable
from .perceiver_attention import (LOG2E, _cfg, _dkdv_block, _dq_block, _fwd_finish, _fwd_init, _fwd_source,
                                  _precision, _s)


@triton.jit
def _perceiver_varlen_fwd_kernel(Q, KM, VM, CU, KL, VL, O, LSE,
                                 sq_b, sq_h, sq_t, skm_t, skm_h, svm_t, svm_h,
                                 skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, so_b, so_h, so_t,
                                 H, L, D, qk_scale, PRECISION: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                                 BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    media_start = tl.load(CU + b).to(tl.int64)
    n_media = tl.load(CU + b + 1) - tl.load(CU + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qa, qb, acc_a, acc_b, m_i, l_i = _fwd_init(Q + b * sq_b + h * sq_h, offs_m, sq_t, L, D, BLOCK_M, BLOCK_DA,
                                               BLOCK_DB)
    acc_a, acc_b, m_i, l_i = _fwd_source(qa, qb, acc_a, acc_b, m_i, l_i, KM + media_start * skm_t + h * skm_h,
                                         VM + media_start * svm_t + h * svm_h, CU, skm_t, svm_t, n_media,
                                         qk_scale, D, False, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    acc_a, acc_b, m_i, l_i = _fwd_source(qa, qb, acc_a, acc_b, m_i, l_i, KL + b * skl_b + h * skl_h,
                                         VL + b * svl_b + h * svl_h, CU, skl_t, svl_t, L, qk_scale, D,
                                         False, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    _fwd_finish(O + b * so_b + h * so_h, LSE + (b * H + h) * L, offs_m, so_t, L, D, acc_a, acc_b, m_i, l_i,
                BLOCK_DA, BLOCK_DB)


@triton.jit
def _perceiver_varlen_bwd_dq_kernel(Q, KM, VM, CU, KL, VL, DO, LSE, DELTA, DQ,
                                    sq_b, sq_h, sq_t, skm_t, skm_h, svm_t, svm_h,
                                    skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, sdo_b, sdo_h, sdo_t,
                                    sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale, PRECISION: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                                    BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    media_start = tl.load(CU + b).to(tl.int64)
    n_media = tl.load(CU + b + 1) - tl.load(CU + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # the chunk's media rows as a source of their own (base pointers moved to row cu[b]; no token mask)
    _dq_block(Q + b * sq_b + h * sq_h, DO + b * sdo_b + h * sdo_h, LSE + (b * H + h) * L, DELTA + (b * H + h) * L,
              DQ + b * sdq_b + h * sdq_h, KM + media_start * skm_t + h * skm_h, VM + media_start * svm_t + h * svm_h,
              CU, KL + b * skl_b + h * skl_h, VL + b * svl_b + h * svl_h, offs_m, sq_t, sdo_t, sdq_t, skm_t, svm_t,
              skl_t, svl_t, n_media, L, D, qk_scale, sm_scale, False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB)


@triton.jit
def _perceiver_varlen_bwd_dkdv_kernel(Q, DO, LSE, DELTA, KM, VM, CU, KL, VL, DKM, DVM, DKL, DVL, DQACC,
                                      sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t,
                                      skm_t, skm_h, svm_t, svm_h, skl_b, skl_h, skl_t, svl_b, svl_h, svl_t,
                                      sdkm_t, sdkm_h, sdvm_t, sdvm_h, sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t,
                                      sdq_b, sdq_h, sdq_t, H, L, D, n_media_blocks, qk_scale, sm_scale,
                                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                      BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                                      KEYS_MAJOR: tl.constexpr = False, ATOMIC_DQ: tl.constexpr = False):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    if pid < n_media_blocks:
        media_start = tl.load(CU + b).to(tl.int64)
        n_media = tl.load(CU + b + 1) - tl.load(CU + b)
        if pid * BLOCK_N < n_media:  # blocks past this chunk's count own no rows
            # the chunk's rows as a source of its own (base pointers moved to row cu[b]; batch stride 0)
            _dkdv_block(Q, DO, LSE, DELTA, KM + media_start * skm_t, VM + media_start * svm_t,
                        DKM + media_start * sdkm_t, DVM + media_start * sdvm_t, DQACC, CU, b, h, pid * BLOCK_N,
                        n_media, sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, 0, skm_h, skm_t, 0, svm_h, svm_t,
                        0, sdkm_h, sdkm_t, 0, sdvm_h, sdvm_t, sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale,
                        False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)
    else:
        _dkdv_block(Q, DO, LSE, DELTA, KL, VL, DKL, DVL, DQACC, CU, b, h, (pid - n_media_blocks) * BLOCK_N, L,
                    sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, skl_b, skl_h, skl_t, svl_b, svl_h, svl_t,
                    sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t, sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale,
                    False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)


def _s_packed(x: torch.Tensor) -> tuple[int, int]:
    """(token, head) strides of a (total, H, D) tensor."""
    return x.stride(0), x.stride(1)


@triton_custom_op("xgenmm_triton::perceiver_varlen_fwd")
def perceiver_varlen_fwd(q: torch.Tensor, k_media: torch.Tensor, v_media: torch.Tensor, cu_media: torch.Tensor,
                         k_latent: torch.Tensor, v_latent: torch.Tensor, max_media: int, scale: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> out (N, H, L, D) in q's memory layout, lse (N, H, L) fp32 (log2 domain). max_media is for the
    backward. (The model's q is the (tile, head, latent) view of to_q's (tile, latent, head·D) output; out laid
    out the same way makes the model's out.transpose(1, 2).reshape(N, L, H·D) a view, not a copy.)"""
    N, H, L, D = q.shape
    o = _utils.unwritten_like(q)
    lse = torch.empty((N, H, L), dtype=torch.float32, device=q.device)
    if N == 0 or H == 0 or L == 0:
        return o, lse
    c = _cfg(D, "fwd")
    wrap_triton(_perceiver_varlen_fwd_kernel)[(triton.cdiv(L, c["BLOCK_M"]), N, H)](
        q, k_media, v_media, cu_media, k_latent, v_latent, o, lse,
        *_s(q), *_s_packed(k_media), *_s_packed(v_media), *_s(k_latent), *_s(v_latent), *_s(o),
        H, L, D, scale * LOG2E, PRECISION=_precision(q.dtype), **c)
    return o, lse


@triton_custom_op("xgenmm_triton::perceiver_varlen_bwd")
def perceiver_varlen_bwd(do: torch.Tensor, q: torch.Tensor, k_media: torch.Tensor, v_media: torch.Tensor,
                         cu_media: torch.Tensor, k_latent: torch.Tensor, v_latent: torch.Tensor, max_media: int,
                         o: torch.Tensor, lse: torch.Tensor, scale: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, H, L, D = q.shape
    if N == 0 or H == 0 or L == 0:
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device=q.device)
                     for t in (q, k_media, v_media, k_latent, v_latent))
    # all written: dQ and the latent dK/dV cover L, the media dK/dV each chunk's [cu[b], cu[b + 1]), and
    # the chunks cover the media rows (cu_media from 0 to total_media). dQ and the latent dK/dV take q's
    # memory layout (the model's (tile, latent, head·D) projections: their views' autograd then copies
    # nothing); the media dK/dV are contiguous (total, H, D), as the model's media k/v projections are.
    # with ATOMIC_DQ the dK/dV kernel sums dQ into an fp32 buffer in q's layout (zeroed: every pair adds to it)
    atomic_dq = _pa.ATOMIC_DQ
    dq = torch.zeros_like(q, dtype=torch.float32) if atomic_dq else _utils.unwritten_like(q)
    dkl, dvl = (_utils.unwritten_like(q) for _ in range(2))
    dkm, dvm = (_utils.unwritten(t.shape, t.dtype, q.device) for t in (k_media, v_media))
    do = lastdim_contig(do)  # the output projection's gradient, a (tile, head, latent) view
    delta = backward_delta(o, do, torch.empty((N, H, L), dtype=torch.float32, device=q.device), interpreting())
    common = dict(PRECISION=_precision(q.dtype))
    if not atomic_dq:
        c = _cfg(D, "dq")
        wrap_triton(_perceiver_varlen_bwd_dq_kernel)[(triton.cdiv(L, c["BLOCK_M"]), N, H)](
            q, k_media, v_media, cu_media, k_latent, v_latent, do, lse, delta, dq,
            *_s(q), *_s_packed(k_media), *_s_packed(v_media), *_s(k_latent), *_s(v_latent), *_s(do), *_s(dq),
            H, L, D, scale * LOG2E, scale, **common, **c)
    c = _cfg(D, "dkdv_atomic_dq" if atomic_dq else "dkdv")
    n_media_blocks = triton.cdiv(max_media, c["BLOCK_N"])
    wrap_triton(_perceiver_varlen_bwd_dkdv_kernel)[(n_media_blocks + triton.cdiv(L, c["BLOCK_N"]), N, H)](
        q, do, lse, delta, k_media, v_media, cu_media, k_latent, v_latent, dkm, dvm, dkl, dvl, dq,
        *_s(q), *_s(do), *_s_packed(k_media), *_s_packed(v_media), *_s(k_latent), *_s(v_latent),
        *_s_packed(dkm), *_s_packed(dvm), *_s(dkl), *_s(dvl), *_s(dq),
        H, L, D, n_media_blocks, scale * LOG2E, scale, KEYS_MAJOR=_pa.DKDV_KEYS_MAJOR, ATOMIC_DQ=atomic_dq,
        **common, **c)
    if atomic_dq:  # one pass: scale and round into q's dtype and layout
        return torch.mul(dq, scale, out=_utils.unwritten_like(q)), dkm, dvm, dkl, dvl
    return dq, dkm, dvm, dkl, dvl


def _setup(ctx, inputs, output):
    q, km, vm, cu, kl, vl, max_media, scale = inputs
    o, lse = output
    ctx.max_media, ctx.scale = max_media, scale
    ctx.save_for_backward(q, km, vm, cu, kl, vl, o, lse)


def _backward(ctx, do, _dlse):
    q, km, vm, cu, kl, vl, o, lse = ctx.saved_tensors
    dq, dkm, dvm, dkl, dvl = perceiver_varlen_bwd(do, q, km, vm, cu, kl, vl, ctx.max_media, o, lse, ctx.scale)
    return dq, dkm, dvm, None, dkl, dvl, None, None


perceiver_varlen_fwd.register_autograd(_backward, setup_context=_setup)



def perceiver_attention_varlen_triton(q, k_media, v_media, cu_media, k_latent, v_latent, scale: float,
                                      max_media: int | None = None):
    """Same signature and result as `attention.perceiver_attention_varlen_reference`."""
    if not usable(q, k_media, v_media, k_latent, v_latent):
        return perceiver_attention_varlen_reference(q, k_media, v_media, cu_media, k_latent, v_latent, scale,
                                                    max_media)
    N, H, _, D = q.shape
    if k_media.dim() != 3 or k_media.shape[1:] != (H, D) or v_media.shape != k_media.shape \
            or k_latent.shape != q.shape or v_latent.shape != q.shape:
        raise ValueError(f"perceiver_attention_varlen: expected q/k_latent/v_latent (N, H, L, D) and "
                         f"k_media/v_media (total_media, H, D); got q {tuple(q.shape)}, k_media "
                         f"{tuple(k_media.shape)}, v_media {tuple(v_media.shape)}, k_latent {tuple(k_latent.shape)}")
    if cu_media.shape != (N + 1,):
        raise ValueError(f"perceiver_attention_varlen: cu_media must be (N + 1,) = ({N + 1},), "
                         f"got {tuple(cu_media.shape)}")
    cu = cu_media.to(device=q.device, dtype=torch.int32).contiguous()
    if max_media is None:  # one host read; the model passes its padded length instead
        max_media = int((cu[1:] - cu[:-1]).max()) if N else 0
    q, k_media, v_media, k_latent, v_latent = (lastdim_contig(t) for t in (q, k_media, v_media, k_latent, v_latent))
    return perceiver_varlen_fwd(q, k_media, v_media, cu, k_latent, v_latent, int(max_media), float(scale))[0]
