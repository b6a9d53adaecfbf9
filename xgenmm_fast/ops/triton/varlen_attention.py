"""Varlen causal flash attention over packed sequences (forward + backward), and the decode kernel.

Layouts (flash-attention varlen API):
  q (total, Hq, D), k/v (total, Hkv, D), cu_seqlens (n_seq + 1,) int32, Hq % Hkv == 0 (GQA);
  out (total, Hq, D); the forward also keeps lse (Hq, total) fp32 (log2 domain) for the backward.
Masking as `attention.varlen_attention_reference`: each sequence attends only within itself; causal
means key j visible to query i iff j ≤ i; a sliding window W additionally needs i − j < W.

Forward: one program per (query block, sequence, q head); online softmax (exp2, fp32 statistics) over
the key blocks that can be visible — [lo, hi) cut by causality and the window, so masked-out tiles are
never loaded. Of those, the tiles visible to every row of the block (`_unmasked_tiles`) run without
computing a mask: only the tiles on the causal diagonal, the window's edge and the sequence end do
(the same split in both backward kernels). Head dims that are not powers of two (Phi-3: 96) are padded
to the next power of two inside the tile with masked loads/stores, or, with SPLIT_HEAD_DIM, carried as
two column parts (96 = 64 + 32: no matmul work on padding; `_flash.head_split`). Backward (FA2 style,
recomputation from the saved lse):
delta = rowsum(dO · O) (one pass, `_flash.backward_delta`); a dK/dV kernel per (key block, sequence, kv
head) that loops over the q heads of its GQA group and the visible query blocks (no atomics; with
DKDV_KEYS_MAJOR its scores are K·Qᵀ, so that P and dS need no transpose), and a dQ kernel per (query block,
sequence, q head).

Decode (`decode_attention`): the same forward kernel in its padded mode — q (B, Hq, Tq, D) against a
cache (B, Hkv, Tmax, D) of `cache_seqlens[b]` valid keys, query i at position cache_seqlens[b] − Tq + i.
Forward only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..attention import decode_attention_reference, varlen_attention_reference
from ._flash import (BACKWARD_TILES, backward_delta, dkdv_dq_step, dkdv_dq_step_keys_major, dkdv_step,
                     dkdv_step_keys_major, dot_t, dq_step, head_split, load_head, online_softmax_step, store_head,
                     zeros_head)
from . import _utils
from ._utils import interpreting, lastdim_contig, next_pow2, triton_custom_op, usable

LOG2E = 1.4426950408889634


@triton.jit
def _visible(q_pos, k_pos, k_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(queries, keys) mask of one tile: key j (< k_len) visible to the query at key position i when
    j ≤ i (causal) and i − j < window. q_pos, k_pos: 1-D positions in key coordinates."""
    visible = k_pos[None, :] < k_len
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        visible = visible & (q_pos[:, None] - k_pos[None, :] < window)
    return visible


