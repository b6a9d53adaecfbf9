"""From an epoch plan to the micro-batches each rank trains on, in a resumable order.

Global optimizer step s consumes `world · grad_accum · rows_per_step` consecutive rows of the current
epoch's plan; rank r takes its own contiguous share, `rows_per_step` rows per micro-step, packed into
one `PackedBatch`. An epoch's leftover rows (fewer than one step's worth) are dropped. The position in
the data is just the global step: plans are deterministic in (seed, epoch), so a resumed run rebuilds
them and continues with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.packed import PackedBatch, StreamSample, pack_samples  # noqa: F401 (StreamSample: re-export)
from ..data.sft_dataset import BadSample
from ..data.planner import EpochPlan, plan_epoch


@dataclass
class StepGeometry:
    world: int
    rank: int
    grad_accum: int
    rows_per_step: int

    @property
    def rows_per_global_step(self) -> int:
        return self.world * self.grad_accum * self.rows_per_step


@dataclass
class MicroBatch:
    batch: PackedBatch
    step: int
    micro: int
    skipped: list = field(default_factory=list)  # (dataset index, sample id, source, reason) of bad samples


class _MicroBatchDataset(Dataset):
    """Item k = the k-th micro-batch of this rank from `first_step` on, within one epoch's plan.
    `collate(samples) -> batch` packs the good items (default: pack_samples; DPO packs pairs)."""

    def __init__(self, dataset, plan: EpochPlan, geo: StepGeometry, first_step_in_epoch: int,
                 num_steps: int, media_token_id: int, tokens_per_tile: int, max_tokens: int,
                 collate: Callable | None = None):
        self.dataset, self.plan, self.geo = dataset, plan, geo
        self.first, self.num_steps = first_step_in_epoch, num_steps
        self.media_token_id, self.tokens_per_tile, self.max_tokens = media_token_id, tokens_per_tile, max_tokens
        self.collate = collate

    def __len__(self) -> int:
        return self.num_steps * self.geo.grad_accum

    def rows_for(self, k: int) -> list[list[int]]:
        g = self.geo
        step, micro = divmod(k, g.grad_accum)
        base = (self.first + step) * g.rows_per_global_step + (g.rank * g.grad_accum + micro) * g.rows_per_step
        return self.plan.rows[base: base + g.rows_per_step]

    def __getitem__(self, k: int):
        samples, skipped = [], []
        for row in self.rows_for(k):
            for idx in row:
                item = self.dataset[idx]
                if isinstance(item, BadSample):  # reported, never raised here (the loop decides: skip or fail fast)
                    skipped.append((idx, getattr(item, "sample_id", ""), getattr(item, "location", ""),
                                    getattr(item, "reason", str(item))))
                else:
                    samples.append(item)
        if self.collate is not None:
            return self.collate(samples), skipped
        batch = pack_samples(samples, self.media_token_id, self.tokens_per_tile, max_tokens=self.max_tokens)
        return batch, skipped


def epoch_steps(plan: EpochPlan, geo: StepGeometry) -> int:
    return len(plan.rows) // geo.rows_per_global_step


def iterate_micro_batches(dataset, good_indices: Sequence[int], lengths: Sequence[int], geo: StepGeometry, *,
                          start_step: int, total_steps: int, seed: int, budget: int, window: int,
                          media_token_id: int, tokens_per_tile: int, num_workers: int,
                          on_epoch: Callable[[int, EpochPlan], None] | None = None,
                          collate: Callable | None = None) -> Iterator[MicroBatch]:
    """Yields this rank's micro-batches for global steps [start_step, total_steps), epoch after epoch.
    `collate(samples) -> batch` replaces pack_samples (e.g. preference.pack_pairs for DPO)."""
    step, epoch, epoch_start = 0, 0, 0
    while step < total_steps:
        plan = plan_epoch(good_indices, lengths, budget, seed, epoch, window)
        n = epoch_steps(plan, geo)
        if n == 0:
            raise ValueError(f"the data fills {len(plan.rows)} rows of {budget} tokens, fewer than one step needs "
                             f"({geo.rows_per_global_step}); lower train.grad_accum/rows_per_step or add data")
        if on_epoch is not None:
            on_epoch(epoch, plan)
        epoch_end = epoch_start + n
        if start_step < epoch_end:
            first = max(start_step, epoch_start) - epoch_start
            count = min(epoch_end, total_steps) - epoch_start - first
            ds = _MicroBatchDataset(dataset, plan, geo, first, count, media_token_id, tokens_per_tile, budget,
                                    collate)
            loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                collate_fn=lambda x: x, persistent_workers=False,
                                prefetch_factor=4 if num_workers > 0 else None)
            for k, (batch, skipped) in enumerate(loader):
                s, micro = divmod(k, geo.grad_accum)
                yield MicroBatch(batch, epoch_start + first + s, micro, skipped)
        step = epoch_end
        epoch_start = epoch_end
        epoch += 1


