"""Phi-3 decoder (SPEC §1.3) with the decoupled vocabulary (SPEC §1.4).

Parameter names match `lang_model.*` checkpoint keys. The decoder runs in one of two layouts:
- padded: hidden (B, T, E), `key_padding_mask` (B, T) 1 = real token, positions (B, T);
- packed: hidden (total, E), `cu_seqlens` (n_seq + 1,) int32, positions (total,) restarting per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import TextConfig
from ..ops import activations, attention, embedding, loss, norms, rope


@dataclass
class AttentionLayout:
    key_padding_mask: torch.Tensor | None = None  # padded layout
    cu_seqlens: torch.Tensor | None = None  # packed layout
    max_seqlen: int | None = None  # packed: the longest sequence, known on the host (saves a sync per layer)

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


class DecoupledEmbedding(nn.Module):
    """ids <= initial_len-1 read `weight` [vocab_rows, E]; the added ids read `additional_embedding`.

    Called with `media_index` (the packed path), the lookup and the scatter of image tokens into the
    stream are one op (`ops.embedding.merge_vision_tokens`), still as a call of this module so that
    ZeRO-3 gathers `weight`. (`additional_embedding.weight`, [3, E], is read directly there; ZeRO-3 gathers
    a partitioned parameter on attribute access, which tests/training checks with
    `stage3_param_persistence_threshold: 0`.)
    """

    def __init__(self, num_embeddings: int, dim: int, num_base: int, num_additional: int, padding_idx: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.additional_embedding = nn.Embedding(num_additional, dim)
        self.num_base, self.padding_idx = num_base, padding_idx
        nn.init.normal_(self.weight, std=0.02)
        nn.init.normal_(self.additional_embedding.weight, std=0.02)  # as the original created them

    def forward(self, ids: torch.Tensor, media_index: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                media_source: torch.Tensor | None = None) -> torch.Tensor:
        """ids (...) -> embeddings (..., E). With `media_index` (M,) for ids (N,): the rows at media_index take
        the image tokens (K, E) instead — tokens[media_source[j]], or tokens[j] without media_source."""
        if media_index is not None:
            return embedding.merge_vision_tokens(ids, self.weight, self.additional_embedding.weight, self.num_base,
                                                 media_index, tokens, media_source)
        is_added = ids >= self.num_base
        base = F.embedding(ids.masked_fill(is_added, 0), self.weight)
        if not bool(is_added.any()):
            return base
        added = self.additional_embedding((ids - self.num_base).clamp(min=0))
        return torch.where(is_added[..., None], added.to(base.dtype), base)


class DecoupledLinear(nn.Module):
    """logits = cat((h Wᵀ + b)[:, :initial_len], h Aᵀ + a); W/b keep all `vocab_rows` rows on disk."""

    def __init__(self, dim: int, vocab_rows: int, num_base: int, num_additional: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_rows, dim))
        self.bias = nn.Parameter(torch.zeros(vocab_rows))
        self.additional_fc = nn.Linear(dim, num_additional)
        self.num_base = num_base
        nn.init.normal_(self.weight, std=0.02)
        nn.init.normal_(self.additional_fc.weight, std=0.02)
        nn.init.zeros_(self.additional_fc.bias)

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str | None = None) -> torch.Tensor:
        """h (..., E) -> logits (..., num_base + n_additional). With `targets` (N,) for h (N, E), and without
        materialising the logits: the per-row log p(target) (N,) in fp32 (0 where -100), or, given
        `reduction` ("sum" / "mean"), the fp32 cross entropy over the targets that are not -100.
        (A module call either way, so that sharded parameters, e.g. ZeRO-3's, are gathered.)"""
        if reduction is not None:
            if targets is None:
                raise ValueError(f"DecoupledLinear: reduction={reduction!r} needs targets")
            return loss.linear_cross_entropy(h, self.weight, self.bias, self.additional_fc.weight,
                                             self.additional_fc.bias, self.num_base, targets, reduction)
        if targets is not None:
            return loss.linear_token_logprobs(h, self.weight, self.bias, self.additional_fc.weight,
                                              self.additional_fc.bias, self.num_base, targets)
        return loss.decoupled_logits(h, self.weight, self.bias, self.additional_fc.weight,
                                     self.additional_fc.bias, self.num_base)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return norms.rms_norm(x, self.weight, self.eps)


class Phi3Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, qkv_out, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def _split_qkv(self, qkv: torch.Tensor, lead) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (*lead, H, d), k and v (*lead, Hkv, d): views of the fused projection. One split, not three
        slices: its backward is one cat of the three gradients, where each slice's backward made a zero
        (…, qkv) tensor, copied its part in and the three were added (~2 GB of memory traffic per layer at
        11k tokens on the released model, against 0.4 GB)."""
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
        return (q.view(*lead, self.n_heads, self.head_dim), k.view(*lead, self.n_kv, self.head_dim),
                v.view(*lead, self.n_kv, self.head_dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: AttentionLayout):
        lead = x.shape[:-1]  # (B, T) padded or (total,) packed
        q, k, v = self._split_qkv(self.qkv_proj(x), lead)
        q, k = rope.apply_rope(q, k, cos, sin)
        if layout.packed:
            o = attention.varlen_attention(q, k, v, layout.cu_seqlens, causal=True,
                                           sliding_window=self.cfg.sliding_window, max_seqlen=layout.max_seqlen)
        else:
            o = attention.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                    key_padding_mask=layout.key_padding_mask,
                                    sliding_window=self.cfg.sliding_window).transpose(1, 2)
        return self.o_proj(o.reshape(*lead, self.n_heads * self.head_dim))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache, layer_idx: int,
                       cu_seqlens: torch.Tensor | None = None):
        """Generation (xgenmm_fast.inference): the same attention, reading and filling a KV cache.

        Prefill (`cu_seqlens` given): x (total, E) packed prompts; every token's K/V goes into the cache and
        attention runs varlen within each prompt. Decode: x (B, T, E), the T newest tokens of each cache row;
        queries attend over the cached keys (`ops.attention.decode_attention`), sliding window included.
        `cache` is an `inference.kv_cache.KVCache` on which a step has begun.
        """
        lead = x.shape[:-1]
        q, k, v = self._split_qkv(self.qkv_proj(x), lead)
        q, k = rope.apply_rope(q, k, cos, sin)
        cache.append(layer_idx, k, v)
        if cu_seqlens is not None:
            o = attention.varlen_attention(q, k, v, cu_seqlens, causal=True, sliding_window=self.cfg.sliding_window)
        else:
            k_cache, v_cache, seqlens = cache.view(layer_idx)
            o = attention.decode_attention(q.transpose(1, 2), k_cache, v_cache, seqlens,
                                           sliding_window=self.cfg.sliding_window).transpose(1, 2)
        return self.o_proj(o.reshape(*lead, self.n_heads * self.head_dim))


class Phi3MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(activations.swiglu(self.gate_up_proj(x)))


class Phi3DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Phi3Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Phi3MLP(cfg)

    def forward(self, x, cos, sin, layout: AttentionLayout):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_cached(self, x, cos, sin, cache, layer_idx: int, cu_seqlens=None):
        x = x + self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, cache, layer_idx, cu_seqlens)
        return x + self.mlp(self.post_attention_layernorm(x))


class Phi3Model(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = DecoupledEmbedding(cfg.vocab_size, cfg.hidden_size, cfg.initial_tokenizer_len,
                                               cfg.num_additional_tokens, cfg.pad_token_id)
        self.layers = nn.ModuleList(Phi3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, layout: AttentionLayout):
        cos, sin = rope.rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, inputs_embeds.dtype)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, layout, use_reentrant=False)
            else:
                x = layer(x, cos, sin, layout)
        return self.norm(x)

    def forward_cached(self, inputs_embeds: torch.Tensor, cache, cu_seqlens: torch.Tensor | None = None):
        """One generation step over a KV cache (xgenmm_fast.inference.kv_cache.KVCache); final hidden states.

        Prefill: inputs_embeds (total, E) packed prompts, `cu_seqlens` (B + 1,) int32; the cache rows must be
        empty. Decode: inputs_embeds (B, T, E), T new tokens per cache row. RoPE positions are the cache
        positions (a prompt starts at 0). The step is committed to the cache before returning.
        """
        if cu_seqlens is not None:
            cache.begin_prefill(cu_seqlens)
        else:
            cache.begin_decode(inputs_embeds.shape[1])
        cos, sin = rope.rope_cos_sin(cache.positions(), self.cfg.head_dim, self.cfg.rope_theta, inputs_embeds.dtype)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
        x = inputs_embeds
        for i, layer in enumerate(self.layers):
            x = layer.forward_cached(x, cos, sin, cache, i, cu_seqlens)
        cache.commit()
        return self.norm(x)


class Phi3ForCausalLM(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.model = Phi3Model(cfg)
        self.lm_head = DecoupledLinear(cfg.hidden_size, cfg.vocab_size, cfg.initial_tokenizer_len,
                                       cfg.num_additional_tokens)

    def get_input_embeddings(self) -> DecoupledEmbedding:
        return self.model.embed_tokens

    def forward(self, inputs_embeds, positions, layout: AttentionLayout) -> torch.Tensor:
        """Final hidden states; the caller decides which rows need logits (saves the big matmul)."""
        return self.model(inputs_embeds, positions, layout)
