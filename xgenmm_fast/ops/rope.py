"""Rotary position embedding, rotate-half convention (as HF Phi-3 / Llama)."""
from __future__ import annotations

import torch

from . import dispatch


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape positions.shape + (head_dim,), computed in fp32 then cast to `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
                                .float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (..., head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: (..., T, H, D); cos, sin: broadcastable to (..., T, 1, D)."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


dispatch.register("rope", "reference", apply_rope_reference)


def apply_rope(q, k, cos, sin):
    return dispatch.call("rope", q, k, cos, sin)
