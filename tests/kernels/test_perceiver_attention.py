"""Triton perceiver attention (two key sources read in place, media mask) vs the reference (fp64)."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.attention import perceiver_attention_reference
from xgenmm_fast.ops.triton.perceiver_attention import perceiver_attention_triton

from ._util import (BACKWARD_SWITCHES, DEVICE, DTYPES, TOL, TOL_ATTN_BWD, VARIANT, VARIANT_DTYPES, as64,
                    check, leaf)

# Some gradients are exactly zero in exact arithmetic (a query with one visible key: dq = dk = 0); the
# floor measures such errors against the O(1) size of the terms (inputs and dout are N(0, 1)).
GRAD_FLOOR = 0.1

# (tiles N, heads H, latents L, media M, head dim D, mask kind)
CASES = [
    (2, 3, 5, 27, 24, "random"),    # odd sizes; one tile fully masked (only latent keys remain)
    (1, 2, 17, 3, 96, None),        # head dim 96, no mask
    (3, 1, 1, 1, 16, "random"),     # a single latent and a single media token
    (2, 2, 16, 40, 64, "padding"),  # masked rows at both ends, as anyres padding does
    (2, 2, 16, 32, 32, None),       # no mask, key counts at tile multiples: unmasked tiles only
]


def _mask(kind, N, M):
    if kind is None:
        return None
    if kind == "padding":
        m = torch.ones(N, M, dtype=torch.long)
        m[:, :5] = 0
        m[:, -7:] = 0
        return m.to(DEVICE)
    m = (torch.rand(N, M) > 0.4).long()
    m[0] = 0
    return m.to(DEVICE)


# each case with the padded head dim, and those whose head dim is not a power of two also split in two
# tile parts (SPLIT_HEAD_DIM: 24 = 16 + 16, 96 = 64 + 32)
SPLIT_CASES = [(*c, False) for c in CASES] + [pytest.param(*c, True, marks=VARIANT)
                                                 for c in CASES if c[4] & (c[4] - 1)]


@pytest.mark.parametrize("N,H,L,M,D,mask_kind,split", SPLIT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_perceiver_attention_matches_reference(N, H, L, M, D, mask_kind, split, dtype, monkeypatch, seed):
    _check_masked(N, H, L, M, D, mask_kind, split, dtype, monkeypatch)


# the backward's off-by-default switches (_util.BACKWARD_SWITCHES), every case with the padded head dim, one split


@pytest.mark.parametrize("switch", BACKWARD_SWITCHES, ids="+".join)
@pytest.mark.parametrize("N,H,L,M,D,mask_kind,split", [(*c, False) for c in CASES] + [(*CASES[1], True)])
@pytest.mark.parametrize("dtype", VARIANT_DTYPES)
@VARIANT
def test_perceiver_attention_backward_switch(switch, N, H, L, M, D, mask_kind, split, dtype, monkeypatch, seed):
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    for name in switch:
        monkeypatch.setattr(pa, name, True)
    _check_masked(N, H, L, M, D, mask_kind, split, dtype, monkeypatch)


def _check_masked(N, H, L, M, D, mask_kind, split, dtype, monkeypatch):
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    monkeypatch.setattr(pa, "SPLIT_HEAD_DIM", split)
    assert (pa._cfg(D, "fwd")["BLOCK_DB"] > 0) == split
    # (N, T, H, D) -> (N, H, T, D) views, as the model's _heads() produces
    q, km, vm, kl, vl = (leaf(torch.randn(N, T, H, D), dtype).transpose(1, 2) for T in (L, M, M, L, L))
    for t in (q, km, vm, kl, vl):
        t.retain_grad()
    mask = _mask(mask_kind, N, M)
    scale = D ** -0.5
    o = perceiver_attention_triton(q, km, vm, kl, vl, mask, scale)
    do = torch.randn(o.shape).to(DEVICE, dtype)
    o.backward(do)
    ins64 = as64(q, km, vm, kl, vl)
    ref = perceiver_attention_reference(*ins64, None if mask is None else mask.cpu(), scale)
    ref.backward(do.double().cpu())
    check("perceiver_fwd", [o], [ref], TOL[dtype])
    check("perceiver_bwd", [t.grad for t in (q, km, vm, kl, vl)], [t.grad for t in ins64], TOL_ATTN_BWD[dtype], GRAD_FLOOR)
    if mask is not None:  # masked media keys/values get exactly zero gradient
        dead = (mask == 0)[:, None, :, None].expand_as(km)
        assert torch.all(km.grad[dead] == 0) and torch.all(vm.grad[dead] == 0)
