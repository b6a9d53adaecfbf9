"""flash-attn / torch varlen_attn backends: our argument translation (layouts, window convention, GQA,
decode alignment) checked against the references.

Neither library runs on a CPU, so the CPU tests swap in stand-ins that compute attention the way those
libraries document it — flash-style (left, right) windows, bottom-right causal alignment, grouped
query heads, caches read as (B, Tmax, Hkv, D) — written independently of our references. A wrong
translation (an off-by-one window, a transposed cache, a dropped window side) makes them disagree.
The `gpu` tests run the real libraries where installed.
"""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops import dispatch, library_attention as la
from xgenmm_fast.ops.attention import decode_attention_reference, varlen_attention_reference

from ._util import TOL, check, leaf


def _flash_style(q, k, v, left: int, right: int, scale):
    """One sequence: q (Tq, Hq, D), k/v (Tk, Hkv, D); query i sits at key position Tk - Tq + i (bottom
    right); key j is visible iff i' - left <= j <= i' + right, a side of -1 being unlimited."""
    tq, hq, d = q.shape
    tk, hkv, _ = k.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros_like(q)
    for i in range(tq):
        pos = tk - tq + i
        for h in range(hq):
            kh = h // (hq // hkv)
            keys = [j for j in range(tk) if (left < 0 or j >= pos - left) and (right < 0 or j <= pos + right)]
            if not keys:
                continue
            s = (k[keys, kh] @ q[i, h]) * scale
            out[i, h] = torch.softmax(s.float(), 0).to(q.dtype) @ v[keys, kh]
    return out


def _stand_in_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size, causal=None, **kw):
    scale = kw.get("softmax_scale", kw.get("scale"))
    left, right = window_size
    if causal:  # flash-attn: causal is window (left, 0)
        right = 0
    outs = [_flash_style(q[s:e], k[s:e], v[s:e], left, right, scale) for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist())]
    return torch.cat(outs) if outs else q.new_empty(q.shape)


def _stand_in_kvcache(q, k_cache, v_cache, *, cache_seqlens, softmax_scale, causal, window_size):
    assert causal
    out = torch.stack([_flash_style(q[b], k_cache[b, :int(n)], v_cache[b, :int(n)], window_size[0], 0, softmax_scale)
                       for b, n in enumerate(cache_seqlens)])
    return out


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(la, "_takes", lambda *ts: True)
    monkeypatch.setattr(la, "_flash_attn_module", lambda: (_stand_in_varlen, _stand_in_kvcache))
    monkeypatch.setattr(la, "_torch_varlen_fn", lambda: _stand_in_varlen)


CASES = [([5, 1, 9], 4, 2, 8, None, True), ([12, 7], 2, 1, 16, 3, True), ([10], 2, 2, 8, 4, False),
         ([6, 6], 3, 3, 8, 1, True)]


@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", CASES)
@pytest.mark.parametrize("fn", [la.varlen_attention_flash_attn, la.varlen_attention_torch_varlen])
def test_varlen_translation(stand_ins, fn, lens, Hq, Hkv, D, window, causal, seed):
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = int(cu[-1])
    q, k, v = (torch.randn(T, h, D, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    out = fn(q, k, v, cu, causal=causal, sliding_window=window, scale=0.4)
    ref = varlen_attention_reference(q, k, v, cu, causal=causal, sliding_window=window, scale=0.4)
    check(fn.__name__, [out], [ref], 1e-12)


def _stand_in_varlen_2_11(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None, scale=None):
    """torch 2.11's varlen_attn: no window_size, no enable_gqa (equal head counts only)."""
    assert q.shape[1] == k.shape[1], "2.11 has no grouped-query support"
    return _stand_in_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, -1), causal=is_causal, scale=scale)


