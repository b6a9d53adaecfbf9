"""Preference data for DPO: records -> (prompt, chosen answer, rejected answer, images once), packed in pairs.

Canonical record (what every format is converted to)::

    {"id": "...", "image": "a.png" | ["a.png", "b.png"] (optional),
     "conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ..., {"from": "human", ...}],
     "chosen": "the preferred answer", "rejected": "the other answer"}

The conversation is the prompt: it follows the SFT rules (chat.py: optional system turn, human/gpt
alternating, `<image>` tags repaired for single-image records) and must END WITH A HUMAN TURN; both
answers are the gpt turn that would follow. Each pair becomes two sequences in the Phi-3 chat format,
prompt + answer + `<|end|>\\n`, labelled exactly as chat.py labels a final gpt turn (answer and its
`<|end|>\\n`; the prompt, earlier gpt turns included, is -100).

Public preference sets are converted by field mapping (`format=`; "auto" picks by keys, per record):

==============  =======================================================================================
format          fields read -> canonical record
==============  =======================================================================================
canonical       conversations, chosen, rejected (and id, image) as above
vlfeedback      VLFeedback / Silkie: ``prompt`` (str) -> one human turn; ``completions``: list of
                ``{"response", "annotations": {aspect: {"Rating": "1".."5" | "N/A", ...}}}`` (or a numeric
                ``score``/``overall_score``/``rating`` per completion). Score = mean numeric rating over the
                aspects; chosen = the best-scored completion (first on ties), rejected = the worst (last
                on ties); all scores equal -> bad record ("no preference"). ``id``, ``image``.
rlaif_v         RLAIF-V-Dataset (also any ``prompt``/``question`` + ``chosen``/``rejected`` strings):
                ``question`` (or ``prompt``) -> one human turn; ``chosen``, ``rejected``; image from
                ``image`` (a path, or a ``{"path": ...}`` dict) else ``image_path``; id from ``id`` or ``idx``.
llava_rlhf      LLaVA-RLHF human preferences: ``conversations`` (ending with the human turn both outputs
                answer), ``output_1``/``output_2`` (``{"value": ...}`` or a str), ``preference`` (1 or 2)
                -> chosen = the preferred output, rejected = the other. ``id``, ``image``.
==============  =======================================================================================

Auto-detection, first match: ``conversations`` + ``chosen`` + ``rejected`` -> canonical; ``output_1`` +
``output_2`` + ``preference`` -> llava_rlhf; ``completions`` -> vlfeedback; ``question`` or ``prompt``
with ``chosen`` + ``rejected`` -> rlaif_v. A record that fits none, or fails its conversion, is a bad
record (a BadSample naming file, index and why), never an exception.

Files, folders, mixture YAMLs and image-path maps work as for SFT (sources.py):
``load_preference_records(spec, path_map, seed, format)`` converts each record before its image paths
are mapped, so formats that keep the image under another key are resolved the same way.

    records = load_preference_records("prefs.yaml", path_map="paths.yaml", format="auto")
    ds = PreferenceDataset(records, tokenizer, info, model_config)
    lengths = ds.estimate_lengths()     # stream tokens per PAIR: 2 x prompt (images included) + answers
    pair = ds[i]                        # PreferenceSample, or BadSample(index, id, source, reason)
    batch = pack_pairs([pair, ...], media_token_id, tokens_per_tile, max_tokens)

`pack_pairs` lays each pair out as two sequences, prompt+chosen then prompt+rejected (sequence 2p and
2p+1 of the batch), whose `<image>` slots share ONE encoding of the pair's images (PackedBatch.media_source).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .chat import (
    DEFAULT_MAX_LENGTH,
    IGNORE_INDEX,
    ROLE_ASSISTANT,
    ROLE_USER,
    RecordError,
    _where,
    build_segments,
    repair_image_tokens,
    tokenize_conversation,
)
from .packed import PackedBatch, StreamSample, pack_samples, stream_length
from .sft_dataset import BadSample, SFTDataset
from .sources import ImagePathMap, SourceRecord, load_path_map, load_records, make_record, raw_image_paths

FORMATS = ("auto", "canonical", "vlfeedback", "rlaif_v", "llava_rlhf")
CANONICAL_KEYS = ("conversations", "chosen", "rejected")


class PreferenceFormatError(RecordError):
    """A record that cannot be converted to the canonical preference record."""


# ---------------------------------------------------------------------------------------------------
# Format conversion
# ---------------------------------------------------------------------------------------------------


def detect_format(record) -> str:
    """The format of one record, from its keys (module docstring); raises PreferenceFormatError."""
    if not isinstance(record, dict):
        raise PreferenceFormatError(f"expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if set(CANONICAL_KEYS) <= keys:
        return "canonical"
    if {"output_1", "output_2", "preference"} <= keys:
        return "llava_rlhf"
    if "completions" in keys:
        return "vlfeedback"
    if ("question" in keys or "prompt" in keys) and {"chosen", "rejected"} <= keys:
        return "rlaif_v"
    raise PreferenceFormatError(
        f"cannot tell the preference format from keys {sorted(keys)}: expected conversations+chosen+rejected "
        "(canonical), output_1+output_2+preference (llava_rlhf), completions (vlfeedback) or "
        "question|prompt+chosen+rejected (rlaif_v)")


def looks_like_preference(record) -> bool:
    """True when the record's keys fit one of the preference formats (an SFT record does not)."""
    try:
        detect_format(record)
    except PreferenceFormatError:
        return False
    return True


