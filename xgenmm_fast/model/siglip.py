"""SigLIP vision transformer (SPEC §1.1). Parameter names match `vision_encoder.*` checkpoint keys."""
from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..ops import activations, attention, norms


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose forward goes through the ops layer."""

    def forward(self, x):
        return norms.layer_norm(x, self.weight, self.bias, self.eps)


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (N, 3, s, s) -> (N, g*g, D)
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        # position table first: the sum then takes its (contiguous) layout, not the transposed conv output's.
        # With x first the residual stream stayed transposed through every layer: each residual add ran as a
        # strided kernel and each LayerNorm first copied its input (the H200 SFT-step profile of 2026-11-26
        # has 20 ms of strided adds and 28 ms of strided copies per step, part of them from here).
        return self.position_embedding.weight + x.flatten(2).transpose(1, 2)


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // self.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (p(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        o = attention.attention(q, k, v, causal=False)  # (N, H, T, hd)
        return self.out_proj(o.transpose(1, 2).reshape(n, t, d))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(activations.gelu_tanh(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipPoolingHead(nn.Module):
    """Attention-pooling head. In every checkpoint, never used by xGen-MM; kept so files round-trip."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.probe = nn.Parameter(torch.zeros(1, 1, d))
        self.attention = nn.MultiheadAttention(d, cfg.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)


class SiglipVisionEncoder(nn.Module):
    """pixel_values (N, 3, s, s), normalised to [-1, 1] -> last_hidden_state (N, g*g, D)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = SiglipPoolingHead(cfg) if cfg.has_head else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
