"""Perceiver-resampler attention, forward + backward, reading its two key sources in place.

q (N, H, L, D) latent queries; media keys/values (N, H, M, D) with a (N, M) 0/1 mask (None = all
visible); latent keys/values (N, H, L, D), never masked. out = softmax(q·[k_media; k_latent]ᵀ·scale)
·[v_media; v_latent] — `attention.perceiver_attention_reference` — without concatenating the sources:
the online softmax runs over the media key blocks, then over the latent key blocks, of the same program.
Every tile of the batch (N) and every head runs in one launch. All tensors may be strided views
(the model's (N, T, H, d) → (N, H, T, d) transposes) as long as the head dim is contiguous.

Backward: delta = rowsum(dO · O) (torch), a dQ kernel over both sources, and one dK/dV launch whose
programs cover media key blocks first, then latent key blocks (each program owns its key rows: no
atomics). Masked media keys get zero gradient. Every query row sees at least the latent keys, so no row
is ever empty.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..attention import perceiver_attention_reference
from ._flash import BACKWARD_TILES, online_softmax_step
from ._utils import interpreting, lastdim_contig, next_pow2, usable

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_tiles(q, acc, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, offs_d, dmask,
               tile_lo, tile_hi, MASKED: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(tile_lo, tile_hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            kvmask = (cols[:, None] < n_keys) & dmask
        else:
            kvmask = dmask
        k = tl.load(KB + cols[:, None].to(tl.int64) * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        v = tl.load(VB + cols[:, None].to(tl.int64) * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            visible = cols < n_keys
            if HAS_MASK:
                visible = visible & (tl.load(MASKB + cols, mask=cols < n_keys, other=0) != 0)
            qk = tl.where(visible[None, :], qk, -float("inf"))
        acc, m_i, l_i = online_softmax_step(qk, v, acc, m_i, l_i, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _fwd_source(q, acc, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, offs_d, dmask,
                HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over one key source's n_keys rows. Without a token mask, only the last, partial tile
    computes a mask (the full tiles are all visible)."""
    n_full = 0
    if not HAS_MASK:
        n_full = (n_keys // BLOCK_N) * BLOCK_N
    acc, m_i, l_i = _fwd_tiles(q, acc, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, offs_d,
                               dmask, 0, n_full, False, HAS_MASK, PRECISION, BLOCK_N)
    acc, m_i, l_i = _fwd_tiles(q, acc, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, offs_d,
                               dmask, n_full, n_keys, True, HAS_MASK, PRECISION, BLOCK_N)
    return acc, m_i, l_i


@triton.jit
def _perceiver_fwd_kernel(Q, KM, VM, KL, VL, MASK, O, LSE,
                          sq_b, sq_h, sq_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                          skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, so_b, so_h, so_t, smask_b,
                          H, L, M, D, qk_scale,
                          HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    qmask = (offs_m[:, None] < L) & dmask
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=qmask, other=0.0)
    m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    acc, m_i, l_i = _fwd_source(q, acc, m_i, l_i, KM + b * skm_b + h * skm_h, VM + b * svm_b + h * svm_h,
                                MASK + b * smask_b, skm_t, svm_t, M, qk_scale, offs_d, dmask,
                                HAS_MASK, PRECISION, BLOCK_N)
    acc, m_i, l_i = _fwd_source(q, acc, m_i, l_i, KL + b * skl_b + h * skl_h, VL + b * svl_b + h * svl_h,
                                MASK, skl_t, svl_t, L, qk_scale, offs_d, dmask,
                                False, PRECISION, BLOCK_N)
    o = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], o.to(O.dtype.element_ty), mask=qmask)
    tl.store(LSE + (b * H + h) * L + offs_m, m_i + tl.log2(l_i), mask=offs_m < L)


