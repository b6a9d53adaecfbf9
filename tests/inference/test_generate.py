"""The cached batched generator against uncached decoding through the original-style padded forward."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.inference.generate import (
    GenerationConfig,
    Generator,
    Request,
    sample_next,
)
from xgenmm_fast.inference.hf_reference import (
    hf_causal_lm,
    hf_generate,
    original_inputs_embeds,
)
from xgenmm_fast.inference.kv_cache import KVCache

from ._setup import gen_model, left_padded, mixed_requests, uncached_greedy

RTOL = 1e-4  # fp32; the cached path sums attention in a different order than the padded one
STEPS = 7


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def model():
    return gen_model("tiny", seed=11)


@pytest.fixture(scope="module")
def wide():
    """3x3 features per tile: the anyres grouping quirk and masks matter (SPEC §3.5)."""
    return gen_model("tiny_wide", seed=12)


@pytest.fixture(scope="module")
def requests_(model):
    return mixed_requests(model, seed=5)


@pytest.fixture(scope="module")
def reference(model, requests_):
    return uncached_greedy(model, requests_, STEPS)


def greedy(model, requests, steps=STEPS, **kw):
    return Generator(model).generate(requests, GenerationConfig(max_new_tokens=steps, **kw))


def test_greedy_equals_uncached_padded_forward(model, requests_, reference):
    ref_ids, ref_logits = reference
    outs = greedy(model, requests_, output_logits=True)
    for i, (o, ids, logits) in enumerate(zip(outs, ref_ids, ref_logits)):
        assert o.token_ids == ids, f"request {i}"
        assert o.finish_reason == "length" and o.text is None
        assert rel_err(o.logits, logits) < RTOL, f"request {i}"


def test_greedy_equals_uncached_padded_forward_wide_tiles(wide):
    requests = mixed_requests(wide, seed=6)
    ref_ids, ref_logits = uncached_greedy(wide, requests, 4)
    outs = greedy(wide, requests, steps=4, output_logits=True)
    for i, (o, ids, logits) in enumerate(zip(outs, ref_ids, ref_logits)):
        assert o.token_ids == ids, f"request {i}"
        assert rel_err(o.logits, logits) < RTOL, f"request {i}"


def test_packed_prefill_logits_equal_padded_forward(model, requests_):
    gen = Generator(model)
    cache, last, lens, all_logits = gen.prefill(requests_, all_logits=True)
    assert cache.lengths == lens and cache.seqlens.tolist() == lens
    vision_x = [list(r.images) or None for r in requests_]
    image_size = [list(r.image_sizes) or None for r in requests_]
    T = max(len(r.input_ids) for r in requests_)
    lang_x = torch.full((len(requests_), T), model.pad_token_id)
    mask = torch.zeros_like(lang_x)
    for i, r in enumerate(requests_):
        lang_x[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, :len(r.input_ids)] = 1
    with torch.no_grad():
        padded = model(vision_x=vision_x, lang_x=lang_x, attention_mask=mask, image_size=image_size)
    start = 0
    for i, n in enumerate(lens):
        assert int(padded.attention_mask[i].sum()) == n
        assert rel_err(all_logits[start:start + n], padded.logits[i, :n]) < 1e-5, f"request {i}"
        assert rel_err(last[i], padded.logits[i, n - 1]) < 1e-5
        start += n


def test_original_generate_form_left_padded(model, requests_, reference):
    """model.generate(vision_x, lang_x (left-padded), attention_mask=...) as the original: only new tokens."""
    vision_x, lang_x, mask, image_size = left_padded(model, requests_)
    out = model.generate(vision_x, lang_x, image_size=image_size, attention_mask=mask, max_new_tokens=STEPS,
                         eos_token_id=[])
    assert out.dtype == torch.long and out.shape == (len(requests_), STEPS)
    assert out.tolist() == reference[0]
    # a stop id: that row keeps the id, then pads with pad_token_id (HF's layout); others go on
    stop = reference[0][2][3]
    out = model.generate(vision_x, lang_x, image_size=image_size, attention_mask=mask, max_new_tokens=STEPS,
                         eos_token_id=stop, pad_token_id=-1)
    for row, ref in zip(out.tolist(), reference[0]):
        k = ref.index(stop) + 1 if stop in ref else STEPS
        assert row[:k] == ref[:k] and all(t == -1 for t in row[k:])


def test_original_form_equals_hf_generate_on_left_padded_embeds(model, requests_):
    """The original ran HF's generate on left-padded multimodal embeddings: same tokens, same layout."""
    hf = hf_causal_lm(model, attn_implementation="eager")
    embeds, mask = original_inputs_embeds(model, requests_)
    stop = 2
    theirs = hf_generate(hf, embeds, mask, max_new_tokens=STEPS, do_sample=False, eos_token_id=stop,
                         pad_token_id=model.pad_token_id)
    vision_x, lang_x, lmask, image_size = left_padded(model, requests_)
    ours = model.generate(vision_x, lang_x, image_size=image_size, attention_mask=lmask, max_new_tokens=STEPS,
                          eos_token_id=stop)
    assert torch.equal(ours, theirs)


def test_sampling_is_reproducible_with_a_seed(model, requests_):
    cfg = dict(max_new_tokens=STEPS, do_sample=True, temperature=1.5, top_p=0.95, top_k=40)
    a = Generator(model).generate(requests_, GenerationConfig(seed=123, **cfg))
    b = Generator(model).generate(requests_, GenerationConfig(seed=123, **cfg))
    c = Generator(model).generate(requests_, GenerationConfig(seed=7, **cfg))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    vision_x, lang_x, mask, image_size = left_padded(model, requests_)
    kw = dict(image_size=image_size, attention_mask=mask, max_new_tokens=STEPS, do_sample=True, eos_token_id=[])
    assert torch.equal(model.generate(vision_x, lang_x, generator=g1, **kw),
                       model.generate(vision_x, lang_x, generator=g2, **kw))


