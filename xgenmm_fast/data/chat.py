"""Conversations -> Phi-3 prompt, token ids and labels (SPEC §4).

Record format (LLaVA): ``{"id", "image": str | [str, ...] (optional), "conversations": [{"from", "value"}, ...]}``
with ``from`` in {"system", "human", "gpt"}.

Prompt (no BOS in the text; the tokenizer adds it, as in the released training)::

    <|system|>\\n{sys}<|end|>\\n                       system turn, SYSTEM_PROMPT when the record has none
    <|user|>\\n{q}<|end|>\\n<|assistant|>\\n            per human turn
    {a}<|end|>\\n                                     per gpt turn: the answer segment, the only labelled text

Labels here: exactly the tokens whose characters lie inside an answer segment, found from the fast
tokenizer's offset mapping (or, for tokenizers without offsets, from the token counts of prompt prefixes
cut at each answer boundary, checked to be prefixes of the whole-prompt ids). A token that straddles an
answer boundary raises LabelMaskError. The one tolerated overlap is an added token (e.g. Phi-3's
``<|assistant|>``, ``<|end|>`` with rstrip) whose span only reaches across a boundary with whitespace it
swallowed: it belongs where its non-blank text is. Labels are -100 outside answers and on pad, ``<image>``,
``<image placeholder>`` and ``<|endofchunk|>``.

The original rule (``preprocess_phi_3_new`` of the released training), for the record: tokenize the whole
prompt with BOS (truncated to 2048); split the prompt string on ``"<|end|>\\n"`` into rounds; re-tokenize
each round alone and advance a cursor by its token count: the system round counts its BOS and is masked; a
user round gets ``"<|assistant|>\\n"`` appended, its BOS dropped, and is masked; an assistant round
``"<|assistant|>\\n{a}<|end|>\\n"`` loses ``len(tokenizer("<|assistant|>\\n"))`` tokens (BOS included) from
its front and the rest stays labelled; everything after the cursor is masked. If the cursor does not land
on the sequence length (and the text was not truncated) it prints a warning and masks *every* label: a
sample whose rounds do not tokenize independently silently trains on nothing. Worse, the counts can add up
while the labels are wrong: a tokenizer merge joining the template's "\\n" with an answer's first letters is
counted in the user round, so the answer's start is masked and never trained. Where its bookkeeping is
right, it yields the same labels as this module (tests/data/_tok.py re-implements it to check both).

Deliberate differences from the original, each documented where it happens:
- a leading gpt turn (after the optional system turn) is dropped, as LLaVA's templates do (the released
  code rendered it without a user turn and then masked the whole sample through the mismatch above);
- chat markers (``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``) inside turn text, unknown roles,
  roles out of order, empty answers and wrong ``<image>`` counts are errors, not silent drops;
- the literal BOS string (``<s>``) is removed from the text, as the original's ``.replace(bos_token, "")``
  did (kept for id parity: web text with HTML ``<s>`` would otherwise become a BOS id).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .tokenizer import MEDIA_TOKEN, TokenizerInfo

IGNORE_INDEX = -100

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT = "system", "human", "gpt"  # values of a turn's "from"
ROLES = (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT)
SYSTEM_MARKER, USER_MARKER, ASSISTANT_MARKER, END_MARKER = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_MARKERS = (SYSTEM_MARKER, USER_MARKER, ASSISTANT_MARKER, END_MARKER)
IMAGE_TAG = MEDIA_TOKEN
DEFAULT_MAX_LENGTH = 2048  # text tokens kept before image tokens are inserted (SPEC §4)


class RecordError(ValueError):
    """A data record that cannot be turned into a training sample; the message names the record."""


class LabelMaskError(RecordError):
    """The tokenizer merged answer text with prompt text, so answer labels cannot be placed exactly."""


def _where(record, index=None, source=None) -> str:
    parts = []
    if isinstance(record, dict) and "id" in record:
        parts.append(f"id={record['id']!r}")
    if index is not None:
        parts.append(f"index {index}")
    if source is not None:
        parts.append(f"in {str(source)!r}")
    return "record " + (" ".join(parts) if parts else "<unnamed>")


def image_list(record, index=None, source=None) -> list[str]:
    """The record's images as a list ([] when it has none; ``"image": null`` counts as none)."""
    img = record.get("image")
    if img is None:
        return []
    if isinstance(img, str):
        return [img]
    if isinstance(img, list) and img and all(isinstance(x, str) for x in img):
        return list(img)
    what = "an empty list" if img == [] else f"{type(img).__name__} {img!r:.80}"
    raise RecordError(f"{_where(record, index, source)}: 'image' must be a str or a non-empty list of str, got {what}")


