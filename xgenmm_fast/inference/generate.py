"""Batched generation with a KV cache: one packed prefill, then one decode step per new token.

    requests (text ids with <image> ids + each image's tiles)
      --pack_samples--> one packed stream, no padding; all images of the batch encoded in one call
      --Phi3Model.forward_cached(cu_seqlens)--> varlen prefill; every prompt's K/V into its cache row
      --lm_head on each prompt's last position--> (B, V) --sample--> first new token per sequence
      loop: embed (B, 1) --forward_cached--> decode_attention over the cache --lm_head--> sample

Each prompt sits in its cache row from position 0, so prompts of different lengths (and the original's
left-padded `lang_x`) need no padding: padding tokens are dropped before the prefill, and RoPE positions
restart at 0 for every prompt, which is what HF's generate computes for a left-padded batch
(`position_ids = attention_mask.cumsum(-1) - 1`). Sequences that finish leave the decode batch (their
cache rows are dropped), so a long answer does not make the short ones keep computing.

Sampling: greedy (argmax) or temperature -> top-k -> top-p (nucleus) -> multinomial with a seeded
`torch.Generator`, the order HF's logits warpers use. Stops: stop ids (the id is kept in `token_ids`, not
in `text`), stop strings (found in the decoded text; the text is cut before it, the tokens up to the one
that completed it are kept), `max_new_tokens`.

Streaming: `Generator.stream(...)` is an iterator of `StreamEvent(index, text, token_id, finish_reason)`;
`Generator.generate(..., on_text=fn)` calls `fn(index, text)` for every non-empty piece. The pieces of a
sequence concatenate to its final `text`; text that might be the start of a stop string is held back until
it is known not to be one.

`generate_original` is the original `XGenMMPerceiver.generate` call form (what `XGenMM.generate` runs);
`chat` is `XGenMM.chat`.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.chat import build_prompt
from ..data.packed import StreamSample, pack_samples
from ..data.tokenizer import END_TOKEN, MEDIA_TOKEN
from .kv_cache import KVCache

FINISH_STOP_TOKEN, FINISH_STOP_STRING, FINISH_LENGTH, FINISH_CRITERIA = "stop_token", "stop_string", "length", "criteria"
DEFAULT_STOP_STRINGS = (END_TOKEN,)  # Phi-3's end of turn, should it ever come out as plain text pieces
HF_DEFAULT_MAX_NEW_TOKENS = 20  # HF generate's default max_length (20) with inputs_embeds: 20 new tokens
HF_DEFAULT_TOP_K = 50  # HF's default top_k when sampling
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece byte-fallback pieces (Phi-3, the tiny tokenizer)


# ---- configuration, requests, outputs ------------------------------------------------------------
@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop. `do_sample=False` is greedy (temperature/top-k/top-p unused)."""
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None  # sampling RNG (a torch.Generator on the model's device); None: torch's global RNG
    stop_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    output_logits: bool = False  # keep each step's (V,) logits in GenerationOutput.logits

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")

    @classmethod
    def from_sampling_args(cls, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                           seed: int | None = None, **kw) -> GenerationConfig:
        """CLI-style settings: temperature 0 is greedy, > 0 samples."""
        return cls(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                   top_p=top_p, top_k=top_k, seed=seed, **kw)


@dataclass
class Request:
    """One prompt: text ids (BOS included if the tokenizer adds one) with an `<image>` id where each image
    goes, and per image its anyres tiles (1 + n, 3, s, s) and (w, h) size. Images past the last `<image>`
    id are not used."""
    input_ids: Sequence[int]
    images: Sequence[torch.Tensor] = ()
    image_sizes: Sequence[Sequence[int]] = ()


@dataclass
class GenerationOutput:
    token_ids: list[int]  # the new tokens, a final stop id included
    text: str | None  # decoded without special tokens, cut before a stop string; None without a tokenizer
    finish_reason: str  # "stop_token" | "stop_string" | "length" | "criteria"
    num_prompt_tokens: int  # multimodal stream length of the prompt (image tokens included)
    logits: torch.Tensor | None = None  # (num new tokens, V) fp32, with GenerationConfig.output_logits


