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
                           self.image_sizes, self.sample_ids, self.num_truncated)


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
                 max_tokens: int | None = None) -> PackedBatch:
    """Lay samples back to back. A sample longer than `max_tokens` is cut there (never mid-image:
    the cut moves before an image that would not fit whole) and counted in `num_truncated`."""
    ids_out, media_out, pos_out, tgt_out = [], [], [], []
    cu = [0]
    tiles, sizes, sample_ids, truncated = [], [], [], 0
    for s in samples:
        start = cu[-1]
        ids: list[int] = []
        labels: list[int] = []
        img_i = 0
        cut = False
        for t, lab in zip(s.input_ids, s.labels):
            if t == media_token_id and img_i < len(s.tiles):
                n = tokens_per_tile * s.tiles[img_i].shape[0]
                if max_tokens is not None and len(ids) + n > max_tokens:
                    cut = True
                    break
                media_out.extend(range(start + len(ids), start + len(ids) + n))
                ids.extend([0] * n)
                labels.extend([IGNORE_INDEX] * n)
                tiles.append(s.tiles[img_i])
                sizes.append(tuple(int(v) for v in s.image_sizes[img_i]))
                img_i += 1
                continue
            if t == media_token_id:
                raise ValueError(f"sample {s.sample_id!r}: more <image> tokens than images ({len(s.tiles)})")
            if max_tokens is not None and len(ids) >= max_tokens:
                cut = True
                break
            ids.append(int(t))
            labels.append(int(lab))
        truncated += int(cut)
        n = len(ids)
        ids_out.extend(ids)
        pos_out.extend(range(n))
        tgt_out.extend(labels[1:] + [IGNORE_INDEX])  # target of position t is the label of t + 1
        cu.append(start + n)
        sample_ids.append(s.sample_id)
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
    )
