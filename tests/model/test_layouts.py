"""Memory layouts that decide whether elementwise kernels run vectorized: the vision encoder's residual
stream must be contiguous from the embeddings on (a transposed stream made every residual add strided and
every LayerNorm copy its input first)."""
from __future__ import annotations

import torch

from ._tiny import tiny_model


def test_vision_residual_stream_is_contiguous():
    model = tiny_model("tiny", seed=3)
    enc = model.vision_encoder
    s = model.config.tile_size
    pixels = torch.rand(3, 3, s, s) * 2 - 1
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
             for layer in enc.encoder.layers]
    try:
        with torch.no_grad():
            emb = enc.embeddings(pixels)
            enc(pixels)
    finally:
        for h in hooks:
            h.remove()
    assert emb.is_contiguous()
    assert seen and all(seen), seen