@dataclass
class GenerationStats:
    batch_size: int = 0
    prompt_tokens: int = 0  # multimodal tokens prefilled
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds: images, prefill and the first sample
    decode_seconds: float = 0.0  # after the first token
    decode_steps: int = 0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.time_to_first_token if self.time_to_first_token else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        n = self.generated_tokens - self.batch_size
        return n / self.decode_seconds if self.decode_seconds and n > 0 else 0.0


@dataclass
class StreamEvent:
    index: int  # which request
    text: str  # newly released text ("" when none yet, or without a tokenizer)
    token_id: int  # the token just generated
    finish_reason: str | None = None  # set on the sequence's last event


# ---- sampling ------------------------------------------------------------------------------------
def sample_next(logits: torch.Tensor, config: GenerationConfig,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): argmax, or temperature -> top-k -> top-p -> multinomial."""
    if not config.do_sample:
        return logits.argmax(-1)
    x = logits.float() / config.temperature
    if config.top_k and config.top_k < x.shape[-1]:
        kth = torch.topk(x, config.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop = before >= config.top_p
        drop[:, 0] = False  # always keep the most likely token
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---- per-sequence text state ---------------------------------------------------------------------
class _Sequence:
    """Token ids, incremental detokenization and stop checks of one sequence."""

    def __init__(self, tokenizer, config: GenerationConfig, num_prompt_tokens: int,
                 byte_ids: frozenset[int] = frozenset(), special_ids: frozenset[int] = frozenset()):
        self.tokenizer, self.config = tokenizer, config
        self.byte_ids = byte_ids  # byte-fallback tokens (<0x..>), see _decode_more
        self.special_ids = special_ids  # decode to nothing (skip_special_tokens): left out of text_ids
        self.num_prompt_tokens = num_prompt_tokens
        self.token_ids: list[int] = []
        self.text_ids: list[int] = []  # the ids that make the text (stop and special ids excluded)
        self.logits: list[torch.Tensor] = []
        self.stop_ids = {int(t) for t in config.stop_token_ids}
        self.stop_strings = list(config.stop_strings) if tokenizer is not None else []
        self.text = ""  # decoded so far (may hold back a possible stop-string start from `released`)
        self.released = 0  # characters of `text` already streamed
        self._prefix, self._read = 0, 0  # incremental decoding window (prefix / read offsets)
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        """Add a generated token; returns newly released text and sets `finish_reason` when done."""
        self.token_ids.append(token)
        if token in self.stop_ids:
            self.finish_reason = FINISH_STOP_TOKEN
        elif token not in self.special_ids:
            self.text_ids.append(token)
            if self.tokenizer is not None:
                self._decode_more()
        if self.finish_reason is None and len(self.token_ids) >= self.config.max_new_tokens:
            self.finish_reason = FINISH_LENGTH
        return self._release()

    def finish(self, reason: str) -> str:
        self.finish_reason = self.finish_reason or reason
        return self._release()

    def _decode_more(self) -> None:
        """Incremental detokenization: decode a short window [prefix:] and take what it adds over [prefix:read].

        A run of byte-fallback tokens decodes as a whole (one invalid byte turns the whole run into U+FFFD),
        so text is only taken after a run has ended: windows then never cut a run and decode as the whole
        sequence does."""
        ids = self.text_ids
        if ids[-1] in self.byte_ids:
            return
        before = self.tokenizer.decode(ids[self._prefix:self._read], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):  # nothing yet, or an incomplete character
            return
        old_len = len(self.text)
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(ids)
        self._find_stop_string(old_len)

    def _find_stop_string(self, old_len: int) -> None:
        """Cut `text` before the first stop string that ends in its part after `old_len`."""
        longest = max((len(s) for s in self.stop_strings), default=0)
        start = max(0, old_len - longest + 1)
        hits = [k for k in (self.text.find(s, start) for s in self.stop_strings) if k >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.finish_reason = FINISH_STOP_STRING

    def _release(self) -> str:
        if self.tokenizer is None:
            return ""
        if self.finish_reason is not None:
            if self.finish_reason != FINISH_STOP_STRING:  # the whole text, as one decode would give it
                full = self.tokenizer.decode(self.text_ids, skip_special_tokens=True)
                if full.startswith(self.text[:self.released]):
                    old_len, self.text = len(self.text), full
                    self._find_stop_string(old_len)  # in text held back until now (an unfinished byte run)
            end = len(self.text)
        else:  # hold back a tail that could still grow into a stop string
            end = len(self.text)
            for s in self.stop_strings:
                for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:n]):
                        end = min(end, len(self.text) - n)
                        break
        piece = self.text[self.released:end]
        self.released = max(self.released, end)
        return piece

    def output(self) -> GenerationOutput:
        logits = torch.stack(self.logits) if self.logits else None
        return GenerationOutput(list(self.token_ids), self.text if self.tokenizer is not None else None,
                                self.finish_reason or FINISH_LENGTH, self.num_prompt_tokens, logits)


# ---- the engine ----------------------------------------------------------------------------------
class GenerationStream:
    """Iterator of StreamEvents; after it is exhausted, `outputs` (per request) and `stats` are set."""

    def __init__(self, events: Iterator[StreamEvent], holder: dict):
        self._events, self._holder = events, holder

    def __iter__(self):
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    @property
    def outputs(self) -> list[GenerationOutput]:
        if "outputs" not in self._holder:
            raise RuntimeError("the stream has not been consumed to its end yet")
        return self._holder["outputs"]

    @property
    def stats(self) -> GenerationStats | None:
        return self._holder.get("stats")


class Generator:
    """Batched, cached generation on an `XGenMM`. `tokenizer` (prepared, see data.tokenizer) is needed for
    text, stop strings, streaming text and chat prompts; token-level generation works without it."""

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.info = None
        self._byte_ids: frozenset[int] = frozenset()
        self._special_ids: frozenset[int] = frozenset()
        if tokenizer is not None:
            self._byte_ids = frozenset(i for t, i in tokenizer.get_vocab().items() if _BYTE_TOKEN.fullmatch(t))
            added = getattr(tokenizer, "added_tokens_decoder", None) or {}
            self._special_ids = frozenset(set(tokenizer.all_special_ids)
                                          | {i for i, t in added.items() if getattr(t, "special", False)})
            from ..data.tokenizer import prepare_tokenizer
            self.info = prepare_tokenizer(tokenizer)
            if self.info.media_token_id != model.media_token_id:
                raise ValueError(f"tokenizer puts <image> at id {self.info.media_token_id} but the model expects "
                                 f"{model.media_token_id} (initial_tokenizer_len): not this model's tokenizer")

    # ---- prompts ---------------------------------------------------------------------------------
    def default_stop_token_ids(self) -> tuple[int, ...]:
        if self.info is not None:
            return self.info.stop_token_ids
        return (self.model.config.text.eos_token_id,)

    def preprocess(self, images: Sequence) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """PIL images, numpy arrays or file paths -> per image tiles (1 + n, 3, s, s) and (w, h) sizes."""
        if not images:
            return [], []
        from ..data.image_io import load_image
        from ..data.preprocess import preprocess_images
        loaded = [load_image(im) if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__") else im
                  for im in images]
        cfg = self.model.config
        pre = preprocess_images(loaded, grids=cfg.anyres_grids, tile=cfg.tile_size, patch=cfg.vision.patch_size)
        return list(pre.pixel_values.split(pre.tiles_per_image)), [tuple(s) for s in pre.image_sizes]

    def chat_request(self, images: Sequence = (), question: str = "",
                     history: Sequence[tuple[str, str]] = ()) -> tuple[Request, str]:
        """A chat prompt (SPEC §4 template, default system turn) -> (Request, the question as sent).

        `images` are all images of the conversation in order (PIL, arrays or paths). Images that no
        `<image>` tag of `history` or `question` refers to get `"<image>\\n"` tags prepended to `question`.
        """
        if self.tokenizer is None:
            raise ValueError("chat prompts need a tokenizer: Generator(model, tokenizer)")
        n_tags = question.count(MEDIA_TOKEN) + sum(q.count(MEDIA_TOKEN) for q, _ in history)
        if n_tags > len(images):
            raise ValueError(f"the conversation has {n_tags} {MEDIA_TOKEN} tags but {len(images)} images")
        question = f"{MEDIA_TOKEN}\n" * (len(images) - n_tags) + question
        turns: list[dict] = []
        for q, a in history:
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        turns.append({"from": "human", "value": question})
        ids = list(self.tokenizer(build_prompt(turns)).input_ids)
        tiles, sizes = self.preprocess(images)
        return Request(ids, tiles, sizes), question

    # ---- compute ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, requests: Sequence[Request], max_new_tokens: int = 1, all_logits: bool = False):
        """Packed prefill of every request into a fresh KV cache sized for `max_new_tokens` more tokens.

        Returns (cache, logits (B, V) at each prompt's last position, prompt lengths, and with
        `all_logits` the (total, V) logits of the packed stream, else None).
        """
        model = self.model
        lm = model.lang_model
        tpt = model.config.perceiver.num_latents
        samples = []
        for i, r in enumerate(requests):
            if len(r.input_ids) == 0:
                raise ValueError(f"request {i}: empty prompt (no token ids)")
            if len(r.images) != len(r.image_sizes):
                raise ValueError(f"request {i}: {len(r.images)} images but {len(r.image_sizes)} image sizes")
            tiles = [t[0] if t.dim() == 5 else t for t in r.images]
            samples.append(StreamSample(list(r.input_ids), [-100] * len(r.input_ids), tiles,
                                        [tuple(int(v) for v in s) for s in r.image_sizes], sample_id=str(i)))
        batch = pack_samples(samples, model.media_token_id, tpt).to(model.device)
        lens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
        tokens = None
        if batch.media_index.numel():
            dtype = model.vision_encoder.embeddings.patch_embedding.weight.dtype
            tokens = torch.cat(model.encode_images(batch.pixel_values.to(dtype), batch.tiles_per_image,
                                                   batch.image_sizes))
        # one op: decoupled-vocabulary lookup + image tokens scattered into the packed prompts
        embeds = lm.get_input_embeddings()(batch.input_ids, media_index=batch.media_index, tokens=tokens)
        cache = KVCache.for_model(model.config.text, len(requests), max(lens) + max_new_tokens, embeds.dtype,
                                  embeds.device)
        hidden = lm.model.forward_cached(embeds, cache, cu_seqlens=batch.cu_seqlens)  # (total, E)
        last = batch.cu_seqlens[1:].long() - 1
        logits = lm.lm_head(hidden[last])
        return cache, logits, lens, (lm.lm_head(hidden) if all_logits else None)

    @torch.inference_mode()
    def _decode(self, cache: KVCache, next_ids: torch.Tensor, keep: list[int] | None = None) -> torch.Tensor:
        """One decode step: next_ids (B,) -> logits (B', V); `keep` first drops the other cache rows."""
        if keep is not None:
            cache.select(keep)
            next_ids = next_ids[torch.tensor(keep, device=next_ids.device)]
        lm = self.model.lang_model
        hidden = lm.model.forward_cached(lm.get_input_embeddings()(next_ids[:, None]), cache)  # (B, 1, E)
        return lm.lm_head(hidden[:, -1])

    @torch.inference_mode()
    def _sample(self, logits, config, generator):
        return sample_next(logits, config, generator)

    def _events(self, requests, config: GenerationConfig, holder: dict, stopping_criteria, pad_id: int,
                generator: torch.Generator | None):
        device = self.model.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        stats = GenerationStats(batch_size=len(requests))
        holder["stats"] = stats
        if not requests:
            holder["outputs"] = []
            return
        cache, logits, lens, _ = self.prefill(requests, config.max_new_tokens)
        stats.prompt_tokens = sum(lens)
        seqs = [_Sequence(self.tokenizer, config, n, self._byte_ids, self._special_ids) for n in lens]
        rows = list(range(len(requests)))  # cache row r holds sequence rows[r]
        if generator is None and config.do_sample and config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(config.seed))
        t_first = None
        while True:
            nxt = self._sample(logits, config, generator)
            tokens = nxt.tolist()  # the one host sync per step
            if t_first is None:
                t_first = time.perf_counter()
                stats.time_to_first_token = t_first - t0
            else:
                stats.decode_steps += 1
            stats.generated_tokens += len(tokens)
            pieces = []
            for r, tok in enumerate(tokens):
                seq = seqs[rows[r]]
                if config.output_logits:
                    seq.logits.append(logits[r].float().clone())
                pieces.append(seq.push(tok))
            if stopping_criteria:
                for r in self._criteria_hits(seqs, rows, logits, stopping_criteria, pad_id):
                    if seqs[rows[r]].finish_reason is None:
                        pieces[r] += seqs[rows[r]].finish(FINISH_CRITERIA)
            for r, tok in enumerate(tokens):
                yield StreamEvent(rows[r], pieces[r], tok, seqs[rows[r]].finish_reason)
            keep = [r for r in range(len(rows)) if seqs[rows[r]].finish_reason is None]
            if not keep:
                break
            compact = len(keep) < len(rows)
            rows = [rows[r] for r in keep] if compact else rows
            logits = self._decode(cache, nxt, keep if compact else None)
        sync()
        stats.decode_seconds = time.perf_counter() - t_first
        holder["outputs"] = [s.output() for s in seqs]

    @staticmethod
    def _criteria_hits(seqs, rows, logits, criteria, pad_id) -> list[int]:
        """HF-style StoppingCriteria: called with all sequences' new ids so far (B, t), pad after a finished
        sequence's end, and (B, V) scores; a scalar True (as HF broadcasts it) stops every sequence."""
        t = max(len(s.token_ids) for s in seqs)
        ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s.token_ids)] = torch.tensor(s.token_ids, dtype=torch.long)
        scores = logits.new_zeros(len(seqs), logits.shape[-1])
        scores[torch.tensor(rows, device=logits.device)] = logits
        ids = ids.to(logits.device)
        done = torch.zeros(len(seqs), dtype=torch.bool, device=logits.device)
        for c in criteria:
            res = c(ids, scores)
            done = done | (res.to(done.device).bool() if isinstance(res, torch.Tensor) else bool(res))
        hit = set(done.nonzero().flatten().tolist())
        return [r for r, i in enumerate(rows) if i in hit]

    # ---- public entry points -----------------------------------------------------------------------
    def stream(self, requests: Sequence[Request], config: GenerationConfig | None = None,
               stopping_criteria: Sequence[Callable] | None = None, pad_token_id: int | None = None,
               generator: torch.Generator | None = None) -> GenerationStream:
        """Generate for all requests in one batch; iterate the result for StreamEvents as they come.

        `config` defaults to greedy with the tokenizer's stop ids; `generator` (a torch.Generator on the
        model's device) replaces `config.seed` for sampling; `stopping_criteria` are HF-style callables
        (see `_criteria_hits`), whose ids tensor pads finished sequences with `pad_token_id`.
        """
        config = config or GenerationConfig(stop_token_ids=self.default_stop_token_ids())
        holder: dict[str, Any] = {}
        pad = self.model.pad_token_id if pad_token_id is None else pad_token_id
        events = self._events(list(requests), config, holder, stopping_criteria, pad, generator)
        return GenerationStream(events, holder)

    def generate(self, requests: Sequence[Request], config: GenerationConfig | None = None,
                 on_text: Callable[[int, str], None] | None = None,
                 stopping_criteria: Sequence[Callable] | None = None,
                 pad_token_id: int | None = None, generator: torch.Generator | None = None
                 ) -> list[GenerationOutput]:
        """Generate for all requests in one batch; `on_text(index, piece)` streams text as it comes.
        Timing of the call is left in `self.last_stats` (GenerationStats)."""
        s = self.stream(requests, config, stopping_criteria, pad_token_id, generator)
        for ev in s:
            if on_text is not None and ev.text:
                on_text(ev.index, ev.text)
        self.last_stats = s.stats
        return s.outputs


