"""The original perceiver resampler's algorithm (OpenFlamingo / xGen-MM), in plain PyTorch, on the
parameters of our `PerceiverResampler`: the baseline of bench_perceiver.py and of bench_sft_step.py's
original pipeline.

Per layer, as the original `PerceiverAttention`: both inputs LayerNorm'd, keys and values from
to_kv(cat(normed media, normed latents)) over every media token, masked ones included; the (N, M + L) key
mask materialised, the scores masked_fill'ed with -inf, the row max subtracted (detached), softmax; then
to_out, the residual, and the feed-forward block (LayerNorm, up, exact GELU, down) with its residual;
finally the output LayerNorm and projection. Only stock torch ops (F.layer_norm, nn.Linear, F.gelu,
matmul): none of our ops dispatch, so its numbers do not move when our backends change.

It reads the parameters through the checkpoint's names (`layers.{i}.0.{norm_media, norm_latents, to_q,
to_kv, to_out}`, `layers.{i}.1.{0, 1, 3}`, `latents`, `norm`, `projection`) and the sizes through
`perceiver.config`, so it computes the same function as our module (tests/benchmarks/test_bench_perceiver.py
checks that), whatever our module does inside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def original_perceive(perceiver, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x (N, M, D) media tokens, mask (N, M) 0/1 (None: all visible) -> (N, num_latents, out_dim)."""
    cfg = perceiver.config
    heads, scale, eps = cfg.heads, cfg.dim_head ** -0.5, cfg.layer_norm_eps
    N = x.shape[0]
    lat = perceiver.latents.expand(N, -1, -1)
    if mask is None:
        mask = torch.ones(N, x.shape[1], device=x.device, dtype=x.dtype)
    full_mask = torch.cat([mask, torch.ones(N, lat.shape[1], device=x.device, dtype=mask.dtype)], 1)
    for attn, ff in perceiver.layers:
        xn = F.layer_norm(x, x.shape[-1:], attn.norm_media.weight, attn.norm_media.bias, eps)
        ln = F.layer_norm(lat, lat.shape[-1:], attn.norm_latents.weight, attn.norm_latents.bias, eps)
        q = attn.to_q(ln)
        k, v = attn.to_kv(torch.cat([xn, ln], 1)).chunk(2, -1)
        q, k, v = (z.view(z.shape[0], z.shape[1], heads, -1).transpose(1, 2) for z in (q, k, v))
        sim = (q * scale) @ k.transpose(-1, -2)
        sim = sim.masked_fill(full_mask[:, None, None, :] == 0, float("-inf"))
        sim = sim - sim.amax(-1, keepdim=True).detach()
        out = (sim.softmax(-1) @ v).transpose(1, 2).reshape(N, lat.shape[1], -1)
        lat = attn.to_out(out) + lat
        norm, up, down = ff[0], ff[1], ff[3]
        h = F.layer_norm(lat, lat.shape[-1:], norm.weight, norm.bias, eps)
        lat = down(F.gelu(up(h))) + lat
    return perceiver.projection(F.layer_norm(lat, lat.shape[-1:], perceiver.norm.weight, perceiver.norm.bias, eps))
