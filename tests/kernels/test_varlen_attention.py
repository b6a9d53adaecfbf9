"""Triton varlen flash attention (fwd + bwd) and the decode kernel vs the references (fp64)."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.attention import decode_attention_reference, varlen_attention_reference
from xgenmm_fast.ops.triton.varlen_attention import decode_attention_triton, varlen_attention_triton

from ._util import (BACKWARD_SWITCHES, DEVICE, DTYPES, TOL, TOL_ATTN_BWD, VARIANT, VARIANT_DTYPES, as64,
                    check, leaf)

# Some gradients are exactly zero in exact arithmetic (a query with one visible key: dq = dk = 0); the
# floor measures such errors against the O(1) size of the terms (inputs and dout are N(0, 1)).
GRAD_FLOOR = 0.1

# (sequence lengths, Hq, Hkv, D, sliding window, causal)
CASES = [
    ([5, 0, 1, 37], 4, 2, 24, None, True),   # empty and length-1 sequences, GQA, odd head dim
    ([1], 1, 1, 16, None, True),             # a single token
    ([33, 17], 3, 1, 96, 7, True),           # Phi-3 head dim (padded to 128 in the tile), window, MQA
    ([20, 9, 3], 5, 5, 64, None, True),      # odd head count
    ([18], 2, 2, 128, 4, True),
    ([20, 9], 2, 1, 16, 5, False),           # non-causal with window
    ([19], 2, 2, 32, None, False),
]


def _pack(lens, Hq, Hkv, D, dtype):
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = int(cu[-1])
    q, k, v = (leaf(torch.randn(T, h, D), dtype) for h in (Hq, Hkv, Hkv))
    return q, k, v, cu.to(DEVICE)


def _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, dtype):
    """Our forward and q/k/v gradients against the fp64 reference on fresh random inputs."""
    q, k, v, cu = _pack(lens, Hq, Hkv, D, dtype)
    o = varlen_attention_triton(q, k, v, cu, causal=causal, sliding_window=window)
    do = torch.randn(o.shape).to(DEVICE, dtype)
    o.backward(do)
    q64, k64, v64 = as64(q, k, v)
    ref = varlen_attention_reference(q64, k64, v64, cu.cpu(), causal=causal, sliding_window=window)
    ref.backward(do.double().cpu())
    check("varlen_fwd", [o], [ref], TOL[dtype])
    check("varlen_bwd", [q.grad, k.grad, v.grad], [q64.grad, k64.grad, v64.grad], TOL_ATTN_BWD[dtype], GRAD_FLOOR)


@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_attention_matches_reference(lens, Hq, Hkv, D, window, causal, dtype, seed):
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, dtype)


@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", [c for c in CASES if c[3] & (c[3] - 1)] + [
    ([40, 7], 2, 1, 80, None, True), ([23], 2, 2, 40, 9, True), ([30, 1], 1, 1, 112, None, False)])
@pytest.mark.parametrize("dtype", DTYPES)
@VARIANT
def test_varlen_attention_split_head_dim(lens, Hq, Hkv, D, window, causal, dtype, monkeypatch, seed):
    """Head dims that are not powers of two as two tile parts (SPLIT_HEAD_DIM: 96 = 64 + 32, 80 = 64 + 16,
    40 = 32 + 16, 24 = 16 + 16 with 8 masked, 112 = 64 + 64 with 16 masked): forward, backward, decode."""
    from xgenmm_fast.ops.triton import varlen_attention as mod
    monkeypatch.setattr(mod, "SPLIT_HEAD_DIM", True)
    assert mod._cfg(D, "fwd")["BLOCK_DB"] > 0
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, dtype)
    kc, vc, qd = torch.randn(2, Hkv, 40, D), torch.randn(2, Hkv, 40, D), torch.randn(2, Hq, 5, D)
    seqlens = torch.tensor([40, 17], dtype=torch.int32)
    od = decode_attention_triton(*(leaf(t, dtype, False) for t in (qd, kc, vc)), seqlens.to(DEVICE),
                                 sliding_window=window)
    check("decode", [od], [decode_attention_reference(*as64(qd, kc, vc), seqlens, sliding_window=window)],
          TOL[dtype])


def test_head_split_parts():
    from xgenmm_fast.ops.triton._flash import head_split
    splits = {8: (16, 0), 16: (16, 0), 24: (16, 16), 40: (32, 16), 64: (64, 0), 80: (64, 16), 96: (64, 32),
              112: (64, 64), 128: (128, 0)}
    assert {d: head_split(d, True) for d in splits} == splits
    assert {d: head_split(d, False) for d in splits} == {d: (max(16, 1 << (d - 1).bit_length()), 0) for d in splits}


# sequences spanning several tiles with windows wider than a tile: tiles fully visible (no mask), tiles on
# the causal diagonal, on the window's edge and past the sequence end all occur in one program
LONG_CASES = [
    ([70, 45, 1], 2, 1, 32, 23, True),
    ([64, 16], 2, 2, 16, 40, True),
    ([81], 1, 1, 24, None, True),
    ([50, 33], 2, 1, 16, 17, False),
    ([47], 2, 2, 16, None, False),
    # windows at a tile multiple and one short of it (Phi-3's 2047 = 32·64 − 1): tile edges meet the window's
    ([80, 40], 1, 1, 16, 31, True),
    ([80], 1, 1, 16, 32, True),
    ([66], 1, 1, 16, 15, True),
    ([66], 1, 1, 16, 16, False),
]


@pytest.mark.parametrize("blocks,split", [((16, 16), False), ((32, 16), False), ((16, 32), False),
                                          ((32, 16), True)])
@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", LONG_CASES)
def test_varlen_attention_tile_ranges(lens, Hq, Hkv, D, window, causal, blocks, split, monkeypatch, seed):
    """Masked / unmasked tile ranges, with equal and unequal query and key tiles (fp32), and with the head
    dim split in two parts where it is not a power of two (D = 24 here)."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only (the GPU's are fixed); the CASES above run on the GPU")
    from xgenmm_fast.ops.triton import varlen_attention as mod
    monkeypatch.setattr(mod, "INTERPRET_BLOCKS", blocks)
    monkeypatch.setattr(mod, "SPLIT_HEAD_DIM", split)
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, torch.float32)


