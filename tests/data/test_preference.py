"""Preference data: format mapping, loading (mixtures, path maps), pair tokenization, dataset, validate."""
from __future__ import annotations

import argparse

import pytest
import yaml

from xgenmm_fast.data.chat import IGNORE_INDEX, tokenize_conversation
from xgenmm_fast.data.packed import stream_length
from xgenmm_fast.data.preference import (
    PreferenceDataset,
    PreferenceFormatError,
    PreferenceSample,
    detect_format,
    load_preference_records,
    pack_pairs,
    to_canonical,
    tokenize_pair,
)
from xgenmm_fast.data.sft_dataset import BadSample
from xgenmm_fast.data.validate import add_validate_args, run_validate, validate_dataset

from ._records import conv, make_empty_file, make_image, make_truncated_jpeg, small_config, write_json, write_jsonl
from ._tok import tiny

PROMPT = conv(("human", "<image>\nWhat colour is the square?"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("tiny_tok"))


def pref(rid, chosen="Blue.", rejected="Red.", image="red.png", conversations=None) -> dict:
    r = {"id": rid, "conversations": conversations if conversations is not None else PROMPT,
         "chosen": chosen, "rejected": rejected}
    if image is not None:
        r["image"] = image
    return r


# ---- formats ------------------------------------------------------------------------------------
VLFEEDBACK = {
    "id": "vlf-1", "image": "coco/1.jpg", "prompt": "Describe the image.", "models": ["a", "b", "c"],
    "completions": [
        {"model": "a", "response": "Meh.", "annotations": {"Helpfulness": {"Rating": "3", "Rationale": ""},
                                                           "Visual Faithfulness": {"Rating": "2"}}},
        {"model": "b", "response": "Great.", "annotations": {"Helpfulness": {"Rating": "5"},
                                                             "Ethical Considerations": {"Rating": "N/A"},
                                                             "Visual Faithfulness": {"Rating": "4"}}},
        {"model": "c", "response": "Wrong.", "annotations": {"Helpfulness": {"Rating": "1"},
                                                             "Visual Faithfulness": {"Rating": "1"}}},
    ],
}
RLAIF_V = {"ds_name": "x", "idx": 17, "image_path": "imgs/17.jpg", "question": "What is this?",
           "chosen": "A cat.", "rejected": "A dog.", "origin_dataset": "y", "origin_split": "z"}
LLAVA_RLHF = {"id": "rlhf-3", "image": "3.jpg", "preference": 2,
              "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A bus."},
                                {"from": "human", "value": "What colour?"}],
              "output_1": {"from": "llava", "value": "Red."}, "output_2": {"from": "llava", "value": "Yellow."}}


def test_vlfeedback_mapping_takes_the_best_and_the_worst_rated_completion():
    assert detect_format(VLFEEDBACK) == "vlfeedback"
    out = to_canonical(VLFEEDBACK)
    assert out == {"id": "vlf-1", "image": "coco/1.jpg", "conversations": [{"from": "human", "value":
                   "Describe the image."}], "chosen": "Great.", "rejected": "Wrong."}  # mean 4.5 vs 1.0; N/A skipped
    tie = dict(VLFEEDBACK, completions=[dict(c, annotations={"H": {"Rating": "3"}}) for c in VLFEEDBACK["completions"]])
    with pytest.raises(PreferenceFormatError, match="no preference"):
        to_canonical(tie)
    scored = dict(VLFEEDBACK, completions=[{"response": "x", "score": 2}, {"response": "y", "overall_score": 7.5}])
    assert (to_canonical(scored)["chosen"], to_canonical(scored)["rejected"]) == ("y", "x")


def test_rlaif_v_and_llava_rlhf_mappings():
    out = to_canonical(RLAIF_V)
    assert out == {"id": "17", "image": "imgs/17.jpg", "conversations": [{"from": "human", "value": "What is this?"}],
                   "chosen": "A cat.", "rejected": "A dog."}
    assert to_canonical(dict(RLAIF_V, image={"path": "p.jpg", "bytes": None}))["image"] == "p.jpg"
    assert to_canonical({"prompt": "Q?", "chosen": "a", "rejected": "b"}, "rlaif_v")["conversations"][0]["value"] == "Q?"
    out = to_canonical(LLAVA_RLHF)
    assert (out["chosen"], out["rejected"], out["conversations"]) == ("Yellow.", "Red.", LLAVA_RLHF["conversations"])
    assert to_canonical(dict(LLAVA_RLHF, preference=1, output_2="Blue."))["rejected"] == "Blue."
    with pytest.raises(PreferenceFormatError, match="preference"):
        to_canonical(dict(LLAVA_RLHF, preference=3))