# ---- the original's call forms -------------------------------------------------------------------
def requests_from_original(model, vision_x, lang_x: torch.Tensor, image_size=None,
                           attention_mask: torch.Tensor | None = None) -> list[Request]:
    """The original generate's inputs -> Requests: `lang_x` (B, T), left-padded (any padding: the tokens
    with attention_mask 0 are dropped); vision_x / image_size per sample as in `XGenMM.forward`."""
    if lang_x.dim() != 2:
        raise ValueError(f"lang_x must be (B, T) token ids, got shape {tuple(lang_x.shape)}")
    B = lang_x.shape[0]
    mask = torch.ones_like(lang_x) if attention_mask is None else attention_mask
    if mask.shape != lang_x.shape:
        raise ValueError(f"attention_mask {tuple(mask.shape)} does not match lang_x {tuple(lang_x.shape)}")
    from ..model.xgenmm import check_vision_inputs, sample_images  # (model.xgenmm imports this module lazily)
    if vision_x is not None:
        check_vision_inputs(vision_x, image_size, B)
    out = []
    for i in range(B):
        ids = lang_x[i][mask[i].bool()].tolist()
        imgs, szs = sample_images(vision_x, image_size, i)
        n_media = ids.count(model.media_token_id)
        if n_media > len(imgs):
            raise ValueError(f"sample {i}: {n_media} <image> tokens but only {len(imgs)} images")
        tiles = []
        for img in imgs[:n_media]:
            t = img[0] if img.dim() == 5 else img
            if t.dim() != 4:
                raise ValueError(f"sample {i}: image tiles must be (1+n, 3, s, s), got {tuple(img.shape)}")
            tiles.append(t)
        out.append(Request(ids, tiles, [(int(s[0]), int(s[1])) for s in list(szs)[:n_media]]))
    return out