@pytest.mark.parametrize("tiles", [
    {"dkdv": (16, 64), "dq": (64, 16), "fwd": (32, 16)},  # dK/dV query tiles a quarter of its key tiles
    {"dkdv": (32, 64), "dq": (16, 32), "fwd": (64, 32), "fwd_window": (16, 64)},
    {"dkdv": (64, 16), "dq": (32, 64), "fwd": (16, 64), "fwd_window": (64, 16)},
])
@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", [([130, 70, 1], 2, 1, 16, None, True),
                                                         ([130, 45], 2, 2, 24, 40, True),
                                                         ([100, 3], 1, 1, 16, None, False)])
def test_varlen_attention_tiles_per_kernel(lens, Hq, Hkv, D, window, causal, tiles, monkeypatch, seed):
    """Each kernel with tiles of its own, as the GPU runs them (the forward's, dK/dV's and dQ's differ there;
    INTERPRET_BLOCKS gives all the same): the backward must not depend on the forward's tiling."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only (the GPU's are fixed); the CASES above run on the GPU")
    from xgenmm_fast.ops.triton import varlen_attention as mod
    default = mod._cfg

    def cfg(d, kernel):
        c = default(d, kernel)
        if kernel in tiles:
            c.update(BLOCK_M=tiles[kernel][0], BLOCK_N=tiles[kernel][1])
        return c
    monkeypatch.setattr(mod, "_cfg", cfg)
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, torch.float32)


# the backward's off-by-default switches (_util.BACKWARD_SWITCHES; with ATOMIC_DQ rows past a sequence add nothing)


@pytest.mark.parametrize("switch", BACKWARD_SWITCHES, ids="+".join)
@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", CASES)
@pytest.mark.parametrize("dtype", VARIANT_DTYPES)
@VARIANT
def test_varlen_attention_backward_switch(switch, lens, Hq, Hkv, D, window, causal, dtype, monkeypatch, seed):
    """Backward switches on: the same gradients, every case."""
    from xgenmm_fast.ops.triton import varlen_attention as mod
    for name in switch:
        monkeypatch.setattr(mod, name, True)
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, dtype)


@pytest.mark.parametrize("switch", BACKWARD_SWITCHES, ids="+".join)
@pytest.mark.parametrize("blocks,split", [((16, 16), False), ((32, 16), False), ((16, 32), False),
                                          ((32, 16), True)])
@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", LONG_CASES)
def test_varlen_attention_backward_switch_tile_ranges(switch, lens, Hq, Hkv, D, window, causal, blocks, split,
                                                      monkeypatch, seed):
    """Backward switches over the masked / unmasked tile ranges and unequal tiles (fp32, interpreter tiles)."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only (the GPU's are fixed); the CASES above run on the GPU")
    from xgenmm_fast.ops.triton import varlen_attention as mod
    monkeypatch.setattr(mod, "INTERPRET_BLOCKS", blocks)
    monkeypatch.setattr(mod, "SPLIT_HEAD_DIM", split)
    for name in switch:
        monkeypatch.setattr(mod, name, True)
    _check_fwd_bwd(lens, Hq, Hkv, D, window, causal, torch.float32)


