"""Tokenizer setup (SPEC §1.4) and a tiny offline Phi-3-like tokenizer for tests and demos.

The released models extend Phi-3's tokenizer exactly as the original factory did:

1. if the tokenizer has no pad token, or its pad token is its eos token (Phi-3: both ``<|endoftext|>``),
   ``<pad>`` is added as pad token (Phi-3: id 32011);
2. ``initial_tokenizer_len = len(tokenizer)`` is taken *after* that (Phi-3: 32012); ids below it live in
   the LM's big embedding table;
3. ``<image>``, ``<image placeholder>``, ``<|endofchunk|>`` are appended as additional special tokens and get
   ids ``initial_tokenizer_len + 0, 1, 2`` (Phi-3: 32012..32014): rows 0..2 of the decoupled extra table.

``build_tiny_tokenizer`` writes a small tokenizer with the same layout and behaviour as Phi-3's as the
released training used it (see its docstring), so tiny models and tests exercise the real code paths.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MEDIA_TOKEN = "<image>"
PLACEHOLDER_TOKEN = "<image placeholder>"
ENDOFCHUNK_TOKEN = "<|endofchunk|>"
SPECIAL_TOKENS = (MEDIA_TOKEN, PLACEHOLDER_TOKEN, ENDOFCHUNK_TOKEN)  # appended in this order (SPEC §1.4)
PAD_TOKEN = "<pad>"  # added when the tokenizer has no pad token of its own (or pads with eos)
END_TOKEN = "<|end|>"  # Phi-3's end-of-turn marker: a generation stop token besides eos

# Files AutoTokenizer can build a tokenizer from; a directory with none of them is not a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class TokenizerInfo:
    """Ids the model and the data pipeline need, read off a prepared tokenizer."""

    initial_tokenizer_len: int  # ids < this: LM embedding table; SPECIAL_TOKENS sit at this + 0, 1, 2
    pad_token_id: int
    media_token_id: int  # <image>
    placeholder_token_id: int  # <image placeholder>
    endofchunk_token_id: int  # <|endofchunk|>
    eos_token_id: int | None
    end_token_id: int | None  # <|end|> when the vocabulary has it (Phi-3), else None
    bos_token_id: int | None

    @property
    def special_token_ids(self) -> tuple[int, int, int]:
        """(media, placeholder, endofchunk): never labelled, embedded by the additional table."""
        return (self.media_token_id, self.placeholder_token_id, self.endofchunk_token_id)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a generated answer: <|end|> (when present) then eos, without duplicates."""
        out: list[int] = []
        for t in (self.end_token_id, self.eos_token_id):
            if t is not None and t not in out:
                out.append(t)
        return tuple(out)


def _token_id(tokenizer, token: str) -> int | None:
    return tokenizer.get_vocab().get(token)


def _read_info(tokenizer) -> TokenizerInfo:
    """Read and check the ids of an already prepared tokenizer."""
    vocab = tokenizer.get_vocab()
    media, placeholder, endofchunk = (vocab[t] for t in SPECIAL_TOKENS)
    if (placeholder, endofchunk) != (media + 1, media + 2):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: special tokens {SPECIAL_TOKENS} have ids "
            f"{(media, placeholder, endofchunk)}, expected three consecutive ids (initial_tokenizer_len + 0, 1, 2)"
        )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has {SPECIAL_TOKENS} but no pad token: "
            "it was not prepared by prepare_tokenizer"
        )
    if pad_id >= media:
        raise ValueError(f"pad token id {pad_id} must be below initial_tokenizer_len {media} (SPEC §1.4)")
    return TokenizerInfo(
        initial_tokenizer_len=media,
        pad_token_id=pad_id,
        media_token_id=media,
        placeholder_token_id=placeholder,
        endofchunk_token_id=endofchunk,
        eos_token_id=tokenizer.eos_token_id,
        end_token_id=vocab.get(END_TOKEN),
        bos_token_id=tokenizer.bos_token_id,
    )


def prepare_tokenizer(tokenizer) -> TokenizerInfo:
    """Add ``<pad>`` (when needed) and the three special tokens, as the original training did (SPEC §1.4).

    Mutates ``tokenizer``. Idempotent: a tokenizer that already has all three special tokens is only
    checked (three consecutive ids, a pad token below them) and its ids are returned. A tokenizer with
    some but not all of them is rejected.
    """
    vocab = tokenizer.get_vocab()
    present = [t in vocab for t in SPECIAL_TOKENS]
    if all(present):
        return _read_info(tokenizer)
    if any(present):
        have = [t for t, p in zip(SPECIAL_TOKENS, present) if p]
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} already has {have} but not all of "
            f"{SPECIAL_TOKENS}: cannot give them consecutive ids"
        )
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    initial_len = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    ids = tuple(_token_id(tokenizer, t) for t in SPECIAL_TOKENS)
    expected = (initial_len, initial_len + 1, initial_len + 2)
    if ids != expected:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: {SPECIAL_TOKENS} got ids {ids}, expected "
            f"{expected} (initial_tokenizer_len={initial_len}); the vocabulary has holes or duplicate entries"
        )
    return _read_info(tokenizer)


