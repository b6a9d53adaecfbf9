"""Model configuration: typed sizes for the three parts, presets, and the HF config.json mapping.

The released v1.5 checkpoints (SPEC §1, §2) use the `xgenmm_phi3_mini` preset. Tiny presets exist so
tests and the demo run in seconds on a CPU. `XGenMMConfig.from_hf_dict` reads a released config.json
(ignoring the many keys we do not need); `to_hf_dict` writes one back that both we and the original
loader understand.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .data.anyres import GRID_MULTIPLIERS

SIGLIP_SO400M = "google/siglip-so400m-patch14-384"
SPECIAL_TOKENS = ("<image>", "<image placeholder>", "<|endofchunk|>")


@dataclass
class VisionConfig:
    """SigLIP vision transformer (SPEC §1.1)."""
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    image_size: int = 384  # also the anyres tile size
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    has_head: bool = True  # checkpoints carry the (unused) pooling head; we keep it for round trips

    @property
    def grid(self) -> int:  # feature map side per tile (27 for so400m/14 at 384)
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass
class PerceiverConfig:
    """Perceiver resampler (SPEC §1.2): fixed in the original whatever the encoder width."""
    depth: int = 6
    heads: int = 16
    dim_head: int = 96
    num_latents: int = 128
    ff_mult: int = 4
    layer_norm_eps: float = 1e-5


@dataclass
class TextConfig:
    """Phi-3 decoder (SPEC §1.3) plus the decoupled-vocabulary facts (SPEC §1.4)."""
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    sliding_window: int | None = 2047
    initial_tokenizer_len: int = 32012  # base vocab + <pad>
    pad_token_id: int = 32011
    num_additional_tokens: int = len(SPECIAL_TOKENS)  # <image>, <image placeholder>, <|endofchunk|>
    bos_token_id: int = 1
    eos_token_id: int = 32000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_logits(self) -> int:  # 32015 for the released model
        return self.initial_tokenizer_len + self.num_additional_tokens


@dataclass
class XGenMMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vision_model_name: str = SIGLIP_SO400M
    grid_multipliers: tuple = GRID_MULTIPLIERS  # (tiles across, tiles down) per anyres grid
    image_aspect_ratio: str = "anyres"
    anyres_patch_sampling: bool = True

    @property
    def tile_size(self) -> int:
        return self.vision.image_size

    @property
    def anyres_grids(self) -> list[list[int]]:
        s = self.tile_size
        return [[s * m, s * n] for (m, n) in self.grid_multipliers]

    @property
    def media_token_id(self) -> int:
        return self.text.initial_tokenizer_len

    def copy(self) -> "XGenMMConfig":
        return copy.deepcopy(self)

    # ---- HF config.json -------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config") -> "XGenMMConfig":
        if not isinstance(cfg, dict):
            raise ValueError(f"{source}: expected a JSON object")
        if cfg.get("model_type") not in (None, "xgenmm"):
            raise ValueError(f"{source}: model_type is {cfg.get('model_type')!r}, expected 'xgenmm'")
        venc = cfg.get("vision_encoder_config") or {}
        vtok = cfg.get("vision_tokenizer_config") or {}
        text = cfg.get("text_config")
        if text is None:
            raise ValueError(f"{source}: missing 'text_config' (the Phi-3 language model config)")

        model_name = venc.get("model_name", SIGLIP_SO400M)
        vision = _vision_from_fields(venc, model_name, source)
        if "vis_feature_dim" in vtok and vtok["vis_feature_dim"] != vision.hidden_size:
            raise ValueError(
                f"{source}: vision_tokenizer_config.vis_feature_dim={vtok['vis_feature_dim']} but the vision "
                f"encoder width is {vision.hidden_size}")
        perceiver = PerceiverConfig(
            depth=int(vtok.get("depth", PerceiverConfig.depth)),
            heads=int(vtok.get("heads", PerceiverConfig.heads)),
            dim_head=int(vtok.get("dim_head", PerceiverConfig.dim_head)),
            num_latents=int(vtok.get("num_vis_tokens", PerceiverConfig.num_latents)),
            ff_mult=int(vtok.get("ff_mult", PerceiverConfig.ff_mult)),
        )
        rope_scaling = text.get("rope_scaling")
        if rope_scaling not in (None, {}) and (rope_scaling or {}).get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise NotImplementedError(f"{source}: text_config.rope_scaling={rope_scaling!r} is not supported "
                                      "(the v1.5 models use Phi-3-mini-4k without RoPE scaling)")
        hidden = int(text.get("hidden_size", 3072))
        heads = int(text.get("num_attention_heads", 32))
        tc = TextConfig(
            vocab_size=int(text.get("vocab_size", 32064)),
            hidden_size=hidden,
            intermediate_size=int(text.get("intermediate_size", 8192)),
            num_hidden_layers=int(text.get("num_hidden_layers", 32)),
            num_attention_heads=heads,
            num_key_value_heads=int(text.get("num_key_value_heads") or heads),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
            rope_theta=float(text.get("rope_theta", (text.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
            max_position_embeddings=int(text.get("max_position_embeddings", 4096)),
            sliding_window=text.get("sliding_window", 2047),
            initial_tokenizer_len=int(text.get("initial_tokenizer_len", 32012)),
            pad_token_id=int(text.get("pad_token_id", 32011)),
            bos_token_id=int(text.get("bos_token_id", 1) if text.get("bos_token_id") is not None else 1),
            eos_token_id=int(text.get("eos_token_id", 32000) if not isinstance(text.get("eos_token_id"), list)
                             else text["eos_token_id"][0]),
        )
        if "lang_embedding_dim" in vtok and vtok["lang_embedding_dim"] != tc.hidden_size:
            raise ValueError(f"{source}: vision_tokenizer_config.lang_embedding_dim={vtok['lang_embedding_dim']} "
                             f"but text_config.hidden_size={tc.hidden_size}")
        grids = venc.get("anyres_grids")
        tile = vision.image_size
        multipliers = GRID_MULTIPLIERS
        if grids:
            multipliers = []
            for g in grids:
                if g[0] % tile or g[1] % tile:
                    raise ValueError(f"{source}: anyres grid {g} is not a multiple of the tile size {tile}")
                multipliers.append((g[0] // tile, g[1] // tile))
            multipliers = tuple(multipliers)
        return cls(
            vision=vision, perceiver=perceiver, text=tc, vision_model_name=model_name,
            grid_multipliers=tuple(tuple(m) for m in multipliers),
            image_aspect_ratio=vtok.get("image_aspect_ratio", venc.get("image_aspect_ratio", "anyres")),
            anyres_patch_sampling=bool(venc.get("anyres_patch_sampling", True)),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        v, p, t = self.vision, self.perceiver, self.text
        return {
            "architectures": ["XGenMMModelForConditionalGeneration"],
            "model_type": "xgenmm",
            "vision_encoder_config": {
                "model_type": "xgenmm_vision_encoder",
                "model_name": self.vision_model_name,
                "anyres_grids": self.anyres_grids,
                "anyres_patch_sampling": self.anyres_patch_sampling,
                "image_aspect_ratio": self.image_aspect_ratio,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.num_channels,
                "layer_norm_eps": v.layer_norm_eps,
            },
            "vision_tokenizer_config": {
                "model_type": "xgenmm_vision_tokenizer",
                "vis_feature_dim": v.hidden_size,
                "lang_embedding_dim": t.hidden_size,
                "num_vis_tokens": p.num_latents,
                "image_aspect_ratio": self.image_aspect_ratio,
                "depth": p.depth,
                "heads": p.heads,
                "dim_head": p.dim_head,
                "ff_mult": p.ff_mult,
            },
            "text_config": {
                "model_type": "phi3",
                "architectures": ["Phi3ForCausalLM"],
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "hidden_act": "silu",
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "rope_scaling": None,
                "max_position_embeddings": t.max_position_embeddings,
                "original_max_position_embeddings": t.max_position_embeddings,
                "sliding_window": t.sliding_window,
                "initial_tokenizer_len": t.initial_tokenizer_len,
                "pad_token_id": t.pad_token_id,
                "bos_token_id": t.bos_token_id,
                "eos_token_id": t.eos_token_id,
                "tie_word_embeddings": False,
                "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
            },
            "torch_dtype": "float32",
        }

    @classmethod
    def from_json_file(cls, path: str) -> "XGenMMConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(data, source=path)

    @classmethod
    def resolve(cls, spec: "XGenMMConfig | str | dict") -> "XGenMMConfig":
        """A config object, a preset name, a path to a config.json (or its directory), or a dict."""
        if isinstance(spec, XGenMMConfig):
            return spec.copy()
        if isinstance(spec, dict):
            return cls.from_hf_dict(spec)
        if isinstance(spec, str):
            if spec in PRESETS:
                return PRESETS[spec]()
            if os.path.isdir(spec):
                return cls.from_json_file(os.path.join(spec, "config.json"))
            if os.path.isfile(spec):
                return cls.from_json_file(spec)
            raise ValueError(f"unknown config {spec!r}: not a preset ({', '.join(sorted(PRESETS))}) "
                             "and no such config.json file or directory")
        raise TypeError(f"cannot make a config from {type(spec).__name__}")


# Vision sizes by checkpoint name, for config.json files that only name the encoder (the released ones).
VISION_TABLE: dict[str, VisionConfig] = {
    SIGLIP_SO400M: VisionConfig(),
    "google/siglip-so400m-patch14-224": VisionConfig(image_size=224),
    "google/siglip-base-patch16-224": VisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                   num_attention_heads=12, image_size=224, patch_size=16),
    "google/siglip-base-patch16-384": VisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                   num_attention_heads=12, image_size=384, patch_size=16),
    "google/siglip-large-patch16-384": VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                    num_attention_heads=16, image_size=384, patch_size=16),
}
_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size", "num_channels", "layer_norm_eps")


def _vision_from_fields(venc: dict, model_name: str, source: str) -> VisionConfig:
    present = {k: venc[k] for k in _VISION_FIELDS if k in venc}
    if model_name in VISION_TABLE:
        base = dataclasses.replace(VISION_TABLE[model_name])
    elif {"hidden_size", "num_hidden_layers", "num_attention_heads"} <= present.keys():
        base = VisionConfig()
    else:
        raise ValueError(f"{source}: vision encoder {model_name!r} is not in the built-in table "
                         f"({', '.join(VISION_TABLE)}) and vision_encoder_config lacks its sizes "
                         f"({', '.join(_VISION_FIELDS)})")
    for k, val in present.items():
        setattr(base, k, type(getattr(base, k))(val))
    return base


def released_config() -> XGenMMConfig:
    """xgen-mm-phi3-mini-*-r-v1.5 sizes."""
    return XGenMMConfig()


def tiny_config() -> XGenMMConfig:
    """A few-hundred-kilobyte model with the released structure (for tests): 28-px tiles, 2×2 features."""
    return XGenMMConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            image_size=28, patch_size=14),
        perceiver=PerceiverConfig(depth=2, heads=2, dim_head=8, num_latents=4, ff_mult=2),
        text=TextConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                        sliding_window=2047, initial_tokenizer_len=80, pad_token_id=79,
                        bos_token_id=1, eos_token_id=2),
        vision_model_name="tiny-siglip",
    )


def tiny_wide_config() -> XGenMMConfig:
    """Tiny, but with a 3×3 feature map per tile so the grouping quirk and masks are non-trivial."""
    cfg = tiny_config()
    cfg.vision.image_size = 42  # 3×3 patches of 14
    cfg.vision_model_name = "tiny-siglip-42"
    return cfg


PRESETS = {
    "xgenmm_phi3_mini": released_config,
    "tiny": tiny_config,
    "tiny_wide": tiny_wide_config,
}
