"""Triton RoPE (q and k in one launch) vs rope.apply_rope_reference (fp64), packed and padded layouts."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.rope import apply_rope_reference, rope_cos_sin
from xgenmm_fast.ops.triton.rope import apply_rope_triton

from ._util import DEVICE, DTYPES, TOL, as64, check, leaf


def _positions(lead):
    if len(lead) == 1:  # packed: positions restart per sequence
        t = lead[0]
        return torch.cat([torch.arange(n) for n in (t // 2, t - t // 2)]) if t else torch.zeros(0, dtype=torch.long)
    return torch.arange(lead[1])[None].expand(*lead) + torch.randint(0, 5, (lead[0], 1))


@pytest.mark.parametrize("lead,Hq,Hkv,D", [((1,), 1, 1, 2), ((11,), 5, 5, 96), ((9,), 6, 2, 24),
                                           ((2, 7), 4, 1, 64), ((3, 1), 3, 3, 128), ((0,), 2, 2, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_matches_reference(lead, Hq, Hkv, D, dtype, seed):
    # q and k as strided slices of one fused projection, as in Phi3Attention
    qkv = torch.randn(*lead, (Hq + 2 * Hkv) * D)
    qkv = leaf(qkv, dtype)
    q = qkv[..., :Hq * D].view(*lead, Hq, D)
    k = qkv[..., Hq * D:(Hq + Hkv) * D].view(*lead, Hkv, D)
    cos, sin = rope_cos_sin(_positions(lead).to(DEVICE), D, 10000.0, dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    qo, ko = apply_rope_triton(q, k, cos, sin)
    gq, gk = torch.randn(qo.shape).to(DEVICE, dtype), torch.randn(ko.shape).to(DEVICE, dtype)
    ((qo * gq).sum() + (ko * gk).sum()).backward()
    qkv64, cos64, sin64 = as64(qkv, cos, sin)
    q64 = qkv64[..., :Hq * D].view(*lead, Hq, D)
    k64 = qkv64[..., Hq * D:(Hq + Hkv) * D].view(*lead, Hkv, D)
    qr, kr = apply_rope_reference(q64, k64, cos64, sin64)
    ((qr * gq.double().cpu()).sum() + (kr * gk.double().cpu()).sum()).backward()
    if qkv.numel() == 0:
        assert qo.shape == q.shape and ko.shape == k.shape
        return
    check("rope", [qo, ko, qkv.grad], [qr, kr, qkv64.grad], TOL[dtype])


def test_rope_broadcast_cos_over_batch(seed):
    """cos/sin of shape (T, 1, D) broadcast over a (B, T, H, D) batch."""
    B, T, H, D = 2, 5, 3, 32
    q, k = torch.randn(B, T, H, D, device=DEVICE), torch.randn(B, T, H, D, device=DEVICE)
    cos, sin = rope_cos_sin(torch.arange(T, device=DEVICE), D, 10000.0, torch.float32)
    cos, sin = cos[:, None], sin[:, None]
    for a, b in zip(apply_rope_triton(q, k, cos, sin), apply_rope_reference(q, k, cos, sin)):
        check("rope", [a], [b], TOL[torch.float32])
