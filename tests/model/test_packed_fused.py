"""The packed forward's fused parts: image tokens merged into the embedded stream by one op
(`merge_vision_tokens`, through the embedding module) and the loss through the fused head + cross entropy
(`linear_cross_entropy`, through the LM head module). Checked against the unfused steps they replaced."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.data.packed import IGNORE_INDEX, StreamSample, pack_samples
from xgenmm_fast.model.phi3 import AttentionLayout
from xgenmm_fast.ops import dispatch, loss
from xgenmm_fast.ops.embedding import decoupled_embedding_reference

from ._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny_wide", seed=23)


def _batch(model, gen, shared: bool):
    """Samples with 0, 1 and 2 images and an added-vocabulary id; with `shared`, the last two samples
    show the images of the first two (media_source set, as for a DPO pair)."""
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    spec = [[sizes[0]], [sizes[1], sizes[3]], [], [sizes[2]]]
    samples = []
    for i, imgs in enumerate(spec):
        ids = random_text(model, 10 + len(imgs), gen, n_images=len(imgs))
        text_pos = (ids != model.media_token_id).nonzero().flatten()
        ids[text_pos[4]] = model.config.text.initial_tokenizer_len + 2  # an id of the additional embedding
        labels = ids.clone()
        labels[ids == model.media_token_id] = IGNORE_INDEX
        labels[:3] = IGNORE_INDEX
        samples.append(StreamSample(ids.tolist(), labels.tolist(), [random_tiles(model, s, gen)[0] for s in imgs],
                                    list(imgs), sample_id=f"s{i}"))
    images_from = None
    if shared:
        samples += [StreamSample(s.input_ids, s.labels, [], [], sample_id=s.sample_id + "b") for s in samples[:2]]
        images_from = [None] * 4 + [0, 1]
    batch = pack_samples(samples, model.media_token_id, model.config.perceiver.num_latents, images_from=images_from)
    assert (batch.media_source is not None) == shared
    return batch


def _unfused_loss_sum(model, batch):
    """The packed forward as it was: lookup, index_select + index_put of the image tokens, logits of the
    rows with a target, cross entropy."""
    embeds = model.lang_model.get_input_embeddings()(batch.input_ids)
    tokens = torch.cat(model.encode_images(batch.pixel_values, batch.tiles_per_image, batch.image_sizes))
    if batch.media_source is not None:
        tokens = tokens.index_select(0, batch.media_source)
    embeds = embeds.index_put((batch.media_index,), tokens.to(embeds.dtype))
    hidden = model.lang_model(embeds, batch.positions, AttentionLayout(cu_seqlens=batch.cu_seqlens))
    keep = batch.targets != IGNORE_INDEX
    return loss.token_cross_entropy(model.lang_model.lm_head(hidden[keep]), batch.targets[keep], reduction="sum")


def _params(model):
    emb, head = model.lang_model.get_input_embeddings(), model.lang_model.lm_head
    return [emb.weight, emb.additional_embedding.weight, model.vision_tokenizer.latents, head.weight, head.bias,
            head.additional_fc.weight, head.additional_fc.bias]


def _loss_and_grads(model, fn):
    model.zero_grad()
    value = fn()
    value.backward()
    grads = [p.grad.clone() for p in _params(model)]
    model.zero_grad()
    return value.detach(), grads


@pytest.mark.parametrize("shared", [False, True])
def test_fused_forward_equals_the_unfused_steps(model, shared):
    """Reference backends: the same arithmetic in the same order, so loss and gradients are equal."""
    batch = _batch(model, torch.Generator().manual_seed(5), shared)
    new, new_grads = _loss_and_grads(model, lambda: model.forward_packed(batch)["loss_sum"])
    old, old_grads = _loss_and_grads(model, lambda: _unfused_loss_sum(model, batch))
    assert torch.equal(new, old)
    for p, a, b in zip(_params(model), new_grads, old_grads):
        assert torch.equal(a, b)
    assert new_grads[1].abs().sum() > 0 and new_grads[2].abs().sum() > 0  # added ids and images trained


@pytest.mark.parametrize("shared", [False, True])
def test_triton_backends_match_reference(model, shared):
    """merge_vision_tokens and linear_cross_entropy forced to Triton (interpreter on CPU) vs reference."""
    batch = _batch(model, torch.Generator().manual_seed(6), shared)
    ref, ref_grads = _loss_and_grads(model, lambda: model.forward_packed(batch)["loss_sum"])
    ops = ("merge_vision_tokens", "linear_cross_entropy")
    if any("triton" not in dispatch.available_backends(op) for op in ops):
        pytest.skip("Triton backends not registered here")
    try:
        for op in ops:
            dispatch.set_backend(op, "triton")
        out, grads = _loss_and_grads(model, lambda: model.forward_packed(batch)["loss_sum"])
    finally:
        for op in ops:
            dispatch.set_backend(op, None)
    assert abs(out.item() - ref.item()) <= 1e-5 * abs(ref.item())
    for a, b in zip(grads, ref_grads):
        assert ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < 1e-5


def test_no_logits_unless_asked(model, monkeypatch):
    """The loss never goes through the head's logits mode; `return_logits` still gives all (N, V) logits."""
    batch = _batch(model, torch.Generator().manual_seed(7), False)
    with torch.no_grad():
        expected = model.forward_packed(batch, return_logits=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("forward_packed built logits")

    monkeypatch.setattr(loss, "decoupled_logits", forbidden)
    with torch.no_grad():
        out = model.forward_packed(batch)
    assert "logits" not in out and out["loss_sum"].item() == pytest.approx(expected["loss_sum"].item(), rel=1e-6)
    V = model.config.text.initial_tokenizer_len + model.config.text.num_additional_tokens
    assert expected["logits"].shape == (batch.num_tokens, V)
    assert out["num_targets"].item() == batch.num_target_tokens


def test_lm_head_reduction_modes(model):
    head = model.lang_model.lm_head
    h = torch.randn(9, model.config.text.hidden_size)
    t = torch.randint(0, model.config.text.initial_tokenizer_len + 3, (9,))
    t[2] = IGNORE_INDEX
    logits = head(h)
    for reduction in ("sum", "mean"):
        expected = loss.token_cross_entropy(logits, t, reduction=reduction)
        assert torch.allclose(head(h, targets=t, reduction=reduction), expected, rtol=1e-6)
    lp = head(h, targets=t)  # the per-token log-prob mode is unchanged
    assert lp.shape == (9,) and lp[2].item() == 0.0
    with pytest.raises(ValueError, match="needs targets"):
        head(h, reduction="sum")


def test_embedding_module_paths(model):
    """Without media_index the module is the plain lookup; with it, media rows take the tokens."""
    emb = model.lang_model.get_input_embeddings()
    nb = model.config.text.initial_tokenizer_len
    ids = torch.tensor([0, 5, nb - 1, nb, nb + 2, 7])
    with torch.no_grad():
        plain = emb(ids)
        assert torch.equal(plain, decoupled_embedding_reference(ids, emb.weight, emb.additional_embedding.weight, nb))
        assert torch.equal(plain[3], emb.additional_embedding.weight[0])
        tokens = torch.randn(2, emb.weight.shape[1])
        merged = emb(ids, media_index=torch.tensor([1, 5]), tokens=tokens, media_source=torch.tensor([1, 1]))
        assert torch.equal(merged[[0, 2, 3, 4]], plain[[0, 2, 3, 4]])
        assert torch.equal(merged[1], tokens[1]) and torch.equal(merged[5], tokens[1])
        assert torch.equal(emb(ids, media_index=torch.zeros(0, dtype=torch.long)), plain)