@triton.jit
def _visible_keys_major(k_pos, q_pos, k_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """`_visible` as a (keys, queries) mask."""
    visible = k_pos[:, None] < k_len
    if CAUSAL:
        visible = visible & (k_pos[:, None] <= q_pos[None, :])
    if HAS_WINDOW:
        visible = visible & (q_pos[None, :] - k_pos[:, None] < window)
    return visible


@triton.jit
def _fwd_tiles(acc_a, acc_b, m_i, l_i, qa, qb, kb, vb, k_start, k_len, offs_m, offs_n, off, D,
               stride_kt, stride_vt, qk_scale, window, tile_lo, tile_hi,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """Online softmax over the key tiles starting in [tile_lo, tile_hi). MASKED=False only for tiles whose
    every (query row, key) pair is visible and in bounds: no masks computed there."""
    for start_n in range(tile_lo, tile_hi, BLOCK_N):
        cols = start_n + offs_n
        kv_rows = (k_start + cols[:, None]).to(tl.int64)
        row_mask = cols[:, None] < k_len
        ka, kb_ = load_head(kb, kv_rows, stride_kt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        va, vb_ = load_head(vb, kv_rows, stride_vt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        qk = dot_t(qa, qb, ka, kb_, BLOCK_DB, PRECISION) * qk_scale
        if MASKED:
            qk = tl.where(_visible(offs_m + off, cols, k_len, window, CAUSAL, HAS_WINDOW), qk, -float("inf"))
        acc_a, acc_b, m_i, l_i = online_softmax_step(qk, va, vb_, acc_a, acc_b, m_i, l_i, PRECISION, BLOCK_DB)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _unmasked_tiles(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Of the tiles starting at lo, lo + BLOCK, ... < hi, those lying inside [full_lo, full_hi) (no mask
    needed) start in [mid_lo, mid_hi); lo ≤ mid_lo ≤ mid_hi ≤ hi."""
    mid_lo = lo + tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK) * BLOCK
    mid_hi = lo + (tl.maximum(full_hi - lo, 0) // BLOCK) * BLOCK  # tiles with start + BLOCK ≤ full_hi
    mid_lo = tl.minimum(mid_lo, hi)
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    return mid_lo, mid_hi


@triton.jit
def _query_block(HEAVY_FIRST: tl.constexpr):
    """The query block of this program. Causal blocks late in a sequence see the most keys; the GPU starts
    programs in grid order, so HEAVY_FIRST hands out the last blocks first and the short ones fill the
    tail of the launch instead of a few long ones running alone."""
    if HEAVY_FIRST:
        return tl.num_programs(0) - 1 - tl.program_id(0)
    return tl.program_id(0)


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, SEQLEN_K,
                     stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                     stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh, stride_lse_h,
                     seqlen_q_fixed, qk_scale, window, GROUP, D,
                     CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, VARLEN: tl.constexpr,
                     STORE_LSE: tl.constexpr, PRECISION: tl.constexpr, HEAVY_FIRST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                     BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = _query_block(HEAVY_FIRST)
    b = tl.program_id(1)
    h = tl.program_id(2)
    hk = h // GROUP
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        k_len = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        q_len = seqlen_q_fixed
        k_start = 0
        k_len = tl.load(SEQLEN_K + b)
    if pid_m * BLOCK_M < q_len:
        off = k_len - q_len  # query i sits at key position i + off
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        q_rows = (q_start + offs_m[:, None]).to(tl.int64)
        q_mask = offs_m[:, None] < q_len
        qa, qb = load_head(Q + b.to(tl.int64) * stride_qb + h * stride_qh, q_rows, stride_qt, q_mask, D,
                            BLOCK_DA, BLOCK_DB)
        kb = K + b.to(tl.int64) * stride_kb + hk * stride_kh
        vb = V + b.to(tl.int64) * stride_vb + hk * stride_vh
        m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc_a, acc_b = zeros_head(BLOCK_M, BLOCK_DA, BLOCK_DB)
        # key tiles [lo, hi) that can hold a visible key; of them, [mid_lo, mid_hi) are visible to every row
        # of the block (key n < k_len, n ≤ the block's first position m0 + off, and within the window of
        # its last row): only the tiles on the causal diagonal, the window's edge and k_len compute masks
        hi = k_len
        full_hi = k_len
        if CAUSAL:
            hi = tl.minimum(k_len, m0 + BLOCK_M + off)
            full_hi = tl.minimum(k_len, m0 + off + 1)
        lo = 0
        full_lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, m0 + off - window + 1)
            lo = (lo // BLOCK_N) * BLOCK_N
            full_lo = m0 + BLOCK_M - 1 + off - window + 1
        mid_lo, mid_hi = _unmasked_tiles(lo, hi, full_lo, full_hi, BLOCK_N)
        acc_a, acc_b, m_i, l_i = _fwd_tiles(acc_a, acc_b, m_i, l_i, qa, qb, kb, vb, k_start, k_len, offs_m, offs_n,
                                            off, D, stride_kt, stride_vt, qk_scale, window, lo, mid_lo,
                                            True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        acc_a, acc_b, m_i, l_i = _fwd_tiles(acc_a, acc_b, m_i, l_i, qa, qb, kb, vb, k_start, k_len, offs_m, offs_n,
                                            off, D, stride_kt, stride_vt, qk_scale, window, mid_lo, mid_hi,
                                            False, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        acc_a, acc_b, m_i, l_i = _fwd_tiles(acc_a, acc_b, m_i, l_i, qa, qb, kb, vb, k_start, k_len, offs_m, offs_n,
                                            off, D, stride_kt, stride_vt, qk_scale, window, mid_hi, hi,
                                            True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        empty = l_i == 0.0
        inv_l = 1.0 / tl.where(empty, 1.0, l_i)
        store_head(O + b.to(tl.int64) * stride_ob + h * stride_oh, q_rows, stride_ot, q_mask, D,
                    acc_a * inv_l[:, None], acc_b * inv_l[:, None], BLOCK_DA, BLOCK_DB)
        if STORE_LSE:
            lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
            tl.store(LSE + h * stride_lse_h + q_start + offs_m, lse, mask=offs_m < q_len)


@triton.jit
def _dkdv_tiles(dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, Q, DO, LSE, DELTA, DQACC, h, start, seqlen, offs_n, offs_m,
                D, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse_h, stride_dqt, stride_dqh, qk_scale,
                window, tile_lo, tile_hi,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                KEYS_MAJOR: tl.constexpr = False, ATOMIC_DQ: tl.constexpr = False):
    """dK/dV of one key block from the query tiles starting in [tile_lo, tile_hi) of q head h. Rows past
    the sequence load lse = +inf, hence p = 0, and keys past it are never stored: the unmasked tiles
    (every row sees every key of the block) need neither bound. KEYS_MAJOR: the scores as K·Qᵀ, (keys,
    queries), the orientation dV and dK consume (`_flash.dkdv_step_keys_major`). ATOMIC_DQ: also add
    dS · K into the fp32 DQACC ((total, Hq, D) strides stride_dqt, stride_dqh), so no dQ kernel runs."""
    for start_m in range(tile_lo, tile_hi, BLOCK_M):
        rows = start_m + offs_m
        mmask = rows[:, None] < seqlen
        rows_t = (start + rows[:, None]).to(tl.int64)
        qa, qb = load_head(Q + h * stride_qh, rows_t, stride_qt, mmask, D, BLOCK_DA, BLOCK_DB)
        doa, dob = load_head(DO + h * stride_doh, rows_t, stride_dot, mmask, D, BLOCK_DA, BLOCK_DB)
        lse = tl.load(LSE + h * stride_lse_h + start + rows, mask=rows < seqlen, other=float("inf"))
        delta = tl.load(DELTA + h * stride_lse_h + start + rows, mask=rows < seqlen, other=0.0)
        if KEYS_MAJOR:
            kq = dot_t(ka, kb, qa, qb, BLOCK_DB, PRECISION) * qk_scale
            pt = tl.exp2(kq - lse[None, :])
            if MASKED:
                pt = tl.where(_visible_keys_major(offs_n, rows, seqlen, window, CAUSAL, HAS_WINDOW), pt, 0.0)
            if ATOMIC_DQ:
                dk_a, dk_b, dv_a, dv_b = dkdv_dq_step_keys_major(
                    pt, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a, dv_b, DQACC + h * stride_dqh,
                    (start + rows).to(tl.int64), rows < seqlen, stride_dqt, D, BLOCK_DA, BLOCK_DB, PRECISION)
            else:
                dk_a, dk_b, dv_a, dv_b = dkdv_step_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b,
                                                              dv_a, dv_b, BLOCK_DB, PRECISION)
        else:
            qk = dot_t(qa, qb, ka, kb, BLOCK_DB, PRECISION) * qk_scale
            p = tl.exp2(qk - lse[:, None])
            if MASKED:
                p = tl.where(_visible(rows, offs_n, seqlen, window, CAUSAL, HAS_WINDOW), p, 0.0)
            if ATOMIC_DQ:
                dk_a, dk_b, dv_a, dv_b = dkdv_dq_step(p, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a,
                                                      dv_b, DQACC + h * stride_dqh, rows_t, stride_dqt, mmask, D,
                                                      BLOCK_DA, BLOCK_DB, PRECISION)
            else:
                dk_a, dk_b, dv_a, dv_b = dkdv_step(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b,
                                                   BLOCK_DB, PRECISION)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQACC, CU,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
                          stride_dqt, stride_dqh, qk_scale, sm_scale, window, GROUP, D,
                          CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                          BLOCK_DB: tl.constexpr, KEYS_MAJOR: tl.constexpr = False, ATOMIC_DQ: tl.constexpr = False):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    hk = tl.program_id(2)
    start = tl.load(CU + b)
    seqlen = tl.load(CU + b + 1) - start
    if pid_n * BLOCK_N < seqlen:
        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        nmask = offs_n[:, None] < seqlen
        rows_n = (start + offs_n[:, None]).to(tl.int64)
        ka, kb = load_head(K + hk * stride_kh, rows_n, stride_kt, nmask, D, BLOCK_DA, BLOCK_DB)
        va, vb = load_head(V + hk * stride_vh, rows_n, stride_vt, nmask, D, BLOCK_DA, BLOCK_DB)
        dk_a, dk_b = zeros_head(BLOCK_N, BLOCK_DA, BLOCK_DB)
        dv_a, dv_b = zeros_head(BLOCK_N, BLOCK_DA, BLOCK_DB)
        # query tiles [lo, hi) that can see a key of the block; [mid_lo, mid_hi) see all of them (rows at
        # or after the block's last key, and within the window of its first key)
        lo = 0
        full_lo = 0
        if CAUSAL:
            lo = (n0 // BLOCK_M) * BLOCK_M
            full_lo = n0 + BLOCK_N - 1
        hi = seqlen
        full_hi = hi
        if HAS_WINDOW:
            hi = tl.minimum(seqlen, n0 + BLOCK_N + window - 1)
            full_hi = n0 + window
        mid_lo, mid_hi = _unmasked_tiles(lo, hi, full_lo, full_hi, BLOCK_M)
        if not HAS_WINDOW:
            mid_hi = hi  # (past-the-end rows need no mask: p = 0 there)
        for g in range(0, GROUP):
            h = hk * GROUP + g
            dk_a, dk_b, dv_a, dv_b = _dkdv_tiles(
                dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, Q, DO, LSE, DELTA, DQACC, h, start, seqlen, offs_n, offs_m,
                D, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse_h, stride_dqt, stride_dqh, qk_scale,
                window, lo, mid_lo,
                True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_M, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)
            dk_a, dk_b, dv_a, dv_b = _dkdv_tiles(
                dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, Q, DO, LSE, DELTA, DQACC, h, start, seqlen, offs_n, offs_m,
                D, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse_h, stride_dqt, stride_dqh, qk_scale,
                window, mid_lo, mid_hi,
                False, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_M, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)
            dk_a, dk_b, dv_a, dv_b = _dkdv_tiles(
                dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, Q, DO, LSE, DELTA, DQACC, h, start, seqlen, offs_n, offs_m,
                D, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse_h, stride_dqt, stride_dqh, qk_scale,
                window, mid_hi, hi,
                True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_M, BLOCK_DA, BLOCK_DB, KEYS_MAJOR, ATOMIC_DQ)
        store_head(DK + hk * stride_dkh, rows_n, stride_dkt, nmask, D, dk_a * sm_scale, dk_b * sm_scale,
                    BLOCK_DA, BLOCK_DB)
        store_head(DV + hk * stride_dvh, rows_n, stride_dvt, nmask, D, dv_a, dv_b, BLOCK_DA, BLOCK_DB)


@triton.jit
def _dq_tiles(dq_a, dq_b, qa, qb, doa, dob, lse, delta, K, V, hk, start, seqlen, offs_m, offs_n, D,
              stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, window, tile_lo, tile_hi,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """dQ of one query block from the key tiles starting in [tile_lo, tile_hi)."""
    for start_n in range(tile_lo, tile_hi, BLOCK_N):
        cols = start_n + offs_n
        kv_rows = (start + cols[:, None]).to(tl.int64)
        row_mask = cols[:, None] < seqlen
        ka, kb = load_head(K + hk * stride_kh, kv_rows, stride_kt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        va, vb = load_head(V + hk * stride_vh, kv_rows, stride_vt, row_mask, D, BLOCK_DA, BLOCK_DB, MASKED)
        qk = dot_t(qa, qb, ka, kb, BLOCK_DB, PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if MASKED:
            p = tl.where(_visible(offs_m, cols, seqlen, window, CAUSAL, HAS_WINDOW), p, 0.0)
        dq_a, dq_b = dq_step(p, delta, doa, dob, va, vb, ka, kb, dq_a, dq_b, BLOCK_DB, PRECISION)
    return dq_a, dq_b


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lse_h,
                        qk_scale, sm_scale, window, GROUP, D,
                        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
                        HEAVY_FIRST: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                        BLOCK_DB: tl.constexpr):
    # a float argument may arrive as fp64 under torch.compile (Inductor); keep the math in fp32
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = _query_block(HEAVY_FIRST)
    b = tl.program_id(1)
    h = tl.program_id(2)
    hk = h // GROUP
    start = tl.load(CU + b)
    seqlen = tl.load(CU + b + 1) - start
    if pid_m * BLOCK_M < seqlen:
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        mmask = offs_m[:, None] < seqlen
        rows_m = (start + offs_m[:, None]).to(tl.int64)
        qa, qb = load_head(Q + h * stride_qh, rows_m, stride_qt, mmask, D, BLOCK_DA, BLOCK_DB)
        doa, dob = load_head(DO + h * stride_doh, rows_m, stride_dot, mmask, D, BLOCK_DA, BLOCK_DB)
        lse = tl.load(LSE + h * stride_lse_h + start + offs_m, mask=offs_m < seqlen, other=float("inf"))
        delta = tl.load(DELTA + h * stride_lse_h + start + offs_m, mask=offs_m < seqlen, other=0.0)
        dq_a, dq_b = zeros_head(BLOCK_M, BLOCK_DA, BLOCK_DB)
        # key tiles as in the forward (offset 0): [mid_lo, mid_hi) visible to every row of the block
        hi = seqlen
        full_hi = seqlen
        if CAUSAL:
            hi = tl.minimum(seqlen, m0 + BLOCK_M)
            full_hi = tl.minimum(seqlen, m0 + 1)
        lo = 0
        full_lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, m0 - window + 1)
            lo = (lo // BLOCK_N) * BLOCK_N
            full_lo = m0 + BLOCK_M - window
        mid_lo, mid_hi = _unmasked_tiles(lo, hi, full_lo, full_hi, BLOCK_N)
        dq_a, dq_b = _dq_tiles(dq_a, dq_b, qa, qb, doa, dob, lse, delta, K, V, hk, start, seqlen, offs_m, offs_n, D,
                               stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, window, lo, mid_lo,
                               True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        dq_a, dq_b = _dq_tiles(dq_a, dq_b, qa, qb, doa, dob, lse, delta, K, V, hk, start, seqlen, offs_m, offs_n, D,
                               stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, window, mid_lo, mid_hi,
                               False, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        dq_a, dq_b = _dq_tiles(dq_a, dq_b, qa, qb, doa, dob, lse, delta, K, V, hk, start, seqlen, offs_m, offs_n, D,
                               stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, window, mid_hi, hi,
                               True, CAUSAL, HAS_WINDOW, PRECISION, BLOCK_N, BLOCK_DA, BLOCK_DB)
        store_head(DQ + h * stride_dqh, rows_m, stride_dqt, mmask, D, dq_a * sm_scale, dq_b * sm_scale,
                    BLOCK_DA, BLOCK_DB)


# (BLOCK_M, BLOCK_N) under the interpreter: small, so that CPU tests cross several tiles cheaply; tests
# also set unequal sizes (the GPU's forward tiles are 128 x 64) to check the tile-range arithmetic
INTERPRET_BLOCKS = (16, 16)
# causal query blocks in reverse grid order (see _query_block); a switch so benchmarks can compare
HEAVY_FIRST = True
# head dims that are not a power of two as two tile parts instead of one padded one (_flash.head_split). Off
# until a GPU benchmark says it pays (benchmarks/sweep_attention_tiles.py measures both); tested both ways.
SPLIT_HEAD_DIM = False
# the dK/dV kernel's scores as K·Qᵀ (keys, queries): P and dS come out in the orientation dV += Pᵀ·dO and
# dK += dSᵀ·Q take, where the default transposes both per tile (through shared memory). Off until a GPU
# benchmark says it pays (benchmarks/sweep_attention_tiles.py); tested both ways.
DKDV_KEYS_MAJOR = False  # (also the one form that transposes no matmul result: see _flash.dkdv_step_keys_major)
# dQ from the dK/dV kernel (FlashAttention-2's way): each (query tile, key block) pair adds its dS · K into an
# fp32 buffer by atomic adds, and the dQ kernel, with its recompute of the scores and dP (two of the
# backward's seven matmuls), does not run; one fp32 -> dtype pass follows. Not bit-reproducible (the order of
# the adds varies). Off until a GPU benchmark says it pays (benchmarks/sweep_attention_tiles.py); tested both
# ways, and with DKDV_KEYS_MAJOR (then dQ comes as Kᵀ·dSᵀ, so no matmul result is transposed anywhere).
ATOMIC_DQ = False
# its dK/dV kernel's tiles ("dkdv_atomic_dq"): with the dQ tile on top of the dK/dV accumulators the 4-warp
# default tiles spill ~2 KB per thread at head dim 96 (scripts/triton_sm90_check.py); 32 x 64 at 8 warps (the
# pre-sweep dK/dV tiles, exact on the H200) is the only tried one without spills (0 B; 64 B split; with
# DKDV_KEYS_MAJOR 392 / 96 B). Unmeasured: the sweep times it and a few others.
ATOMIC_DQ_TILES = dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)


def _cfg(D: int, kernel: str) -> dict:
    """Tile sizes and launch options per kernel: "fwd", "fwd_window" (the forward with a sliding window),
    "dkdv", "dq", "dkdv_atomic_dq" (the dK/dV kernel that also adds dQ, ATOMIC_DQ). Small tiles under the
    interpreter (exercise several blocks cheaply). On the GPU: forward 128 x 64 (the windowed one 128 x 32 at head dims > 64: 128 x 64 spilled there), backward as measured
    fastest by benchmarks/sweep_attention_tiles.py (_flash.BACKWARD_TILES). In the H200 sweep the forward's
    128 x 128 was 4% faster but spills at sm_90 (scripts/triton_sm90_check.py); not taken."""
    block_d = max(16, next_pow2(D))
    da, db = head_split(D, SPLIT_HEAD_DIM)
    heads = dict(BLOCK_DA=da, BLOCK_DB=db)
    if interpreting():
        bm, bn = INTERPRET_BLOCKS
        return dict(BLOCK_M=bm, BLOCK_N=bn, **heads, num_warps=1, num_stages=1)
    if kernel in BACKWARD_TILES:
        return dict(BACKWARD_TILES[kernel], **heads)
    if kernel == "dkdv_atomic_dq":
        return dict(ATOMIC_DQ_TILES, **heads)
    if kernel == "fwd_window" and block_d > 64:
        return dict(BLOCK_M=128, BLOCK_N=32, **heads, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, **heads, num_warps=4 if block_d <= 64 else 8, num_stages=3)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"



def _check_varlen(q, k, v, cu):
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[-1] != k.shape[-1] or q.shape[0] != k.shape[0]:
        raise ValueError(f"varlen_attention: expected q (total, Hq, D), k/v (total, Hkv, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"varlen_attention: Hq={q.shape[1]} is not a multiple of Hkv={k.shape[1]}")
    if cu.dim() != 1:
        raise ValueError(f"varlen_attention: cu_seqlens must be 1-D (n_seq + 1,), got {tuple(cu.shape)}")


@triton_custom_op("xgenmm_triton::varlen_attn_fwd")
def varlen_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                    causal: bool, window: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> out (total, Hq, D) in q's dtype, lse (Hq, total) fp32 (log2 domain; +inf for rows with no key)."""
    total, Hq, D = q.shape
    Hkv = k.shape[1]
    o = torch.empty((total, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((Hq, total), dtype=torch.float32, device=q.device)
    n_seq = cu_seqlens.shape[0] - 1
    if total == 0 or n_seq <= 0 or max_seqlen <= 0:
        return o, lse
    c = _cfg(D, "fwd_window" if window > 0 else "fwd")
    grid = (triton.cdiv(max_seqlen, c["BLOCK_M"]), n_seq, Hq)
    wrap_triton(_attn_fwd_kernel)[grid](
        q, k, v, o, lse, cu_seqlens, cu_seqlens, cu_seqlens,
        0, q.stride(0), q.stride(1), 0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1),
        0, o.stride(0), o.stride(1), lse.stride(0),
        0, scale * LOG2E, window, Hq // Hkv, D,
        CAUSAL=causal, HAS_WINDOW=window > 0, VARLEN=True, STORE_LSE=True, PRECISION=_precision(q.dtype),
        HEAVY_FIRST=HEAVY_FIRST and causal, **c)
    return o, lse


@triton_custom_op("xgenmm_triton::varlen_attn_bwd")
def varlen_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                    lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, causal: bool, window: int,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    total, Hq, D = q.shape
    Hkv = k.shape[1]
    n_seq = cu_seqlens.shape[0] - 1
    if total == 0 or n_seq <= 0 or max_seqlen <= 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    # every row of every sequence is written (the dK/dV and dQ grids cover max_seqlen), and the sequences
    # cover [0, total): cu_seqlens runs from 0 to total (the forward leaves no row unwritten either)
    atomic_dq = ATOMIC_DQ
    # with ATOMIC_DQ the dK/dV kernel sums dQ into an fp32 buffer (zeroed: every pair adds to it)
    dq = (torch.zeros((total, Hq, D), dtype=torch.float32, device=q.device) if atomic_dq
          else _utils.unwritten((total, Hq, D), q.dtype, q.device))
    dk = _utils.unwritten((total, Hkv, D), k.dtype, k.device)
    dv = _utils.unwritten((total, Hkv, D), v.dtype, v.device)
    do = lastdim_contig(do)
    # (Hq, total): o and do seen as (head, token, D), delta written in the lse layout
    delta = backward_delta(o.transpose(0, 1), do.transpose(0, 1),
                           torch.empty((Hq, total), dtype=torch.float32, device=q.device), interpreting())
    common = dict(CAUSAL=causal, HAS_WINDOW=window > 0, PRECISION=_precision(q.dtype))
    c = _cfg(D, "dkdv_atomic_dq" if atomic_dq else "dkdv")
    wrap_triton(_attn_bwd_dkdv_kernel)[(triton.cdiv(max_seqlen, c["BLOCK_N"]), n_seq, Hkv)](
        q, k, v, do, lse, delta, dk, dv, dq, cu_seqlens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0), dq.stride(0), dq.stride(1),
        scale * LOG2E, scale, window, Hq // Hkv, D, KEYS_MAJOR=DKDV_KEYS_MAJOR, ATOMIC_DQ=atomic_dq, **common, **c)
    if atomic_dq:
        return (dq * scale).to(q.dtype), dk, dv
    c = _cfg(D, "dq")
    wrap_triton(_attn_bwd_dq_kernel)[(triton.cdiv(max_seqlen, c["BLOCK_M"]), n_seq, Hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), lse.stride(0),
        scale * LOG2E, scale, window, Hq // Hkv, D, HEAVY_FIRST=HEAVY_FIRST and causal, **common, **c)
    return dq, dk, dv


def _setup(ctx, inputs, output):
    q, k, v, cu, max_seqlen, causal, window, scale = inputs
    o, lse = output
    ctx.max_seqlen, ctx.causal, ctx.window, ctx.scale = max_seqlen, causal, window, scale
    ctx.save_for_backward(q, k, v, o, lse, cu)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, cu = ctx.saved_tensors
    dq, dk, dv = varlen_attn_bwd(do, q, k, v, o, lse, cu, ctx.max_seqlen, ctx.causal, ctx.window, ctx.scale)
    return dq, dk, dv, None, None, None, None, None


varlen_attn_fwd.register_autograd(_backward, setup_context=_setup)


def varlen_attention_triton(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool = True, sliding_window=None,
                            scale: float | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Same signature and result as `attention.varlen_attention_reference` (plus an optional host-known
    `max_seqlen`, which saves one device sync)."""
    if not usable(q, k, v):
        return varlen_attention_reference(q, k, v, cu_seqlens, causal=causal, sliding_window=sliding_window,
                                          scale=scale)
    _check_varlen(q, k, v, cu_seqlens)
    q, k, v = lastdim_contig(q), lastdim_contig(k), lastdim_contig(v)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    if max_seqlen is None:
        max_seqlen = int((cu[1:] - cu[:-1]).max().item()) if cu.numel() > 1 else 0
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"varlen_attention: sliding_window must be positive or None, got {sliding_window}")
    window = 0 if sliding_window is None or sliding_window >= max(max_seqlen, 1) else int(sliding_window)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return varlen_attn_fwd(q, k, v, cu, max_seqlen, causal, window, scale)[0]


@triton_custom_op("xgenmm_triton::decode_attn_fwd")
def decode_attn_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                    window: int, scale: float) -> torch.Tensor:
    """q (B, Hq, Tq, D), caches (B, Hkv, Tmax, D), cache_seqlens (B,) int32 -> (B, Hq, Tq, D)."""
    B, Hq, Tq, D = q.shape
    Hkv = k_cache.shape[1]
    o = torch.empty((B, Hq, Tq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Tq == 0:
        return o
    c = _cfg(D, "fwd")  # (few query rows: no spills with the window either, see _cfg)
    if not interpreting():
        c["BLOCK_M"] = max(16, min(c["BLOCK_M"], next_pow2(Tq)))
    grid = (triton.cdiv(Tq, c["BLOCK_M"]), B, Hq)
    wrap_triton(_attn_fwd_kernel)[grid](
        q, k_cache, v_cache, o, o, cache_seqlens, cache_seqlens, cache_seqlens,
        q.stride(0), q.stride(2), q.stride(1), k_cache.stride(0), k_cache.stride(2), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(2), v_cache.stride(1), o.stride(0), o.stride(2), o.stride(1), 0,
        Tq, scale * LOG2E, window, Hq // Hkv, D,
        CAUSAL=True, HAS_WINDOW=window > 0, VARLEN=False, STORE_LSE=False, PRECISION=_precision(q.dtype),
        HEAVY_FIRST=HEAVY_FIRST, **c)
    return o


def decode_attention_triton(q, k_cache, v_cache, cache_seqlens: torch.Tensor, *, sliding_window=None,
                            scale: float | None = None) -> torch.Tensor:
    """Same signature and result as `attention.decode_attention_reference` (forward only)."""
    if not usable(q, k_cache, v_cache) or (torch.is_grad_enabled() and
                                            any(t.requires_grad for t in (q, k_cache, v_cache))):
        return decode_attention_reference(q, k_cache, v_cache, cache_seqlens, sliding_window=sliding_window,
                                          scale=scale)
    if q.shape[1] % k_cache.shape[1] or q.shape[-1] != k_cache.shape[-1]:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    q, k_cache, v_cache = lastdim_contig(q), lastdim_contig(k_cache), lastdim_contig(v_cache)
    seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    window = 0 if sliding_window is None else int(sliding_window)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return decode_attn_fwd(q, k_cache, v_cache, seqlens, window, scale)

