"""Conversations -> prompt, ids and labels (SPEC §4), on the tiny Phi-3-like tokenizer."""
from __future__ import annotations

import copy

import pytest
import torch

from xgenmm_fast.data.chat import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    LabelMaskError,
    RecordError,
    build_prompt,
    build_segments,
    repair_image_tokens,
    tokenize_conversation,
    validate_record,
)
from xgenmm_fast.data.tokenizer import PLACEHOLDER_TOKEN, prepare_tokenizer

from ._tok import labelled_runs, merging_tokenizer, original_labels, tiny

SYS = f"<|system|>\n{SYSTEM_PROMPT}<|end|>\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("tiny_tok"))


def conv(*pairs, system=None):
    """conv(("human", q), ("gpt", a), ...) -> conversations list."""
    turns = [{"from": "system", "value": system}] if system is not None else []
    return turns + [{"from": r, "value": v} for r, v in pairs]


# ----------------------------------------------------------------------------------------- prompt text


def test_prompt_single_turn_gets_default_system():
    c = conv(("human", "<image>\nWhat color is the star?"), ("gpt", "The star is red."))
    assert build_prompt(c) == (
        SYS + "<|user|>\n<image>\nWhat color is the star?<|end|>\n<|assistant|>\nThe star is red.<|end|>\n"
    )


def test_prompt_keeps_given_system_turn():
    c = conv(("human", "Hi"), ("gpt", "Hello!"), system="Be brief.")
    assert build_prompt(c) == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"


def test_segments_multi_turn_mark_only_answers():
    c = conv(("human", "Q1"), ("gpt", "A1"), ("human", "Q2"), ("gpt", "A2"))
    assert build_segments(c) == [
        (SYS, False),
        ("<|user|>\nQ1<|end|>\n<|assistant|>\n", False),
        ("A1<|end|>\n", True),
        ("<|user|>\nQ2<|end|>\n<|assistant|>\n", False),
        ("A2<|end|>\n", True),
    ]


def test_leading_gpt_turn_is_dropped():
    with_orphan = conv(("gpt", "orphan"), ("human", "Q"), ("gpt", "A"), system="S")
    assert build_prompt(with_orphan) == build_prompt(conv(("human", "Q"), ("gpt", "A"), system="S"))
    validate_record({"conversations": with_orphan})


def test_tiny_tokenizer_chat_template_renders_the_same_prompt(tok):
    tokenizer, _ = tok
    c = conv(("human", "Q1"), ("gpt", "A1"), ("human", "Q2"), ("gpt", "A2"), system="S")
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    messages = [{"role": role[t["from"]], "content": t["value"]} for t in c]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == build_prompt(c)


def test_trailing_human_turn_is_a_generation_prompt():
    assert build_prompt(conv(("human", "Q"))).endswith("<|user|>\nQ<|end|>\n<|assistant|>\n")


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "r"}, "missing or empty 'conversations'"),
        ({"id": "r", "conversations": []}, "missing or empty 'conversations'"),
        ({"id": "r", "conversations": [{"value": "x"}]}, "turn 0 must be an object with 'from' and 'value'"),
        ({"id": "r", "conversations": [{"from": "bot", "value": "x"}]}, "unknown role 'bot'"),
        ({"id": "r", "conversations": conv(("human", "a"), ("human", "b"))}, "turn 1 is 'human' but 'gpt'"),
        ({"id": "r", "conversations": conv(("human", "a"), ("gpt", "b"), system="s")[1:] + conv(system="s2")},
         "turn 2 is 'system'"),
        ({"id": "r", "conversations": conv(("human", "a"))}, "no gpt answer"),
        ({"id": "r", "conversations": conv(("human", "a"), ("gpt", "  \n"))}, "turn 1 is an empty gpt answer"),
        ({"id": "r", "conversations": conv(("human", "a"), ("gpt", 3))}, "value must be a str"),
        ({"id": "r", "conversations": conv(("human", "a<|end|>"), ("gpt", "b"))}, "chat marker '<|end|>'"),
        ({"id": "r", "image": 7, "conversations": conv(("human", "<image>a"), ("gpt", "b"))},
         "'image' must be a str or a non-empty list"),
        ({"id": "r", "image": [], "conversations": conv(("human", "a"), ("gpt", "b"))}, "an empty list"),
        ({"id": "r", "image": "x.png", "conversations": conv(("human", "<image>a"), ("gpt", "<image>b"))},
         "turn 1 (gpt) contains <image>"),
        ({"id": "r", "conversations": conv(("human", "<image>\na"), ("gpt", "b"))}, "has no image"),
        ({"id": "r", "image": ["x.png", "y.png"], "conversations": conv(("human", "<image>a"), ("gpt", "b"))},
         "2 image(s) but 1 <image> tag(s)"),
    ],
)
def test_validate_rejects(record, message):
    with pytest.raises(RecordError, match=None) as e:
        validate_record(record, index=7, source="mix/a.json")
    assert message in str(e.value)
    assert "id='r'" in str(e.value) and "index 7" in str(e.value) and "mix/a.json" in str(e.value)


