"""Packed DPO pieces against plain PyTorch: per-sequence log-probs, shared images, gradients of a DPO step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from xgenmm_fast.data.packed import IGNORE_INDEX, StreamSample, pack_samples
from xgenmm_fast.data.preference import PreferenceSample, pack_pairs
from xgenmm_fast.model.init import init_random_weights
from xgenmm_fast.training.dpo_loss import dpo_loss, nll_loss

from ..model._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model

RTOL = 1e-5
BETA = 0.1


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _pairs(model, gen) -> list[PreferenceSample]:
    """Pairs with one image (several grids), two images, and none; answers of different lengths."""
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    spec = [([sizes[0]], 9, 3, 5), ([], 6, 4, 1), ([sizes[1], sizes[3]], 12, 2, 6), ([sizes[2]], 5, 7, 7),
            ([sizes[4]], 8, 1, 2)]
    out = []
    for i, (imgs, n_prompt, n_c, n_r) in enumerate(spec):
        prompt = random_text(model, n_prompt + len(imgs), gen, n_images=len(imgs)).tolist()
        chosen = random_text(model, n_c, gen).tolist()
        rejected = random_text(model, n_r, gen).tolist()
        out.append(PreferenceSample(prompt, chosen, list(chosen), rejected, list(rejected),
                                    [random_tiles(model, s, gen)[0] for s in imgs], list(imgs), f"p{i}", i))
    return out


def _padded_logps(model, seq: StreamSample) -> torch.Tensor:
    """Sum of log p(label) over the labelled tokens of one sequence run alone through `model(...)`."""
    out = model(vision_x=[seq.tiles] if seq.tiles else None, lang_x=torch.tensor(seq.input_ids)[None],
                labels=torch.tensor(seq.labels)[None], image_size=[seq.image_sizes] if seq.tiles else None)
    logits, labels = out.logits[0, :-1].float(), out.labels[0, 1:]
    keep = labels != IGNORE_INDEX
    return torch.log_softmax(logits[keep], -1).gather(-1, labels[keep][:, None]).sum()


@pytest.fixture(scope="module")
def models():
    policy = tiny_model("tiny_wide", seed=31)
    reference = init_random_weights(copy.deepcopy(policy), seed=32).eval()  # different weights: non-zero rewards
    return policy, reference


def test_pack_pairs_encodes_each_image_once_and_shares_its_tokens(models):
    policy, _ = models
    gen = torch.Generator().manual_seed(1)
    pairs = _pairs(policy, gen)
    L = policy.config.perceiver.num_latents
    batch = pack_pairs(pairs, policy.media_token_id, L)
    assert batch.num_samples == 2 * len(pairs)
    assert batch.tiles_per_image == [t.shape[0] for p in pairs for t in p.tiles]  # once per pair
    assert batch.media_source is not None and batch.media_source.numel() == batch.media_index.numel()
    tokens_per_pair = [L * sum(t.shape[0] for t in p.tiles) for p in pairs]
    assert batch.media_index.numel() == 2 * sum(tokens_per_pair)
    assert int(batch.media_source.max()) + 1 == sum(tokens_per_pair)
    # every image-token row is shown exactly twice: in the chosen and in the rejected sequence
    assert torch.bincount(batch.media_source).eq(2).all()
    # without sharing, pack_samples still leaves media_source unset (the one-to-one behaviour)
    assert pack_samples(list(pairs[0].sequences()), policy.media_token_id, L).media_source is None


def test_packed_sequence_logprobs_equal_unpacked(models):
    policy, _ = models
    gen = torch.Generator().manual_seed(2)
    pairs = _pairs(policy, gen)
    batch = pack_pairs(pairs, policy.media_token_id, policy.config.perceiver.num_latents)
    with torch.no_grad():
        out = policy.forward_packed_logprobs(batch)
        alone = torch.stack([_padded_logps(policy, s) for p in pairs for s in p.sequences()])
    assert rel_err(out["logps"], alone) < RTOL
    expected_counts = [len(x) for p in pairs for x in (p.chosen_ids, p.rejected_ids)]
    assert out["num_targets"].tolist() == expected_counts
    # through DeepSpeed's call form as well
    with torch.no_grad():
        again = policy(packed=batch, packed_logprobs=True)["logps"]
    torch.testing.assert_close(again, out["logps"], rtol=0, atol=0)


def test_reference_reusing_the_policys_encoder_features_is_exact(models):
    policy, reference = models
    reference = copy.deepcopy(reference)
    reference.vision_encoder.load_state_dict(policy.vision_encoder.state_dict())  # frozen: shared weights
    gen = torch.Generator().manual_seed(3)
    batch = pack_pairs(_pairs(policy, gen), policy.media_token_id, policy.config.perceiver.num_latents)
    with torch.no_grad():
        feats = policy.forward_packed_logprobs(batch)["vision_features"]
        assert feats is not None and feats.shape[0] == batch.pixel_values.shape[0]
        reused = reference.forward_packed_logprobs(batch, vision_features=feats)["logps"]
        own = reference.forward_packed_logprobs(batch)["logps"]
    torch.testing.assert_close(reused, own, rtol=0, atol=0)


@pytest.mark.parametrize("loss_type,nll_weight", [("sigmoid", 0.0), ("sigmoid", 0.5), ("ipo", 0.0)])
def test_dpo_gradients_equal_plain_pytorch(models, loss_type, nll_weight):
    """Ours (packed pairs, images encoded once, log-probs from selected rows) vs the usual approach (each
    sequence padded and run alone, each image encoded per sequence, full logits), same DPO loss."""
    policy, reference = models
    gen = torch.Generator().manual_seed(4)
    pairs = _pairs(policy, gen)
    params = [p for p in policy.parameters() if p.requires_grad]

    policy.zero_grad()
    batch = pack_pairs(pairs, policy.media_token_id, policy.config.perceiver.num_latents)
    out = policy.forward_packed_logprobs(batch)
    with torch.no_grad():
        ref = reference.forward_packed_logprobs(batch)["logps"]
    counts = out["num_targets"]
    res = dpo_loss(out["logps"][0::2], out["logps"][1::2], ref[0::2], ref[1::2], beta=BETA, loss=loss_type,
                   chosen_tokens=counts[0::2], rejected_tokens=counts[1::2])
    ours = res.losses.mean() + nll_weight * nll_loss(out["logps"][0::2], counts[0::2])
    ours.backward()
    ours_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    policy.zero_grad()
    losses, nll_sum, nll_tokens = [], 0.0, 0
    for p in pairs:
        (c, r) = p.sequences()
        pc, pr = _padded_logps(policy, c), _padded_logps(policy, r)
        with torch.no_grad():
            rc, rr = _padded_logps(reference, c), _padded_logps(reference, r)
        if loss_type == "ipo":
            nc, nr = len(p.chosen_ids), len(p.rejected_ids)
            h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
            losses.append((h - 1 / (2 * BETA)) ** 2)
        else:
            losses.append(-F.logsigmoid(BETA * ((pc - rc) - (pr - rr))))
        nll_sum = nll_sum - pc
        nll_tokens += len(p.chosen_ids)
    plain = torch.stack(losses).mean() + nll_weight * nll_sum / nll_tokens
    plain.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=RTOL)
    for (name, p), g in zip([(n, p) for n, p in policy.named_parameters() if p.requires_grad], ours_grads):
        want = torch.zeros_like(p) if p.grad is None else p.grad  # e.g. the unused added-token embeddings
        if want.norm() == 0:
            assert g.norm() == 0, name
        else:
            assert rel_err(g, want) < 1e-4, name
    policy.zero_grad()


def test_an_over_budget_pair_is_cut_alike_in_both_sequences(models):
    policy, _ = models
    gen = torch.Generator().manual_seed(5)
    pair = _pairs(policy, gen)[0]
    L = policy.config.perceiver.num_latents
    n_prompt = len(pair.prompt_ids) - 1 + L * pair.tiles[0].shape[0]
    budget = 2 * (n_prompt + 2)  # each sequence keeps the prompt and 2 answer tokens
    batch = pack_pairs([pair], policy.media_token_id, L, max_tokens=budget)
    assert batch.num_truncated == 2
    assert batch.cu_seqlens.tolist() == [0, n_prompt + 2, 2 * (n_prompt + 2)]
    assert batch.tiles_per_image == [pair.tiles[0].shape[0]]
