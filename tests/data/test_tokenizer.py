"""Tokenizer setup (SPEC §1.4) and the tiny offline Phi-3-like tokenizer."""
from __future__ import annotations

import json

import pytest

from xgenmm_fast.data.tokenizer import (
    DEFAULT_TINY_VOCAB_SIZE,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TokenizerInfo,
    build_tiny_tokenizer,
    default_corpus,
    load_tokenizer,
    prepare_tokenizer,
    tokenizer_dir_digest,
)

from ._tok import merging_tokenizer, tiny

V = DEFAULT_TINY_VOCAB_SIZE


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


def test_special_tokens_order():
    assert SPECIAL_TOKENS == ("<image>", "<image placeholder>", "<|endofchunk|>")


# ------------------------------------------------------------------------------------ tiny tokenizer


def test_build_is_deterministic(tmp_path, tiny_dir):
    again = build_tiny_tokenizer(tmp_path / "again")
    assert sorted(p.name for p in again.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert tokenizer_dir_digest(again) == tokenizer_dir_digest(tiny_dir)
    other = build_tiny_tokenizer(tmp_path / "other", corpus=default_corpus() + ["zebra zebra zebra quokka"])
    assert tokenizer_dir_digest(other) != tokenizer_dir_digest(tiny_dir)


def test_layout_follows_phi3(tiny_dir):
    tokenizer, _ = load_tokenizer(tiny_dir)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>")] == [0, 1, 2, 3, 13, 258]
    # Phi-3's ids with 32000 -> V: <|endoftext|> 32000, <|assistant|> 32001, <|system|> 32006, <|end|> 32007,
    # <|user|> 32010
    assert [vocab[t] for t in ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")] == [
        V, V + 1, V + 6, V + 7, V + 10
    ]
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "<|endoftext|>"
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["pad_token"] == config["eos_token"] == "<|endoftext|>"  # as Phi-3, hence <pad> gets added


def test_tokenization_behaves_like_phi3(tiny_dir):
    tokenizer, _ = load_tokenizer(tiny_dir)
    ids = tokenizer("<|user|>\nred star<|end|>\n<|assistant|>\nA\nB").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>"  # BOS from the post-processor
    assert tokens[1] == "<|user|>" and tokens[2] == "red"  # rstrip swallows "\n"; no "▁" after a special token
    assert "<|end|>" in tokens and "<|assistant|>" in tokens
    assert tokens[-3:] == ["A", "<0x0A>", "B"]  # "\n" inside text: byte fallback
    assert tokenizer("red star").input_ids[1] == tokenizer.convert_tokens_to_ids("▁red")  # "▁" at text start
    text = "The big blue circle is on the left, 3 shapes: é!"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_vocab_is_small_and_full(tiny_dir):
    tokenizer, info = load_tokenizer(tiny_dir)
    assert tokenizer.vocab_size == V and len(tokenizer) == V + 11 + 1 + 3
    assert 512 <= info.initial_tokenizer_len + 3 <= 1000
    assert "▁circle" in tokenizer.get_vocab() and "▁square" in tokenizer.get_vocab()


# ---------------------------------------------------------------------------------- prepare_tokenizer


def test_prepare_adds_pad_then_specials(tiny_dir):
    tokenizer, info = load_tokenizer(tiny_dir)
    n = V + 11  # base length, as Phi-3's 32011
    assert info == TokenizerInfo(
        initial_tokenizer_len=n + 1,
        pad_token_id=n,
        media_token_id=n + 1,
        placeholder_token_id=n + 2,
        endofchunk_token_id=n + 3,
        eos_token_id=V,
        end_token_id=V + 7,
        bos_token_id=1,
    )
    assert tokenizer.pad_token == PAD_TOKEN
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [n + 1, n + 2, n + 3]
    assert info.special_token_ids == (n + 1, n + 2, n + 3)
    assert info.stop_token_ids == (V + 7, V)
    ids = tokenizer("<image>\n<image placeholder><|endofchunk|>").input_ids
    assert ids[1] == n + 1 and ids[-2:] == [n + 2, n + 3]  # never split


def test_prepare_is_idempotent(tiny_dir, tmp_path):
    tokenizer, info = load_tokenizer(tiny_dir)
    size = len(tokenizer)
    assert prepare_tokenizer(tokenizer) == info and len(tokenizer) == size
    tokenizer.save_pretrained(tmp_path / "saved")  # a prepared tokenizer saved and loaded again
    reloaded, info2 = load_tokenizer(tmp_path / "saved")
    assert info2 == info and len(reloaded) == size


def test_load_from_a_model_directory_is_quiet(tiny_dir, tmp_path, capfd):
    """A released model directory holds the tokenizer beside the model's config.json (model_type "xgenmm",
    unknown to transformers): loading it says nothing about the model type."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in tiny_dir.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    (model_dir / "config.json").write_text(json.dumps({"model_type": "xgenmm", "architectures": ["XGenMM"]}))
    capfd.readouterr()
    tokenizer, info = load_tokenizer(model_dir)
    assert len(tokenizer) == info.initial_tokenizer_len + 3
    err = capfd.readouterr().err
    assert "model of type" not in err, err


def test_prepare_keeps_an_own_pad_token():
    tokenizer = merging_tokenizer(pad_token="<mypad>")
    n = len(tokenizer)
    info = prepare_tokenizer(tokenizer)
    assert info.pad_token_id == tokenizer.convert_tokens_to_ids("<mypad>") and PAD_TOKEN not in tokenizer.get_vocab()
    assert info.initial_tokenizer_len == n and info.media_token_id == n
    assert info.end_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_prepare_rejects_partial_special_tokens():
    tokenizer = merging_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    with pytest.raises(ValueError, match="already has"):
        prepare_tokenizer(tokenizer)


def test_prepare_rejects_non_consecutive_special_ids():
    tokenizer = merging_tokenizer()
    extra = ["<image>", "<x>", "<image placeholder>", "<|endofchunk|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    with pytest.raises(ValueError, match="consecutive"):
        prepare_tokenizer(tokenizer)


# ------------------------------------------------------------------------------------- load_tokenizer


def test_load_missing_dir_names_the_path(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer.*does not exist"):
        load_tokenizer(missing)


def test_load_dir_without_tokenizer_files_names_the_path(tmp_path):
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    (empty / "README.md").write_text("not a tokenizer")
    with pytest.raises(FileNotFoundError, match="empty_tok.*no tokenizer files"):
        load_tokenizer(empty)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(empty / "README.md")


def test_load_broken_tokenizer_names_the_path(tmp_path):
    broken = tmp_path / "broken_tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{ not json")
    (broken / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(OSError, match="broken_tok"):
        load_tokenizer(broken)


def test_tiny_helper(tmp_path):
    tokenizer, info = tiny(tmp_path)
    assert info.initial_tokenizer_len == V + 12 and len(tokenizer) == V + 15
