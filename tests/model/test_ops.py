"""Ops references against each other and against plain formulas (several shapes, forward and backward)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xgenmm_fast.ops import dispatch
from xgenmm_fast.ops.attention import (attention_reference, attention_sdpa, decode_attention_reference,
                                       varlen_attention_reference, varlen_attention_sdpa)
from xgenmm_fast.ops.loss import decoupled_logits_reference, linear_token_logprobs_reference


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("B,Hq,Hkv,T,D", [(1, 1, 1, 1, 8), (2, 4, 2, 7, 16), (3, 6, 3, 33, 12)])
@pytest.mark.parametrize("window", [None, 4])
def test_sdpa_backend_equals_reference_with_padding_and_window(B, Hq, Hkv, T, D, window):
    g = torch.Generator().manual_seed(B * 100 + T)
    q = torch.randn(B, Hq, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, generator=g, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, T // 2 + 1:] = 0
    outs = []
    for fn in (attention_reference, attention_sdpa):
        o = fn(q, k, v, causal=True, key_padding_mask=mask, sliding_window=window)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        outs.append((o.detach(), q.grad.clone(), k.grad.clone()))
        q.grad = k.grad = v.grad = None
    for a, b in zip(*outs):
        assert rel(a, b) < 1e-5


def test_varlen_equals_padded_and_handles_empty_sequences():
    g = torch.Generator().manual_seed(0)
    lens = [5, 0, 1, 9]
    cu = torch.tensor([0, 5, 5, 6, 15], dtype=torch.int32)
    q, k, v = (torch.randn(15, 4, 8, generator=g) for _ in range(3))
    for fn in (varlen_attention_reference, varlen_attention_sdpa):
        out = fn(q, k, v, cu, causal=True)
        for (s, e), n in zip(zip(cu[:-1].tolist(), cu[1:].tolist()), lens):
            if n:
                ref = attention_reference(q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None],
                                          v[s:e].transpose(0, 1)[None], causal=True)[0].transpose(0, 1)
                assert rel(out[s:e], ref) < 1e-6
    empty = torch.zeros(0, 4, 8)
    assert varlen_attention_sdpa(empty, empty, empty, torch.tensor([0], dtype=torch.int32)).shape == (0, 4, 8)


@pytest.mark.parametrize("window", [None, 3])
def test_decode_attention_equals_full_causal(window):
    g = torch.Generator().manual_seed(1)
    B, H, D, tmax = 3, 4, 8, 12
    lens = torch.tensor([12, 7, 1])
    q_all, k_all, v_all = (torch.randn(B, H, tmax, D, generator=g) for _ in range(3))
    for tq in (1, 2):
        for b in range(B):
            if lens[b] < tq:
                continue
            n = int(lens[b])
            full = attention_reference(q_all[b:b + 1, :, :n], k_all[b:b + 1, :, :n], v_all[b:b + 1, :, :n],
                                       causal=True, sliding_window=window)[0, :, n - tq:]
            dec = decode_attention_reference(q_all[b:b + 1, :, n - tq:n], k_all[b:b + 1], v_all[b:b + 1],
                                             lens[b:b + 1], sliding_window=window)[0]
            assert rel(dec, full) < 1e-6


def test_linear_token_logprobs_matches_log_softmax_of_logits():
    g = torch.Generator().manual_seed(2)
    N, E, rows, base, extra = 11, 16, 40, 30, 3
    h = torch.randn(N, E, generator=g)
    W, b = torch.randn(rows, E, generator=g), torch.randn(rows, generator=g)
    A, a = torch.randn(extra, E, generator=g), torch.randn(extra, generator=g)
    t = torch.randint(0, base + extra, (N,), generator=g)
    t[3] = -100
    lp = linear_token_logprobs_reference(h, W, b, A, a, base, t)
    logits = torch.cat([h @ W[:base].T + b[:base], h @ A.T + a], -1)
    expect = torch.log_softmax(logits, -1)[torch.arange(N), t.clamp_min(0)]
    expect[3] = 0
    assert rel(lp, expect) < 1e-6
    assert rel(decoupled_logits_reference(h, W, b, A, a, base), logits) < 1e-6
    ce = F.cross_entropy(logits[t >= 0], t[t >= 0], reduction="sum")
    assert abs(-lp.sum().item() - ce.item()) < 1e-4


def test_dispatch_force_and_report(monkeypatch):
    assert dispatch.report()["attention"] == "sdpa"
    monkeypatch.setenv("XGENMM_OPS", "attention=reference")
    assert dispatch.choose("attention").name == "reference"
    monkeypatch.setenv("XGENMM_OPS", "attention=nope")
    with pytest.raises(KeyError, match="nope"):
        dispatch.choose("attention")
    monkeypatch.delenv("XGENMM_OPS")
    with pytest.raises(KeyError):
        dispatch.set_backend("attention", "missing")
