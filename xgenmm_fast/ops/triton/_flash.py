"""Shared by the flash-style attention kernels (varlen LM attention, perceiver): a device function and the
backward tile sizes."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(qk, v, acc, m_i, l_i, PRECISION: tl.constexpr):
    """Fold one key tile into the running softmax: qk (BLOCK_M, BLOCK_N) scores in the log2 domain, masked
    keys at -inf; v (BLOCK_N, BLOCK_D). A row whose keys so far are all masked keeps m_i = -inf and
    l_i = 0 (its exp2 offsets are taken against 0 instead of -inf: no NaN)."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


# Backward tiles on the GPU, the same for both kernel families: the largest that compile for sm_90 without
# register spills at head dims 64-128, bf16 (scripts/triton_sm90_check.py). dK/dV: a program owns BLOCK_N
# keys and loops over BLOCK_M-row query tiles; dQ: the reverse.
BACKWARD_TILES = {
    "dkdv": dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
    "dq": dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
}