@triton.jit
def _dq_source(q, do, lse, delta, dq, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, offs_d, dmask,
               HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        kvmask = (cols[:, None] < n_keys) & dmask
        k = tl.load(KB + cols[:, None].to(tl.int64) * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        v = tl.load(VB + cols[:, None].to(tl.int64) * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if HAS_MASK:  # (keys past n_keys need no mask: their k = v = 0 add ds · k = 0 to dq)
            visible = (cols < n_keys) & (tl.load(MASKB + cols, mask=cols < n_keys, other=0) != 0)
            p = tl.where(visible[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _perceiver_bwd_dq_kernel(Q, KM, VM, KL, VL, MASK, DO, LSE, DELTA, DQ,
                             sq_b, sq_h, sq_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                             skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, sdo_b, sdo_h, sdo_t,
                             sdq_b, sdq_h, sdq_t, smask_b, H, L, M, D, qk_scale, sm_scale,
                             HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    qmask = (offs_m[:, None] < L) & dmask
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_t + offs_d[None, :], mask=qmask, other=0.0)
    lse = tl.load(LSE + (b * H + h) * L + offs_m, mask=offs_m < L, other=float("inf"))
    delta = tl.load(DELTA + (b * H + h) * L + offs_m, mask=offs_m < L, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    dq = _dq_source(q, do, lse, delta, dq, KM + b * skm_b + h * skm_h, VM + b * svm_b + h * svm_h,
                    MASK + b * smask_b, skm_t, svm_t, M, qk_scale, offs_d, dmask, HAS_MASK, PRECISION, BLOCK_N)
    dq = _dq_source(q, do, lse, delta, dq, KL + b * skl_b + h * skl_h, VL + b * svl_b + h * svl_h,
                    MASK, skl_t, svl_t, L, qk_scale, offs_d, dmask, False, PRECISION, BLOCK_N)
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _dkdv_block(Q, DO, LSE, DELTA, K, V, DK, DV, MASKB, b, h, start_n, n_keys,
                sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, H, L, D, qk_scale, sm_scale,
                HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    nmask = (offs_n[:, None] < n_keys) & dmask
    k = tl.load(K + b * sk_b + h * sk_h + offs_n[:, None] * sk_t + offs_d[None, :], mask=nmask, other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + offs_n[:, None] * sv_t + offs_d[None, :], mask=nmask, other=0.0)
    visible = offs_n < n_keys
    if HAS_MASK:
        visible = visible & (tl.load(MASKB + offs_n, mask=offs_n < n_keys, other=0) != 0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start_m in range(0, L, BLOCK_M):
        rows = start_m + offs_m
        mmask = (rows[:, None] < L) & dmask
        q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_t + offs_d[None, :], mask=mmask, other=0.0)
        do = tl.load(DO + b * sdo_b + h * sdo_h + rows[:, None] * sdo_t + offs_d[None, :], mask=mmask, other=0.0)
        lse = tl.load(LSE + (b * H + h) * L + rows, mask=rows < L, other=float("inf"))
        delta = tl.load(DELTA + (b * H + h) * L + rows, mask=rows < L, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])  # rows past L load lse = +inf: p = 0 there
        if HAS_MASK:  # (keys past n_keys are never stored: only the token mask matters)
            p = tl.where(visible[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    tl.store(DK + b * sdk_b + h * sdk_h + offs_n[:, None] * sdk_t + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=nmask)
    tl.store(DV + b * sdv_b + h * sdv_h + offs_n[:, None] * sdv_t + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=nmask)


@triton.jit
def _perceiver_bwd_dkdv_kernel(Q, DO, LSE, DELTA, KM, VM, KL, VL, DKM, DVM, DKL, DVL, MASK,
                               sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t,
                               skm_b, skm_h, skm_t, svm_b, svm_h, svm_t, skl_b, skl_h, skl_t,
                               svl_b, svl_h, svl_t, sdkm_b, sdkm_h, sdkm_t, sdvm_b, sdvm_h, sdvm_t,
                               sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t, smask_b,
                               H, L, M, D, n_media_blocks, qk_scale, sm_scale,
                               HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    if pid < n_media_blocks:
        _dkdv_block(Q, DO, LSE, DELTA, KM, VM, DKM, DVM, MASK + b * smask_b, b, h, pid * BLOCK_N, M,
                    sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                    sdkm_b, sdkm_h, sdkm_t, sdvm_b, sdvm_h, sdvm_t, H, L, D, qk_scale, sm_scale,
                    HAS_MASK, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
    else:
        _dkdv_block(Q, DO, LSE, DELTA, KL, VL, DKL, DVL, MASK, b, h, (pid - n_media_blocks) * BLOCK_N, L,
                    sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, skl_b, skl_h, skl_t, svl_b, svl_h, svl_t,
                    sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t, H, L, D, qk_scale, sm_scale,
                    False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


# (BLOCK_M, BLOCK_N) under the interpreter; tests also set unequal sizes (the GPU's backward tiles are)
INTERPRET_BLOCKS = (16, 16)


def _cfg(D: int, kernel: str) -> dict:
    """Tile sizes and launch options per kernel ("fwd", "dkdv", "dq"; shared with perceiver_varlen.py).
    On the GPU: the forward 64 x 64, 8 warps (spill-free at sm_90, head dim 96); the backward kernels
    the LM attention's measured tiles (_flash.BACKWARD_TILES)."""
    block_d = max(16, next_pow2(D))
    if interpreting():
        bm, bn = INTERPRET_BLOCKS
        return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=1, num_stages=1)
    if kernel in BACKWARD_TILES:
        return dict(BACKWARD_TILES[kernel], BLOCK_D=block_d)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=8, num_stages=3)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _s(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a (N, H, T, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _mask_arg(media_mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return media_mask.to(device=q.device, dtype=torch.int32).contiguous()


@triton_op("xgenmm_triton::perceiver_attn_fwd", mutates_args={})
def perceiver_attn_fwd(q: torch.Tensor, k_media: torch.Tensor, v_media: torch.Tensor, k_latent: torch.Tensor,
                       v_latent: torch.Tensor, media_mask: torch.Tensor, has_mask: bool,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> out (N, H, L, D) contiguous, lse (N, H, L) fp32 (log2 domain)."""
    N, H, L, D = q.shape
    M = k_media.shape[2]
    o = torch.empty((N, H, L, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((N, H, L), dtype=torch.float32, device=q.device)
    if N == 0 or H == 0 or L == 0:
        return o, lse
    c = _cfg(D, "fwd")
    wrap_triton(_perceiver_fwd_kernel)[(triton.cdiv(L, c["BLOCK_M"]), N, H)](
        q, k_media, v_media, k_latent, v_latent, media_mask, o, lse,
        *_s(q), *_s(k_media), *_s(v_media), *_s(k_latent), *_s(v_latent), *_s(o), media_mask.stride(0),
        H, L, M, D, scale * LOG2E, HAS_MASK=has_mask, PRECISION=_precision(q.dtype), **c)
    return o, lse


@triton_op("xgenmm_triton::perceiver_attn_bwd", mutates_args={})
def perceiver_attn_bwd(do: torch.Tensor, q: torch.Tensor, k_media: torch.Tensor, v_media: torch.Tensor,
                       k_latent: torch.Tensor, v_latent: torch.Tensor, media_mask: torch.Tensor, has_mask: bool,
                       o: torch.Tensor, lse: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, H, L, D = q.shape
    M = k_media.shape[2]
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dkm, dvm = torch.zeros(k_media.shape, dtype=k_media.dtype, device=q.device), torch.zeros(
        v_media.shape, dtype=v_media.dtype, device=q.device)
    dkl, dvl = torch.zeros(k_latent.shape, dtype=k_latent.dtype, device=q.device), torch.zeros(
        v_latent.shape, dtype=v_latent.dtype, device=q.device)
    if N == 0 or H == 0 or L == 0:
        return dq, dkm, dvm, dkl, dvl
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (N, H, L)
    common = dict(HAS_MASK=has_mask, PRECISION=_precision(q.dtype))
    c = _cfg(D, "dq")
    wrap_triton(_perceiver_bwd_dq_kernel)[(triton.cdiv(L, c["BLOCK_M"]), N, H)](
        q, k_media, v_media, k_latent, v_latent, media_mask, do, lse, delta, dq,
        *_s(q), *_s(k_media), *_s(v_media), *_s(k_latent), *_s(v_latent), *_s(do), *_s(dq), media_mask.stride(0),
        H, L, M, D, scale * LOG2E, scale, **common, **c)
    c = _cfg(D, "dkdv")
    n_media_blocks = triton.cdiv(M, c["BLOCK_N"])
    wrap_triton(_perceiver_bwd_dkdv_kernel)[(n_media_blocks + triton.cdiv(L, c["BLOCK_N"]), N, H)](
        q, do, lse, delta, k_media, v_media, k_latent, v_latent, dkm, dvm, dkl, dvl, media_mask,
        *_s(q), *_s(do), *_s(k_media), *_s(v_media), *_s(k_latent), *_s(v_latent),
        *_s(dkm), *_s(dvm), *_s(dkl), *_s(dvl), media_mask.stride(0),
        H, L, M, D, n_media_blocks, scale * LOG2E, scale, **common, **c)
    return dq, dkm, dvm, dkl, dvl


def _setup(ctx, inputs, output):
    q, km, vm, kl, vl, mask, has_mask, scale = inputs
    o, lse = output
    ctx.has_mask, ctx.scale = has_mask, scale
    ctx.save_for_backward(q, km, vm, kl, vl, mask, o, lse)


def _backward(ctx, do, _dlse):
    q, km, vm, kl, vl, mask, o, lse = ctx.saved_tensors
    dq, dkm, dvm, dkl, dvl = perceiver_attn_bwd(do, q, km, vm, kl, vl, mask, ctx.has_mask, o, lse, ctx.scale)
    return dq, dkm, dvm, dkl, dvl, None, None, None


perceiver_attn_fwd.register_autograd(_backward, setup_context=_setup)



def perceiver_attention_triton(q, k_media, v_media, k_latent, v_latent, media_mask, scale: float):
    """Same signature and result as `attention.perceiver_attention_reference`."""
    if not usable(q, k_media, v_media, k_latent, v_latent):
        return perceiver_attention_reference(q, k_media, v_media, k_latent, v_latent, media_mask, scale)
    N, H, L, D = q.shape
    if k_media.shape[:2] != (N, H) or k_latent.shape != q.shape or v_latent.shape != q.shape \
            or v_media.shape != k_media.shape or k_media.shape[-1] != D:
        raise ValueError(f"perceiver_attention: expected q/k_latent/v_latent (N, H, L, D) and k_media/v_media "
                         f"(N, H, M, D); got q {tuple(q.shape)}, k_media {tuple(k_media.shape)}, "
                         f"v_media {tuple(v_media.shape)}, k_latent {tuple(k_latent.shape)}")
    q, k_media, v_media, k_latent, v_latent = (lastdim_contig(t) for t in (q, k_media, v_media, k_latent, v_latent))
    has_mask = media_mask is not None
    mask = _mask_arg(media_mask, q) if has_mask else torch.ones((N, 1), dtype=torch.int32, device=q.device)
    if has_mask and mask.shape != (N, k_media.shape[2]):
        raise ValueError(f"perceiver_attention: media_mask must be (N, M) = {(N, k_media.shape[2])}, "
                         f"got {tuple(media_mask.shape)}")
    return perceiver_attn_fwd(q, k_media, v_media, k_latent, v_latent, mask, has_mask, float(scale))[0]
