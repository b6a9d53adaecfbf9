"""Shared by the flash-style attention kernels (varlen LM attention, perceiver): the online-softmax step,
the head-dim tile parts (head_split and the device functions over them), and the backward tile sizes."""
from __future__ import annotations

import triton
import triton.language as tl

from ._utils import next_pow2


def head_split(D: int, split: bool) -> tuple[int, int]:
    """(BLOCK_DA, BLOCK_DB): the head dim as tile columns. Unsplit (or a power of two): one part padded to
    the next power of two (head dim 96 -> 128: a quarter of every matmul over the head dim on zeros).
    Split: a power-of-two part and a second, smaller one: 96 = 64 + 32, 80 = 64 + 16, 24 = 16 + 16 (8
    masked); every tl.dot over the head dim becomes two, and the accumulators over it two."""
    whole = max(16, next_pow2(D))
    if not split or whole == D or D <= 16:
        return whole, 0
    first = whole // 2  # the largest power of two below D
    return first, max(16, next_pow2(D - first))


@triton.jit
def load_head(base, rows, stride_t, row_mask, D, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
               ROWS_MASKED: tl.constexpr = True):
    """A (rows, head dim) tile as two column parts, [0, BLOCK_DA) and, when BLOCK_DB > 0,
    [BLOCK_DA, BLOCK_DA + BLOCK_DB) (see head_split); columns ≥ D and, with ROWS_MASKED, rows off
    row_mask load 0. With BLOCK_DB = 0 the second part is the first again, never used."""
    offs_a = tl.arange(0, BLOCK_DA)
    mask_a = offs_a[None, :] < D
    if ROWS_MASKED:
        mask_a = row_mask & mask_a
    a = tl.load(base + rows * stride_t + offs_a[None, :], mask=mask_a, other=0.0)
    if BLOCK_DB > 0:
        offs_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
        mask_b = offs_b[None, :] < D
        if ROWS_MASKED:
            mask_b = row_mask & mask_b
        b = tl.load(base + rows * stride_t + offs_b[None, :], mask=mask_b, other=0.0)
    else:
        b = a
    return a, b