def _text(value, what: str) -> str:
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if not isinstance(value, str):
        raise PreferenceFormatError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _with_id_and_image(out: dict, record: dict, image=None) -> dict:
    rid = record.get("id", record.get("idx"))
    if rid is not None:
        out["id"] = rid if isinstance(rid, str) else str(rid)
    image = record.get("image") if image is None else image
    if image is not None:
        out["image"] = image
    return out


def _completion_score(c: dict, k: int) -> float:
    for key in ("score", "overall_score", "rating"):
        if isinstance(c.get(key), (int, float)) and not isinstance(c.get(key), bool):
            return float(c[key])
    ann = c.get("annotations")
    if not isinstance(ann, dict) or not ann:
        raise PreferenceFormatError(f"completion {k} has no 'annotations' with ratings and no numeric score")
    ratings = []
    for aspect, a in ann.items():
        r = a.get("Rating", a.get("rating")) if isinstance(a, dict) else a
        try:
            v = float(r)
        except (TypeError, ValueError):
            continue  # "N/A" and the like: not rated on this aspect
        if math.isfinite(v):
            ratings.append(v)
    if not ratings:
        raise PreferenceFormatError(f"completion {k} has no numeric rating in its annotations {sorted(ann)}")
    return sum(ratings) / len(ratings)


def _from_vlfeedback(r: dict) -> dict:
    comps = r.get("completions")
    if not isinstance(comps, list) or len(comps) < 2:
        raise PreferenceFormatError("'completions' must be a list of at least 2 rated completions")
    scored = []
    for k, c in enumerate(comps):
        if not isinstance(c, dict):
            raise PreferenceFormatError(f"completion {k} must be an object, got {type(c).__name__}")
        scored.append((_completion_score(c, k), _text(c.get("response"), f"completion {k} 'response'")))
    best = max(range(len(scored)), key=lambda k: (scored[k][0], -k))  # first of the best
    worst = min(range(len(scored)), key=lambda k: (scored[k][0], -k))  # last of the worst
    if scored[best][0] == scored[worst][0]:
        raise PreferenceFormatError(f"no preference: every completion scores {scored[best][0]:g}")
    prompt = _text(r.get("prompt"), "'prompt'")
    return _with_id_and_image({"conversations": [{"from": ROLE_USER, "value": prompt}],
                               "chosen": scored[best][1], "rejected": scored[worst][1]}, r)


def _from_rlaif_v(r: dict) -> dict:
    q = _text(r["question"] if "question" in r else r.get("prompt"), "'question'/'prompt'")
    image = r.get("image")
    if isinstance(image, dict):
        image = image.get("path")
    if not isinstance(image, (str, list)):
        image = r.get("image_path")
    return _with_id_and_image({"conversations": [{"from": ROLE_USER, "value": q}],
                               "chosen": _text(r.get("chosen"), "'chosen'"),
                               "rejected": _text(r.get("rejected"), "'rejected'")}, r, image)