def load_tokenizer(path):
    """Load a tokenizer directory offline and prepare it. Returns ``(tokenizer, TokenizerInfo)``.

    Raises FileNotFoundError naming ``path`` when it is missing, not a directory, or holds none of
    TOKENIZER_FILES; any loading failure is re-raised as OSError naming ``path``.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise FileNotFoundError(f"tokenizer path {str(p)!r} is not a directory (expected a HF tokenizer directory)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"tokenizer directory {str(p)!r} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})"
        )
    # a model directory's config.json is the multimodal model's (model_type "xgenmm", unknown to transformers);
    # AutoTokenizer reads it only to look for a tokenizer class and would warn that the model type differs
    config_logger = logging.getLogger("transformers.configuration_utils")
    config_logger.addFilter(_drop_model_type_notice)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... depending on what is off
        raise OSError(f"could not load a tokenizer from {str(p)!r}: {type(e).__name__}: {e}") from e
    finally:
        config_logger.removeFilter(_drop_model_type_notice)
    return tokenizer, prepare_tokenizer(tokenizer)


def _drop_model_type_notice(record: logging.LogRecord) -> bool:
    return "to instantiate a model of type" not in record.getMessage()


# ---------------------------------------------------------------------------------------------------
# Tiny offline tokenizer
# ---------------------------------------------------------------------------------------------------

SPIECE = "▁"  # sentencepiece's word-start marker (U+2581)
UNK, BOS, EOS_S = "<unk>", "<s>", "</s>"  # ids 0, 1, 2 as in Llama / Phi-3
NUM_BYTE_TOKENS = 256  # <0x00>..<0xFF>, ids 3..258: byte fallback for characters outside the vocabulary
# Phi-3's added tokens in id order (Phi-3: 32000..32010), with its rstrip flags: the chat markers swallow
# the whitespace after them, so "<|end|>\n" is one token.
PHI3_ADDED_TOKENS = (
    ("<|endoftext|>", False),
    ("<|assistant|>", True),
    ("<|placeholder1|>", True),
    ("<|placeholder2|>", True),
    ("<|placeholder3|>", True),
    ("<|placeholder4|>", True),
    ("<|system|>", True),
    (END_TOKEN, True),
    ("<|placeholder5|>", True),
    ("<|placeholder6|>", True),
    ("<|user|>", True),
)
DEFAULT_TINY_VOCAB_SIZE = 768  # model vocabulary (Phi-3: 32000); the added tokens come on top

_SYSTEM_PROMPT_TEXT = (  # == chat.SYSTEM_PROMPT (SPEC §4); repeated here so this module does not import chat
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SHAPES = ("circle", "square", "triangle", "star")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def default_corpus() -> list[str]:
    """English chat-like lines with the demo's vocabulary (shapes, colours, counts, positions)."""
    lines = [
        _SYSTEM_PROMPT_TEXT,
        "What is in the image?",
        "What is in this picture?",
        "Describe the image.",
        "Describe the picture in detail.",
        "How many shapes are there in the image?",
        "How many circles are there?",
        "How many squares are in the picture?",
        "What color is the shape on the left?",
        "What color is the shape on the right?",
        "What shape is on the left of the image?",
        "Which shape is big and which is small?",
        "Is there a red circle in the image?",
        "Is the star bigger than the square?",
        "Where is the blue triangle?",
        "Why is the sky blue?",
        "Who are you?",
        "When was this picture taken?",
        "Yes, there is.",
        "No, there is not.",
        "There are no shapes in the image.",
        "The image shows a big red circle and a small blue square.",
        "The picture has a green triangle on the left and a yellow star on the right.",
        "I can see an orange square, a purple circle, a white star and a black triangle.",
        "Hello! How can I help you today?",
        "Thank you for the question.",
        "Sure, here is a short answer: the shape is a circle.",
        "It is a small yellow star.",
        "Count: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
        "1 + 1 = 2; 2 * 3 = 6; 10 - 4 = 6; (5 / 5) = 1.",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 384 729 2048.",
        "Punctuation: . , ; : ! ? ' \" ( ) [ ] { } - _ / \\ * + = < > # @ & % $ ~ ` ^ |",
    ]
    for i, word in enumerate(_NUMBER_WORDS):
        lines.append(f"There are {word} shapes. There are {i} shapes in the image.")
        lines.append(f"How many {_SHAPES[i % 4]}s are there? {word.capitalize()}.")
    for c in _COLOURS:
        for s in _SHAPES:
            lines.append(f"There is a big {c} {s} on the left and a small {c} {s} on the right.")
            lines.append(f"What color is the {s}? The {s} is {c}.")
            lines.append(f"Is there a {c} {s} in the picture? Yes, there is one {c} {s}.")
    lines.append(" ".join(w.capitalize() for w in _COLOURS + _SHAPES + _NUMBER_WORDS))
    lines.append("what how many which where who why when is are there the left right a an of color colour shape")
    return lines