@pytest.mark.parametrize("heavy_first", [True, False])
@pytest.mark.parametrize("window", [None, 23])
def test_varlen_attention_block_order(heavy_first, window, monkeypatch, seed):
    """Causal query blocks launched last-first (the default) or in grid order: the same result, forward
    and backward (the forward, dQ and decode kernels map program ids to blocks through _query_block)."""
    from xgenmm_fast.ops.triton import varlen_attention as mod
    monkeypatch.setattr(mod, "HEAVY_FIRST", heavy_first)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    lens = [300, 129, 7] if DEVICE == "cuda" else [70, 33, 7]  # several query blocks per sequence
    _check_fwd_bwd(lens, 2, 1, 32, window, True, dtype)
    kc, vc = torch.randn(2, 1, 90, 32), torch.randn(2, 1, 90, 32)
    qd = torch.randn(2, 2, 37, 32)
    seqlens = torch.tensor([90, 41], dtype=torch.int32)
    od = decode_attention_triton(*(leaf(t, dtype).detach() for t in (qd, kc, vc)), seqlens.to(DEVICE),
                                 sliding_window=window)
    check("decode", [od], [decode_attention_reference(*as64(qd, kc, vc), seqlens, sliding_window=window)],
          TOL[dtype])


@pytest.mark.parametrize("blocks", [(16, 16), (32, 16)])
@pytest.mark.parametrize("window", [None, 21])
def test_decode_attention_tile_ranges(blocks, window, monkeypatch, seed):
    """Queries at the end of a long cache (offset causal diagonal), several tiles."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only")
    from xgenmm_fast.ops.triton import varlen_attention as mod
    monkeypatch.setattr(mod, "INTERPRET_BLOCKS", blocks)
    B, Hq, Hkv, D, tmax, tq = 2, 2, 1, 16, 70, 19
    q = torch.randn(B, Hq, tq, D)
    kc, vc = torch.randn(B, Hkv, tmax, D), torch.randn(B, Hkv, tmax, D)
    seqlens = torch.tensor([70, 37], dtype=torch.int32)
    o = decode_attention_triton(q, kc, vc, seqlens, sliding_window=window)
    ref = decode_attention_reference(*as64(q, kc, vc), seqlens, sliding_window=window)
    check("decode", [o], [ref], TOL[torch.float32])


def test_varlen_attention_empty_pack_and_explicit_scale(seed):
    e = torch.zeros(0, 2, 16, device=DEVICE, requires_grad=True)
    out = varlen_attention_triton(e, e, e, torch.tensor([0], dtype=torch.int32, device=DEVICE))
    assert out.shape == (0, 2, 16)
    q, k, v, cu = _pack([6, 11], 2, 2, 16, torch.float32)
    check("varlen_scale", [varlen_attention_triton(q, k, v, cu, scale=0.3, sliding_window=100)],
          [varlen_attention_reference(q, k, v, cu, scale=0.3, sliding_window=100)], TOL[torch.float32])


def test_varlen_attention_strided_qkv_views(seed):
    """q, k, v as slices of one fused qkv projection (the model passes such views)."""
    T, Hq, Hkv, D = 21, 4, 2, 16
    qkv = leaf(torch.randn(T, (Hq + 2 * Hkv) * D), torch.float32)
    q = qkv[:, :Hq * D].view(T, Hq, D)
    k = qkv[:, Hq * D:(Hq + Hkv) * D].view(T, Hkv, D)
    v = qkv[:, (Hq + Hkv) * D:].view(T, Hkv, D)
    cu = torch.tensor([0, 8, 21], dtype=torch.int32, device=DEVICE)
    o = varlen_attention_triton(q, k, v, cu)
    o.square().sum().backward()
    g = qkv.grad.clone()
    qkv.grad = None
    varlen_attention_reference(q, k, v, cu).square().sum().backward()
    check("varlen_views", [g], [qkv.grad], 1e-5)


@pytest.mark.parametrize("B,Hq,Hkv,D,tmax,lens", [(3, 4, 2, 24, 20, [20, 7, 1]), (2, 3, 3, 96, 9, [9, 2])])
@pytest.mark.parametrize("tq", [1, 2])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_matches_reference(B, Hq, Hkv, D, tmax, lens, tq, window, dtype, seed):
    q = leaf(torch.randn(B, Hq, tq, D), dtype, requires_grad=False)
    kc, vc = (leaf(torch.randn(B, Hkv, tmax, D), dtype, requires_grad=False) for _ in range(2))
    seqlens = torch.tensor(lens, device=DEVICE)
    o = decode_attention_triton(q, kc, vc, seqlens, sliding_window=window)
    ref = decode_attention_reference(*as64(q, kc, vc), seqlens.cpu(), sliding_window=window)
    check("decode", [o], [ref], TOL[dtype])