def _from_llava_rlhf(r: dict) -> dict:
    pref = r.get("preference")
    if isinstance(pref, str) and pref.strip() in ("1", "2"):
        pref = int(pref)
    if pref not in (1, 2) or isinstance(pref, bool):
        raise PreferenceFormatError(f"'preference' must be 1 or 2, got {pref!r}")
    outs = {k: _text(r.get(f"output_{k}"), f"'output_{k}'") for k in (1, 2)}
    return _with_id_and_image({"conversations": r.get("conversations"),
                               "chosen": outs[pref], "rejected": outs[3 - pref]}, r)


def _from_canonical(r: dict) -> dict:
    return _with_id_and_image({k: r[k] for k in CANONICAL_KEYS}, r)


_CONVERTERS = {"canonical": _from_canonical, "vlfeedback": _from_vlfeedback, "rlaif_v": _from_rlaif_v,
               "llava_rlhf": _from_llava_rlhf}


def to_canonical(record, format: str = "auto") -> dict:
    """One record in `format` (or "auto": by keys) -> the canonical record. A record that is already
    canonical is returned as it is whatever `format` says (conversion is idempotent). Raises
    PreferenceFormatError (a RecordError) naming the field at fault."""
    if format not in FORMATS:
        raise ValueError(f"preference format must be one of {FORMATS}, got {format!r}")
    if not isinstance(record, dict):
        raise PreferenceFormatError(f"expected a JSON object, got {type(record).__name__}")
    if set(CANONICAL_KEYS) <= set(record):
        return _from_canonical(record)
    fmt = detect_format(record) if format == "auto" else format
    if fmt == "canonical":
        missing = [k for k in CANONICAL_KEYS if k not in record]
        raise PreferenceFormatError(f"missing {missing} (canonical preference record)")
    try:
        return _CONVERTERS[fmt](record)
    except PreferenceFormatError as e:
        raise PreferenceFormatError(f"{fmt} record: {e}") from None


def canonicalize_records(records: Sequence[SourceRecord], path_map=None, format: str = "auto") -> list[SourceRecord]:
    """SourceRecords as loaded -> SourceRecords holding canonical records, image paths mapped with
    `path_map` (relative ones against their file's directory). A record that fails its conversion is
    kept as it was: the dataset reports it (as a BadSample with the reason)."""
    if format not in FORMATS:
        raise ValueError(f"preference format must be one of {FORMATS}, got {format!r}")
    pm = path_map if isinstance(path_map, ImagePathMap) else load_path_map(path_map)
    out = []
    for rec in records:
        try:
            data = to_canonical(rec.data, format)
        except RecordError:
            out.append(rec)
            continue
        out.append(make_record(data, rec.source, rec.index, pm))
    return out


def load_preference_records(spec, path_map=None, seed: int = 42, base_dir=None,
                            format: str = "auto") -> list[SourceRecord]:
    """`sources.load_records` (files, folders, mixtures, path maps) + conversion to canonical records."""
    pm = load_path_map(path_map, base_dir)
    return canonicalize_records(load_records(spec, path_map=pm, seed=seed, base_dir=base_dir), pm, format)


# ---------------------------------------------------------------------------------------------------
# Tokenization: one pair
# ---------------------------------------------------------------------------------------------------


@dataclass
class PairTokens:
    """A pair's text tokens. `input_ids`/`labels` are the PROMPT's (so SFTDataset's image path treats
    the pair as its prompt); the answers follow the prompt in their own sequences."""

    input_ids: np.ndarray  # (prompt_tokens,) int32, BOS first, <image> ids in place, ends "<|assistant|>\n"
    labels: np.ndarray  # (prompt_tokens,) all IGNORE_INDEX
    chosen_ids: np.ndarray  # (chosen_tokens,) int32: the answer and its "<|end|>\n" (cut by max_text_tokens)
    chosen_labels: np.ndarray
    rejected_ids: np.ndarray
    rejected_labels: np.ndarray
    truncated: bool  # prompt + an answer was longer than max_text_tokens: that answer was cut


