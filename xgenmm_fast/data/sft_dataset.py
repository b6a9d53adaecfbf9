"""SFT dataset: LLaVA records -> `StreamSample`s for the packer, bad records -> `BadSample`s, never raises.

    ds = SFTDataset(load_records("mix.yaml", path_map="paths.yaml"), tokenizer, info, config)
    lengths = ds.estimate_lengths()          # stream tokens per record, no pixels decoded; bad -> 0
    plan = plan_epoch(ds.good_indices(), lengths, budget, seed, epoch)
    sample = ds[i]                           # StreamSample, or BadSample(index, sample_id, source, reason)

`__getitem__(i)` tokenizes the record (chat.tokenize_conversation: repair, validation, Phi-3 template,
labels, truncation to ``max_text_tokens``), decodes its images (image_io.load_image; in DataLoader
workers, since that is where ``__getitem__`` runs) and cuts them into anyres tiles
(preprocess.preprocess_images). Each image gives a ``(1 + n, 3, s, s)`` float32 tensor, base tile first.
Text-only records give no tiles at all (the original encoded a blank tile for them, SPEC §3.7).

Bad data never raises and never silently turns into another sample (the original returned
``self[i + 1]`` instead, so a bad record duplicated its neighbour): the item is a `BadSample` whose
``reason`` says what is wrong (the location is in its other fields; ``str(bad)`` has both). Bad
records found in this process are kept in ``bad_records`` (index -> reason); those found inside
DataLoader workers only come back as `BadSample` items, so the consumer should count those.

`estimate_lengths()` gives each record's stream length (text tokens after truncation, plus
(1 + n)·num_latents per image, minus the ``<image>`` ids; packed.stream_length) from the image file
HEADERS only (``PIL.Image.open(path).size``, anyres.get_anyres_grid_shape for n). Records that fail there
(tokenization or validation error, missing or unreadable image) are put in ``bad_records`` and get
length 0, so the planner (given ``good_indices()``) never sees them; images whose pixels turn out
undecodable (a truncated JPEG has a good header) are caught later, in ``__getitem__``. Tokenization
results are cached per source record (a record sampled twice by a mixture is tokenized once) as int32
arrays, so ``__getitem__`` does not redo them; the fast tokenizer's Rust batch encoder is used for whole
chunks of prompts, checked against the tokenizer's own call.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .anyres import get_anyres_grid_shape
from .chat import (
    DEFAULT_MAX_LENGTH,
    RecordError,
    _where,
    build_segments,
    repair_image_tokens,
    tokenize_conversation,
)
from .packed import StreamSample
from .sources import SourceRecord, as_source_records
from .tokenizer import TokenizerInfo

IMAGE_MEAN = (0.5, 0.5, 0.5)  # SigLIP: (x/255 - 0.5) / 0.5 (SPEC §1.1)
IMAGE_STD = (0.5, 0.5, 0.5)
# Kinds of bad record, counted in SFTDataset.bad_counts
BAD_RECORD = "record"  # chat validation / tokenization (RecordError)
BAD_IMAGE_MISSING = "image_missing"  # image file not found
BAD_IMAGE_HEADER = "image_header"  # header unreadable: empty file, unknown format, ...
BAD_IMAGE_DECODE = "image_decode"  # header fine, pixels not (truncated file, ...)
BAD_IMAGE_SIZE = "image_size"  # no anyres grid / preprocessing for this size
DEFAULT_IO_WORKERS = 8  # threads reading image headers in estimate_lengths (I/O bound)
TOKENIZE_CHUNK = 1024  # prompts per batch-encode call in estimate_lengths


@dataclass(frozen=True)
class BadSample:
    """A record that cannot be a training sample. ``index``: dataset index; ``source``/``source_index``:
    the file it came from and its position there; ``reason``: what is wrong (without the location)."""

    index: int
    sample_id: str
    source: str
    reason: str
    source_index: int | None = None

    @property
    def location(self) -> str:
        return self.source if self.source_index is None else f"{self.source}:{self.source_index}"

    def __str__(self) -> str:
        return f"{self.location} id={self.sample_id!r}: {self.reason}"


@dataclass(frozen=True)
class ImageGeometry:
    """What the data side needs from the model config: tile side, anyres grids, patch, latents per tile."""

    tile_size: int
    grids: tuple[tuple[int, int], ...]  # (width, height) in pixels
    patch_size: int
    num_latents: int  # LM tokens per tile (perceiver latents)

    @classmethod
    def from_config(cls, config) -> ImageGeometry:
        """From an XGenMMConfig (or anything with tile_size, anyres_grids, vision.patch_size and
        perceiver.num_latents), an ImageGeometry, or a dict with this class's field names."""
        if isinstance(config, ImageGeometry):
            return config
        if isinstance(config, dict):
            return cls(int(config["tile_size"]), tuple(tuple(int(v) for v in g) for g in config["grids"]),
                       int(config["patch_size"]), int(config["num_latents"]))
        mode = getattr(config, "image_aspect_ratio", "anyres")
        if mode != "anyres":
            raise ValueError(f"image_aspect_ratio {mode!r} is not supported by the SFT pipeline (only 'anyres')")
        return cls(
            tile_size=int(config.tile_size),
            grids=tuple(tuple(int(v) for v in g) for g in config.anyres_grids),
            patch_size=int(config.vision.patch_size),
            num_latents=int(config.perceiver.num_latents),
        )

    def tiles_per_image(self, image_size: Sequence[int]) -> int:
        """1 (base tile) + the tiles of the best grid for an image of size (W, H)."""
        npw, nph = get_anyres_grid_shape(image_size, self.grids, self.tile_size)
        return 1 + npw * nph