@triton.jit
def zeros_head(ROWS: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """fp32 accumulators over the head dim in its parts; with BLOCK_DB = 0 a scalar stands in for the
    second (never used), so that loops carry no second tile."""
    a = tl.zeros((ROWS, BLOCK_DA), tl.float32)
    if BLOCK_DB > 0:
        b = tl.zeros((ROWS, BLOCK_DB), tl.float32)
    else:
        b = 0.0
    return a, b


@triton.jit
def store_head(base, rows, stride_t, row_mask, D, a, b, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    offs_a = tl.arange(0, BLOCK_DA)
    tl.store(base + rows * stride_t + offs_a[None, :], a.to(base.dtype.element_ty),
             mask=row_mask & (offs_a[None, :] < D))
    if BLOCK_DB > 0:
        offs_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
        tl.store(base + rows * stride_t + offs_b[None, :], b.to(base.dtype.element_ty),
                 mask=row_mask & (offs_b[None, :] < D))


@triton.jit
def dot_t(xa, xb, ya, yb, BLOCK_DB: tl.constexpr, PRECISION: tl.constexpr):
    """x · yᵀ over the head dim, both given as their column parts."""
    s = tl.dot(xa, tl.trans(ya), input_precision=PRECISION)
    if BLOCK_DB > 0:
        s = tl.dot(xb, tl.trans(yb), acc=s, input_precision=PRECISION)
    return s


@triton.jit
def online_softmax_step(qk, va, vb, acc_a, acc_b, m_i, l_i, PRECISION: tl.constexpr, BLOCK_DB: tl.constexpr):
    """Fold one key tile into the running softmax: qk (BLOCK_M, BLOCK_N) scores in the log2 domain, masked
    keys at -inf; the value tile in its head parts va, vb (load_head) and the accumulators acc_a, acc_b
    likewise (acc_b unused when BLOCK_DB = 0). A row whose keys so far are all masked keeps m_i = -inf and
    l_i = 0 (its exp2 offsets are taken against 0 instead of -inf: no NaN)."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    p = p.to(va.dtype)
    acc_a = acc_a * alpha[:, None] + tl.dot(p, va, input_precision=PRECISION)
    if BLOCK_DB > 0:
        acc_b = acc_b * alpha[:, None] + tl.dot(p, vb, input_precision=PRECISION)
    return acc_a, acc_b, m_new, l_i


@triton.jit
def dq_step(p, delta, doa, dob, va, vb, ka, kb, dq_a, dq_b, BLOCK_DB: tl.constexpr, PRECISION: tl.constexpr):
    """dQ += dS · K for one key tile, dS = P ∘ (dO · Vᵀ − delta); every tile over the head dim in its parts."""
    dp = dot_t(doa, dob, va, vb, BLOCK_DB, PRECISION)
    ds = (p * (dp - delta[:, None])).to(ka.dtype)
    dq_a += tl.dot(ds, ka, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dq_b += tl.dot(ds, kb, input_precision=PRECISION)
    return dq_a, dq_b


# _dkdv and _dkdv_keys_major share their shape, not a helper: the dV dot is issued before dP on purpose (a
# shared accumulate-after-dS helper changed the sm_90 code: 16-112 B more spills, 8 KB more shared memory)
@triton.jit
def _dkdv(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB: tl.constexpr,
          PRECISION: tl.constexpr):
    pt = tl.trans(p.to(doa.dtype))
    dv_a += tl.dot(pt, doa, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dv_b += tl.dot(pt, dob, input_precision=PRECISION)
    dp = dot_t(doa, dob, va, vb, BLOCK_DB, PRECISION)
    ds = (p * (dp - delta[:, None])).to(qa.dtype)
    dst = tl.trans(ds)
    dk_a += tl.dot(dst, qa, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dk_b += tl.dot(dst, qb, input_precision=PRECISION)
    return dk_a, dk_b, dv_a, dv_b, ds


@triton.jit
def dkdv_step(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB: tl.constexpr,
              PRECISION: tl.constexpr):
    """dV += Pᵀ · dO and dK += dSᵀ · Q for one query tile, dS = P ∘ (dO · Vᵀ − delta)."""
    dk_a, dk_b, dv_a, dv_b, _ = _dkdv(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB,
                                      PRECISION)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def dkdv_dq_step(p, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a, dv_b, DQACC, rows, stride_t,
                 row_mask, D, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, PRECISION: tl.constexpr):
    """dkdv_step, and DQACC[rows] += dS · K by fp32 atomic adds from the same dS: the dK/dV kernel's share of
    dQ for one (query tile, key block) pair when no dQ kernel runs (ATOMIC_DQ); the sum over key blocks
    comes out in an arbitrary order (not bit-reproducible). rows (M, 1) int64, row_mask (M, 1)."""
    dk_a, dk_b, dv_a, dv_b, ds = _dkdv(p, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB,
                                       PRECISION)
    offs_a = tl.arange(0, BLOCK_DA)
    tl.atomic_add(DQACC + rows * stride_t + offs_a[None, :], tl.dot(ds, ka, input_precision=PRECISION),
                  mask=row_mask & (offs_a[None, :] < D), sem="relaxed")
    if BLOCK_DB > 0:
        offs_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
        tl.atomic_add(DQACC + rows * stride_t + offs_b[None, :], tl.dot(ds, kb, input_precision=PRECISION),
                      mask=row_mask & (offs_b[None, :] < D), sem="relaxed")
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _dkdv_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB: tl.constexpr,
                     PRECISION: tl.constexpr):
    ptc = pt.to(doa.dtype)
    dv_a += tl.dot(ptc, doa, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dv_b += tl.dot(ptc, dob, input_precision=PRECISION)
    dpt = dot_t(va, vb, doa, dob, BLOCK_DB, PRECISION)
    dst = (pt * (dpt - delta[None, :])).to(qa.dtype)
    dk_a += tl.dot(dst, qa, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dk_b += tl.dot(dst, qb, input_precision=PRECISION)
    return dk_a, dk_b, dv_a, dv_b, dst


@triton.jit
def dkdv_step_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b, BLOCK_DB: tl.constexpr,
                         PRECISION: tl.constexpr):
    """dkdv_step with the tile as (keys, queries): pt = Pᵀ as the scores K·Qᵀ gave it, so that dV += Pᵀ·dO and
    dK += dSᵀ·Q take the tile as it is (no transpose of P or dS through shared memory); dPᵀ = V·dOᵀ. No
    matmul result is transposed here (a tl.trans of a tl.dot result feeding another tl.dot is what Triton
    >= 3.4 has miscompiled on Hopper in other projects' backward kernels; dkdv_step does that twice)."""
    dk_a, dk_b, dv_a, dv_b, _ = _dkdv_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b,
                                                 BLOCK_DB, PRECISION)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def dkdv_dq_step_keys_major(pt, delta, qa, qb, doa, dob, va, vb, ka, kb, dk_a, dk_b, dv_a, dv_b, DQACC, rows,
                            row_ok, stride_t, D, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                            PRECISION: tl.constexpr):
    """dkdv_step_keys_major, and DQACC[rows] += dS·K by fp32 atomic adds, computed as Kᵀ·dSᵀ (head dim,
    queries) and added at transposed addresses, so that still no matmul result is transposed. rows: the
    queries' absolute token rows (int64), row_ok: which of them exist."""
    dk_a, dk_b, dv_a, dv_b, dst = _dkdv_keys_major(pt, delta, qa, qb, doa, dob, va, vb, dk_a, dk_b, dv_a, dv_b,
                                                   BLOCK_DB, PRECISION)
    offs_a = tl.arange(0, BLOCK_DA)
    tl.atomic_add(DQACC + rows[None, :] * stride_t + offs_a[:, None],
                  tl.dot(tl.trans(ka), dst, input_precision=PRECISION),
                  mask=row_ok[None, :] & (offs_a[:, None] < D), sem="relaxed")
    if BLOCK_DB > 0:
        offs_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
        tl.atomic_add(DQACC + rows[None, :] * stride_t + offs_b[:, None],
                      tl.dot(tl.trans(kb), dst, input_precision=PRECISION),
                      mask=row_ok[None, :] & (offs_b[:, None] < D), sem="relaxed")
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _row_dot_kernel(A, B, OUT, n_rows, D, sa_b, sa_c, sa_r, sb_b, sb_c, sb_r, so_b, so_c, so_r,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[b, c, r] = Σ_d A[b, c, r, d] · B[b, c, r, d] in fp32; program (row block, b, c). Last dim contiguous."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rm = rows < n_rows
    mask = rm[:, None] & (cols[None, :] < D)
    r64 = rows.to(tl.int64)[:, None]
    a = tl.load(A + b * sa_b + c * sa_c + r64 * sa_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(B + b * sb_b + c * sb_c + r64 * sb_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + b * so_b + c * so_c + rows.to(tl.int64) * so_r, tl.sum(a * x, axis=1), mask=rm)


def backward_delta(o, do, out, interpreting: bool):
    """The attention backward's delta = rowsum(dO ∘ O) in fp32, one pass over O and dO (the torch form,
    (do.float() * o.float()).sum(-1), wrote two fp32 copies and their product first: ~4x the traffic).
    o, do: (B, R, D) or (B, C, R, D) views with a contiguous last dim (any other strides: the perceiver's dO
    is a (tile, head, latent) view of a (tile, latent, head) gradient); out: an fp32 (B, R) or (B, C, R)
    view, written. Returns out."""
    from torch.library import wrap_triton
    if o.dim() == 3:
        o4, do4, out3 = o.unsqueeze(1), do.unsqueeze(1), out.unsqueeze(1)
    else:
        o4, do4, out3 = o, do, out
    B, C, R, D = o4.shape
    if do4.shape != o4.shape or out3.shape != (B, C, R) or o4.stride(-1) != 1 or do4.stride(-1) != 1:
        raise ValueError(f"backward_delta: o {tuple(o.shape)} and do {tuple(do.shape)} must match with a "
                         f"contiguous last dim, out {tuple(out.shape)} must be their shape without it")
    if B == 0 or C == 0 or R == 0:
        return out
    block_d = max(16, next_pow2(D))
    block_r = 16 if interpreting else max(1, min(64, 4096 // block_d))  # 32 rows at head dim 96/128
    wrap_triton(_row_dot_kernel)[(triton.cdiv(R, block_r), B, C)](
        o4, do4, out3, R, D, *o4.stride()[:3], *do4.stride()[:3], *out3.stride(),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=1 if interpreting else 4)
    return out


# Backward tiles on the GPU, the same for both kernel families. dK/dV: a program owns BLOCK_N keys and loops
# over BLOCK_M-row query tiles; dQ: the reverse. Chosen by measurement: benchmarks/sweep_attention_tiles.py
# on an H200 (2026-11-26, Triton 3.6, Phi-3 shape 8 x 2048, head dim 96, bf16), fwd+bwd 6.81 ms with the
# former 8-warp tiles (dK/dV 32 x 64, dQ 64 x 32); 4 warps were the fastest for both kernels (dK/dV 64 x 64:
# -1.4 ms; dQ 64 x 32, 3 stages: -1.1 ms), though they spill registers at sm_90 (scripts/triton_sm90_check.py
# lists them in ACCEPTED_SPILLS, with a bound).
BACKWARD_TILES = {
    "dkdv": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    "dq": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
}