def test_canonical_records_pass_unchanged_whatever_the_format_and_unknown_keys_fail():
    r = pref("c1")
    for fmt in ("auto", "canonical", "vlfeedback", "rlaif_v", "llava_rlhf"):
        assert to_canonical(r, fmt) == r
    with pytest.raises(PreferenceFormatError, match="cannot tell"):
        to_canonical({"id": 1, "text": "x"})
    with pytest.raises(PreferenceFormatError, match="missing"):
        to_canonical({"conversations": PROMPT, "chosen": "a"}, "canonical")
    with pytest.raises(ValueError, match="format"):
        to_canonical(r, "hh-rlhf")


def test_mixture_and_path_map_resolve_images_under_their_format_keys(tmp_path):
    make_image(tmp_path / "store" / "imgs" / "17.jpg", fmt="JPEG")
    make_image(tmp_path / "local" / "red.png")
    rl = write_jsonl(tmp_path / "rlaif.jsonl", [RLAIF_V, dict(RLAIF_V, idx=18)])
    canon = write_json(tmp_path / "local" / "canon.json", [pref("c1"), pref("c2"), pref("c3")])
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"data_path": {str(rl): "all", "local/canon.json": 2}}))
    (tmp_path / "paths.yaml").write_text(yaml.safe_dump({"imgs/": "store/imgs/"}))
    recs = load_preference_records(tmp_path / "mix.yaml", path_map=tmp_path / "paths.yaml")
    assert [r.sample_id for r in recs][:2] == ["17", "18"] and len(recs) == 4
    assert recs[0].image_paths == (str(tmp_path / "store" / "imgs" / "17.jpg"),)  # mapped by the prefix table
    assert recs[2].image_paths == (str(tmp_path / "local" / "red.png"),)  # relative to its JSON file
    assert all(set(r.data) >= {"conversations", "chosen", "rejected"} for r in recs)
    assert str(canon) == recs[2].source


# ---- tokenization ---------------------------------------------------------------------------------
def test_pair_tokens_are_the_sft_tokens_with_labels_only_on_the_final_answer(tok):
    tokenizer, info = tok
    turns = conv(("human", "What is shown?"), ("gpt", "Two shapes."), ("human", "Which colour?"))
    t = tokenize_pair({"conversations": turns, "chosen": "Blue and red.", "rejected": "Green."}, tokenizer, info)
    for ids, labels, answer in ((t.chosen_ids, t.chosen_labels, "Blue and red."),
                                (t.rejected_ids, t.rejected_labels, "Green.")):
        sft = tokenize_conversation({"conversations": turns + [{"from": "gpt", "value": answer}]}, tokenizer, info)
        n = len(t.input_ids)
        assert t.input_ids.tolist() + ids.tolist() == sft.input_ids
        assert labels.tolist() == sft.labels[n:]  # the answer and its <|end|>, as chat.py labels a gpt turn
        assert any(x != IGNORE_INDEX for x in sft.labels[:n])  # SFT also trains the earlier answer...
    assert (t.labels == IGNORE_INDEX).all()  # ...DPO never does: the prompt is context only


def test_truncation_cuts_answers_and_a_prompt_with_no_room_is_bad(tok):
    tokenizer, info = tok
    r = {"conversations": conv(("human", "Hi")), "chosen": "word " * 40, "rejected": "short"}
    n_prompt = len(tokenize_pair(r, tokenizer, info).input_ids)
    t = tokenize_pair(r, tokenizer, info, max_length=n_prompt + 5)
    assert t.truncated and len(t.chosen_ids) == 5 and len(t.rejected_ids) < 5
    with pytest.raises(Exception, match="no labelled token|no token"):
        tokenize_pair(r, tokenizer, info, max_length=n_prompt)


