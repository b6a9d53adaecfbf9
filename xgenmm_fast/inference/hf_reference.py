"""The original's generation path on stock transformers modules: a reference for tests and the baseline
of benchmarks/bench_generate.py.

The original `XGenMMPerceiver.generate` encoded the images, built each sample's multimodal embeddings
(an `<image>` id replaced by its image tokens), stacked them LEFT-padded (pad positions hold the pad id's
value, attention mask 0) and called `lang_model.generate(inputs_embeds=..., attention_mask=...)` on HF's
`Phi3ForCausalLM`, whose input embedding and head it had replaced with the decoupled ones. This module
builds that: an HF `Phi3ForCausalLM` sharing our weights (no copy), with our `DecoupledEmbedding` and
`DecoupledLinear` modules put in, and the left-padded embeddings of a list of `Request`s.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .generate import Request


def hf_causal_lm(model, attn_implementation: str = "sdpa"):
    """HF Phi3ForCausalLM with `model.lang_model`'s weights (shared tensors) and decoupled embedding/head."""
    from transformers import Phi3Config, Phi3ForCausalLM
    t = model.config.text
    cfg = Phi3Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings, sliding_window=t.sliding_window,
        pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta}, tie_word_embeddings=False,
        attn_implementation=attn_implementation)
    with torch.device("meta"):
        hf = Phi3ForCausalLM(cfg)
    ours = model.lang_model
    hf.model.embed_tokens = ours.model.embed_tokens  # DecoupledEmbedding, as the original swapped in
    hf.lm_head = ours.lm_head  # DecoupledLinear
    missing, unexpected = hf.model.load_state_dict(ours.model.state_dict(), strict=False, assign=True)
    if unexpected or missing:
        raise RuntimeError(f"HF Phi-3 does not take our decoder weights: missing {missing}, unexpected {unexpected}")
    hf.model.rotary_emb = type(hf.model.rotary_emb)(cfg)  # rebuild its (meta) buffers on the CPU
    hf.to(device=model.device, dtype=ours.lm_head.weight.dtype)
    hf.generation_config.pad_token_id = t.pad_token_id
    return hf.eval()


@torch.no_grad()
def original_inputs_embeds(model, requests: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds (B, L, E) left-padded with the pad id's value, attention_mask (B, L)) as the
    original's generate built them; all images of the batch are encoded in one call."""
    embed = model.lang_model.get_input_embeddings()
    dev = model.device
    dtype = model.vision_encoder.embeddings.patch_embedding.weight.dtype
    tiles = [t[0] if t.dim() == 5 else t for r in requests for t in r.images]
    sizes = [tuple(s) for r in requests for s in r.image_sizes]
    tokens = iter(model.encode_images(torch.cat(tiles).to(dev, dtype), [t.shape[0] for t in tiles], sizes)
                  if tiles else [])
    rows = []
    for r in requests:
        ids = torch.tensor(list(r.input_ids), device=dev)
        e = embed(ids)
        pieces, start = [], 0
        for pos in (ids == model.media_token_id).nonzero().flatten().tolist()[:len(r.images)]:
            pieces += [e[start:pos], next(tokens).to(e.dtype)]
            start = pos + 1
        rows.append(torch.cat(pieces + [e[start:]]))
    L = max(x.shape[0] for x in rows)
    out = rows[0].new_full((len(rows), L, rows[0].shape[-1]), float(model.pad_token_id))
    mask = torch.zeros(len(rows), L, dtype=torch.long, device=dev)
    for i, x in enumerate(rows):
        out[i, L - x.shape[0]:] = x
        mask[i, L - x.shape[0]:] = 1
    return out, mask


@torch.no_grad()
def hf_generate(hf_lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """HF generate on embeddings only: returns just the new tokens (B, n), as the original got them."""
    return hf_lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
