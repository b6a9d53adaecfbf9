"""Perceiver resampler (SPEC §1.2): 128 learned latents read each tile's media tokens.

Parameter names match `vision_tokenizer.*` keys: `layers.{i}.0` is the attention block,
`layers.{i}.1` the FF block as a Sequential (LN, up, GELU, down -> indices 0, 1, 2, 3).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import PerceiverConfig
from ..ops import activations, attention
from .siglip import LayerNorm


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

    def forward(self, media: torch.Tensor, latents: torch.Tensor, media_mask: torch.Tensor | None):
        """media (N, M, D), latents (N, L, D), media_mask (N, M) 0/1 -> (N, L, D)."""
        xn = self.norm_media(media)
        ln = self.norm_latents(latents)
        q = self._heads(self.to_q(ln))
        # to_kv applied to each key source separately equals to_kv(cat(...)) row for row: no concat needed
        k_media, v_media = (self._heads(t) for t in self.to_kv(xn).chunk(2, dim=-1))
        k_lat, v_lat = (self._heads(t) for t in self.to_kv(ln).chunk(2, dim=-1))
        out = attention.perceiver_attention(q, k_media, v_media, k_lat, v_lat, media_mask, self.scale)
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
        latents = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(media, latents, media_mask) + latents
            latents = ff(latents) + latents
        return self.projection(self.norm(latents))