@pytest.mark.parametrize("lens,Hq,Hkv,D,window,causal", CASES)
def test_torch_varlen_translation_without_window_or_gqa_arguments(stand_ins, monkeypatch, lens, Hq, Hkv, D, window,
                                                                   causal, seed):
    """An older varlen_attn: windows fall back to SDPA, grouped-query heads are repeated."""
    monkeypatch.setattr(la, "_torch_varlen_fn", lambda: _stand_in_varlen_2_11)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(int(cu[-1]), h, D, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    out = la.varlen_attention_torch_varlen(q, k, v, cu, causal=causal, sliding_window=window, scale=0.4)
    ref = varlen_attention_reference(q, k, v, cu, causal=causal, sliding_window=window, scale=0.4)
    check("torch_varlen_2_11", [out], [ref], 1e-6)  # (the SDPA fallback rounds a little in fp64)


@pytest.mark.parametrize("window", [None, 2, 5])
def test_decode_translation(stand_ins, window, seed):
    B, Hq, Hkv, Tq, Tmax, D = 3, 4, 2, 2, 9, 8
    q = torch.randn(B, Hq, Tq, D, dtype=torch.float64)
    kc, vc = (torch.randn(B, Hkv, Tmax, D, dtype=torch.float64) for _ in range(2))
    lens = torch.tensor([2, 9, 5], dtype=torch.int32)
    out = la.decode_attention_flash_attn(q, kc, vc, lens, sliding_window=window)
    ref = decode_attention_reference(q, kc, vc, lens, sliding_window=window)
    check("decode_flash_attn", [out], [ref], 1e-12)


def test_window_convention():
    assert la.flash_window(None, True) == (-1, 0)
    assert la.flash_window(None, False) == (-1, -1)
    assert la.flash_window(2047, True) == (2046, 0)  # Phi-3: i - j < 2047
    assert la.flash_window(5, False) == (4, -1)
    with pytest.raises(ValueError):
        la.flash_window(0, True)


def test_unavailable_without_cuda_and_falls_back_on_cpu_tensors(seed):
    if not torch.cuda.is_available():
        assert not la.flash_attn_available() and not la.torch_varlen_available()
        assert dispatch.choose("varlen_attention").name not in ("flash_attn", "torch_varlen")
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    q = torch.randn(7, 2, 8)
    for fn in (la.varlen_attention_flash_attn, la.varlen_attention_torch_varlen):
        check("fallback", [fn(q, q, q, cu, sliding_window=3)], [varlen_attention_reference(q, q, q, cu, sliding_window=3)],
              1e-6)


def test_flash_limits_on_head_dim_and_dtype():
    """What the flash kernels take (FlashAttention-2: head dim a multiple of 8 up to 256, fp16/bf16, CUDA):
    checked on stand-in tensors, as no CUDA tensor exists here."""
    from types import SimpleNamespace

    def t(d, dtype=torch.bfloat16, cuda=True):
        return SimpleNamespace(shape=(5, 2, d), dtype=dtype, is_cuda=cuda)
    assert la._takes(t(96), t(96)) and la._takes(t(8)) and la._takes(t(256))
    assert not la._takes(t(12)) and not la._takes(t(264)) and not la._takes(t(4))  # the tiny model's 12
    assert not la._takes(t(96, torch.float32)) and not la._takes(t(96), t(96, cuda=False))


def test_calls_the_library_cannot_take_go_to_the_fallback(monkeypatch):
    """fp32 / CPU / odd head dims / empty packs: to `_without_library` (our Triton kernel on CUDA, else SDPA),
    not to the library (which would fail) nor to the slow reference."""
    seen = []
    monkeypatch.setattr(la, "_without_library", lambda *a: seen.append(a) or "fallback")
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    q = torch.randn(7, 2, 12)
    for fn in (la.varlen_attention_flash_attn, la.varlen_attention_torch_varlen):
        assert fn(q, q, q, cu, sliding_window=3, max_seqlen=4) == "fallback"
    assert len(seen) == 2 and seen[0][5] == 3 and seen[0][7] == 4  # the window and max_seqlen go along


GPU_BACKENDS = [pytest.param("flash_attn", marks=pytest.mark.gpu), pytest.param("torch_varlen", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("window,D", [(None, 96), (7, 96), (None, 12)])  # 12: not flash's, handed to Triton
def test_library_backend_on_gpu_bf16(name, window, D, seed):
    if not dispatch._REGISTRY["varlen_attention"][name].available():
        pytest.skip(f"{name} is not installed on this GPU machine")
    lens = [33, 1, 70]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q, k, v = (leaf(torch.randn(int(cu[-1]), h, D), torch.bfloat16) for h in (4, 2, 2))
    out = dispatch.backend_for("varlen_attention", name)(q, k, v, cu, causal=True, sliding_window=window)
    out.float().sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = varlen_attention_reference(q64, k64, v64, cu, causal=True, sliding_window=window)
    ref.sum().backward()
    check(name, [out], [ref], TOL[torch.bfloat16])
    check(name + "_bwd", [q.grad, k.grad, v.grad], [q64.grad, k64.grad, v64.grad], 3e-2, 0.1)
