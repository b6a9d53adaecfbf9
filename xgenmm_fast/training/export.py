"""Offline export of a training checkpoint to the HF format (ZeRO partitions merged on the CPU)."""
from __future__ import annotations

import json
import os

import torch

from ..config import XGenMMConfig
from ..model.checkpoint import save_state_dict_hf
from .checkpointing import LATEST


def _model_config(run_dir: str) -> XGenMMConfig:
    """The run's model config: from its HF export if present, else rebuilt from config.yaml."""
    hf = os.path.join(run_dir, "hf", "config.json")
    if os.path.isfile(hf):
        return XGenMMConfig.from_json_file(hf)
    model_json = os.path.join(run_dir, "model_config.json")
    if os.path.isfile(model_json):
        return XGenMMConfig.from_json_file(model_json)
    raise FileNotFoundError(f"{run_dir}: no hf/config.json or model_config.json to describe the model")


def export_checkpoint(checkpoints_dir: str, out_dir: str, tag: str | None = None) -> str:
    from .distributed import import_deepspeed
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    if tag is None:
        with open(os.path.join(checkpoints_dir, LATEST), encoding="utf-8") as f:
            tag = json.load(f)["tag"]
    tag_dir = os.path.join(checkpoints_dir, tag)
    if not os.path.isdir(tag_dir):
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint")
    # the module as DeepSpeed stored it (our own file): whole for ZeRO 0-2, placeholders under ZeRO-3
    whole = os.path.join(tag_dir, "mp_rank_00_model_states.pt")  # absent under ZeRO-3
    module = torch.load(whole, map_location="cpu", weights_only=False)["module"] if os.path.isfile(whole) else {}
    zero_files = [f for f in os.listdir(tag_dir) if f.startswith("zero_pp_rank_") and "optim_states" in f]
    state = dict(module)
    if zero_files:  # trained weights from the fp32 optimizer partitions, merged across ranks
        state.update(get_fp32_state_dict_from_zero_checkpoint(checkpoints_dir, tag=tag))
    config = _model_config(os.path.dirname(os.path.abspath(checkpoints_dir)))
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"{tag_dir}: no full values for {len(empty)} tensors (e.g. {empty[0]}); "
                           "they were neither in the optimizer partitions nor stored whole")
    save_state_dict_hf(config, {k: v.float() for k, v in state.items()}, out_dir)
    return out_dir