def test_top_k_1_and_tiny_top_p_equal_greedy(model, requests_, reference):
    for cfg in (dict(top_k=1), dict(top_p=1e-6)):
        outs = Generator(model).generate(requests_, GenerationConfig(max_new_tokens=STEPS, do_sample=True,
                                                                     temperature=0.7, seed=3, **cfg))
        assert [o.token_ids for o in outs] == reference[0], cfg


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, GenerationConfig(do_sample=True, top_k=2), gen)
    assert set(draws.tolist()) == {2, 3}
    # top_p: p = softmax -> [0.032, 0.087, 0.237, 0.644]; 0.7 keeps {3, 2}; 0.6 keeps {3}
    assert set(sample_next(logits, GenerationConfig(do_sample=True, top_p=0.7), gen).tolist()) == {2, 3}
    assert set(sample_next(logits, GenerationConfig(do_sample=True, top_p=0.6), gen).tolist()) == {3}


def test_stop_ids_end_each_sequence(model, requests_, reference):
    stop = reference[0][0][2]
    outs = greedy(model, requests_, stop_token_ids=(stop,))
    for o, ref in zip(outs, reference[0]):
        if stop in ref:
            k = ref.index(stop) + 1
            assert o.token_ids == ref[:k] and o.finish_reason == "stop_token"
        else:
            assert o.token_ids == ref and o.finish_reason == "length"


def test_hf_style_stopping_criteria_scalar_stops_the_batch(model, requests_, reference):
    """A criterion returning a Python bool (the original notebook's EosListStoppingCriteria) stops all rows."""
    stop = reference[0][1][3]
    crit = lambda ids, scores: bool((ids[:, -1] == stop).any())
    vision_x, lang_x, mask, image_size = left_padded(model, requests_)
    out = model.generate(vision_x, lang_x, image_size=image_size, attention_mask=mask, max_new_tokens=STEPS,
                         eos_token_id=[], stopping_criteria=[crit])
    k = min(ref.index(stop) + 1 for ref in reference[0] if stop in ref)
    assert out.shape[1] == k and out.tolist() == [ref[:k] for ref in reference[0]]


def test_sliding_window_is_honoured_in_decode(model, requests_):
    """A window of 4: cached decode equals the uncached padded forward (which masks by window too), and
    the window changes the answer's logits (so the test would see a decode that ignored it)."""
    text = model.config.text
    old = text.sliding_window
    try:
        text.sliding_window = 4
        ref_ids, ref_logits = uncached_greedy(model, requests_, 5)
        outs = greedy(model, requests_, steps=5, output_logits=True)
        for o, ids, logits in zip(outs, ref_ids, ref_logits):
            assert o.token_ids == ids
            assert rel_err(o.logits, logits) < RTOL
        text.sliding_window = None
        wide = greedy(model, requests_, steps=5, output_logits=True)
        assert all(rel_err(a.logits, b.logits) > 1e-3 for a, b in zip(outs, wide) if a.num_prompt_tokens > 6)
    finally:
        text.sliding_window = old


def test_finished_rows_leave_the_batch_and_output_is_unchanged(model, requests_, reference):
    """One row stops at once (its first token is a stop id): the rest continue, same tokens as without."""
    first = reference[0][3][0]
    outs = greedy(model, requests_, stop_token_ids=(first,))
    assert outs[3].token_ids == [first]
    for o, ref in zip(outs, reference[0]):
        k = ref.index(first) + 1 if first in ref else STEPS
        assert o.token_ids == ref[:k]


def test_kv_cache_bookkeeping():
    cache = KVCache(num_layers=1, batch=3, num_kv_heads=2, head_dim=4, max_len=6, dtype=torch.float32,
                    device="cpu")
    cu = torch.tensor([0, 2, 5, 6], dtype=torch.int32)
    cache.begin_prefill(cu)
    assert cache.positions().tolist() == [0, 1, 0, 1, 2, 0]
    k = torch.arange(6.0)[:, None, None].expand(6, 2, 4)
    cache.append(0, k, k)
    cache.commit()
    assert cache.lengths == [2, 3, 1] and cache.seqlens.tolist() == [2, 3, 1]
    assert cache.k[0][1, 0, :3, 0].tolist() == [2.0, 3.0, 4.0]
    cache.begin_decode(1)
    assert cache.positions().tolist() == [[2], [3], [1]]
    cache.append(0, torch.full((3, 1, 2, 4), 9.0), torch.full((3, 1, 2, 4), 9.0))
    kv, _, lens = cache.view(0)
    assert kv.shape[2] == 4 and lens.tolist() == [3, 4, 2]
    cache.commit()
    cache.select([2, 0])
    assert cache.lengths == [2, 3] and cache.k[0][0, 0, :2, 0].tolist() == [5.0, 9.0]
    with pytest.raises(ValueError, match="allocated for 6"):
        for _ in range(4):
            cache.begin_decode(1)
            cache.commit()


def test_errors_name_the_request(model):
    with pytest.raises(ValueError, match="request 1: empty prompt"):
        Generator(model).generate([Request([1, 5]), Request([])], GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="unsupported keyword arguments"):
        model.generate(None, torch.tensor([[1, 5]]), output_scores=True)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(None, torch.tensor([[1, 5]]), num_beams=2)