def _word_counts(corpus: Iterable[str]) -> Counter:
    """Sentencepiece-style words: each space-separated word with a leading ▁, and each line's first word
    also without it (text right after a chat marker has no ▁, as the released tokenizer behaves)."""
    counts: Counter = Counter()
    for text in corpus:
        for line in text.split("\n"):
            words = [w for w in line.split(" ") if w]
            for j, w in enumerate(words):
                counts[SPIECE + w] += 1
                if j == 0:
                    counts[w] += 1
    return counts


def _train_bpe(counts: Counter, alphabet: Sequence[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE merges, deterministic: most frequent adjacent pair first, ties to the smaller pair.

    Written out (rather than tokenizers' trainer) so the same corpus gives the same merges with any
    library version.
    """
    known = set(alphabet)
    words: list[list[str]] = []
    freqs: list[int] = []
    for w in sorted(counts):
        # characters outside the alphabet become bytes at encode time: no merge crosses them
        for part in "".join(c if c in known else "\0" for c in w).split("\0"):
            if part:
                words.append(list(part))
                freqs.append(counts[w])
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for syms, f in zip(words, freqs):
            for a, b in itertools.pairwise(syms):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        for k, syms in enumerate(words):
            if len(syms) < 2:
                continue
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[k] = out
    return merges


# The training template (SPEC §4) as a chat template, for tokenizer.apply_chat_template users.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n<|assistant|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
)


def build_tiny_tokenizer(out_dir, corpus: list[str] | None = None, vocab_size: int = DEFAULT_TINY_VOCAB_SIZE):
    """Build a small Phi-3-like fast tokenizer offline and save it as a HF tokenizer directory.

    Layout and behaviour follow Phi-3-mini as the released training tokenized it:
    - model vocabulary of ``vocab_size`` entries (Phi-3: 32000): ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the
      256 byte tokens ``<0x00>``..``<0xFF>`` (byte fallback, so ``"\\n"`` is ``<0x0A>``), then BPE pieces
      learned from ``corpus`` (default: ``default_corpus()``); fewer if the corpus runs out of pairs;
    - then Phi-3's 11 added tokens in Phi-3's order (``<|endoftext|>`` at ``vocab_size``, ``<|end|>`` at
      ``vocab_size + 7``, ``<|user|>`` at ``vocab_size + 10``), the chat markers with rstrip as in Phi-3;
    - Metaspace ``▁`` pre-tokenizer, prepended only at the very start of the text (what Phi-3's
      ``legacy: false`` tokenizer does: text right after a special token gets no ``▁``), no splitting;
    - the post-processor puts BOS ``<s>`` first; eos and pad are both ``<|endoftext|>``, so
      ``prepare_tokenizer`` adds ``<pad>`` at ``len(tokenizer)`` just as for Phi-3.

    Deterministic: the same arguments write byte-identical files. Returns the directory as a Path.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reserved = 3 + NUM_BYTE_TOKENS
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation) | {SPIECE})
    if vocab_size < reserved + len(alphabet):
        raise ValueError(f"vocab_size {vocab_size} too small: needs at least {reserved + len(alphabet)}")
    vocab: dict[str, int] = {UNK: 0, BOS: 1, EOS_S: 2}
    for b in range(NUM_BYTE_TOKENS):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in alphabet:
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    counts = _word_counts(default_corpus() if corpus is None else corpus)
    # Merges whose result is already a token (reachable two ways) add no entry: ask for a few spare ones.
    for a, b in _train_bpe(counts, alphabet, 2 * (vocab_size - len(vocab))):
        if len(vocab) >= vocab_size:
            break
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS_S)])
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, rstrip=r) for t, r in PHI3_ADDED_TOKENS]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, vocab[BOS])]
    )
    eos = PHI3_ADDED_TOKENS[0][0]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": eos,
        "unk_token": UNK,
        "pad_token": eos,  # as Phi-3: pad == eos, so prepare_tokenizer adds <pad>
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "chat_template": TINY_CHAT_TEMPLATE,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def tokenizer_dir_digest(path) -> str:
    """sha256 over the names and bytes of the files in a tokenizer directory (for determinism checks)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