# ---- dataset --------------------------------------------------------------------------------------
def test_dataset_gives_the_images_once_and_lengths_match_the_packed_stream(tmp_path, tok):
    tokenizer, info = tok
    make_image(tmp_path / "red.png", (40, 30))
    make_image(tmp_path / "tall.png", (20, 70))
    two = conv(("human", "<image>\n<image>\nCompare."))
    records = load_preference_records(write_json(tmp_path / "p.json", [
        pref("one"), pref("two", image=["red.png", "tall.png"], conversations=two), pref("text", image=None,
                                                                                           conversations=conv(("human", "Hi?")))]))
    cfg = small_config()
    ds = PreferenceDataset(records, tokenizer, info, cfg)
    lengths = ds.estimate_lengths()
    L = cfg.perceiver.num_latents
    for i in range(3):
        s = ds[i]
        assert isinstance(s, PreferenceSample) and s.index == i
        assert len(s.tiles) == len(records[i].image_paths)
        batch = pack_pairs([s], info.media_token_id, L)
        assert batch.num_tokens == lengths[i]
        prompt = stream_length(s.prompt_ids, [t.shape[0] for t in s.tiles], info.media_token_id, L)
        assert lengths[i] == 2 * prompt + len(s.chosen_ids) + len(s.rejected_ids)
        assert batch.tiles_per_image == [t.shape[0] for t in s.tiles]  # encoded once for both answers


def test_bad_pairs_become_bad_samples_and_never_raise(tmp_path, tok):
    tokenizer, info = tok
    make_image(tmp_path / "red.png")
    make_empty_file(tmp_path / "empty.png")
    make_truncated_jpeg(tmp_path / "cut.jpg")
    bad = {
        "missing": (pref("missing", image="nope.png"), "image file not found"),
        "empty-img": (pref("empty-img", image="empty.png"), "empty (0-byte)"),
        "same": (pref("same", chosen="Red.", rejected=" Red. "), "same answer"),
        "blank": (pref("blank", chosen="  "), "empty answer"),
        "ends-gpt": (pref("ends-gpt", conversations=PROMPT + conv(("gpt", "x"))), "must end with a human turn"),
        "tag-no-image": (pref("tag-no-image", image=None), "has no image"),
        "marker": (pref("marker", chosen="<|end|> sneaky"), "chat marker"),
        "not-a-string": (pref("not-a-string", rejected=["a"]), "must be a string"),
        "unknown": ({"id": "unknown", "foo": 1}, "cannot tell the preference format"),
        "vlf-tie": (dict(VLFEEDBACK, id="vlf-tie", image="red.png", completions=[
            {"response": "a", "score": 1}, {"response": "b", "score": 1}]), "no preference"),
        "cut": (pref("cut", image="cut.jpg"), "cannot decode image"),
    }
    good = [pref("good"), dict(RLAIF_V, image_path="red.png")]
    records = load_preference_records(write_json(tmp_path / "p.json", good + [r for r, _ in bad.values()]))
    ds = PreferenceDataset(records, tokenizer, info, small_config())
    lengths = ds.estimate_lengths()
    assert lengths[0] > 0 and lengths[1] > 0
    items = {records[i].sample_id: ds[i] for i in range(len(ds))}
    assert isinstance(items["good"], PreferenceSample) and isinstance(items["17"], PreferenceSample)
    for rid, (_, why) in bad.items():
        item = items[rid]
        assert isinstance(item, BadSample), rid
        assert why in item.reason, (rid, item.reason)
        assert item.source == str(tmp_path / "p.json")
    assert sum(ds.bad_counts.values()) == len(bad)


# ---- validate -------------------------------------------------------------------------------------
def test_validate_reports_bad_pairs_from_a_dpo_config(tmp_path, tok, capsys):
    make_image(tmp_path / "red.png")
    data = write_json(tmp_path / "p.json", [pref("ok"), pref("same", rejected="Blue."), dict(RLAIF_V, image_path="red.png"),
                                             pref("missing", image="nope.png")])
    report = validate_dataset(data, tokenizer=tok[0], info=tok[1], config=small_config(), preference=True)
    assert (report.records, report.bad) == (4, 2)
    reasons = {i.sample_id: i.reason for f in report.files for i in f.issues}
    assert "same answer" in reasons["same"] and "not found" in reasons["missing"]
    # a DPO config (a `dpo:` section) is validated as preference data; a plain data file is auto-detected
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"data_path": str(data), "max_tokens": 64}, "model": {"init": "tiny"},
                                   "dpo": {"format": "auto"}}))
    parser = add_validate_args(argparse.ArgumentParser())
    assert run_validate(parser.parse_args([str(cfg)])) == 1
    out = capsys.readouterr().out
    assert "4 records: 2 ok, 2 bad" in out and "pair stream length" in out
    assert run_validate(parser.parse_args([str(data), "--model", "tiny"])) == 1
    assert "look like preference pairs" in capsys.readouterr().out
