"""Perceiver resampler (SPEC §1.2): 128 learned latents read each tile's media tokens.

Masked media tokens (anyres padding, SPEC §3.4) are dropped, not masked: `pack_visible_media` gathers
the visible tokens of all chunks into one (total_visible, D) tensor once per forward, and every layer's
LayerNorm, to_kv and attention (`perceiver_attention_varlen`) run on that packed tensor only. The result
equals the masked form of the spec (a masked key has zero softmax weight there).

Parameter names match `vision_tokenizer.*` keys: `layers.{i}.0` is the attention block,
`layers.{i}.1` the FF block as a Sequential (LN, up, GELU, down -> indices 0, 1, 2, 3).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PerceiverConfig
from ..ops import activations, attention
from .siglip import LayerNorm


class VisibleMedia(NamedTuple):
    """The visible media tokens of N chunks, back to back: chunk n is rows [cu[n], cu[n + 1])."""
    tokens: torch.Tensor  # (total_visible, D)
    cu: torch.Tensor      # (N + 1,) int32
    max_len: int          # an upper bound on every chunk's count (the padded length M)


def pack_visible_media(media: torch.Tensor, media_mask: torch.Tensor | None) -> VisibleMedia:
    """media (N, M, D), media_mask (N, M) 0/1 or None (all visible) -> VisibleMedia.

    Masked tokens get no row, hence no LayerNorm, no to_kv and no attention work, and a zero gradient.
    """
    N, M, D = media.shape
    if media_mask is None:
        cu = torch.arange(0, (N + 1) * M, M, dtype=torch.int32, device=media.device)
        return VisibleMedia(media.reshape(N * M, D), cu, M)
    if media_mask.shape != (N, M):
        raise ValueError(f"perceiver: media_mask must be (N, M) = {(N, M)} like media, got {tuple(media_mask.shape)}")
    visible = media_mask.to(media.device) != 0  # (N, M)
    cu = F.pad(visible.sum(1).cumsum(0), (1, 0)).to(torch.int32)
    return VisibleMedia(media[visible], cu, M)


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, cfg: PerceiverConfig):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.scale = cfg.heads, cfg.dim_head, cfg.dim_head ** -0.5
        self.norm_media = LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.norm_latents = LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, H*d) -> (N, H, T, d)
        return x.view(x.shape[0], x.shape[1], self.heads, self.dim_head).transpose(1, 2)

    def forward(self, media: VisibleMedia, latents: torch.Tensor) -> torch.Tensor:
        """media: the packed visible tokens of the N chunks; latents (N, L, D) -> (N, L, D)."""
        xn = self.norm_media(media.tokens)  # (total_visible, D)
        ln = self.norm_latents(latents)
        q = self._heads(self.to_q(ln))
        # to_kv applied to each key source separately equals to_kv(cat(...)) row for row: no concat needed
        k_media, v_media = (t.view(t.shape[0], self.heads, self.dim_head)  # (total_visible, H, d)
                            for t in self.to_kv(xn).chunk(2, dim=-1))
        k_lat, v_lat = (self._heads(t) for t in self.to_kv(ln).chunk(2, dim=-1))
        out = attention.perceiver_attention_varlen(q, k_media, v_media, media.cu, k_lat, v_lat, self.scale,
                                                   max_media=media.max_len)
        out = out.transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


class GELU(nn.Module):
    def forward(self, x):
        return activations.gelu_erf(x)


def feed_forward(dim: int, cfg: PerceiverConfig) -> nn.Sequential:
    inner = dim * cfg.ff_mult
    return nn.Sequential(LayerNorm(dim, eps=cfg.layer_norm_eps), nn.Linear(dim, inner, bias=False), GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverResampler(nn.Module):
    """media (N, M, D) + mask (N, M) -> (N, num_latents, out_dim): one row per tile-sized chunk."""

    def __init__(self, dim: int, out_dim: int, cfg: PerceiverConfig):
        super().__init__()
        self.config = cfg
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, cfg), feed_forward(dim, cfg)])
                                    for _ in range(cfg.depth))
        self.norm = LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(dim, out_dim)

    def forward(self, media: torch.Tensor, media_mask: torch.Tensor | None = None) -> torch.Tensor:
        visible = pack_visible_media(media, media_mask)  # once; every layer reads the same packed tokens
        latents = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(visible, latents) + latents
            latents = ff(latents) + latents
        return self.projection(self.norm(latents))
