"""Attention ops: padded/batched (SigLIP, padded LM), varlen over packed sequences, and the
perceiver's two-source attention.

Layouts (flash-attention style, spelled out):
- `attention`:          q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D); Hq % Hkv == 0 (grouped-query ready).
- `varlen_attention`:   q (total, Hq, D), k/v (total, Hkv, D), cu_seqlens (n_seq + 1,) int32 from 0 to
  total; optional `max_seqlen`, a host int ≥ the longest sequence: the GPU backends size their launch by it,
  and without it read it from the device (a sync per call).
- `perceiver_attention`: q (N, H, L, D) latent queries; media keys/values (N, H, M, D) with a
  (N, M) 0/1 mask; latent keys/values (N, H, L, D) never masked.
- `perceiver_attention_varlen`: the same with only the visible media keys, packed: k_media/v_media
  (total_media, H, D), chunk n's keys at rows [cu_media[n], cu_media[n + 1]), cu_media (N + 1,) int32
  (a chunk may have none: its queries see only the latents); `max_media` ≥ every chunk's count (optional).

Masking semantics follow HF: causal means key j visible to query i iff j <= i; a sliding window W
additionally requires i - j < W; key padding masks out keys whose mask entry is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch, library_attention


def _repeat_kv(x: torch.Tensor, n_rep: int, head_dim_axis: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=head_dim_axis)


def build_attention_mask(tq: int, tk: int, *, causal: bool, sliding_window: int | None,
                         key_padding_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean (B or 1, 1, Tq, Tk) mask, True = attend; None when everything is visible.

    Queries are aligned to the end of the keys (decode with a cache: query i is key position tk - tq + i).
    """
    mask = None
    if causal or sliding_window is not None:
        qi = torch.arange(tq, device=device)[:, None] + (tk - tq)
        kj = torch.arange(tk, device=device)[None, :]
        mask = kj <= qi if causal else torch.ones(tq, tk, dtype=torch.bool, device=device)
        if sliding_window is not None:
            mask = mask & (qi - kj < sliding_window)
        mask = mask[None, None]
    if key_padding_mask is not None:
        kp = key_padding_mask.bool()[:, None, None, :]
        mask = kp if mask is None else mask & kp
    return mask


def attention_reference(q, k, v, *, causal: bool = False, key_padding_mask=None, sliding_window=None,
                        scale: float | None = None) -> torch.Tensor:
    """Plain softmax(q kᵀ·scale) v with fp32 softmax; rows with no visible key return zeros."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep, 1), _repeat_kv(v, n_rep, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    mask = build_attention_mask(q.shape[2], k.shape[2], causal=causal, sliding_window=sliding_window,
                                key_padding_mask=key_padding_mask, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0).to(q.dtype)
    return torch.matmul(probs, v)


def attention_sdpa(q, k, v, *, causal: bool = False, key_padding_mask=None, sliding_window=None,
                   scale: float | None = None) -> torch.Tensor:
    """torch SDPA with the same masks (fast CPU path; flash/mem-efficient kernels on GPU when maskless)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep, 1), _repeat_kv(v, n_rep, 1)
    tq, tk = q.shape[2], k.shape[2]
    window_inactive = sliding_window is None or max(tq, tk) <= sliding_window
    if key_padding_mask is None and window_inactive and (not causal or tq == tk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and tq > 1, scale=scale)
    mask = build_attention_mask(tq, tk, causal=causal, sliding_window=sliding_window,
                                key_padding_mask=key_padding_mask, device=q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # rows without any visible key come back as NaN from SDPA; make them zeros like the reference
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype, device=out.device))


def _varlen_by_sequence(dense_fn, q, k, v, cu_seqlens, causal, sliding_window, scale):
    bounds = cu_seqlens.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        o = dense_fn(q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None], v[s:e].transpose(0, 1)[None],
                     causal=causal, sliding_window=sliding_window, scale=scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if outs else q.new_empty(q.shape)


def varlen_attention_reference(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool = True,
                               sliding_window=None, scale: float | None = None, max_seqlen=None) -> torch.Tensor:
    """Each packed sequence attends only within itself. Loops over sequences (reference, not fast)."""
    return _varlen_by_sequence(attention_reference, q, k, v, cu_seqlens, causal, sliding_window, scale)


def varlen_attention_sdpa(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool = True,
                          sliding_window=None, scale: float | None = None, max_seqlen=None) -> torch.Tensor:
    """Per-sequence torch SDPA (the CPU fallback; GPU backends replace it)."""
    return _varlen_by_sequence(attention_sdpa, q, k, v, cu_seqlens, causal, sliding_window, scale)


