"""Drop-in entry points with the original open_flamingo/xgen-mm signatures (local paths only).

`create_model_and_transforms` assembles a fresh xGen-MM from a SigLIP directory, a Phi-3 directory
and a tokenizer directory, exactly as the original factory did (pad token added when missing,
three special tokens appended, decoupled embedding/head rows initialised N(0, 0.02), a new perceiver),
then returns (model, image_processor, tokenizer). Load released or trained weights afterwards with
`model.load_state_dict(torch.load(ckpt, weights_only=True))` (same key names as the original) or use
`XGenMM.from_pretrained` for HF-format directories.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from .config import PerceiverConfig, TextConfig, VisionConfig, XGenMMConfig
from .data.anyres import GRID_MULTIPLIERS
from .data.pillow_ref import ImageProcessor, process_anyres_image  # noqa: F401  (re-exported)
from .data.tokenizer import load_tokenizer
from .model.checkpoint import CheckpointError, read_state_dict
from .model.xgenmm import XGenMM


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a local HF model directory with config.json)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _siglip_config(path: str) -> VisionConfig:
    cfg = _read_json(os.path.join(path, "config.json"))
    v = cfg.get("vision_config", cfg) if cfg.get("model_type") == "siglip" else cfg
    return VisionConfig(hidden_size=v.get("hidden_size", 768), intermediate_size=v.get("intermediate_size", 3072),
                        num_hidden_layers=v.get("num_hidden_layers", 12),
                        num_attention_heads=v.get("num_attention_heads", 12), image_size=v.get("image_size", 224),
                        patch_size=v.get("patch_size", 16), num_channels=v.get("num_channels", 3),
                        layer_norm_eps=v.get("layer_norm_eps", 1e-6), has_head=v.get("vision_use_head", True))


def _phi3_config(path: str) -> dict:
    cfg = _read_json(os.path.join(path, "config.json"))
    if cfg.get("model_type") not in ("phi3", None):
        raise ValueError(f"{path}: model_type {cfg.get('model_type')!r}; xgenmm_v1 uses a Phi-3 language model")
    return cfg


def create_model_and_transforms(
    clip_vision_encoder_path: str,
    clip_vision_encoder_pretrained: str,
    lang_model_path: str,
    tokenizer_path: str,
    model_family: str = "xgenmm_v1",
    pretrained_vision_tokenizer: str | None = None,
    use_local_files: bool = True,
    decoder_layers_attr_name: str | None = None,
    cache_dir: str | None = None,
    gradient_checkpointing: bool = False,
    verbose: bool = True,
    num_vision_tokens: int = 128,
    image_aspect_ratio: str = "anyres",
    anyres_patch_sampling: bool = True,
    anyres_grids=GRID_MULTIPLIERS,
    **unused: Any,
):
    """-> (model, image_processor, tokenizer), like the original factory but from local directories."""
    if model_family != "xgenmm_v1":
        raise ValueError(f"model_family {model_family!r} is not supported (only 'xgenmm_v1')")
    if clip_vision_encoder_pretrained != "google":
        raise ValueError("only SigLIP vision encoders (clip_vision_encoder_pretrained='google') are supported")
    tokenizer, info = load_tokenizer(tokenizer_path)
    vision = _siglip_config(clip_vision_encoder_path)
    phi = _phi3_config(lang_model_path)
    heads = phi.get("num_attention_heads", 32)
    rope = phi.get("rope_parameters") or {}
    text = TextConfig(
        vocab_size=phi.get("vocab_size", 32064), hidden_size=phi.get("hidden_size", 3072),
        intermediate_size=phi.get("intermediate_size", 8192), num_hidden_layers=phi.get("num_hidden_layers", 32),
        num_attention_heads=heads, num_key_value_heads=phi.get("num_key_value_heads") or heads,
        rms_norm_eps=phi.get("rms_norm_eps", 1e-5), rope_theta=phi.get("rope_theta", rope.get("rope_theta", 1e4)),
        max_position_embeddings=phi.get("max_position_embeddings", 4096),
        sliding_window=phi.get("sliding_window"), initial_tokenizer_len=info.initial_tokenizer_len,
        pad_token_id=info.pad_token_id, bos_token_id=phi.get("bos_token_id") or 1,
        eos_token_id=(phi.get("eos_token_id") if not isinstance(phi.get("eos_token_id"), list)
                      else phi["eos_token_id"][0]) or 2)
    if text.initial_tokenizer_len > text.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {text.initial_tokenizer_len} base ids but the language "
                         f"model {lang_model_path} has only {text.vocab_size} embedding rows")
    config = XGenMMConfig(vision=vision, perceiver=PerceiverConfig(num_latents=num_vision_tokens), text=text,
                          vision_model_name=os.path.basename(os.path.normpath(clip_vision_encoder_path)),
                          grid_multipliers=tuple(tuple(g) for g in anyres_grids),
                          image_aspect_ratio=image_aspect_ratio, anyres_patch_sampling=anyres_patch_sampling)
    model = XGenMM(config)

    vis_sd = {}
    for k, v in read_state_dict(clip_vision_encoder_path).items():
        if k.startswith("text_model.") or k in ("logit_scale", "logit_bias"):
            continue
        vis_sd["vision_encoder." + k.removeprefix("vision_model.")] = v
    lm_sd = {("lang_model." + k): v for k, v in read_state_dict(lang_model_path).items()}
    _load_part(model, vis_sd, "vision_encoder.", clip_vision_encoder_path)
    _load_part(model, lm_sd, "lang_model.", lang_model_path,
               allowed_missing={"lang_model.lm_head.bias", "lang_model.model.embed_tokens.additional_embedding.weight",
                                "lang_model.lm_head.additional_fc.weight", "lang_model.lm_head.additional_fc.bias"})
    with torch.no_grad():  # what the original created on top of the LM
        lm = model.lang_model
        lm.model.embed_tokens.additional_embedding.weight.normal_(0.0, 0.02)
        lm.lm_head.additional_fc.weight.normal_(0.0, 0.02)
        lm.lm_head.additional_fc.bias.zero_()
        lm.lm_head.bias.zero_()
    if pretrained_vision_tokenizer is not None:
        vt = {"vision_tokenizer." + k.removeprefix("vision_tokenizer."): v
              for k, v in read_state_dict(pretrained_vision_tokenizer).items()}
        _load_part(model, vt, "vision_tokenizer.", pretrained_vision_tokenizer)
    if gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    model.tokenizer_info = info
    if verbose:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{model_family} model initialized with {trainable:,} trainable parameters")
    return model, ImageProcessor(config.tile_size), tokenizer


def _load_part(model: XGenMM, sd: dict, prefix: str, source: str, allowed_missing=frozenset()) -> None:
    if not any(k.startswith(prefix + "head.") for k in sd) and prefix == "vision_encoder.":
        model.vision_encoder.head = None
        model.config.vision.has_head = False
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(sd) - set(allowed_missing))
    unexpected = sorted(set(sd) - set(own))
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{source} does not fit the {prefix.rstrip('.')} config: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}, shape mismatches {bad[:10]}")
    with torch.no_grad():
        for k, v in own.items():
            if k in sd:
                v.copy_(sd[k])
