"""Tiny models, prompts and a saved model directory (weights + tokenizer) for the inference tests."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from xgenmm_fast import XGenMM
from xgenmm_fast.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from xgenmm_fast.inference.generate import Request
from xgenmm_fast.model.init import init_random_weights

from ..model._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model


def no_added_tokens(model: XGenMM) -> XGenMM:
    """Make <image>, <image placeholder>, <|endofchunk|> never the argmax, so that a generated id never
    turns into an image slot when the uncached reference feeds it back through `forward`."""
    with torch.no_grad():
        model.lang_model.lm_head.additional_fc.bias -= 100.0
    return model


def gen_model(preset: str = "tiny", seed: int = 0) -> XGenMM:
    return no_added_tokens(tiny_model(preset, seed=seed))


def mixed_requests(model: XGenMM, seed: int = 0) -> list[Request]:
    """A batch of prompts of different lengths: one image, none, two images, one image of another grid."""
    gen = torch.Generator().manual_seed(seed)
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    spec = [([sizes[0]], 9), ([], 4), ([sizes[1], sizes[3]], 15), ([sizes[4]], 2), ([], 21)]
    out = []
    for imgs, n in spec:
        ids = random_text(model, n + len(imgs), gen, n_images=len(imgs))
        ids = torch.cat([torch.tensor([model.config.text.bos_token_id]), ids])
        out.append(Request(ids.tolist(), [random_tiles(model, s, gen)[0] for s in imgs], list(imgs)))
    return out


@torch.no_grad()
def uncached_greedy(model: XGenMM, requests: list[Request], steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Token-by-token greedy decoding WITHOUT a cache through the original-style padded forward: the whole
    batch, right-padded, re-run every step; argmax of each row's last real position."""
    got = [[] for _ in requests]
    step_logits = [[] for _ in requests]
    vision_x = [list(r.images) if r.images else None for r in requests]
    image_size = [list(r.image_sizes) if r.images else None for r in requests]
    for _ in range(steps):
        rows = [list(r.input_ids) + g for r, g in zip(requests, got)]
        T = max(len(x) for x in rows)
        lang_x = torch.full((len(rows), T), model.pad_token_id)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, x in enumerate(rows):
            lang_x[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        out = model(vision_x=vision_x, lang_x=lang_x, attention_mask=mask, image_size=image_size)
        last = out.attention_mask.sum(1) - 1  # multimodal stream, right-padded
        for i in range(len(rows)):
            logits = out.logits[i, last[i]]
            step_logits[i].append(logits)
            got[i].append(int(logits.argmax()))
    return got, [torch.stack(x) for x in step_logits]


def left_padded(model: XGenMM, requests: list[Request], extra: int = 3):
    """The original generate's inputs: lang_x left-padded (with `extra` more pad columns), mask, vision_x."""
    T = max(len(r.input_ids) for r in requests) + extra
    lang_x = torch.full((len(requests), T), model.pad_token_id)
    mask = torch.zeros(len(requests), T, dtype=torch.long)
    for i, r in enumerate(requests):
        n = len(r.input_ids)
        lang_x[i, T - n:] = torch.tensor(list(r.input_ids))
        mask[i, T - n:] = 1
    vision_x = [[t[None] for t in r.images] for r in requests]  # (1, 1+n, 3, s, s) per image, as the original
    image_size = [list(r.image_sizes) for r in requests]
    return vision_x, lang_x, mask, image_size


def save_tiny_model_dir(root, seed: int = 0) -> str:
    """An HF-format model dir (save_pretrained) + the tiny tokenizer in it, sized like training's build_model."""
    tok_dir = build_tiny_tokenizer(root / "tok_src")
    tokenizer, info = load_tokenizer(tok_dir)
    model = XGenMM("tiny")
    t = model.config.text
    t.initial_tokenizer_len, t.pad_token_id = info.initial_tokenizer_len, info.pad_token_id
    t.bos_token_id, t.eos_token_id = info.bos_token_id, info.end_token_id
    t.vocab_size = max(t.vocab_size, info.initial_tokenizer_len)
    model = init_random_weights(XGenMM(model.config), seed=seed).eval()
    out = root / "model"
    model.save_pretrained(str(out))  # replaces the directory: the tokenizer goes in afterwards
    tokenizer.save_pretrained(str(out))
    return str(out)


def write_images(root, n: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    sizes = [(40, 70), (90, 30), (50, 50)]
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths
