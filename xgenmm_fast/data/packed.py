"""Packed batches: many samples laid back to back in one token stream, no padding anywhere.

A `PackedBatch` is what the packed forward consumes. Its stream already has room for image tokens:
each `<image>` id of a sample is replaced by (1 + n)·L slots that `media_index` points at, so the
model scatters the perceiver output straight into the embedded stream.

    input_ids   (N,)        stream ids; image slots hold 0 (their embeddings are overwritten)
    media_index (M,)        stream positions of all image tokens, image after image, in order
    cu_seqlens  (S + 1,)    int32 sample boundaries; attention never crosses them
    positions   (N,)        0..len-1 restarting per sample (RoPE)
    targets     (N,)        next-token target of each position (-100: none / not trained)
    pixel_values (T, 3, s, s), tiles_per_image (I,), image_sizes (I,) -- images in stream order
    media_source (M,) or None   which row of the concatenated image tokens fills each image slot; None:
                                one to one (slot k takes row k). Set when samples share images
                                (`pack_samples(images_from=...)`, e.g. a DPO pair's two answers): each
                                shared image is encoded once and its tokens fill the slots of both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    media_index: torch.Tensor
    cu_seqlens: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    pixel_values: torch.Tensor | None
    tiles_per_image: list[int]
    image_sizes: list[tuple[int, int]]
    sample_ids: list[str] = field(default_factory=list)
    num_truncated: int = 0
    media_source: torch.Tensor | None = None
    max_seqlen: int | None = None  # the longest sequence (host int; None: attention reads it from cu_seqlens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_samples(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def num_target_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device, dtype: torch.dtype | None = None) -> "PackedBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        pv = move(self.pixel_values)
        if pv is not None and dtype is not None:
            pv = pv.to(dtype)
        return PackedBatch(move(self.input_ids), move(self.media_index), move(self.cu_seqlens),
                           move(self.positions), move(self.targets), pv, self.tiles_per_image,
                           self.image_sizes, self.sample_ids, self.num_truncated, move(self.media_source),
                           self.max_seqlen)


@dataclass
class StreamSample:
    """One sample's text ids/labels (with <image> ids) and its images' tiles, before packing."""
    input_ids: Sequence[int]
    labels: Sequence[int]
    tiles: list[torch.Tensor] = field(default_factory=list)  # per image (1 + n, 3, s, s)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    sample_id: str = ""


def stream_length(input_ids: Sequence[int], tiles_per_image: Sequence[int], media_token_id: int,
                  tokens_per_tile: int) -> int:
    """Tokens the sample occupies in the LM stream: text + (1 + n)·L per image - the <image> ids."""
    n_media = sum(1 for t in input_ids if t == media_token_id)
    used = list(tiles_per_image)[:n_media]
    return len(input_ids) - len(used) + tokens_per_tile * sum(used)


def pack_samples(samples: Sequence[StreamSample], media_token_id: int, tokens_per_tile: int,
                 max_tokens: int | Sequence[int | None] | None = None,
                 images_from: Sequence[int | None] | None = None) -> PackedBatch:
    """Lay samples back to back. A sample longer than `max_tokens` is cut there (never mid-image:
    the cut moves before an image that would not fit whole) and counted in `num_truncated`.

    max_tokens: one limit for every sample, or one per sample (None: no limit).
    images_from: optional, per sample, the index of an EARLIER sample whose images this sample's
        `<image>` slots show (its own `tiles` are not used): those images are encoded once and
        `media_source` maps every slot to its row of image tokens. None (the default): each sample
        brings its own images and `media_source` stays None (one to one).
    """
    n_samples = len(samples)
    limits = list(max_tokens) if isinstance(max_tokens, (list, tuple)) else [max_tokens] * n_samples
    if len(limits) != n_samples:
        raise ValueError(f"max_tokens has {len(limits)} entries for {n_samples} samples")
    if images_from is not None and len(images_from) != n_samples:
        raise ValueError(f"images_from has {len(images_from)} entries for {n_samples} samples")
    ids_out, media_out, pos_out, tgt_out, source_out = [], [], [], [], []
    cu = [0]
    tiles, sizes, sample_ids, truncated = [], [], [], 0
    image_rows: list[list[tuple[int, int]]] = []  # per sample: (first row, rows) of each image it shows
    token_rows = 0  # image-token rows of the images encoded so far
    for j, (s, limit) in enumerate(zip(samples, limits)):
        owner = None if images_from is None else images_from[j]
        if owner is not None and not 0 <= owner < j:
            raise ValueError(f"sample {s.sample_id!r} (#{j}): images_from={owner} must name an earlier sample")
        n_images = len(s.tiles) if owner is None else len(samples[owner].tiles)
        start = cu[-1]
        ids: list[int] = []
        labels: list[int] = []
        shown: list[tuple[int, int]] = []
        img_i = 0
        cut = False
        for t, lab in zip(s.input_ids, s.labels):
            if t == media_token_id and img_i < n_images:
                if owner is None:
                    row0, n = token_rows, tokens_per_tile * s.tiles[img_i].shape[0]
                elif img_i < len(image_rows[owner]):
                    row0, n = image_rows[owner][img_i]
                else:
                    raise ValueError(f"sample {s.sample_id!r}: its image {img_i + 1} comes from sample "
                                     f"#{owner}, which was cut before that image")
                if limit is not None and len(ids) + n > limit:
                    cut = True
                    break
                media_out.extend(range(start + len(ids), start + len(ids) + n))
                source_out.extend(range(row0, row0 + n))
                shown.append((row0, n))
                ids.extend([0] * n)
                labels.extend([IGNORE_INDEX] * n)
                if owner is None:
                    tiles.append(s.tiles[img_i])
                    sizes.append(tuple(int(v) for v in s.image_sizes[img_i]))
                    token_rows += n
                img_i += 1
                continue
            if t == media_token_id:
                raise ValueError(f"sample {s.sample_id!r}: more <image> tokens than images ({n_images})")
            if limit is not None and len(ids) >= limit:
                cut = True
                break
            ids.append(int(t))
            labels.append(int(lab))
        image_rows.append(shown)
        truncated += int(cut)
        n = len(ids)
        ids_out.extend(ids)
        pos_out.extend(range(n))
        tgt_out.extend(labels[1:] + [IGNORE_INDEX])  # target of position t is the label of t + 1
        cu.append(start + n)
        sample_ids.append(s.sample_id)
    shared = images_from is not None and any(o is not None for o in images_from)
    return PackedBatch(
        input_ids=torch.tensor(ids_out, dtype=torch.long),
        media_index=torch.tensor(media_out, dtype=torch.long),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        positions=torch.tensor(pos_out, dtype=torch.long),
        targets=torch.tensor(tgt_out, dtype=torch.long),
        pixel_values=torch.cat(tiles) if tiles else None,
        tiles_per_image=[t.shape[0] for t in tiles],
        image_sizes=sizes,
        sample_ids=sample_ids,
        num_truncated=truncated,
        media_source=torch.tensor(source_out, dtype=torch.long) if shared else None,
        max_seqlen=max((b - a for a, b in zip(cu[:-1], cu[1:])), default=0),
    )
