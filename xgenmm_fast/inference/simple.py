"""Greedy answering without a KV cache: re-runs the packed forward over the whole sequence per token.

Quadratic in the answer length, so only for short answers from small models (the demo, tests). The
batched, cached generator is the inference issue's work.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.chat import build_prompt
from ..data.packed import StreamSample, pack_samples
from ..data.preprocess import preprocess_images


@torch.no_grad()
def answer(model, tokenizer, info, images: Sequence, question: str, max_new_tokens: int = 16,
           history: Sequence[tuple[str, str]] = ()) -> str:
    """Greedy answer to `question` about `images` (PIL images; `<image>` tags are prepended when the
    question has none). `history` holds earlier (question, answer) turns."""
    model.eval()
    if images and "<image>" not in question and not any("<image>" in q for q, _ in history):
        question = "<image>\n" * len(images) + question
    turns = []
    for q, a in history:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    turns.append({"from": "human", "value": question})
    ids = list(tokenizer(build_prompt(turns)).input_ids)
    cfg = model.config
    tiles, sizes = [], []
    if images:
        pre = preprocess_images(list(images), grids=cfg.anyres_grids, tile=cfg.tile_size,
                                patch=cfg.vision.patch_size)
        tiles = list(pre.pixel_values.split(pre.tiles_per_image))
        sizes = list(pre.image_sizes)
    stops = {t for t in (info.end_token_id, info.eos_token_id) if t is not None}
    out: list[int] = []
    device = model.device
    for _ in range(max_new_tokens):
        sample = StreamSample(ids + out, [-100] * (len(ids) + len(out)), tiles, sizes)
        batch = pack_samples([sample], model.media_token_id, cfg.perceiver.num_latents).to(device)
        hidden_out = model.forward_packed(batch, return_logits=True)
        nxt = int(hidden_out["logits"][-1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
    return tokenizer.decode(out, skip_special_tokens=True).strip()
