"""Checkpoint I/O in the released formats (SPEC §2).

- HF-format directory: config.json + safetensors (one file, or shards with model.safetensors.index.json),
  every key prefixed `vlm.`. Read and written.
- Training-code checkpoint: a `.pt` plain state dict (keys without `vlm.`; a dict holding it under
  `model_state_dict` is accepted too). Read; its config comes from a preset name or a config.json.

Loading never unpickles arbitrary objects (safetensors, or torch.load(weights_only=True)) and is strict:
missing keys, unexpected keys and shape mismatches are all listed in one error. The SigLIP pooling
`head.*` is optional: a checkpoint without it loads into a model without it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import XGenMMConfig

HF_PREFIX = "vlm."
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
_HEAD_PREFIX = "vision_encoder.head."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


# ---- reading ----------------------------------------------------------------------------------------
def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _load_torch_file(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; all mean "not a plain state dict"
        raise CheckpointError(f"{path}: cannot be read as a plain tensor state dict with "
                              f"torch.load(weights_only=True) ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint directory or file, keys normalised to the unprefixed original names."""
    if os.path.isdir(path):
        index = os.path.join(path, SAFE_INDEX)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed shard index ({e})") from None
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(path, shard)
                if not os.path.isfile(shard_path):
                    raise CheckpointError(f"{index} lists shard {shard!r}, which is missing from {path}")
                sd.update(_load_safetensors(shard_path))
        elif os.path.isfile(os.path.join(path, SAFE_SINGLE)):
            sd = _load_safetensors(os.path.join(path, SAFE_SINGLE))
        else:
            found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".pt", ".bin", ".pth")))
            if len(found) == 1:
                return read_state_dict(os.path.join(path, found[0]))
            raise CheckpointError(f"{path}: no {SAFE_SINGLE} or {SAFE_INDEX} (weight files present: {found or 'none'})")
    elif os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"{path}: empty file (0 bytes)")
        sd = _load_safetensors(path) if path.endswith(".safetensors") else _load_torch_file(path)
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    return {_strip(k): v for k, v in sd.items()}


def _strip(key: str) -> str:
    for prefix in ("module.", HF_PREFIX):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy `sd` into `model`, failing with one message that lists every problem."""
    has_head = any(k.startswith(_HEAD_PREFIX) for k in sd)
    if not has_head and getattr(model.vision_encoder, "head", None) is not None:
        model.vision_encoder.head = None  # the pooling head is unused; absent in the file -> absent here
        model.config.vision.has_head = False
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {source} does not match the model config"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_summarise(mismatched)}")
        raise CheckpointError("\n  ".join(parts))
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(sd[k])


def load_pretrained(cls, path: str, config: Any = None, dtype: torch.dtype | None = None, device: Any = "cpu"):
    """Build `cls` (XGenMM) from an HF-format directory or a training `.pt` file."""
    if config is None:
        cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else None
        if cfg_path is None or not os.path.isfile(cfg_path):
            raise CheckpointError(
                f"{path}: no config.json beside the weights; a training checkpoint carries no config, so "
                "pass config= a preset name (e.g. 'xgenmm_phi3_mini') or a config.json path")
        config = XGenMMConfig.from_json_file(cfg_path)
    else:
        config = XGenMMConfig.resolve(config)
    sd = read_state_dict(path)
    with torch.device("meta"):  # no throw-away random init of billions of weights
        model = cls(config)
    model.to_empty(device=device)
    if dtype is not None:
        model.to(dtype)
    load_state_dict_strict(model, sd, path)
    return model.eval()


# ---- writing ----------------------------------------------------------------------------------------
def save_pretrained(model, out_dir: str, max_shard_size: int = 5 * 2**30) -> None:
    """Write config.json + safetensors with `vlm.`-prefixed original key names, atomically: files go
    to a temporary sibling directory that replaces `out_dir` only once complete."""
    save_state_dict_hf(model.config, model.state_dict(), out_dir, max_shard_size)


def save_state_dict_hf(config: XGenMMConfig, state_dict: dict[str, torch.Tensor], out_dir: str,
                       max_shard_size: int = 5 * 2**30) -> None:
    """`save_pretrained` for a bare state dict (unprefixed keys), e.g. one gathered from ZeRO shards."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        tensors = {HF_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        shards, cur, cur_size = [], {}, 0
        for k, v in tensors.items():
            n = v.numel() * v.element_size()
            if cur and cur_size + n > max_shard_size:
                shards.append(cur)
                cur, cur_size = {}, 0
            cur[k] = v
            cur_size += n
        shards.append(cur)
        if len(shards) == 1:
            save_file(shards[0], os.path.join(tmp, SAFE_SINGLE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in tensors.values())
            with open(os.path.join(tmp, SAFE_INDEX), "w", encoding="utf-8") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        cfg = config.to_hf_dict()
        dtypes = {v.dtype for v in tensors.values()}
        if len(dtypes) == 1:
            cfg["torch_dtype"] = str(dtypes.pop()).replace("torch.", "")
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_training_checkpoint(model, path: str) -> None:
    """The original training code's format: a plain state dict without the `vlm.` prefix (atomic)."""
    tmp = path + ".tmp"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
