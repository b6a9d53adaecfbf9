"""Bin-packing planner: which samples share a packed row of at most `budget` tokens.

First-fit-decreasing: samples sorted by length (longest first, ties by index for determinism), each
placed in the first row with room, else a new row. A sample longer than the budget gets a row of its own
and is truncated there by `pack_samples` (counted, never dropped). The C++ planner in csrc/ computes the
same plan faster; this module picks it when the extension is built and keeps the Python one as the
reference it is tested against.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence


def plan_rows_reference(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """FFD over `lengths` (indices into it) -> rows of indices, each row's total <= budget (or a single
    over-long sample). O(n · rows); fine as a reference."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    negative = next((i for i, n in enumerate(lengths) if int(n) < 0), None)
    if negative is not None:
        raise ValueError(f"lengths[{negative}] is negative ({lengths[negative]})")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = min(int(lengths[i]), budget)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(budget - n)
    return rows


def plan_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    fast = _cpp_planner()
    if fast is not None:  # takes lists, tuples, numpy arrays or 1-D integer tensors; returns fresh lists
        return fast(lengths, int(budget))
    return plan_rows_reference(lengths, budget)


def _cpp_planner():
    try:
        from .. import _C  # built by setup.py
    except ImportError:
        return None
    return getattr(_C, "plan_rows_ffd", None)


def packing_efficiency(rows: Sequence[Sequence[int]], lengths: Sequence[int], budget: int) -> float:
    """Fraction of the rows' token budget filled by (possibly truncated) samples."""
    if not rows:
        return 1.0
    used = sum(min(int(lengths[i]), budget) for r in rows for i in r)
    return used / (len(rows) * budget)


@dataclass
class EpochPlan:
    rows: list[list[int]]  # dataset indices per row, in training order
    efficiency: float
    num_oversized: int


def plan_epoch(indices: Sequence[int], lengths: Sequence[int], budget: int, seed: int, epoch: int,
               window: int = 2048) -> EpochPlan:
    """Deterministic plan for one epoch: shuffle (seed, epoch), pack windows of `window` samples with
    FFD (local so that order stays random across the epoch), then shuffle the rows."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(indices)
    rng.shuffle(order)
    rows: list[list[int]] = []
    for s in range(0, len(order), window):
        chunk = order[s:s + window]
        for r in plan_rows([lengths[i] for i in chunk], budget):
            rows.append([chunk[j] for j in r])
    rng.shuffle(rows)
    eff = packing_efficiency(rows, lengths, budget)
    return EpochPlan(rows, eff, sum(1 for i in indices if lengths[i] > budget))
