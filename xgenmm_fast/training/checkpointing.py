"""Training checkpoints through one manager: what a step is (model, optimizer, scheduler, data position,
RNG) saved with DeepSpeed, published atomically, the last K kept.

Layout under `root`:
    step_00000100/        DeepSpeed files of that step + rng_rank{r}.pt + COMPLETE
    latest.json           {"tag": "step_00000100", "step": 100}; replaced with os.replace only after
                          every rank finished writing, so a crash mid-save never leaves it pointing at a
                          partial checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest.json"
COMPLETE = "COMPLETE"


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, root: str, keep_last: int = 2):
        self.root = root
        self.keep_last = max(1, keep_last)

    @staticmethod
    def tag_for(step: int) -> str:
        return f"step_{step:08d}"

    def latest(self) -> tuple[str, int] | None:
        path = os.path.join(self.root, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if not os.path.isfile(os.path.join(self.root, meta["tag"], COMPLETE)):
            raise RuntimeError(f"{path} points at {meta['tag']}, which is incomplete; remove it to start over")
        return meta["tag"], int(meta["step"])

    def save(self, engine, step: int, client_state: dict[str, Any]) -> str:
        tag = self.tag_for(step)
        os.makedirs(self.root, exist_ok=True)
        engine.save_checkpoint(self.root, tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), os.path.join(self.root, tag, f"rng_rank{_rank()}.pt"))
        _barrier()  # every rank's files are on disk
        if _rank() == 0:
            write_json_atomic(os.path.join(self.root, tag, COMPLETE), {"step": step})
            write_json_atomic(os.path.join(self.root, LATEST), {"tag": tag, "step": step})
            self._prune(keep=tag)
        _barrier()
        return tag

    def load(self, engine, tag: str) -> dict[str, Any]:
        path, client = engine.load_checkpoint(self.root, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root}/{tag}")
        rng_file = os.path.join(self.root, tag, f"rng_rank{_rank()}.pt")
        if os.path.isfile(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))  # our own file: numpy state is not a tensor
        return client or {}

    def _prune(self, keep: str) -> None:
        tags = sorted(d for d in os.listdir(self.root)
                      if d.startswith("step_") and os.path.isdir(os.path.join(self.root, d)))
        complete = [t for t in tags if os.path.isfile(os.path.join(self.root, t, COMPLETE))]
        doomed = set(complete[:-self.keep_last]) | {t for t in tags if t not in complete and t < keep}
        for t in doomed - {keep}:
            shutil.rmtree(os.path.join(self.root, t), ignore_errors=True)
