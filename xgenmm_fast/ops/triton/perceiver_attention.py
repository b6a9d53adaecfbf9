"""Perceiver-resampler attention, forward + backward, reading its two key sources in place.

q (N, H, L, D) latent queries; media keys/values (N, H, M, D) with a (N, M) 0/1 mask (None = all
visible); latent keys/values (N, H, L, D), never masked. out = softmax(q·[k_media; k_latent]ᵀ·scale)
·[v_media; v_latent] — `attention.perceiver_attention_reference` — without concatenating the sources:
the online softmax runs over the media key blocks, then over the latent key blocks, of the same program.
Every tile of the batch (N) and every head runs in one launch. All tensors may be strided views
(the model's (N, T, H, d) → (N, H, T, d) transposes) as long as the head dim is contiguous.

Backward: delta = rowsum(dO · O) (one pass, `_flash.backward_delta`), a dQ kernel over both sources, and one
dK/dV launch whose programs cover media key blocks first, then latent key blocks (each program owns its key
rows: no atomics; with ATOMIC_DQ, off by default, the dK/dV programs also add dQ into an fp32 buffer by atomic
adds and no dQ kernel runs). Masked media keys get zero gradient. Every query row sees at least the latent
keys, so no row is ever empty. The head dim (96 at the released size) is one tile padded to the next power of two, or,
with SPLIT_HEAD_DIM, two tile parts (64 + 32; `_flash.head_split`), as in the LM attention kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..attention import perceiver_attention_reference
from ._flash import (BACKWARD_TILES, backward_delta, dkdv_dq_step, dkdv_dq_step_keys_major, dkdv_step,
                     dkdv_step_keys_major, dot_t, dq_step, head_split, load_head, online_softmax_step, store_head,
                     zeros_head)
from ._utils import interpreting, lastdim_contig, triton_custom_op, usable

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_tiles(qa, qb, acc_a, acc_b, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, D,
               tile_lo, tile_hi, MASKED: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(tile_lo, tile_hi, BLOCK_N):
        cols = start_n + offs_n
        rows = cols[:, None].to(tl.int64)
        row_mask = cols[:, None] < n_keys
        ka, kb = load_head(KB, rows, stride_kt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        va, vb = load_head(VB, rows, stride_vt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        qk = dot_t(qa, qb, ka, kb, BLOCK_DB, PRECISION) * qk_scale
        if MASKED:
            visible = cols < n_keys
            if HAS_MASK:
                visible = visible & (tl.load(MASKB + cols, mask=cols < n_keys, other=0) != 0)
            qk = tl.where(visible[None, :], qk, -float("inf"))
        acc_a, acc_b, m_i, l_i = online_softmax_step(qk, va, vb, acc_a, acc_b, m_i, l_i, PRECISION, BLOCK_DB)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _fwd_source(qa, qb, acc_a, acc_b, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, D,
                HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """Online softmax over one key source's n_keys rows. Without a token mask, only the last, partial tile
    computes a mask (the full tiles are all visible)."""
    n_full = 0
    if not HAS_MASK:
        n_full = (n_keys // BLOCK_N) * BLOCK_N
    acc_a, acc_b, m_i, l_i = _fwd_tiles(qa, qb, acc_a, acc_b, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys,
                                        qk_scale, D, 0, n_full, False, HAS_MASK, PRECISION, BLOCK_N,
                                        BLOCK_DA, BLOCK_DB)
    acc_a, acc_b, m_i, l_i = _fwd_tiles(qa, qb, acc_a, acc_b, m_i, l_i, KB, VB, MASKB, stride_kt, stride_vt, n_keys,
                                        qk_scale, D, n_full, n_keys, True, HAS_MASK, PRECISION, BLOCK_N,
                                        BLOCK_DA, BLOCK_DB)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _fwd_init(Q, offs_m, stride_t, L, D, BLOCK_M: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """The query block's two head parts and the empty online-softmax state."""
    qa, qb = load_head(Q, offs_m[:, None], stride_t, offs_m[:, None] < L, D, BLOCK_DA, BLOCK_DB)
    acc_a, acc_b = zeros_head(BLOCK_M, BLOCK_DA, BLOCK_DB)
    return qa, qb, acc_a, acc_b, tl.full((BLOCK_M,), -float("inf"), tl.float32), tl.zeros((BLOCK_M,), tl.float32)


