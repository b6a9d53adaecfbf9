"""Shared helpers for the tokenizer and chat tests: tokenizers built offline, the original label rule."""
from __future__ import annotations

import string

from xgenmm_fast.data.chat import ASSISTANT_MARKER, END_MARKER, IGNORE_INDEX, USER_MARKER
from xgenmm_fast.data.tokenizer import build_tiny_tokenizer, load_tokenizer

CHAT_MARKERS_NO_STRIP = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def tiny(tmp_dir):
    """The default tiny tokenizer, built into ``tmp_dir`` and loaded: (tokenizer, TokenizerInfo)."""
    return load_tokenizer(build_tiny_tokenizer(tmp_dir))


def merging_tokenizer(merges=(("\n", "T"), ("\nT", "h"), ("\nTh", "e")), pad_token=None):
    """A character BPE tokenizer with no pre-tokenizer and chat markers WITHOUT rstrip, whose merges join the
    template's ``"\\n"`` with the first letters of an answer ``"The ..."``: the straddling case."""
    from tokenizers import AddedToken, Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(set(string.printable)):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>"))
    specials = ["<unk>", "<s>", "</s>", *CHAT_MARKERS_NO_STRIP] + ([pad_token] if pad_token else [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", special_tokens=[("<s>", 1)])
    kwargs = {"pad_token": pad_token} if pad_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs
    )


def original_labels(prompt: str, tokenizer, max_len: int = 2048) -> list[int]:
    """The released training's label bookkeeping (preprocess_phi_3_new), re-implemented for comparison.

    Rounds are the prompt split on "<|end|>\\n"; each is tokenized alone and a cursor advances by its
    length; a mismatch with the whole-prompt length (when not truncated) masks every label.
    """
    ids = list(tokenizer(prompt, truncation=True, max_length=max_len).input_ids)
    target = list(ids)
    sep = ASSISTANT_MARKER + "\n"
    cur = 0
    for i, rnd in enumerate(prompt.split(END_MARKER + "\n")):
        if rnd == "":
            break
        rnd += END_MARKER + "\n"
        if sep in rnd:  # assistant round: labelled after the "<|assistant|>\n" prefix (BOS included)
            n = len(tokenizer(rnd).input_ids) - len(tokenizer(sep).input_ids)
        else:
            if USER_MARKER in rnd:  # user round, with the assistant prefix appended; BOS dropped after round 0
                rnd += sep
                n = len(tokenizer(rnd).input_ids) - (1 if i > 0 else 0)
            else:  # system round, BOS included
                n = len(tokenizer(rnd).input_ids)
            target[cur : cur + n] = [IGNORE_INDEX] * len(target[cur : cur + n])
        cur += n
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur < max_len and cur != len(ids):
        target = [IGNORE_INDEX] * len(ids)
    return target


def labelled_runs(labels) -> list[tuple[int, int]]:
    """[(start, end), ...] of the maximal runs of labelled positions."""
    runs, start = [], None
    for i, lab in enumerate(list(labels) + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs
