"""SFTDataset: records -> StreamSample | BadSample, lengths from headers, the tokenization cache."""
from __future__ import annotations

import pickle

import pytest
import torch

from xgenmm_fast.data import sft_dataset as sft_mod
from xgenmm_fast.data.anyres import get_anyres_grid_shape
from xgenmm_fast.data.chat import tokenize_conversation
from xgenmm_fast.data.packed import StreamSample, pack_samples, stream_length
from xgenmm_fast.data.sft_dataset import (
    BAD_IMAGE_DECODE,
    BAD_IMAGE_HEADER,
    BAD_IMAGE_MISSING,
    BAD_RECORD,
    BadSample,
    ImageGeometry,
    SFTDataset,
    batch_encode_with_offsets,
)
from xgenmm_fast.data.sources import load_records

from ._records import (
    BAD_EMPTY,
    BAD_FOUND_BY_HEADER,
    BAD_MISSING,
    BAD_TRUNC_JPEG,
    EXPECTED_REASONS,
    GOOD_IDS,
    GOOD_LONG,
    GOOD_TEXT,
    MAX_TEXT_TOKENS,
    make_image,
    planted_dataset,
    record,
    small_config,
)
from ._tok import tiny


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_dataset(tmp_path_factory.mktemp("planted"))


def _dataset(planted, tok, **kw):
    tokenizer, info = tok
    recs = load_records(planted["files"][0]) + load_records(planted["files"][1])
    ds = SFTDataset(recs, tokenizer, info, small_config(), max_text_tokens=MAX_TEXT_TOKENS,
                    preprocess_backend="pillow", **kw)
    by_id = {r.sample_id: i for i, r in enumerate(ds.records)}
    return ds, by_id


def test_bad_records_come_back_as_bad_samples_with_their_reason(planted, tok):
    ds, by_id = _dataset(planted, tok)
    for rid, expected in EXPECTED_REASONS.items():
        item = ds[by_id[rid]]
        assert isinstance(item, BadSample), rid
        assert expected in item.reason, (rid, item.reason)
        src, k = planted["ids"][rid]
        assert (item.index, item.sample_id, item.source, item.source_index) == (by_id[rid], rid, src, k)
        assert str(item).startswith(f"{src}:{k} id={rid!r}: ")
        assert ds.bad_records[by_id[rid]] == item.reason
    assert set(ds.bad_records) == {by_id[r] for r in EXPECTED_REASONS}


def test_image_reasons_name_the_path(planted, tok):
    ds, by_id = _dataset(planted, tok)
    assert "nope.png" in ds[by_id[BAD_MISSING]].reason
    assert "empty.png" in ds[by_id[BAD_EMPTY]].reason
    assert "cut.jpg" in ds[by_id[BAD_TRUNC_JPEG]].reason


def test_bad_sample_does_not_borrow_a_neighbour(planted, tok):
    ds, by_id = _dataset(planted, tok)
    i = by_id[BAD_MISSING]
    assert isinstance(ds[i], BadSample) and isinstance(ds[i], BadSample)  # stays bad, asked twice
    assert ds[i + 1].sample_id != ds[i].sample_id


def test_good_records_tiles_match_the_grid(planted, tok):
    ds, by_id = _dataset(planted, tok)
    cfg = small_config()
    s = cfg.tile_size
    for rid in GOOD_IDS:
        item = ds[by_id[rid]]
        assert isinstance(item, StreamSample), (rid, item)
        assert item.sample_id == rid
        sizes = planted["image_sizes"][rid]
        assert [tuple(x) for x in item.image_sizes] == sizes
        assert len(item.tiles) == len(sizes)
        for t, size in zip(item.tiles, sizes):
            npw, nph = get_anyres_grid_shape(size, cfg.anyres_grids, s)
            assert t.shape == (1 + npw * nph, 3, s, s) and t.dtype == torch.float32
        assert item.input_ids.count(tok[1].media_token_id) == len(sizes)
        assert len(item.input_ids) == len(item.labels) <= MAX_TEXT_TOKENS


def test_text_only_records_have_no_tiles(planted, tok):
    ds, by_id = _dataset(planted, tok)
    for rid in (GOOD_TEXT, GOOD_LONG):
        item = ds[by_id[rid]]
        assert item.tiles == [] and item.image_sizes == []


def test_estimate_lengths_equal_real_stream_lengths(planted, tok):
    ds, by_id = _dataset(planted, tok)
    lengths = ds.estimate_lengths()
    assert len(lengths) == len(ds)
    # everything but the truncated JPEG (its header is fine) is found without decoding pixels
    assert set(ds.bad_records) == {by_id[r] for r in BAD_FOUND_BY_HEADER}
    assert all(lengths[by_id[r]] == 0 for r in BAD_FOUND_BY_HEADER)
    assert by_id[BAD_TRUNC_JPEG] in ds.good_indices()
    media, per_tile = tok[1].media_token_id, small_config().perceiver.num_latents
    for rid in GOOD_IDS:
        item = ds[by_id[rid]]
        real = stream_length(item.input_ids, [t.shape[0] for t in item.tiles], media, per_tile)
        assert lengths[by_id[rid]] == real, rid
        packed = pack_samples([item], media, per_tile)
        assert packed.num_tokens == real
    assert by_id[GOOD_LONG] in ds.truncated_records
    assert isinstance(ds[by_id[BAD_TRUNC_JPEG]], BadSample)
    assert ds.bad_counts[BAD_RECORD] == 4 and ds.bad_counts[BAD_IMAGE_MISSING] == 1
    assert ds.bad_counts[BAD_IMAGE_HEADER] == 1 and ds.bad_counts[BAD_IMAGE_DECODE] == 1


