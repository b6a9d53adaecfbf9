"""Each part and the whole model against the independent stand-in in _original.py (fp32, 1e-5)."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.data.anyres import get_anyres_grid_shape
from xgenmm_fast.model.phi3 import AttentionLayout

from ._original import OriginalXGenMM, SpecPerceiver
from ._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", params=["tiny", "tiny_wide"])
def pair(request):
    model = tiny_model(request.param, seed=1234)
    return model, OriginalXGenMM(model)


def test_sizes_pick_each_grid(pair):
    model, _ = pair
    for shape, size in sizes_for_every_grid(model.config.tile_size).items():
        assert get_anyres_grid_shape(size, model.config.anyres_grids, model.config.tile_size) == shape


def test_siglip_matches_transformers(pair):
    model, ref = pair
    x = torch.randn(5, 3, model.config.tile_size, model.config.tile_size)
    with torch.no_grad():
        ours = model.vision_encoder(x)
        theirs = ref.vision(x).last_hidden_state
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize("window", [None, 3])
def test_phi3_matches_transformers_with_padding(pair, window):
    model, ref = pair
    old = model.config.text.sliding_window
    model.config.text.sliding_window = window
    ref.text.config.sliding_window = window
    try:
        B, T, E = 3, 11, model.config.text.hidden_size
        x = torch.randn(B, T, E)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, 7:] = 0
        mask[2, 2:] = 0
        with torch.no_grad():
            ours = model.lang_model(x, torch.arange(T).expand(B, T), AttentionLayout(key_padding_mask=mask))
            theirs = ref.text(inputs_embeds=x, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        assert rel_err(ours[keep], theirs[keep]) < RTOL
        if window is None:  # pad rows too: they attend to the real tokens before them. With a window a
            # pad row may see no real key at all; its output is arbitrary in every implementation.
            assert rel_err(ours, theirs) < RTOL
    finally:
        model.config.text.sliding_window = old
        ref.text.config.sliding_window = old


def test_perceiver_matches_spec(pair):
    model, ref = pair
    g2 = model.config.vision.num_patches
    x = torch.randn(6, g2, model.config.vision.hidden_size)
    mask = (torch.rand(6, g2) > 0.4).float()
    mask[0] = 0  # a fully masked chunk still has the latent keys
    with torch.no_grad():
        ours = model.vision_tokenizer(x, mask)
        theirs = SpecPerceiver(ref.sd, model.config)(x, mask)
    assert rel_err(ours, theirs) < RTOL


def _batch(model, gen, image_sizes_per_sample, text_lens, nested):
    """One sample per entry; entry = list of image sizes (empty = text-only, gets a blank tile)."""
    vision_x, image_size, ids = [], [], []
    s = model.config.tile_size
    for sizes, n in zip(image_sizes_per_sample, text_lens):
        if sizes:
            tiles = [random_tiles(model, sz, gen) for sz in sizes]
            vision_x.append(tiles if nested else tiles[0])
            image_size.append(list(sizes) if nested else sizes[0])
        else:  # the original's text-only sample: a blank tile that no <image> token uses
            blank = torch.zeros(1, 1, 3, s, s)
            vision_x.append([blank] if nested else blank)
            image_size.append([(s, s)] if nested else (s, s))
        ids.append(random_text(model, n, gen, n_images=len(sizes)))
    L = max(len(i) for i in ids)
    pad = model.pad_token_id
    lang_x = torch.full((len(ids), L), pad)
    attn = torch.zeros(len(ids), L, dtype=torch.long)
    labels = torch.full((len(ids), L), -100)
    for i, t in enumerate(ids):
        lang_x[i, :len(t)] = t
        attn[i, :len(t)] = 1
        lab = t.clone()
        lab[lab == model.media_token_id] = -100
        lab[: len(t) // 3] = -100
        labels[i, :len(t)] = lab
    return vision_x, lang_x, attn, labels, image_size


def _compare(model, ref, batch):
    vision_x, lang_x, attn, labels, image_size = batch
    with torch.no_grad():
        out = model(vision_x=vision_x, lang_x=lang_x, attention_mask=attn, labels=labels, image_size=image_size)
    logits, loss, M, Lb = ref(vision_x, lang_x, attn, labels, image_size)
    assert out.logits.shape == logits.shape
    assert torch.equal(out.attention_mask, M) and torch.equal(out.labels, Lb)
    assert rel_err(out.logits, logits) < RTOL
    assert abs(out.loss.item() - loss.item()) <= RTOL * abs(loss.item())


@pytest.mark.parametrize("grid", [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)])
def test_whole_model_each_grid(pair, grid):
    model, ref = pair
    gen = torch.Generator().manual_seed(hash(grid) % 1000)
    size = sizes_for_every_grid(model.config.tile_size)[grid]
    batch = _batch(model, gen, [[size], [size]], [13, 9], nested=False)
    _compare(model, ref, batch)


def test_whole_model_mixed_batch_with_text_only(pair):
    model, ref = pair
    gen = torch.Generator().manual_seed(7)
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    batch = _batch(model, gen, [[sizes[0]], [], [sizes[3]], []], [17, 8, 12, 21], nested=False)
    _compare(model, ref, batch)


def test_whole_model_several_images_per_sample(pair):
    model, ref = pair
    gen = torch.Generator().manual_seed(11)
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    s = model.config.tile_size
    batch = _batch(model, gen, [[sizes[2], sizes[4], (s, s)], [], [sizes[1]]], [25, 10, 14], nested=True)
    _compare(model, ref, batch)


def test_text_only_batch_without_vision(pair):
    model, ref = pair
    gen = torch.Generator().manual_seed(3)
    ids = torch.stack([random_text(model, 9, gen) for _ in range(2)])
    labels = ids.clone()
    with torch.no_grad():
        out = model(vision_x=None, lang_x=ids, labels=labels)
        hidden = ref.text(inputs_embeds=ref.embed(ids), attention_mask=torch.ones_like(ids)).last_hidden_state
    assert rel_err(out.logits, ref.head(hidden)) < RTOL


def test_gradients_flow_to_perceiver_and_lm_not_vision(pair):
    model, _ = pair
    gen = torch.Generator().manual_seed(5)
    size = sizes_for_every_grid(model.config.tile_size)[(2, 2)]
    vision_x, lang_x, attn, labels, image_size = _batch(model, gen, [[size]], [12], nested=False)
    model.zero_grad()
    model.train()
    try:
        out = model(vision_x=vision_x, lang_x=lang_x, attention_mask=attn, labels=labels, image_size=image_size)
        out.loss.backward()
    finally:
        model.eval()
    assert model.vision_tokenizer.latents.grad is not None and model.vision_tokenizer.latents.grad.abs().sum() > 0
    assert model.lang_model.lm_head.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    model.zero_grad()