_HF_IGNORED = {"use_cache", "output_attentions", "output_hidden_states", "synced_gpus"}


def generate_original(model, vision_x, lang_x: torch.Tensor, image_size=None,
                      attention_mask: torch.Tensor | None = None, **kwargs) -> torch.LongTensor:
    """`XGenMMPerceiver.generate(vision_x, lang_x, attention_mask, image_size=..., **hf_generate_kwargs)`.

    The original called HF `lang_model.generate(inputs_embeds=..., attention_mask=...)` on left-padded
    multimodal embeddings; HF's generate, given only `inputs_embeds`, returns **only the new tokens**:
    a LongTensor (B, n) where n is the longest answer, each row padded with `pad_token_id` after its stop
    id (the stop id itself is kept). This returns exactly that, on lang_x's device.

    Keyword arguments (HF names and defaults): max_new_tokens (20) or max_length (prompt embeddings
    included, as HF counts it), do_sample (False), temperature (1.0), top_k (50), top_p (1.0),
    num_beams (1 only), eos_token_id (int or list; default the config's eos), pad_token_id (default the
    model's pad id), stopping_criteria (HF StoppingCriteria or callables `(ids (B, t), scores) -> bool
    or (B,) bools`; a scalar True stops every sequence, as in HF), stop_strings with tokenizer; plus
    `generator` (torch.Generator) or `seed` for sampling. Other HF options raise ValueError.
    """
    kw = dict(kwargs)
    for k in _HF_IGNORED:
        kw.pop(k, None)
    num_beams = kw.pop("num_beams", 1) or 1
    if num_beams != 1:
        raise ValueError(f"num_beams={num_beams}: only greedy/sampling (num_beams=1) is implemented")
    tokenizer = kw.pop("tokenizer", None)
    eos = kw.pop("eos_token_id", None)
    eos = [model.config.text.eos_token_id] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = kw.pop("pad_token_id", None)
    pad = model.pad_token_id if pad is None else int(pad)
    criteria = list(kw.pop("stopping_criteria", None) or [])
    stop_strings = kw.pop("stop_strings", None) or ()
    stop_strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings needs tokenizer=... (as in HF generate)")
    generator = kw.pop("generator", None)
    seed = kw.pop("seed", None)
    do_sample = bool(kw.pop("do_sample", False))
    temperature = kw.pop("temperature", None)
    top_k = kw.pop("top_k", None)
    top_p = kw.pop("top_p", None)
    max_new = kw.pop("max_new_tokens", None)
    max_length = kw.pop("max_length", None)
    if kw:
        raise ValueError(f"generate: unsupported keyword arguments {sorted(kw)}")
    requests = requests_from_original(model, vision_x, lang_x, image_size, attention_mask)
    if max_new is None and max_length is not None:  # HF: max_length counts the (padded) prompt embeddings
        tpt = model.config.perceiver.num_latents
        padded = max(len(r.input_ids) - len(r.images) + tpt * sum(t.shape[0] for t in r.images)
                     for r in requests) + (lang_x.shape[1] - min(len(r.input_ids) for r in requests))
        max_new = max(1, int(max_length) - padded)
    config = GenerationConfig(
        max_new_tokens=int(max_new or HF_DEFAULT_MAX_NEW_TOKENS), do_sample=do_sample,
        temperature=1.0 if temperature is None else float(temperature),
        top_k=HF_DEFAULT_TOP_K if top_k is None else int(top_k), top_p=1.0 if top_p is None else float(top_p),
        seed=seed, stop_token_ids=tuple(eos), stop_strings=stop_strings)
    outs = Generator(model, tokenizer).generate(requests, config, stopping_criteria=criteria, pad_token_id=pad,
                                                generator=generator)
    n = max(len(o.token_ids) for o in outs)
    result = torch.full((len(outs), n), pad, dtype=torch.long)
    for i, o in enumerate(outs):
        result[i, :len(o.token_ids)] = torch.tensor(o.token_ids, dtype=torch.long)
    return result.to(lang_x.device)


def chat(model, images: Sequence, question: str, history: Sequence[tuple[str, str]] | None = None,
         tokenizer=None, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
         top_k: int = 0, seed: int | None = None, stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
         on_text: Callable[[str], None] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """One chat turn: (answer, history with this turn appended). Greedy unless temperature > 0.

    `images`: every image of the conversation so far (PIL, arrays or paths), in order; images no
    `<image>` tag refers to yet are tagged at the start of this question. `history`: earlier
    (question, answer) pairs as returned by a previous call. `on_text(piece)` streams the answer.
    """
    if tokenizer is None:
        raise ValueError("chat needs the model's tokenizer: model.chat(images, question, tokenizer=tok)")
    gen = Generator(model, tokenizer)
    history = list(history or [])
    request, sent = gen.chat_request(list(images or []), question, history)
    config = GenerationConfig.from_sampling_args(temperature, top_p, top_k, seed, max_new_tokens=max_new_tokens,
                                                 stop_token_ids=gen.default_stop_token_ids(),
                                                 stop_strings=tuple(stop_strings))
    out = gen.generate([request], config, on_text=(lambda _i, piece: on_text(piece)) if on_text else None)[0]
    answer = out.text.strip()
    return answer, history + [(sent, answer)]
