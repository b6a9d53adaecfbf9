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


# Backward tiles on the GPU, the same for both kernel families. dK/dV: a program owns BLOCK_N keys and loops
# over BLOCK_M-row query tiles; dQ: the reverse. Chosen by measurement: benchmarks/sweep_attention_tiles.py
# on an H200 (2026-11-26, Triton 3.6, Phi-3 shape 8 x 2048, head dim 96, bf16), fwd+bwd 6.81 ms with the
# former 8-warp tiles (dK/dV 32 x 64, dQ 64 x 32); 4 warps were the fastest for both kernels (dK/dV 64 x 64:
# -1.4 ms; dQ 64 x 32, 3 stages: -1.1 ms). scripts/triton_sm90_check.py keeps them spill-free.
BACKWARD_TILES = {
    "dkdv": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    "dq": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
}