def test_validate_accepts_multi_image_with_matching_count():
    validate_record(
        {
            "image": ["a.png", "b.png"],
            "conversations": conv(("human", "<image> and <image>: same?"), ("gpt", "No."), ("human", "Sure?"),
                                  ("gpt", "Yes.")),
        }
    )


# --------------------------------------------------------------------------------------- image repair


def test_repair_prepends_missing_tag_without_mutating_input():
    rec = {"id": "r", "image": "x.png", "conversations": conv(("human", "  What is this? "), ("gpt", "A star."))}
    before = copy.deepcopy(rec)
    out = repair_image_tokens(rec)
    assert rec == before
    assert out["conversations"][0]["value"] == "<image>\nWhat is this?"
    assert out["conversations"][1] == rec["conversations"][1]
    validate_record(out)


def test_repair_collapses_extra_tags_in_first_human_turn_only():
    rec = {"image": ["x.png"],
           "conversations": conv(("human", "<image> a <image>"), ("gpt", "b"), ("human", "c"), ("gpt", "d"))}
    out = repair_image_tokens(rec)
    assert out["conversations"][0]["value"] == "<image>\na"
    assert out["conversations"][2]["value"] == "c"


def test_repair_leaves_correct_and_multi_image_records_alone():
    ok = {"image": "x.png", "conversations": conv(("human", "Look: <image> here"), ("gpt", "b"))}
    assert repair_image_tokens(ok) == ok
    multi = {"image": ["x", "y"], "conversations": conv(("human", "no tags"), ("gpt", "b"))}
    assert repair_image_tokens(multi) == multi
    with pytest.raises(RecordError, match="2 image"):
        validate_record(repair_image_tokens(multi))


def test_repair_rejects_text_only_record_with_image_tag():
    rec = {"id": "t", "conversations": conv(("human", "hi"), ("gpt", "see <image>"))}
    with pytest.raises(RecordError, match="id='t'.*has no image"):
        repair_image_tokens(rec)


def test_repair_does_not_fix_later_turns():
    rec = {"image": "x.png", "conversations": conv(("human", "a"), ("gpt", "b"), ("human", "<image> c"), ("gpt", "d"))}
    out = repair_image_tokens(rec)
    assert out["conversations"][0]["value"] == "<image>\na"
    with pytest.raises(RecordError, match="1 image.*2 <image>"):
        validate_record(out)


# ------------------------------------------------------------------------------------ ids and labels


def test_ids_are_the_whole_prompt_ids_with_bos_first(tok):
    tokenizer, info = tok
    rec = {"image": "x.png", "conversations": conv(("human", "How many stars?"), ("gpt", "There are two stars."))}
    s = tokenize_conversation(rec, tokenizer, info)
    prompt = build_prompt(repair_image_tokens(rec)["conversations"])
    assert s.input_ids == list(tokenizer(prompt).input_ids)
    assert s.input_ids[0] == info.bos_token_id == 1
    assert s.input_ids.count(info.media_token_id) == 1 and s.num_images == 1
    assert len(s.labels) == len(s.input_ids) and not s.truncated