def _check_prompt(record) -> dict:
    """The canonical record's fields checked; returns the record with its image tags repaired."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise RecordError(f"missing {key!r} answer")
        if not isinstance(record[key], str):
            raise RecordError(f"{key!r} must be a string, got {type(record[key]).__name__}")
        if not record[key].strip():
            raise RecordError(f"{key!r} is an empty answer")
    if record["chosen"].strip() == record["rejected"].strip():
        raise RecordError("'chosen' and 'rejected' are the same answer: no preference to learn")
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError("missing or empty 'conversations' (the prompt turns)")
    last = convs[-1]
    if not isinstance(last, dict) or last.get("from") != ROLE_USER:
        who = last.get("from") if isinstance(last, dict) else type(last).__name__
        raise RecordError(f"the prompt must end with a human turn (both answers reply to it), ends with {who!r}")
    return repair_image_tokens(record)


def tokenize_pair(record, tokenizer, info, max_length: int = DEFAULT_MAX_LENGTH) -> PairTokens:
    """Canonical record -> PairTokens. Each answer is tokenized as the gpt turn closing the prompt
    (chat.tokenize_conversation: validation, labels from offsets, straddle check, truncation to
    `max_length` text tokens); the prompt must tokenize to the same ids alone as in front of either
    answer. Raises RecordError."""
    rec = _check_prompt(record)
    convs = rec["conversations"]
    bos = getattr(tokenizer, "bos_token", None)
    prompt_text = "".join(t.replace(bos, "") if bos else t for t, _ in build_segments(convs))
    if getattr(tokenizer, "is_fast", False):
        prompt_ids = list(tokenizer(prompt_text, return_offsets_mapping=True)["input_ids"])
    else:
        prompt_ids = list(tokenizer(prompt_text)["input_ids"])
    n = len(prompt_ids)
    answers, truncated = {}, False
    for key in ("chosen", "rejected"):
        full = dict(rec, conversations=convs + [{"from": ROLE_ASSISTANT, "value": rec[key]}])
        for extra in CANONICAL_KEYS[1:]:
            full.pop(extra, None)
        try:
            t = tokenize_conversation(full, tokenizer, info, max_length, repair=False)
        except RecordError as e:
            raise RecordError(f"prompt + {key} answer: {str(e).removeprefix(_where(full) + ': ')}") from None
        if t.input_ids[:n] != prompt_ids:
            raise RecordError(f"the prompt tokenizes differently alone than in front of the {key} answer "
                              "(the tokenizer merges across the boundary)")
        if not any(x != IGNORE_INDEX for x in t.labels[n:]):
            raise RecordError(f"no token of the {key} answer left after truncation to {max_length} tokens")
        answers[key] = (np.asarray(t.input_ids[n:], dtype=np.int32), np.asarray(t.labels[n:], dtype=np.int32))
        truncated |= t.truncated
    ids = np.asarray(prompt_ids, dtype=np.int32)
    return PairTokens(ids, np.full_like(ids, IGNORE_INDEX), *answers["chosen"], *answers["rejected"], truncated)


# ---------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------


@dataclass
class PreferenceSample:
    """One pair ready for packing: the prompt once, both answers, the images' tiles once."""

    prompt_ids: list[int]  # BOS first, <image> ids in place
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    tiles: list[torch.Tensor] = field(default_factory=list)  # per image (1 + n, 3, s, s)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    sample_id: str = ""
    index: int = -1  # dataset index

    def sequences(self) -> tuple[StreamSample, StreamSample]:
        """(prompt + chosen, prompt + rejected) as StreamSamples; both carry the same tiles."""
        pad = [IGNORE_INDEX] * len(self.prompt_ids)
        return tuple(StreamSample(self.prompt_ids + ids, pad + labels, self.tiles, self.image_sizes,
                                  f"{self.sample_id}/{which}")
                     for which, ids, labels in (("chosen", self.chosen_ids, self.chosen_labels),
                                                ("rejected", self.rejected_ids, self.rejected_labels)))


def pair_stream_length(prompt_stream: int, chosen_tokens: int, rejected_tokens: int) -> int:
    """Tokens a pair occupies in a packed row: the prompt (images included) twice, plus both answers."""
    return 2 * prompt_stream + chosen_tokens + rejected_tokens