@dataclass
class _TextEntry:
    """Cached tokenization of one source record."""

    input_ids: np.ndarray  # (num_text_tokens,) int32, <image> ids still in place
    labels: np.ndarray  # (num_text_tokens,) int32
    truncated: bool


def read_image_size(path: str) -> tuple[int, int]:
    """(W, H) from the file header, no pixel decoding. Raises the opener's error (FileNotFoundError,
    PIL.UnidentifiedImageError, ...)."""
    from PIL import Image

    with Image.open(path) as im:
        return tuple(int(v) for v in im.size)


def header_error_reason(path: str, err: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for an image whose header could not be read."""
    from PIL import UnidentifiedImageError

    if isinstance(err, FileNotFoundError):
        return BAD_IMAGE_MISSING, f"image file not found: {path!r}"
    if isinstance(err, IsADirectoryError):
        return BAD_IMAGE_MISSING, f"image path is a directory: {path!r}"
    if isinstance(err, UnidentifiedImageError):
        size = os.path.getsize(path) if os.path.exists(path) else None
        what = "an empty (0-byte) file" if size == 0 else "not a recognisable image (unknown format or corrupt header)"
        return BAD_IMAGE_HEADER, f"image file {path!r} is {what}"
    return BAD_IMAGE_HEADER, f"cannot read image header of {path!r}: {type(err).__name__}: {err}"


def image_error_reason(path: str, err: BaseException) -> tuple[str, str]:
    """(kind, reason) for an image that failed to load: the header's problem when the header is bad too
    (same words as estimate_lengths uses), else a decoding failure."""
    try:
        read_image_size(path)
    except Exception as header_err:  # noqa: BLE001
        return header_error_reason(path, header_err)
    why = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"  # ImageLoadError has .reason
    return BAD_IMAGE_DECODE, f"cannot decode image {path!r}: {why}"


def _has_lone_surrogate(record) -> bool:
    try:
        json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _strip_where(message: str, record) -> str:
    """RecordError messages start with 'record id=...: '; BadSample keeps the location apart."""
    prefix = _where(record) + ": "
    return message.removeprefix(prefix)


class _PreEncoded:
    """Stands in for a fast tokenizer inside chat.tokenize_conversation: answers the offsets call for
    prompts encoded ahead in one batch; everything else goes to the real tokenizer."""

    def __init__(self, tokenizer, encodings: dict[str, dict]):
        self._tokenizer = tokenizer
        self._encodings = encodings

    def __call__(self, text, **kwargs):
        if kwargs == {"return_offsets_mapping": True} and isinstance(text, str) and text in self._encodings:
            return self._encodings[text]
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _prompt_of(record, tokenizer) -> str | None:
    """The prompt text tokenize_conversation will encode, or None when the record will fail anyway.

    Only used to batch-encode ahead; a wrong guess costs a cache miss, never a wrong sample."""
    try:
        segments = build_segments(repair_image_tokens(record)["conversations"])
    except (RecordError, KeyError, TypeError):
        return None
    bos = getattr(tokenizer, "bos_token", None)
    text = "".join(t for t, _ in segments)
    text = text.replace(bos, "") if bos else text
    try:
        text.encode("utf-8")  # lone surrogates (legal in JSON escapes) would fail the whole batch
    except UnicodeEncodeError:
        return None
    return text


def batch_encode_with_offsets(tokenizer, prompts: list[str]) -> dict[str, dict] | None:
    """{prompt: {"input_ids", "offset_mapping"}} via the Rust batch encoder, or None when that cannot
    stand in for ``tokenizer(prompt, return_offsets_mapping=True)`` (slow tokenizer, truncation or
    padding set on the backend, or a spot check that disagrees)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not prompts or not getattr(tokenizer, "is_fast", False) or backend is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    try:
        encs = backend.encode_batch(prompts, add_special_tokens=True)
    except Exception:  # noqa: BLE001 -- whatever the batch chokes on, the per-record path reports it
        return None
    out = {p: {"input_ids": e.ids, "offset_mapping": e.offsets} for p, e in zip(prompts, encs)}
    ref = tokenizer(prompts[0], return_offsets_mapping=True)
    got = out[prompts[0]]
    if list(ref["input_ids"]) != list(got["input_ids"]) or \
            [tuple(o) for o in ref["offset_mapping"]] != [tuple(o) for o in got["offset_mapping"]]:
        return None
    return out


class SFTDataset(Dataset):
    """Records -> StreamSample | BadSample (module docstring).

    records: SourceRecords (sources.load_records) or plain dicts (their image paths used as written);
    tokenizer/info: a prepared tokenizer (tokenizer.load_tokenizer); config: XGenMMConfig-like (see
    ImageGeometry.from_config); max_text_tokens: text kept before image tokens go in (SPEC §4);
    preprocess_backend: "auto" | "cpp" | "pillow" for preprocess_images; num_threads: its threads per
    call (1 in DataLoader workers); cache_tokens: keep the tokenization of every record estimate_lengths
    saw (int32 arrays; turn off for datasets too big to hold their ids in memory).
    """

    def __init__(self, records, tokenizer, info: TokenizerInfo, config, max_text_tokens: int = DEFAULT_MAX_LENGTH,
                 preprocess_backend: str = "auto", num_threads: int = 1, cache_tokens: bool = True,
                 resize_order: str = "installed",
                 io_workers: int = DEFAULT_IO_WORKERS):
        if max_text_tokens <= 0:
            raise ValueError(f"max_text_tokens must be positive, got {max_text_tokens}")
        self.records: list[SourceRecord] = as_source_records(records)
        self.tokenizer = tokenizer
        self.info = info
        self.geometry = ImageGeometry.from_config(config)
        self.max_text_tokens = int(max_text_tokens)
        self.preprocess_backend = preprocess_backend
        self.resize_order = resize_order  # see preprocess_images: "installed" | "pillow13" | "horizontal_first"
        self.num_threads = int(num_threads)
        self.cache_tokens = bool(cache_tokens)
        self.io_workers = int(io_workers)
        self.bad_records: dict[int, str] = {}  # dataset index -> reason (found in this process)
        self.bad_counts: Counter = Counter()  # BAD_* kind -> number of bad records
        self.truncated_records: set[int] = set()  # text longer than max_text_tokens, cut
        self.image_sizes: dict[int, list[tuple[int, int]]] = {}  # index -> header (W, H) per image
        # path -> header (W, H), or (BAD_* kind, reason) when unreadable; filled by estimate_lengths
        self.image_headers: dict[str, tuple[int, int] | tuple[str, str]] = {}
        self._text: dict[tuple[str, int], _TextEntry] = {}  # (source, index) -> tokenization (cache_tokens)
        self._text_stats: dict[tuple[str, int], tuple[int, int]] = {}  # -> (text tokens, <image> ids)
        self._lengths: list[int] | None = None

    # ---- basics ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    @property
    def tokens_per_tile(self) -> int:
        return self.geometry.num_latents

    def bad_sample(self, index: int, reason: str) -> BadSample:
        rec = self.records[index]
        return BadSample(index, rec.sample_id, rec.source, reason, rec.index)

    def _mark_bad(self, index: int, reason: str, kind: str) -> BadSample:
        if index not in self.bad_records:
            self.bad_records[index] = reason
            self.bad_counts[kind] += 1
        return self.bad_sample(index, reason)

    def good_indices(self) -> list[int]:
        """Indices not known to be bad (after estimate_lengths: every record that passed it)."""
        return [i for i in range(len(self)) if i not in self.bad_records]

    @property
    def lengths(self) -> list[int]:
        """estimate_lengths(), computed once."""
        if self._lengths is None:
            self.estimate_lengths()
        return self._lengths

    # ---- text ----------------------------------------------------------------------------------------
    def _tokenize_record(self, rec: SourceRecord, tokenizer=None) -> _TextEntry:
        """Raises RecordError (message without the location prefix)."""
        try:
            t = tokenize_conversation(rec.data, tokenizer or self.tokenizer, self.info, self.max_text_tokens)
        except RecordError as e:
            raise RecordError(_strip_where(str(e), rec.data)) from e
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # the tokenizer refusing odd text
            if _has_lone_surrogate(rec.data):
                raise RecordError("text is not valid Unicode (a lone surrogate such as \\ud800 in a JSON "
                                  "escape): cannot tokenize") from e
            raise RecordError(f"cannot tokenize: {type(e).__name__}: {e}") from e
        return _TextEntry(np.asarray(t.input_ids, dtype=np.int32), np.asarray(t.labels, dtype=np.int32), t.truncated)

    def text(self, index: int) -> _TextEntry:
        """The record's cached tokenization (tokenized now on a miss). Raises RecordError."""
        rec = self.records[index]
        key = (rec.source, rec.index)
        entry = self._text.get(key)
        if entry is None:
            entry = self._tokenize_record(rec)
            if self.cache_tokens:
                self._text[key] = entry
        if entry.truncated:
            self.truncated_records.add(index)
        return entry

    def _tokenize_chunk(self, indices: Sequence[int]) -> None:
        """Tokenize (and cache) many records with one batch encode; failures go to bad_records."""
        todo: dict[tuple[str, int], SourceRecord] = {}
        for i in indices:
            rec = self.records[i]
            key = (rec.source, rec.index)
            if key not in self._text_stats and key not in todo:
                todo[key] = rec
        prompts = {}
        for key, rec in todo.items():
            p = _prompt_of(rec.data, self.tokenizer)
            if p is not None:
                prompts[p] = None
        encodings = batch_encode_with_offsets(self.tokenizer, list(prompts))
        tok = _PreEncoded(self.tokenizer, encodings) if encodings else self.tokenizer
        failed: dict[tuple[str, int], str] = {}
        truncated = set()
        media = self.info.media_token_id
        for key, rec in todo.items():
            try:
                entry = self._tokenize_record(rec, tok)
            except RecordError as e:
                failed[key] = str(e)
                continue
            self._text_stats[key] = (len(entry.input_ids), int(np.count_nonzero(entry.input_ids == media)))
            if entry.truncated:
                truncated.add(key)
            if self.cache_tokens:
                self._text[key] = entry
        for i in indices:
            rec = self.records[i]
            key = (rec.source, rec.index)
            if key in failed:
                self._mark_bad(i, failed[key], BAD_RECORD)
            elif key in truncated or (key in self._text and self._text[key].truncated):
                self.truncated_records.add(i)

    # ---- lengths --------------------------------------------------------------------------------------
    def estimate_lengths(self, io_workers: int | None = None) -> list[int]:
        """Stream length per record without decoding pixels (module docstring); bad records get 0 and an
        entry in ``bad_records``. Keeps the tokenization cached for __getitem__ when cache_tokens."""
        n = len(self)
        for s in range(0, n, TOKENIZE_CHUNK):
            self._tokenize_chunk(range(s, min(n, s + TOKENIZE_CHUNK)))
        paths = sorted({p for i in range(n) if i not in self.bad_records for p in self.records[i].image_paths}
                       - self.image_headers.keys())
        headers = self.image_headers

        def read(path):
            try:
                return path, read_image_size(path)
            except Exception as e:  # noqa: BLE001 -- any failure to parse a header makes the image bad
                return path, header_error_reason(path, e)

        workers = max(1, io_workers if io_workers is not None else self.io_workers)
        if workers == 1 or len(paths) < 2:
            headers.update(read(p) for p in paths)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                headers.update(pool.map(read, paths))

        lengths = [0] * n
        for i in range(n):
            if i in self.bad_records:
                continue
            rec = self.records[i]
            sizes = []
            for k, p in enumerate(rec.image_paths):
                h = headers[p]
                if isinstance(h[0], str):
                    self._mark_bad(i, self._image_reason(k, len(rec.image_paths), h[1]), h[0])
                    break
                sizes.append(h)
            if i in self.bad_records:
                continue
            try:
                tiles = [self.geometry.tiles_per_image(s) for s in sizes]
            except ValueError as e:
                self._mark_bad(i, f"image size {sizes}: {e}", BAD_IMAGE_SIZE)
                continue
            n_text, n_media = self._text_stats[(rec.source, rec.index)]
            self.image_sizes[i] = sizes
            # == packed.stream_length(input_ids, tiles, media, tokens_per_tile), from the counts alone
            used = tiles[:n_media]
            lengths[i] = n_text - len(used) + self.tokens_per_tile * sum(used)
        self._lengths = lengths
        return lengths

    @staticmethod
    def _image_reason(k: int, n: int, reason: str) -> str:
        return reason if n == 1 else f"image {k + 1} of {n}: {reason}"

    # ---- items ----------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> StreamSample | BadSample:
        if index < 0:
            index += len(self)
        rec = self.records[index]
        if index in self.bad_records:
            return self.bad_sample(index, self.bad_records[index])
        try:
            entry = self.text(index)
        except RecordError as e:
            return self._mark_bad(index, str(e), BAD_RECORD)
        tiles: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        if rec.image_paths:
            from .image_io import load_image
            from .preprocess import preprocess_images

            images = []
            for k, p in enumerate(rec.image_paths):
                try:
                    images.append(load_image(p))
                except Exception as e:  # noqa: BLE001 -- ImageLoadError, or anything a broken file makes PIL raise
                    kind, reason = image_error_reason(p, e)
                    return self._mark_bad(index, self._image_reason(k, len(rec.image_paths), reason), kind)
            g = self.geometry
            try:
                batch = preprocess_images(images, [list(x) for x in g.grids], g.tile_size, IMAGE_MEAN, IMAGE_STD,
                                          self.num_threads, backend=self.preprocess_backend, patch=g.patch_size,
                                          resize_order=self.resize_order)
            except (ValueError, OSError) as e:
                return self._mark_bad(index, f"cannot preprocess images {list(rec.image_paths)}: {e}", BAD_IMAGE_SIZE)
            tiles = list(torch.split(batch.pixel_values, [int(t) for t in batch.tiles_per_image]))
            sizes = [(int(s[0]), int(s[1])) for s in batch.image_sizes]
        return StreamSample(input_ids=entry.input_ids.tolist(), labels=entry.labels.tolist(), tiles=tiles,
                            image_sizes=sizes, sample_id=rec.sample_id)