def repair_image_tokens(record, index=None, source=None) -> dict:
    """SPEC §4 image-tag repair; returns a copy, never mutates ``record``.

    - single image (str or 1-element list) and the FIRST human turn does not hold exactly one ``<image>``:
      remove every ``<image>`` from that turn, strip it, prepend ``"<image>\\n"``;
    - several images: left alone (validate_record checks the total count);
    - no image but ``<image>`` in any turn: RecordError.
    Malformed records are copied as they are and left to validate_record.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{_where(record, index, source)}: expected a JSON object, got {type(record).__name__}")
    out = dict(record)
    convs = record.get("conversations")
    if not isinstance(convs, list):
        return out
    out["conversations"] = [dict(t) if isinstance(t, dict) else t for t in convs]
    turns = [t for t in out["conversations"] if isinstance(t, dict) and isinstance(t.get("value"), str)]
    images = record.get("image")
    if images is None:
        for t in turns:
            if IMAGE_TAG in t["value"]:
                raise RecordError(
                    f"{_where(record, index, source)}: has no image but a {t.get('from')!r} turn contains {IMAGE_TAG}"
                )
        return out
    n_images = 1 if isinstance(images, str) else len(images) if isinstance(images, list) else None
    if n_images != 1:
        return out
    for t in turns:
        if t.get("from") == ROLE_USER:
            if t["value"].count(IMAGE_TAG) != 1:
                t["value"] = f"{IMAGE_TAG}\n" + t["value"].replace(IMAGE_TAG, "").strip()
            break
    return out


def _ordered_turns(conversations, where: str) -> list[tuple[int, dict]]:
    """(index, turn) in template order: optional system, human/gpt alternating; a leading gpt turn is dropped.

    The drop follows LLaVA's templates (a conversation must open with the user); the released Phi-3 code
    instead rendered the orphan answer and, through its length bookkeeping, masked the whole sample.
    """
    if not isinstance(conversations, list) or not conversations:
        raise RecordError(f"{where}: missing or empty 'conversations'")
    for k, t in enumerate(conversations):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RecordError(f"{where}: turn {k} must be an object with 'from' and 'value', got {t!r:.120}")
        if t["from"] not in ROLES:
            raise RecordError(f"{where}: turn {k} has unknown role {t['from']!r} (expected one of {ROLES})")
        if not isinstance(t["value"], str):
            raise RecordError(f"{where}: turn {k} ({t['from']}) value must be a str, got {type(t['value']).__name__}")
    start = 1 if conversations[0]["from"] == ROLE_SYSTEM else 0
    if start < len(conversations) and conversations[start]["from"] == ROLE_ASSISTANT:
        start += 1  # leading gpt turn: dropped
    out = [(0, conversations[0])] if conversations[0]["from"] == ROLE_SYSTEM else []
    for j, k in enumerate(range(start, len(conversations))):
        expected = ROLE_USER if j % 2 == 0 else ROLE_ASSISTANT
        if conversations[k]["from"] != expected:
            raise RecordError(
                f"{where}: turn {k} is {conversations[k]['from']!r} but {expected!r} was expected "
                f"(order: optional system, then human, gpt, human, gpt...)"
            )
        out.append((k, conversations[k]))
    return out


def validate_record(record, index=None, source=None) -> None:
    """Raise RecordError (naming the record, index and source) if ``record`` cannot be a training sample.

    Checks: 'conversations' present and non-empty; every turn has 'from' (system/human/gpt) and a str
    'value' without chat markers; order (optional leading system, a leading gpt turn is dropped, then
    human/gpt alternating; a trailing human turn is allowed); at least one gpt answer, none blank;
    'image' a str or non-empty list of str; ``<image>`` only in human turns, as many as images (none for
    text-only records). Run repair_image_tokens first for single-image records.
    """
    where = _where(record, index, source)
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    convs = record.get("conversations")
    turns = _ordered_turns(convs, where)
    for k, t in enumerate(convs):
        for marker in CHAT_MARKERS:
            if marker in t["value"]:
                raise RecordError(f"{where}: turn {k} ({t['from']}) contains the chat marker {marker!r}")
    answers = [(k, t) for k, t in turns if t["from"] == ROLE_ASSISTANT]
    if not answers:
        raise RecordError(f"{where}: no gpt answer to train on")
    for k, t in answers:
        if not t["value"].strip():
            raise RecordError(f"{where}: turn {k} is an empty gpt answer")
    images = image_list(record, index, source)
    for k, t in enumerate(convs):
        if t["from"] != ROLE_USER and IMAGE_TAG in t["value"]:
            raise RecordError(f"{where}: turn {k} ({t['from']}) contains {IMAGE_TAG}; only human turns may")
    n_tags = sum(t["value"].count(IMAGE_TAG) for t in convs if t["from"] == ROLE_USER)
    if not images and n_tags:
        raise RecordError(f"{where}: has no image but its human turns contain {n_tags} {IMAGE_TAG}")
    if images and n_tags != len(images):
        raise RecordError(f"{where}: {len(images)} image(s) but {n_tags} {IMAGE_TAG} tag(s) in its human turns")


def build_segments(conversations) -> list[tuple[str, bool]]:
    """Phi-3 prompt pieces ``[(text, is_answer), ...]``; only ``{a}<|end|>\\n`` pieces are answers.

    The default system turn is prepended when the first turn is not a system turn; a leading gpt turn is
    dropped (see _ordered_turns). A trailing human turn ends with ``<|assistant|>\\n``: a generation prompt.
    """
    turns = [t for _, t in _ordered_turns(conversations, "conversation")]
    if not turns or turns[0]["from"] != ROLE_SYSTEM:
        turns = [{"from": ROLE_SYSTEM, "value": SYSTEM_PROMPT}] + turns
    segments = []
    for t in turns:
        if t["from"] == ROLE_SYSTEM:
            segments.append((f"{SYSTEM_MARKER}\n{t['value']}{END_MARKER}\n", False))
        elif t["from"] == ROLE_USER:
            segments.append((f"{USER_MARKER}\n{t['value']}{END_MARKER}\n{ASSISTANT_MARKER}\n", False))
        else:
            segments.append((f"{t['value']}{END_MARKER}\n", True))
    return segments


def build_prompt(conversations) -> str:
    """The whole Phi-3 prompt text (no BOS: the tokenizer adds it)."""
    return "".join(text for text, _ in build_segments(conversations))


@dataclass
class TokenizedSample:
    """One conversation as text token ids (images not yet expanded) and labels of the same length."""

    input_ids: list[int]  # (num_text_tokens,), BOS first
    labels: list[int]  # (num_text_tokens,), IGNORE_INDEX outside answers
    num_images: int  # images of the record; the ids hold as many media tokens
    truncated: bool  # True when the text was cut to max_length

    def to_tensors(self):
        """{'input_ids', 'labels'} as int64 tensors of shape (num_text_tokens,)."""
        import torch

        return {
            "input_ids": torch.tensor(self.input_ids, dtype=torch.long),
            "labels": torch.tensor(self.labels, dtype=torch.long),
        }


def _added_token_ids(tokenizer) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return set(decoder)


def _labels_from_offsets(ids, offsets, prompt, answers, added_ids, where) -> list[bool]:
    """is_answer per token from its character span; raise LabelMaskError on a straddling token."""
    starts = [a for a, _ in answers]

    def answer_at(s: int, e: int):  # index of the answer holding [s, e); None: outside all; "cross": neither
        k = bisect.bisect_right(starts, s) - 1
        if k >= 0 and s < answers[k][1]:  # starts inside answer k
            return k if e <= answers[k][1] else "cross"
        if k + 1 < len(answers) and answers[k + 1][0] < e:  # starts before answer k+1 and reaches into it
            return "cross"
        return None

    out = []
    for i, (tid, (s, e)) in enumerate(zip(ids, offsets)):
        if s == e:  # zero-width (BOS from the post-processor): never inside an answer
            k = bisect.bisect_right(starts, s) - 1
            if k >= 0 and answers[k][0] < s < answers[k][1]:
                raise LabelMaskError(f"{where}: zero-width token {i} (id {tid}) sits inside answer text at char {s}")
            out.append(False)
            continue
        k = answer_at(s, e)
        if k == "cross" and tid in added_ids:  # rstrip/lstrip whitespace: place by the non-blank core
            text = prompt[s:e]
            cs, ce = s + len(text) - len(text.lstrip()), e - (len(text) - len(text.rstrip()))
            k = answer_at(cs, ce) if cs < ce else "cross"
        if k == "cross":
            a = next(j for j, (a0, a1) in enumerate(answers) if s < a1 and a0 < e)
            raise LabelMaskError(
                f"{where}: token {i} (id {tid}) covers {prompt[s:e]!r} (chars {s}..{e}), across the boundary of "
                f"answer {a} {prompt[answers[a][0]:answers[a][1]]!r:.60}: the tokenizer merges prompt and answer "
                "text, so the answer's labels cannot be placed exactly"
            )
        out.append(k is not None)
    return out


def _labels_from_prefixes(tokenizer, ids, prompt, answers, where) -> list[bool]:
    """is_answer per token for tokenizers without offsets: token counts of the prompt cut at each boundary."""
    cut_at = {}
    for b in sorted({b for span in answers for b in span}):
        prefix_ids = list(tokenizer(prompt[:b]).input_ids)
        if ids[: len(prefix_ids)] != prefix_ids:
            raise LabelMaskError(
                f"{where}: the prompt cut at char {b} ({prompt[max(0, b - 30):b]!r} | {prompt[b:b + 30]!r}) does "
                "not tokenize to a prefix of the whole prompt's ids: the tokenizer merges across this answer "
                "boundary, so the answer's labels cannot be placed exactly"
            )
        cut_at[b] = len(prefix_ids)
    out = [False] * len(ids)
    for a0, a1 in answers:
        for i in range(cut_at[a0], cut_at[a1]):
            out[i] = True
    return out


def tokenize_conversation(
    record,
    tokenizer,
    info: TokenizerInfo,
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    allow_empty: bool = False,
    repair: bool = True,
    index=None,
    source=None,
    label_method: str = "auto",
) -> TokenizedSample:
    """Record -> ids (exactly ``tokenizer(prompt).input_ids``, BOS first) and labels (module docstring).

    ``repair`` runs repair_image_tokens first (as the original did before templating); the record is then
    validated. The text is cut to ``max_length`` tokens (SPEC §4: before image tokens are inserted);
    ``truncated`` says so. RecordError when the cut leaves no labelled token (unless ``allow_empty``) or
    removes an ``<image>`` token. ``label_method``: "offsets" (fast tokenizers), "prefix" (any tokenizer),
    or "auto" (offsets when the tokenizer provides them).
    """
    where = _where(record, index, source)
    if repair:
        record = repair_image_tokens(record, index, source)
    validate_record(record, index, source)
    segments = build_segments(record["conversations"])
    bos = getattr(tokenizer, "bos_token", None)
    if bos:  # the original's chat_conv.replace(bos_token, ""): a literal "<s>" in the text vanishes
        segments = [(text.replace(bos, ""), is_answer) for text, is_answer in segments]
    prompt = "".join(text for text, _ in segments)
    answers, pos = [], 0
    for text, is_answer in segments:
        if is_answer:
            answers.append((pos, pos + len(text)))
        pos += len(text)

    if label_method not in ("auto", "offsets", "prefix"):
        raise ValueError(f"label_method must be 'auto', 'offsets' or 'prefix', got {label_method!r}")
    use_offsets = label_method == "offsets" or (label_method == "auto" and getattr(tokenizer, "is_fast", False))
    if use_offsets:
        try:
            enc = tokenizer(prompt, return_offsets_mapping=True)
        except NotImplementedError:
            if label_method == "offsets":
                raise
            use_offsets = False
    if use_offsets:
        ids = list(enc["input_ids"])
        is_answer = _labels_from_offsets(
            ids, [tuple(o) for o in enc["offset_mapping"]], prompt, answers, _added_token_ids(tokenizer), where
        )
    else:
        ids = list(tokenizer(prompt).input_ids)
        is_answer = _labels_from_prefixes(tokenizer, ids, prompt, answers, where)

    never = {info.pad_token_id, *info.special_token_ids}
    labels = [t if a and t not in never else IGNORE_INDEX for t, a in zip(ids, is_answer)]
    truncated = len(ids) > max_length
    if truncated:
        n_media = ids.count(info.media_token_id)
        ids, labels = ids[:max_length], labels[:max_length]
        if ids.count(info.media_token_id) != n_media:
            raise RecordError(
                f"{where}: truncation to {max_length} tokens cuts {n_media - ids.count(info.media_token_id)} of "
                f"its {n_media} {IMAGE_TAG} tokens"
            )
    if not allow_empty and all(label == IGNORE_INDEX for label in labels):
        raise RecordError(
            f"{where}: no labelled token left after truncation to {max_length} tokens "
            f"({'truncated' if truncated else 'not truncated'}): it would train on nothing"
        )
    return TokenizedSample(input_ids=ids, labels=labels, num_images=len(image_list(record)), truncated=truncated)
