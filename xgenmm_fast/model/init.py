"""Random initialisation for fresh (tiny or full-size) models: every tensor gets seeded, non-trivial
values (norm scales near 1, biases non-zero) so tests notice a dropped bias or a mis-wired norm."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    # draw on the parameters' device: a released-size model built on a GPU initialises in a second there
    # (on the CPU the values are the same as ever)
    device = next(model.parameters(), torch.empty(0)).device
    gen = torch.Generator(device=device).manual_seed(seed)
    # norms by module type, not only by name: the perceiver's FF LayerNorm is `layers.{i}.1.0` (SPEC keys)
    norm_params = {f"{mod_name}.{leaf}" if mod_name else leaf
                   for mod_name, mod in model.named_modules() if type(mod).__name__.endswith("Norm")
                   or isinstance(mod, (nn.LayerNorm, nn.GroupNorm))
                   for leaf, _ in mod.named_parameters(recurse=False)}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        is_norm = name in norm_params or any(s in name for s in ("norm", "layernorm", "layer_norm"))
        if is_norm and leaf == "weight":
            vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=device)
        elif leaf == "bias":
            vals = 0.02 * torch.randn(p.shape, generator=gen, device=device)
        elif leaf == "latents":
            vals = torch.randn(p.shape, generator=gen, device=device)
        else:
            vals = std * torch.randn(p.shape, generator=gen, device=device)
        p.copy_(vals.to(p.dtype))
    return model