def decode_attention_reference(q, k_cache, v_cache, cache_seqlens: torch.Tensor, *, sliding_window=None,
                               scale: float | None = None) -> torch.Tensor:
    """New queries against a KV cache (generation).

    q (B, Hq, Tq, D): the Tq newest tokens of each sequence; k_cache/v_cache (B, Hkv, Tmax, D) hold
    `cache_seqlens[b]` valid positions (the new tokens' keys included, at the end); query i of sequence b
    sits at position cache_seqlens[b] - Tq + i and sees keys <= it (and within the window).
    """
    B, _, tq, _ = q.shape
    tmax = k_cache.shape[2]
    pos_k = torch.arange(tmax, device=q.device)[None, :]
    valid = pos_k < cache_seqlens[:, None]  # (B, Tmax)
    pos_q = cache_seqlens[:, None] - tq + torch.arange(tq, device=q.device)[None, :]  # (B, Tq)
    mask = valid[:, None, :] & (pos_k[:, None, :] <= pos_q[:, :, None])
    if sliding_window is not None:
        mask = mask & (pos_q[:, :, None] - pos_k[:, None, :] < sliding_window)
    n_rep = q.shape[1] // k_cache.shape[1]
    k, v = _repeat_kv(k_cache, n_rep, 1), _repeat_kv(v_cache, n_rep, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores.float(), dim=-1), nan=0.0).to(q.dtype)
    return torch.matmul(probs, v)


def perceiver_attention_reference(q, k_media, v_media, k_latent, v_latent, media_mask, scale: float):
    """Latent queries over [media keys ; latent keys], media keys masked where media_mask == 0."""
    k = torch.cat([k_media, k_latent], dim=2)
    v = torch.cat([v_media, v_latent], dim=2)
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if media_mask is not None:
        keep = torch.cat([media_mask.bool(), torch.ones(media_mask.shape[0], k_latent.shape[2],
                                                        dtype=torch.bool, device=q.device)], dim=1)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    scores = scores - scores.amax(dim=-1, keepdim=True).detach()
    return torch.matmul(scores.softmax(dim=-1), v)


def perceiver_attention_varlen_reference(q, k_media, v_media, cu_media, k_latent, v_latent, scale: float,
                                         max_media: int | None = None):
    """Packed media keys scattered back to a zero-padded (N, H, max_media, D) block with a length mask,
    then `perceiver_attention_reference`. Padding keys are masked, so they get no weight and no gradient."""
    N, H, _, D = q.shape
    counts = (cu_media[1:] - cu_media[:-1]).to(device=q.device, dtype=torch.long)  # (N,)
    if max_media is None:
        max_media = int(counts.max()) if N else 0
    visible = torch.arange(max_media, device=q.device)[None, :] < counts[:, None]  # (N, max_media)

    def padded(x):  # (total_media, H, D) -> (N, H, max_media, D)
        out = x.new_zeros(N, max_media, H, D)
        out[visible] = x
        return out.transpose(1, 2)

    return perceiver_attention_reference(q, padded(k_media), padded(v_media), k_latent, v_latent, visible, scale)


dispatch.register("attention", "sdpa", attention_sdpa)
dispatch.register("attention", "reference", attention_reference)
dispatch.register("varlen_attention", "sdpa", varlen_attention_sdpa)
dispatch.register("varlen_attention", "reference", varlen_attention_reference)
dispatch.register("perceiver_attention", "reference", perceiver_attention_reference)
dispatch.register("perceiver_attention_varlen", "reference", perceiver_attention_varlen_reference)
dispatch.register("decode_attention", "reference", decode_attention_reference)
library_attention.register()  # flash-attn / torch varlen_attn, where installed and on CUDA


def attention(q, k, v, **kw):
    return dispatch.call("attention", q, k, v, **kw)


def varlen_attention(q, k, v, cu_seqlens, **kw):
    return dispatch.call("varlen_attention", q, k, v, cu_seqlens, **kw)


def decode_attention(q, k_cache, v_cache, cache_seqlens, **kw):
    return dispatch.call("decode_attention", q, k_cache, v_cache, cache_seqlens, **kw)


def perceiver_attention(q, k_media, v_media, k_latent, v_latent, media_mask, scale):
    return dispatch.call("perceiver_attention", q, k_media, v_media, k_latent, v_latent, media_mask, scale)


def perceiver_attention_varlen(q, k_media, v_media, cu_media, k_latent, v_latent, scale, max_media=None):
    return dispatch.call("perceiver_attention_varlen", q, k_media, v_media, cu_media, k_latent, v_latent, scale,
                         max_media=max_media)