@triton.jit
def _fwd_finish(O, LSE, offs_m, stride_t, L, D, acc_a, acc_b, m_i, l_i,
                BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    inv_l = 1.0 / l_i  # (every row sees the latent keys: l_i > 0)
    store_head(O, offs_m[:, None], stride_t, offs_m[:, None] < L, D, acc_a * inv_l[:, None], acc_b * inv_l[:, None],
               BLOCK_DA, BLOCK_DB)
    tl.store(LSE + offs_m, m_i + tl.log2(l_i), mask=offs_m < L)


@triton.jit
def _perceiver_fwd_kernel(Q, KM, VM, KL, VL, MASK, O, LSE,
                          sq_b, sq_h, sq_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                          skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, so_b, so_h, so_t, smask_b,
                          H, L, M, D, qk_scale,
                          HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                          BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qa, qb, acc_a, acc_b, m_i, l_i = _fwd_init(Q + b * sq_b + h * sq_h, offs_m, sq_t, L, D, BLOCK_M, BLOCK_DA,
                                               BLOCK_DB)
    acc_a, acc_b, m_i, l_i = _fwd_source(qa, qb, acc_a, acc_b, m_i, l_i, KM + b * skm_b + h * skm_h,
                                         VM + b * svm_b + h * svm_h, MASK + b * smask_b, skm_t, svm_t, M, qk_scale,
                                         D, HAS_MASK, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    acc_a, acc_b, m_i, l_i = _fwd_source(qa, qb, acc_a, acc_b, m_i, l_i, KL + b * skl_b + h * skl_h,
                                         VL + b * svl_b + h * svl_h, MASK, skl_t, svl_t, L, qk_scale, D,
                                         False, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    _fwd_finish(O + b * so_b + h * so_h, LSE + (b * H + h) * L, offs_m, so_t, L, D, acc_a, acc_b, m_i, l_i,
                BLOCK_DA, BLOCK_DB)


@triton.jit
def _dq_source(qa, qb, doa, dob, lse, delta, dq_a, dq_b, KB, VB, MASKB, stride_kt, stride_vt, n_keys, qk_scale, D,
               HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        rows = cols[:, None].to(tl.int64)
        ka, kb = load_head(KB, rows, stride_kt, cols[:, None] < n_keys, D, BLOCK_DA, BLOCK_DB)
        va, vb = load_head(VB, rows, stride_vt, cols[:, None] < n_keys, D, BLOCK_DA, BLOCK_DB)
        qk = dot_t(qa, qb, ka, kb, BLOCK_DB, PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if HAS_MASK:  # (keys past n_keys need no mask: their k = v = 0 add ds · k = 0 to dq)
            visible = (cols < n_keys) & (tl.load(MASKB + cols, mask=cols < n_keys, other=0) != 0)
            p = tl.where(visible[None, :], p, 0.0)
        dq_a, dq_b = dq_step(p, delta, doa, dob, va, vb, ka, kb, dq_a, dq_b, BLOCK_DB, PRECISION)
    return dq_a, dq_b


@triton.jit
def _dq_block(Q, DO, LSE, DELTA, DQ, KM, VM, MASKB, KL, VL, offs_m, sq_t, sdo_t, sdq_t, skm_t, svm_t, skl_t, svl_t,
              n_media, L, D, qk_scale, sm_scale, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """One dQ program of both kernel families: query rows offs_m of one (chunk, head), every pointer already at
    that chunk and head, against its n_media media keys (token-masked with HAS_MASK) and its L latents."""
    qa, qb = load_head(Q, offs_m[:, None], sq_t, offs_m[:, None] < L, D, BLOCK_DA, BLOCK_DB)
    doa, dob = load_head(DO, offs_m[:, None], sdo_t, offs_m[:, None] < L, D, BLOCK_DA, BLOCK_DB)
    lse = tl.load(LSE + offs_m, mask=offs_m < L, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=offs_m < L, other=0.0)
    dq_a, dq_b = zeros_head(BLOCK_M, BLOCK_DA, BLOCK_DB)
    dq_a, dq_b = _dq_source(qa, qb, doa, dob, lse, delta, dq_a, dq_b, KM, VM, MASKB, skm_t, svm_t, n_media,
                            qk_scale, D, HAS_MASK, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    dq_a, dq_b = _dq_source(qa, qb, doa, dob, lse, delta, dq_a, dq_b, KL, VL, MASKB, skl_t, svl_t, L, qk_scale, D,
                            False, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
    store_head(DQ, offs_m[:, None], sdq_t, offs_m[:, None] < L, D, dq_a * sm_scale, dq_b * sm_scale,
               BLOCK_DA, BLOCK_DB)


@triton.jit
def _perceiver_bwd_dq_kernel(Q, KM, VM, KL, VL, MASK, DO, LSE, DELTA, DQ,
                             sq_b, sq_h, sq_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                             skl_b, skl_h, skl_t, svl_b, svl_h, svl_t, sdo_b, sdo_h, sdo_t,
                             sdq_b, sdq_h, sdq_t, smask_b, H, L, M, D, qk_scale, sm_scale,
                             HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                             BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    _dq_block(Q + b * sq_b + h * sq_h, DO + b * sdo_b + h * sdo_h, LSE + (b * H + h) * L, DELTA + (b * H + h) * L,
              DQ + b * sdq_b + h * sdq_h, KM + b * skm_b + h * skm_h, VM + b * svm_b + h * svm_h, MASK + b * smask_b,
              KL + b * skl_b + h * skl_h, VL + b * svl_b + h * svl_h, offs_m, sq_t, sdo_t, sdq_t, skm_t, svm_t,
              skl_t, svl_t, M, L, D, qk_scale, sm_scale, HAS_MASK, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB)


@triton.jit
def _dkdv_block(Q, DO, LSE, DELTA, K, V, DK, DV, DQACC, MASKB, b, h, start_n, n_keys,
                sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale,
                HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                KEYS_MAJOR: tl.constexpr = False, ATOMIC_DQ: tl.constexpr = False):
    """dK/dV of key rows [start_n, start_n + BLOCK_N) of one source (n_keys rows) from every query of (b, h).
    ATOMIC_DQ: each query tile's dS · K is also added into the fp32 DQACC ((N, H, L, D) strides sdq_*): keys
    past n_keys load k = 0 and masked keys have dS = 0, so only real keys contribute."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    nmask = offs_n[:, None] < n_keys
    ka, kb = load_head(K + b * sk_b + h * sk_h, offs_n[:, None], sk_t, nmask, D, BLOCK_DA, BLOCK_DB)
    va, vb = load_head(V + b * sv_b + h * sv_h, offs_n[:, None], sv_t, nmask, D, BLOCK_DA, BLOCK_DB)
    visible = offs_n < n_keys
    if HAS_MASK:
        visible = visible & (tl.load(MASKB + offs_n, mask=offs_n < n_keys, other=0) != 0)
    dk_a, dk_b = zeros_head(BLOCK_N, BLOCK_DA, BLOCK_DB)
    dv_a, dv_b = zeros_head(BLOCK_N, BLOCK_DA, BLOCK_DB)
    QB = Q + b * sq_b + h * sq_h
    DOB = DO + b * sdo_b + h * sdo_h
    DQB = DQACC + b * sdq_b + h * sdq_h
    for start_m in range(0, L, BLOCK_M):
        rows = start_m + offs_m
        qa, qb = load_head(QB, rows[:, None], sq_t, rows[:, None] < L, D, BLOCK_DA, BLOCK_DB)
        doa, dob = load_head(DOB, rows[:, None], sdo_t, rows[:, None] < L, D, BLOCK_DA, BLOCK_DB)
        lse = tl.load(LSE + (b * H + h) * L + rows, mask=rows < L, other=float("inf"))
        delta = tl.load(DELTA + (b * H + h) * L + rows, mask=rows < L, other=0.0)
        if KEYS_MAJOR:  # scores as K·Qᵀ (see varlen_attention.DKDV_KEYS_MAJOR)
            kq = dot_t(ka, kb, qa, qb, BLOCK_DB, PRECISION) * qk_scale
            pt = tl.exp2(kq - lse[None, :])
            if HAS_MASK:
                pt = tl.where(visible[:, None], pt, 0.0)
            if ATOMIC_DQ:
                dk_a, dk_b, dv_a, dv_b = dkdv_dq_step_keys_major(
                    pt, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a, dv_b, DQB, rows.to(tl.int64),
                    rows < L, sdq_t, D, BLOCK_DA, BLOCK_DB, PRECISION)
            else:
                dk_a, dk_b, dv_a, dv_b = dkdv_step_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a,
                                                              dv_b, BLOCK_DB, PRECISION)
        else:
            qk = dot_t(qa, qb, ka, kb, BLOCK_DB, PRECISION) * qk_scale
            p = tl.exp2(qk - lse[:, None])  # rows past L load lse = +inf: p = 0 there
            if HAS_MASK:  # (keys past n_keys are never stored: only the token mask matters)
                p = tl.where(visible[None, :], p, 0.0)
            if ATOMIC_DQ:
                dk_a, dk_b, dv_a, dv_b = dkdv_dq_step(p, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a,
                                                      dv_b, DQB, rows[:, None].to(tl.int64), sdq_t,
                                                      rows[:, None] < L, D, BLOCK_DA, BLOCK_DB, PRECISION)
            else:
                dk_a, dk_b, dv_a, dv_b = dkdv_step(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b,
                                                   BLOCK_DB, PRECISION)
    store_head(DK + b * sdk_b + h * sdk_h, offs_n[:, None], sdk_t, nmask, D, dk_a * sm_scale, dk_b * sm_scale,
               BLOCK_DA, BLOCK_DB)
    store_head(DV + b * sdv_b + h * sdv_h, offs_n[:, None], sdv_t, nmask, D, dv_a, dv_b, BLOCK_DA, BLOCK_DB)


@triton.jit
def _perceiver_bwd_dkdv_kernel(Q, DO, LSE, DELTA, KM, VM, KL, VL, DKM, DVM, DKL, DVL, DQACC, MASK,
                               sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t,
                               skm_b, skm_h, skm_t, svm_b, svm_h, svm_t, skl_b, skl_h, skl_t,
                               svl_b, svl_h, svl_t, sdkm_b, sdkm_h, sdkm_t, sdvm_b, sdvm_h, sdvm_t,
                               sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t, sdq_b, sdq_h, sdq_t, smask_b,
                               H, L, M, D, n_media_blocks, qk_scale, sm_scale,
                               HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                               BLOCK_DB: tl.constexpr, KEYS_MAJOR: tl.constexpr = False,
                               ATOMIC_DQ: tl.constexpr = False):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    if pid < n_media_blocks:
        _dkdv_block(Q, DO, LSE, DELTA, KM, VM, DKM, DVM, DQACC, MASK + b * smask_b, b, h, pid * BLOCK_N, M,
                    sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, skm_b, skm_h, skm_t, svm_b, svm_h, svm_t,
                    sdkm_b, sdkm_h, sdkm_t, sdvm_b, sdvm_h, sdvm_t, sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale,
                    HAS_MASK, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)
    else:
        _dkdv_block(Q, DO, LSE, DELTA, KL, VL, DKL, DVL, DQACC, MASK, b, h, (pid - n_media_blocks) * BLOCK_N, L,
                    sq_b, sq_h, sq_t, sdo_b, sdo_h, sdo_t, skl_b, skl_h, skl_t, svl_b, svl_h, svl_t,
                    sdkl_b, sdkl_h, sdkl_t, sdvl_b, sdvl_h, sdvl_t, sdq_b, sdq_h, sdq_t, H, L, D, qk_scale, sm_scale,
                    False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)


# (BLOCK_M, BLOCK_N) under the interpreter; tests also set unequal sizes (the GPU's backward tiles are)
INTERPRET_BLOCKS = (16, 16)
# the head dim (96 at the released size) as two tile parts, 64 + 32, instead of one padded to 128
# (_flash.head_split); off until a GPU benchmark says it pays (benchmarks/sweep_attention_tiles.py)
SPLIT_HEAD_DIM = False
# the dK/dV kernels' scores as K·Qᵀ (as varlen_attention.DKDV_KEYS_MAJOR; perceiver_varlen reads it here too);
# off until a GPU benchmark says it pays
DKDV_KEYS_MAJOR = False
# dQ from the dK/dV kernels by fp32 atomic adds, no dQ kernel (as varlen_attention.ATOMIC_DQ; perceiver_varlen
# reads it here too): each (query tile, key block) pair adds its dS · K, so the dQ kernel's recompute of the
# scores and dP over all 128 + ~700 keys of a tile (two of the backward's seven matmuls) is gone; one fp32 ->
# dtype pass follows. Not bit-reproducible. Off until a GPU benchmark says it pays; tested both ways.
ATOMIC_DQ = False
# its dK/dV kernel's tiles ("dkdv_atomic_dq"), from the sm_90 static check at head dim 96: see _cfg
ATOMIC_DQ_TILES = dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)


def _cfg(D: int, kernel: str) -> dict:
    """Tile sizes and launch options per kernel ("fwd", "dkdv", "dq", "dkdv_atomic_dq"; shared with
    perceiver_varlen.py).
    On the GPU: the forward 64 x 64, 8 warps (spill-free at sm_90, head dim 96); the backward kernels
    the LM attention's measured tiles (_flash.BACKWARD_TILES)."""
    da, db = head_split(D, SPLIT_HEAD_DIM)
    heads = dict(BLOCK_DA=da, BLOCK_DB=db)
    if interpreting():
        bm, bn = INTERPRET_BLOCKS
        return dict(BLOCK_M=bm, BLOCK_N=bn, **heads, num_warps=1, num_stages=1)
    if kernel in BACKWARD_TILES:
        return dict(BACKWARD_TILES[kernel], **heads)
    if kernel == "dkdv_atomic_dq":
        return dict(ATOMIC_DQ_TILES, **heads)
    return dict(BLOCK_M=64, BLOCK_N=64, **heads, num_warps=8, num_stages=3)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _s(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a (N, H, T, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _mask_arg(media_mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return media_mask.to(device=q.device, dtype=torch.int32).contiguous()


@triton_custom_op("xgenmm_triton::perceiver_attn_fwd")
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


@triton_custom_op("xgenmm_triton::perceiver_attn_bwd")
def perceiver_attn_bwd(do: torch.Tensor, q: torch.Tensor, k_media: torch.Tensor, v_media: torch.Tensor,
                       k_latent: torch.Tensor, v_latent: torch.Tensor, media_mask: torch.Tensor, has_mask: bool,
                       o: torch.Tensor, lse: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, H, L, D = q.shape
    M = k_media.shape[2]
    atomic_dq = ATOMIC_DQ
    # with ATOMIC_DQ the dK/dV kernel sums dQ into an fp32 buffer (zeroed: every pair adds to it)
    dq_acc = torch.zeros(q.shape, dtype=torch.float32 if atomic_dq else q.dtype, device=q.device)
    dkm, dvm = torch.zeros(k_media.shape, dtype=k_media.dtype, device=q.device), torch.zeros(
        v_media.shape, dtype=v_media.dtype, device=q.device)
    dkl, dvl = torch.zeros(k_latent.shape, dtype=k_latent.dtype, device=q.device), torch.zeros(
        v_latent.shape, dtype=v_latent.dtype, device=q.device)
    if N == 0 or H == 0 or L == 0:
        return dq_acc.to(q.dtype), dkm, dvm, dkl, dvl
    do = lastdim_contig(do)  # the output projection's gradient, a (tile, head, latent) view
    delta = backward_delta(o, do, torch.empty((N, H, L), dtype=torch.float32, device=q.device), interpreting())
    common = dict(HAS_MASK=has_mask, PRECISION=_precision(q.dtype))
    if not atomic_dq:
        c = _cfg(D, "dq")
        wrap_triton(_perceiver_bwd_dq_kernel)[(triton.cdiv(L, c["BLOCK_M"]), N, H)](
            q, k_media, v_media, k_latent, v_latent, media_mask, do, lse, delta, dq_acc,
            *_s(q), *_s(k_media), *_s(v_media), *_s(k_latent), *_s(v_latent), *_s(do), *_s(dq_acc),
            media_mask.stride(0), H, L, M, D, scale * LOG2E, scale, **common, **c)
    c = _cfg(D, "dkdv_atomic_dq" if atomic_dq else "dkdv")
    n_media_blocks = triton.cdiv(M, c["BLOCK_N"])
    wrap_triton(_perceiver_bwd_dkdv_kernel)[(n_media_blocks + triton.cdiv(L, c["BLOCK_N"]), N, H)](
        q, do, lse, delta, k_media, v_media, k_latent, v_latent, dkm, dvm, dkl, dvl, dq_acc, media_mask,
        *_s(q), *_s(do), *_s(k_media), *_s(v_media), *_s(k_latent), *_s(v_latent),
        *_s(dkm), *_s(dvm), *_s(dkl), *_s(dvl), *_s(dq_acc), media_mask.stride(0),
        H, L, M, D, n_media_blocks, scale * LOG2E, scale, KEYS_MAJOR=DKDV_KEYS_MAJOR, ATOMIC_DQ=atomic_dq,
        **common, **c)
    if atomic_dq:  # one pass: scale and round into q's dtype
        return torch.mul(dq_acc, scale, out=torch.empty(q.shape, dtype=q.dtype, device=q.device)), dkm, dvm, dkl, dvl
    return dq_acc, dkm, dvm, dkl, dvl


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
