"""Perceiver resampler (SPEC §1.2): 128 learned latents read each tile's media tokens.

Masked media tokens (anyres padding, SPEC §3.4) are dropped, not masked: `pack_visible_media` gathers
the visible tokens of all chunks into one (total_visible, D) tensor once per forward, and every layer's
to_kv and attention (`perceiver_attention_varlen`) run on that packed tensor only. The result equals the
masked form of the spec (a masked key has zero softmax weight there).

The media tokens are the same input to every layer, so their LayerNorm statistics are too: they are
normalized once per forward (x̂ = (x − mean) · rstd, no affine), and each layer's `norm_media` affine is
folded into its to_kv weights: to_kv(x̂·γ + β) = x̂ (W·diag γ)ᵀ + W β (`PerceiverAttention.media_kv`).
Besides the 5 LayerNorm passes saved, when the media need no gradient (a frozen vision encoder) the
backward no longer computes the (tokens × D) input gradient of to_kv just to get dγ/dβ: they come from
to_kv's weight gradient (dγ = Σ_rows dW' ∘ W), which is computed anyway.

Parameter names match `vision_tokenizer.*` keys: `layers.{i}.0` is the attention block,
`layers.{i}.1` the FF block as a Sequential (LN, up, GELU, down -> indices 0, 1, 2, 3).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PerceiverConfig
from ..ops import activations, attention, norms
from .siglip import LayerNorm


class VisibleMedia(NamedTuple):
    """The visible media tokens of N chunks, back to back: chunk n is rows [cu[n], cu[n + 1])."""
    tokens: torch.Tensor  # (total_visible, D), LayerNorm-normalized without affine (x̂)
    cu: torch.Tensor      # (N + 1,) int32
    max_len: int          # an upper bound on every chunk's count (the padded length M)


def pack_visible_media(media: torch.Tensor, media_mask: torch.Tensor | None, eps: float) -> VisibleMedia:
    """media (N, M, D), media_mask (N, M) 0/1 or None (all visible) -> VisibleMedia of normalized tokens.

    Masked tokens get no row, hence no LayerNorm, no to_kv and no attention work, and a zero gradient.
    The tokens are normalized here, once, with every layer's norm_media eps (one config value).
    """
    N, M, D = media.shape
    if media_mask is None:
        cu = torch.arange(0, (N + 1) * M, M, dtype=torch.int32, device=media.device)
        tokens, max_len = media.reshape(N * M, D), M
    else:
        if media_mask.shape != (N, M):
            raise ValueError(f"perceiver: media_mask must be (N, M) = {(N, M)} like media, "
                             f"got {tuple(media_mask.shape)}")
        visible = media_mask.to(media.device) != 0  # (N, M)
        cu = F.pad(visible.sum(1).cumsum(0), (1, 0)).to(torch.int32)
        tokens, max_len = media[visible], M
    return VisibleMedia(norms.layer_norm(tokens, None, None, eps), cu, max_len)


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

    def media_kv(self, media_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values), each (rows, H, d): to_kv(norm_media(x)) from x̂ = the media normalized without affine,
        x̂ (W·diag γ)ᵀ + W β.

        The fold is computed in at least fp32 and cast once to W's dtype (a (2·inner, D) product:
        negligible). Autograd then gives dW = dW'·γ, dγ = Σ_rows dW' ∘ W, dβ = Wᵀ Σ_tokens dKV. Keys and
        values are two projections on the halves of the folded weight rather than halves of one projection:
        the backward of chunking that output concatenates the attention's dK and dV into one (rows, 2·inner)
        gradient (a copy of the largest tensor of the layer); chunking the weight concatenates only the two
        (inner, D) weight gradients.
        """
        w, gamma, beta = self.to_kv.weight, self.norm_media.weight, self.norm_media.bias
        acc = torch.promote_types(w.dtype, torch.float32)
        w_folded = (w.to(acc) * gamma.to(acc)).to(w.dtype)
        b_folded = (w.to(acc) @ beta.to(acc)).to(w.dtype)
        x = media_hat.to(w.dtype)
        return tuple(F.linear(x, wh, bh).view(x.shape[0], self.heads, self.dim_head)
                     for wh, bh in zip(w_folded.chunk(2, dim=0), b_folded.chunk(2, dim=0)))

    def forward(self, media: VisibleMedia, latents: torch.Tensor) -> torch.Tensor:
        """media: the packed, normalized visible tokens of the N chunks; latents (N, L, D) -> (N, L, D)."""
        ln = self.norm_latents(latents)
        q = self._heads(self.to_q(ln))
        # to_kv applied to each key source separately equals to_kv(cat(...)) row for row: no concat needed;
        # keys and values from the weight's halves (see media_kv): (total_visible, H, d) and (N, H, L, d)
        k_media, v_media = self.media_kv(media.tokens)
        k_lat, v_lat = (self._heads(F.linear(ln, wh)) for wh in self.to_kv.weight.chunk(2, dim=0))
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
        # once: every layer reads the same packed, normalized tokens
        visible = pack_visible_media(media, media_mask, self.config.layer_norm_eps)
        latents = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(visible, latents) + latents
            latents = ff(latents) + latents
        return self.projection(self.norm(latents))