class PreferenceDataset(SFTDataset):
    """Preference records -> PreferenceSample | BadSample; never raises for bad data.

    Everything but the text is SFTDataset's (image headers, decoding, anyres tiles, bad-record
    bookkeeping, caching): a pair is handled there as its prompt, and its answers are added here.
    `format`: how plain dict records are converted (SourceRecords are expected converted by
    `load_preference_records`; a canonical record stays as it is).
    """

    def __init__(self, records, tokenizer, info, config, max_text_tokens: int = DEFAULT_MAX_LENGTH,
                 format: str = "auto", **kwargs):
        if format not in FORMATS:
            raise ValueError(f"preference format must be one of {FORMATS}, got {format!r}")
        records = list(records)
        if records and not isinstance(records[0], SourceRecord):  # plain dicts: convert, paths as written
            converted = []
            for i, r in enumerate(records):
                try:
                    data = to_canonical(r, format)
                except RecordError:
                    data = r
                converted.append(SourceRecord(data, "<records>", i, tuple(raw_image_paths(data))))
            records = converted
        super().__init__(records, tokenizer, info, config, max_text_tokens=max_text_tokens, **kwargs)
        self.format = format
        self._answer_tokens: dict[tuple[str, int], tuple[int, int]] = {}  # -> (chosen, rejected) tokens

    def _tokenize_record(self, rec: SourceRecord, tokenizer=None) -> PairTokens:
        """Raises RecordError (the reason, without the location)."""
        try:
            data = to_canonical(rec.data, self.format)
            entry = tokenize_pair(data, tokenizer or self.tokenizer, self.info, self.max_text_tokens)
        except RecordError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise RecordError(f"cannot tokenize: {type(e).__name__}: {e}") from e
        self._answer_tokens[(rec.source, rec.index)] = (len(entry.chosen_ids), len(entry.rejected_ids))
        return entry

    def estimate_lengths(self, io_workers: int | None = None) -> list[int]:
        """Stream tokens per pair (pair_stream_length), no pixels decoded; bad records get 0."""
        prompt_lengths = super().estimate_lengths(io_workers)  # the prompt's stream, images included
        lengths = [0] * len(self)
        for i, p in enumerate(prompt_lengths):
            if i not in self.bad_records:
                rec = self.records[i]
                c, r = self._answer_tokens[(rec.source, rec.index)]
                lengths[i] = pair_stream_length(p, c, r)
        self._lengths = lengths
        return lengths

    def __getitem__(self, index: int) -> PreferenceSample | BadSample:
        if index < 0:
            index += len(self)
        item = super().__getitem__(index)  # the prompt as a StreamSample, images decoded and tiled
        if isinstance(item, BadSample):
            return item
        entry = self.text(index)
        return PreferenceSample(prompt_ids=item.input_ids, chosen_ids=entry.chosen_ids.tolist(),
                                chosen_labels=entry.chosen_labels.tolist(),
                                rejected_ids=entry.rejected_ids.tolist(),
                                rejected_labels=entry.rejected_labels.tolist(), tiles=item.tiles,
                                image_sizes=item.image_sizes, sample_id=item.sample_id, index=index)


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------


def pack_pairs(pairs: Sequence[PreferenceSample], media_token_id: int, tokens_per_tile: int,
               max_tokens: int | None = None) -> PackedBatch:
    """Pairs -> one PackedBatch of 2·P sequences: 2p = prompt + chosen, 2p + 1 = prompt + rejected; the
    rejected sequence's image slots show the chosen one's images (encoded once, `media_source`).

    A pair longer than `max_tokens` (it then has a row of its own) has each of its two sequences cut to
    max_tokens // 2 tokens (never inside an image; the prompts are equal, so both cut alike);
    `num_truncated` counts cut sequences.
    """
    seqs, limits, owners = [], [], []
    for p in pairs:
        c, r = p.sequences()
        n_tiles = [t.shape[0] for t in p.tiles]
        prompt = stream_length(p.prompt_ids, n_tiles, media_token_id, tokens_per_tile)
        total = pair_stream_length(prompt, len(p.chosen_ids), len(p.rejected_ids))
        limit = None if max_tokens is None or total <= max_tokens else max_tokens // 2
        owners += [None, len(seqs)]
        seqs += [c, r]
        limits += [limit, limit]
    return pack_samples(seqs, media_token_id, tokens_per_tile, max_tokens=limits, images_from=owners)
