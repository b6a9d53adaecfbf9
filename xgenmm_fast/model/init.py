"""Random initialisation for fresh (tiny or full-size) models: every tensor gets seeded, non-trivial
values (norm scales near 1, biases non-zero) so tests notice a dropped bias or a mis-wired norm."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        is_norm = any(s in name for s in ("norm", "layernorm", "layer_norm"))
        if is_norm and leaf == "weight":
            vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif leaf == "bias":
            vals = 0.02 * torch.randn(p.shape, generator=gen)
        elif leaf == "latents":
            vals = torch.randn(p.shape, generator=gen)
        else:
            vals = std * torch.randn(p.shape, generator=gen)
        p.copy_(vals.to(p.dtype))
    return model