def test_getitem_uses_the_cached_tokenization(planted, tok, monkeypatch):
    ds, by_id = _dataset(planted, tok)
    ds.estimate_lengths()
    direct = {rid: tokenize_conversation(ds.records[by_id[rid]].data, tok[0], tok[1], MAX_TEXT_TOKENS)
              for rid in GOOD_IDS}

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(sft_mod, "tokenize_conversation", boom)
    for rid in GOOD_IDS:
        item = ds[by_id[rid]]
        assert item.input_ids == direct[rid].input_ids and item.labels == direct[rid].labels  # batch == single


def test_without_token_cache_and_without_estimate(planted, tok):
    ds, by_id = _dataset(planted, tok, cache_tokens=False)
    lengths = ds.estimate_lengths()
    assert ds._text == {}
    ref, _ = _dataset(planted, tok)
    assert lengths == ref.estimate_lengths()
    fresh, _ = _dataset(planted, tok)  # __getitem__ before (or without) estimate_lengths
    for rid in GOOD_IDS:
        assert fresh[by_id[rid]].input_ids == ds[by_id[rid]].input_ids


def test_duplicated_records_are_tokenized_once(tmp_path, tok):
    make_image(tmp_path / "x.png")
    (tmp_path / "d.json").write_text("[]")
    recs = load_records({"d.json": 0}, base_dir=tmp_path)  # no records
    assert recs == []
    from ._records import write_json

    write_json(tmp_path / "d.json", [record("a", image="x.png"), record("b")])
    recs = load_records({"d.json": 9}, base_dir=tmp_path)  # with replacement
    ds = SFTDataset(recs, tok[0], tok[1], small_config(), preprocess_backend="pillow")
    lengths = ds.estimate_lengths()
    assert len(ds._text) == 2 and len(lengths) == 9 and all(n > 0 for n in lengths)


def test_plain_dict_records_and_pickling(tmp_path, tok):
    p = make_image(tmp_path / "x.png", (50, 20))
    ds = SFTDataset([record("a", image=str(p)), record("b")], tok[0], tok[1], small_config(),
                    preprocess_backend="pillow")
    ds.estimate_lengths()
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers started with spawn get a pickled copy
    a, b = clone[0], clone[1]
    assert isinstance(a, StreamSample) and len(a.tiles) == 1 and b.tiles == []
    assert a.sample_id == "a"


def test_dataloader_workers_decode_lazily(planted, tok):
    ds, _ = _dataset(planted, tok)
    ds.estimate_lengths()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)
    items = [x for batch in loader for x in batch]
    assert len(items) == len(ds)
    assert {x.sample_id for x in items if isinstance(x, BadSample)} == set(EXPECTED_REASONS)


def test_geometry_from_config_and_dict():
    cfg = small_config()
    g = ImageGeometry.from_config(cfg)
    assert (g.tile_size, g.patch_size, g.num_latents) == (28, 14, 4)
    assert g.grids == tuple(tuple(x) for x in cfg.anyres_grids)
    assert ImageGeometry.from_config({"tile_size": 28, "grids": cfg.anyres_grids, "patch_size": 14,
                                      "num_latents": 4}) == g
    assert g.tiles_per_image((40, 30)) == 1 + 4  # 2x2 keeps every pixel
    assert g.tiles_per_image((90, 25)) == 1 + 3  # 3 across, 1 down
    cfg.image_aspect_ratio = "pad"
    with pytest.raises(ValueError, match="only 'anyres'"):
        ImageGeometry.from_config(cfg)


def test_batch_encoder_matches_the_tokenizer_call(tok):
    prompts = ["<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA circle.<|end|>\n", "Hello there"]
    enc = batch_encode_with_offsets(tok[0], prompts)
    for p in prompts:
        ref = tok[0](p, return_offsets_mapping=True)
        assert list(enc[p]["input_ids"]) == list(ref["input_ids"])
        assert [tuple(o) for o in enc[p]["offset_mapping"]] == [tuple(o) for o in ref["offset_mapping"]]


def test_malformed_json_values_are_bad_not_errors(tok):
    ok = record("ok")
    weird = [None, "text", {}, {"conversations": "abc"}, record("img", image="x.png") | {"image": {"a": 1}},
             record("sur", answer="caf\ud800"), ok]
    ds = SFTDataset(weird, tok[0], tok[1], small_config())
    lengths = ds.estimate_lengths()
    assert set(ds.bad_records) == set(range(6)) and lengths[6] > 0
    assert "expected a JSON object" in ds[0].reason
    assert "'image' must be a str or a non-empty list of str" in ds[4].reason
    assert "not valid Unicode" in ds[5].reason
    assert isinstance(ds[6], StreamSample)


def test_auto_backend_gives_the_pillow_tiles(planted, tok):
    pillow, by_id = _dataset(planted, tok)
    auto = SFTDataset(pillow.records, tok[0], tok[1], small_config(), max_text_tokens=MAX_TEXT_TOKENS,
                      preprocess_backend="auto")
    from ._records import GOOD_MULTI, GOOD_WIDE

    for rid in (GOOD_WIDE, GOOD_MULTI):
        a, b = auto[by_id[rid]], pillow[by_id[rid]]
        assert len(a.tiles) == len(b.tiles) and all(torch.equal(x, y) for x, y in zip(a.tiles, b.tiles))