def test_labels_single_turn_token_by_token(tok):
    tokenizer, info = tok
    rec = {"conversations": conv(("human", "What color is the star?"), ("gpt", "The star is red."))}
    s = tokenize_conversation(rec, tokenizer, info)
    tokens = tokenizer.convert_ids_to_tokens(s.input_ids)
    labelled = [t for t, lab in zip(tokens, s.labels) if lab != IGNORE_INDEX]
    # Hand-derived: text after <|assistant|> gets no "▁" (legacy=False Phi-3), <|end|> swallows the "\n".
    assert labelled == ["The", "▁star", "▁is", "▁red.", "<|end|>"]
    assert tokens[-len(labelled) - 1] == "<|assistant|>"  # everything before the answer is masked
    assert all(lab == IGNORE_INDEX for lab in s.labels[: -len(labelled)])
    assert [lab for lab in s.labels if lab != IGNORE_INDEX] == s.input_ids[-len(labelled):]


@pytest.mark.parametrize("system", [None, "You count shapes."])
def test_labels_multi_turn_decode_to_answers(tok, system):
    tokenizer, info = tok
    answers = ["There are 3 circles.", "The left one is blue.", "No, it is a small square!"]
    pairs = [("human", "<image>\nHow many circles?"), ("gpt", answers[0]), ("human", "Which is on the left?"),
             ("gpt", answers[1]), ("human", "Is it big?"), ("gpt", answers[2])]
    rec = {"image": "a.png", "conversations": conv(*pairs, system=system)}
    s = tokenize_conversation(rec, tokenizer, info)
    prompt = build_prompt(rec["conversations"])
    enc = tokenizer(prompt, return_offsets_mapping=True)
    runs = labelled_runs(s.labels)
    assert len(runs) == len(answers)
    for (a, b), answer in zip(runs, answers):
        assert tokenizer.decode(s.input_ids[a:b]) == answer + "<|end|>"
        # characters covered by the run: exactly the answer segment, "\n" included (swallowed by <|end|>)
        assert prompt[enc["offset_mapping"][a][0]:enc["offset_mapping"][b - 1][1]] == answer + "<|end|>\n"
        assert tokenizer.convert_ids_to_tokens(s.input_ids[a - 1]) == "<|assistant|>"
    if system is not None:
        assert prompt.startswith(f"<|system|>\n{system}<|end|>\n") and SYSTEM_PROMPT not in prompt


def test_labels_match_the_original_rule_where_it_adds_up(tok):
    tokenizer, info = tok
    cases = [
        conv(("human", "<image>\nWhat is in the image?"), ("gpt", "A big green triangle.")),
        conv(("human", "Hi"), ("gpt", " leading space and\nnewline"), ("human", "ok?"), ("gpt", "ok.\n")),
        conv(("human", "Count!"), ("gpt", "1, 2, 3."), system="Answer in digits."),
    ]
    for c in cases:
        rec = {"image": "x.png", "conversations": c} if "<image>" in c[0]["value"] else {"conversations": c}
        s = tokenize_conversation(rec, tokenizer, info)
        assert s.labels == original_labels(build_prompt(c), tokenizer)
        truncated = tokenize_conversation(rec, tokenizer, info, max_length=len(s.input_ids) - 2)
        assert truncated.labels == original_labels(build_prompt(c), tokenizer, max_len=len(s.input_ids) - 2)


def test_prefix_method_agrees_with_offsets(tok):
    tokenizer, info = tok
    pairs = [("human", "<image> vs <image>?"), ("gpt", " Same."), ("human", "Sure"), ("gpt", "Yes")]
    rec = {"image": ["a", "b"], "conversations": conv(*pairs)}
    by_offsets = tokenize_conversation(rec, tokenizer, info, label_method="offsets")
    assert by_offsets == tokenize_conversation(rec, tokenizer, info, label_method="prefix")
    assert by_offsets.num_images == 2


def test_added_special_tokens_and_pad_are_never_labelled(tok):
    tokenizer, info = tok
    answer = f"A<|endofchunk|>B{PLACEHOLDER_TOKEN}C<pad>D"
    s = tokenize_conversation({"conversations": conv(("human", "q"), ("gpt", answer))}, tokenizer, info)
    ids = s.input_ids
    for special in (info.endofchunk_token_id, info.placeholder_token_id, info.pad_token_id):
        k = ids.index(special)
        assert s.labels[k] == IGNORE_INDEX
        assert s.labels[k - 1] != IGNORE_INDEX and s.labels[k + 1] != IGNORE_INDEX  # neighbours: answer text


