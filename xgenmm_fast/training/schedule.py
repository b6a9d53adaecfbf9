"""Learning-rate schedules with linear warm-up (multipliers of the base lr, for LambdaLR)."""
from __future__ import annotations

import math


def lr_multiplier(step: int, *, schedule: str, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> float:
    """step counts optimizer steps already taken (0 for the first update)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
