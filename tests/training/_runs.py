"""Helpers that launch real training runs in subprocesses (one DeepSpeed process group per run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from safetensors.torch import load_file

from xgenmm_fast.demo.shapes import make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_MODEL = {
    "init": "tiny",
    "overrides": {
        "vision": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "image_size": 28, "patch_size": 14},
        "perceiver": {"depth": 1, "heads": 2, "dim_head": 8, "num_latents": 4, "ff_mult": 2},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "num_key_value_heads": 2},
    },
}


def make_data(root: str, n_train: int = 40) -> str:
    return make_dataset(os.path.join(root, "data"), n_train=n_train, n_heldout=4, seed=3)["train"]


def write_config(path: str, data_path: str, out_dir: str, tokenizer_dir: str | None = None, **train) -> str:
    cfg = {
        "model": TINY_MODEL,
        "data": {"data_path": data_path, "max_tokens": 256, "num_workers": 0,
                 **({"tokenizer": tokenizer_dir} if tokenizer_dir else {})},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        "train": {"output_dir": out_dir, "progress": False, "tensorboard": False, "keep_last": 3, **train},
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def run_train(config: str, nproc: int = 1, overrides=(), env_extra=None, timeout=600, check=True):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("RANK", None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "xgenmm_fast.cli", "train", "--config", config, *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(_port()), "-m", "xgenmm_fast.cli", "train", "--config", config, *overrides]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"training failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "result.json")) as f:
        return json.load(f)


def losses(out_dir: str) -> dict[int, float]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def weights(out_dir: str) -> dict:
    return load_file(os.path.join(out_dir, "hf", "model.safetensors"))
