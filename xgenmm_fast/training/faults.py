"""Fault injection for tests of the failure paths (never set in normal runs).

XGENMM_FAULTS="kill_at_step=5,nan_at_step=2,rank=0": after finishing step 5 the chosen rank SIGKILLs
itself (a crash with no chance to clean up); the loss of step 2's first micro-batch becomes NaN.
"""
from __future__ import annotations

import os
import signal


def _spec() -> dict[str, int]:
    raw = os.environ.get("XGENMM_FAULTS", "")
    out = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        k, v = part.split("=", 1)
        out[k.strip()] = int(v)
    return out


def _my_rank(spec) -> bool:
    return int(os.environ.get("RANK", "0")) == spec.get("rank", 0)


def nan_now(step: int, micro: int) -> bool:
    spec = _spec()
    return spec.get("nan_at_step") == step and micro == 0 and _my_rank(spec)


def maybe_kill(step: int) -> None:
    spec = _spec()
    if spec.get("kill_at_step") == step and _my_rank(spec):
        os.kill(os.getpid(), signal.SIGKILL)
