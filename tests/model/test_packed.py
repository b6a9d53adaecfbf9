"""The packed forward equals running each sample alone through the original-style padded path."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.data.packed import StreamSample, pack_samples, stream_length
from xgenmm_fast.ops import dispatch

from ._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model

RTOL = 1e-5


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _samples(model, gen):
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    spec = [[sizes[0]], [], [sizes[1], sizes[3]], [sizes[2]], [], [sizes[4]]]
    lens = [14, 1, 23, 9, 30, 6]
    out = []
    for i, (imgs, n) in enumerate(zip(spec, lens)):
        ids = random_text(model, n + len(imgs), gen, n_images=len(imgs))
        labels = ids.clone()
        labels[ids == model.media_token_id] = -100
        labels[: (n // 2)] = -100
        out.append(StreamSample(ids.tolist(), labels.tolist(), [random_tiles(model, s, gen)[0] for s in imgs],
                                list(imgs), sample_id=f"s{i}"))
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny_wide", seed=21)


@pytest.mark.parametrize("varlen_backend", ["reference", "sdpa"])
def test_packed_equals_per_sample_padded(model, varlen_backend):
    dispatch.set_backend("varlen_attention", varlen_backend)
    try:
        gen = torch.Generator().manual_seed(4)
        samples = _samples(model, gen)
        L = model.config.perceiver.num_latents
        batch = pack_samples(samples, model.media_token_id, L)
        assert batch.num_truncated == 0
        assert batch.num_tokens == sum(stream_length(s.input_ids, [t.shape[0] for t in s.tiles],
                                                     model.media_token_id, L) for s in samples)
        with torch.no_grad():
            packed = model.forward_packed(batch, return_logits=True)
        total_loss, total_n = 0.0, 0
        for i, s in enumerate(samples):
            ids = torch.tensor(s.input_ids)[None]
            labels = torch.tensor(s.labels)[None]
            with torch.no_grad():
                alone = model(vision_x=[s.tiles] if s.tiles else None, lang_x=ids, labels=labels,
                              image_size=[s.image_sizes] if s.tiles else None)
            a, b = batch.cu_seqlens[i].item(), batch.cu_seqlens[i + 1].item()
            assert rel_err(packed["logits"][a:b], alone.logits[0]) < RTOL, s.sample_id
            n = int((labels[0, 1:] != -100).sum())
            total_loss += alone.loss.item() * n if n else 0.0  # mean over no target is NaN
            total_n += n
        assert packed["num_targets"].item() == total_n
        assert abs(packed["loss_sum"].item() - total_loss) < RTOL * total_loss
    finally:
        dispatch.set_backend("varlen_attention", None)


def test_packed_gradients_match_padded(model):
    gen = torch.Generator().manual_seed(8)
    samples = _samples(model, gen)[:3]
    L = model.config.perceiver.num_latents
    batch = pack_samples(samples, model.media_token_id, L)
    params = [model.vision_tokenizer.latents, model.lang_model.lm_head.weight,
              model.lang_model.model.layers[0].self_attn.qkv_proj.weight]
    model.zero_grad()
    model.forward_packed(batch)["loss_sum"].backward()
    packed_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    for s in samples:
        out = model(vision_x=[s.tiles] if s.tiles else None, lang_x=torch.tensor(s.input_ids)[None],
                    labels=torch.tensor(s.labels)[None], image_size=[s.image_sizes] if s.tiles else None)
        n = int((torch.tensor(s.labels)[1:] != -100).sum())
        if n:
            (out.loss * n).backward()
    for p, g in zip(params, packed_grads):
        assert rel_err(g, p.grad) < 1e-5
    model.zero_grad()


def test_truncation_never_splits_an_image(model):
    gen = torch.Generator().manual_seed(9)
    s = _samples(model, gen)[2]  # two images
    L = model.config.perceiver.num_latents
    first_img_at = s.input_ids.index(model.media_token_id)
    budget = first_img_at + L * s.tiles[0].shape[0] + 2  # first image fits, second doesn't
    batch = pack_samples([s], model.media_token_id, L, max_tokens=budget)
    assert batch.num_truncated == 1 and batch.num_tokens <= budget
    assert batch.tiles_per_image == [s.tiles[0].shape[0]]
    assert batch.media_index.numel() == L * s.tiles[0].shape[0]


def test_more_image_tokens_than_images_is_an_error(model):
    s = StreamSample([5, model.media_token_id, 6], [5, -100, 6], [], [], sample_id="bad")
    with pytest.raises(ValueError, match="bad"):
        pack_samples([s], model.media_token_id, 4)


def test_activation_checkpointing_gives_the_same_loss_and_gradients(model):
    gen = torch.Generator().manual_seed(12)
    batch = pack_samples(_samples(model, gen)[:3], model.media_token_id, model.config.perceiver.num_latents)
    p = model.lang_model.model.layers[1].mlp.down_proj.weight
    results = []
    model.train()
    try:
        for ckpt in (False, True):
            model.set_gradient_checkpointing(ckpt)
            model.zero_grad()
            out = model.forward_packed(batch)
            out["loss_sum"].backward()
            results.append((out["loss_sum"].item(), p.grad.clone()))
    finally:
        model.set_gradient_checkpointing(False)
        model.eval()
        model.zero_grad()
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert rel_err(results[1][1], results[0][1]) < 1e-6


def test_qkv_backward_is_one_cat_not_three_zero_filled_slices(model):
    """The attention block's q / k / v are one split of the fused projection: autograd's backward for it is
    one cat. Three slices (as before 2026-11-26's fourth session) each made a zero tensor of the projection's
    size, copied their gradient in, and the three were added. Checked on the autograd graph: no slice of a
    tensor as wide as the projection, and a split of it."""
    from xgenmm_fast.model.phi3 import AttentionLayout
    from xgenmm_fast.ops import rope
    layer = model.lang_model.model.layers[0].self_attn
    cfg = layer.cfg
    total, width = 23, layer.qkv_proj.out_features
    x = torch.randn(total, cfg.hidden_size, requires_grad=True)
    cos, sin = rope.rope_cos_sin(torch.arange(total), cfg.head_dim, cfg.rope_theta, x.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # over heads, as Phi3Model passes them
    out = layer(x, cos, sin, AttentionLayout(cu_seqlens=torch.tensor([0, 9, total], dtype=torch.int32)))
    seen, stack, nodes = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(f for f, _ in node.next_functions)

    def input_width(node):
        return tuple(getattr(node, "_saved_self_sym_sizes", ()) or ())[-1:] == (width,)

    assert not [n for n in nodes if type(n).__name__ == "SliceBackward0" and input_width(n)]
    assert [n for n in nodes if type(n).__name__.startswith("SplitWithSizesBackward") and input_width(n)]


def test_packed_forward_hands_attention_the_host_max_seqlen(model, monkeypatch):
    """pack_samples records the longest sequence on the host; every layer's varlen attention gets it (the
    GPU backends then size their launch without reading cu_seqlens back: one device sync per layer less),
    and it survives .to()."""
    from xgenmm_fast.ops import attention
    seen = []
    real = attention.varlen_attention

    def spy(q, k, v, cu_seqlens, **kw):
        seen.append(kw.get("max_seqlen"))
        return real(q, k, v, cu_seqlens, **kw)

    monkeypatch.setattr(attention, "varlen_attention", spy)
    gen = torch.Generator().manual_seed(5)
    batch = pack_samples(_samples(model, gen), model.media_token_id, model.config.perceiver.num_latents)
    longest = int((batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).max())
    assert batch.max_seqlen == longest and batch.to("cpu").max_seqlen == longest
    with torch.no_grad():
        model.forward_packed(batch.to("cpu"))
    assert seen == [longest] * model.config.text.num_hidden_layers