def test_literal_bos_text_is_removed_like_the_original(tok):
    tokenizer, info = tok
    s = tokenize_conversation({"conversations": conv(("human", "a<s>b"), ("gpt", "c<s>d"))}, tokenizer, info)
    assert s.input_ids.count(info.bos_token_id) == 1
    labelled = [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "cd<|end|>"


def test_to_tensors(tok):
    tokenizer, info = tok
    s = tokenize_conversation({"conversations": conv(("human", "q"), ("gpt", "a"))}, tokenizer, info)
    t = s.to_tensors()
    assert t["input_ids"].dtype == torch.long and t["input_ids"].shape == t["labels"].shape == (len(s.input_ids),)


# ---------------------------------------------------------------------------------------- truncation


def test_truncation_cuts_text_and_keeps_label_prefix(tok):
    tokenizer, info = tok
    rec = {"conversations": conv(("human", "Q"), ("gpt", "one two three four five six"))}
    full = tokenize_conversation(rec, tokenizer, info)
    cut = tokenize_conversation(rec, tokenizer, info, max_length=len(full.input_ids) - 3)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[: len(full.input_ids) - 3]
    assert cut.labels == full.labels[: len(full.input_ids) - 3]
    assert tokenize_conversation(rec, tokenizer, info, max_length=len(full.input_ids)) == full


def test_truncation_leaving_no_label_is_an_error_unless_allowed(tok):
    tokenizer, info = tok
    rec = {"id": "long", "conversations": conv(("human", "Q"), ("gpt", "A"))}
    with pytest.raises(RecordError, match="id='long'.*no labelled token"):
        tokenize_conversation(rec, tokenizer, info, max_length=10)
    s = tokenize_conversation(rec, tokenizer, info, max_length=10, allow_empty=True)
    assert s.truncated and len(s.input_ids) == 10 and set(s.labels) == {IGNORE_INDEX}


def test_truncation_that_cuts_an_image_tag_is_an_error(tok):
    tokenizer, info = tok
    rec = {"id": "img", "image": ["a", "b"],
           "conversations": conv(("human", "<image>"), ("gpt", "A"), ("human", "then <image>"), ("gpt", "B"))}
    full = tokenize_conversation(rec, tokenizer, info)
    last_media = max(i for i, t in enumerate(full.input_ids) if t == info.media_token_id)
    with pytest.raises(RecordError, match="cuts 1 of its 2 <image>"):
        tokenize_conversation(rec, tokenizer, info, max_length=last_media)


# ------------------------------------------------------------------------------------ straddling token


def test_straddling_token_raises_instead_of_masking():
    tokenizer = merging_tokenizer()
    info = prepare_tokenizer(tokenizer)
    rec = {"id": "merge", "conversations": conv(("human", "Hi"), ("gpt", "The answer"))}
    for method in ("offsets", "prefix"):
        with pytest.raises(LabelMaskError, match="id='merge'.*(\\\\nThe|'The answer)"):
            tokenize_conversation(rec, tokenizer, info, index=3, source="x.json", label_method=method)
        with pytest.raises(LabelMaskError, match="index 3 in 'x.json'"):
            tokenize_conversation(rec, tokenizer, info, index=3, source="x.json", label_method=method)
    # The original bookkeeping silently moves the merged "\nThe" into the masked prompt: "The" is never trained.
    prompt = build_prompt(rec["conversations"])
    ids = tokenizer(prompt).input_ids
    k = tokenizer.convert_ids_to_tokens(ids).index("\nThe")
    assert original_labels(prompt, tokenizer)[k] == IGNORE_INDEX
    # An answer that does not merge with the template is fine on the same tokenizer.
    ok = tokenize_conversation({"conversations": conv(("human", "Hi"), ("gpt", "No"))}, tokenizer, info)
    assert tokenizer.convert_ids_to_tokens([t for t in ok.labels if t != IGNORE_INDEX]) == ["N", "o", "<|end|>", "\n"]


def test_whitespace_swallowed_by_a_regular_token_is_not_tolerated():
    # "\n " merged: the template's "\n" and an answer's leading space in one ordinary (non-added) token
    tokenizer = merging_tokenizer(merges=(("\n", " "),))
    info = prepare_tokenizer(tokenizer)
    rec = {"conversations": conv(("human", "Hi"), ("gpt", " spaced"))}
    with pytest.raises(LabelMaskError):
        tokenize_conversation(rec, tokenizer, info)
