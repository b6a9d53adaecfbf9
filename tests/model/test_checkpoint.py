"""Checkpoint formats: HF directory (single and sharded), training .pt, strict errors, config parsing."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from xgenmm_fast import XGenMM, XGenMMConfig
from xgenmm_fast.model.checkpoint import CheckpointError, read_state_dict, save_training_checkpoint

from ._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny_wide", seed=99)


def _outputs(m):
    gen = torch.Generator().manual_seed(0)
    size = sizes_for_every_grid(m.config.tile_size)[(3, 1)]
    ids = random_text(m, 10, gen, n_images=1)[None]
    with torch.no_grad():
        return m(vision_x=[random_tiles(m, size, gen)], lang_x=ids, image_size=[size]).logits


def test_released_key_names_match_spec():
    with torch.device("meta"):
        m = XGenMM("xgenmm_phi3_mini")
    keys = set(m.state_dict())
    for k in ["vision_encoder.embeddings.patch_embedding.weight", "vision_encoder.embeddings.position_embedding.weight",
              "vision_encoder.encoder.layers.26.self_attn.out_proj.bias", "vision_encoder.encoder.layers.0.mlp.fc2.weight",
              "vision_encoder.post_layernorm.bias", "vision_encoder.head.probe",
              "vision_tokenizer.latents", "vision_tokenizer.layers.5.0.norm_media.weight",
              "vision_tokenizer.layers.0.0.to_kv.weight", "vision_tokenizer.layers.3.1.0.bias",
              "vision_tokenizer.layers.3.1.1.weight", "vision_tokenizer.layers.3.1.3.weight",
              "vision_tokenizer.norm.weight", "vision_tokenizer.projection.bias",
              "lang_model.model.embed_tokens.weight", "lang_model.model.embed_tokens.additional_embedding.weight",
              "lang_model.model.layers.31.self_attn.qkv_proj.weight", "lang_model.model.layers.0.mlp.gate_up_proj.weight",
              "lang_model.model.layers.0.post_attention_layernorm.weight", "lang_model.model.norm.weight",
              "lang_model.lm_head.weight", "lang_model.lm_head.bias", "lang_model.lm_head.additional_fc.weight",
              "lang_model.lm_head.additional_fc.bias"]:
        assert k in keys, k
    sd = m.state_dict()
    assert tuple(sd["lang_model.model.layers.0.self_attn.qkv_proj.weight"].shape) == (9216, 3072)
    assert tuple(sd["lang_model.model.layers.0.mlp.gate_up_proj.weight"].shape) == (16384, 3072)
    assert tuple(sd["vision_tokenizer.layers.0.0.to_kv.weight"].shape) == (3072, 1152)
    assert tuple(sd["vision_tokenizer.projection.weight"].shape) == (3072, 1152)
    assert tuple(sd["lang_model.lm_head.additional_fc.weight"].shape) == (3, 3072)
    assert not any(k.startswith("vlm.") for k in keys)


@pytest.mark.parametrize("shard", [None, 30_000])
def test_hf_directory_round_trip(model, tmp_path, shard):
    out = tmp_path / "ckpt"
    model.save_pretrained(str(out), **({"max_shard_size": shard} if shard else {}))
    files = os.listdir(out)
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    raw = {}
    from safetensors.torch import load_file
    for f in files:
        if f.endswith(".safetensors"):
            raw.update(load_file(str(out / f)))
    assert raw and all(k.startswith("vlm.") for k in raw)
    loaded = XGenMM.from_pretrained(str(out))
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f or ".old-" in f]  # no leftovers


def test_overwrite_keeps_directory_consistent(model, tmp_path):
    out = str(tmp_path / "ckpt")
    model.save_pretrained(out, max_shard_size=30_000)
    model.save_pretrained(out)  # single file now: stale shards must not survive
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_training_pt_with_preset_and_config_json(model, tmp_path):
    pt = str(tmp_path / "ckpt.pt")
    save_training_checkpoint(model, pt)
    assert torch.equal(_outputs(XGenMM.from_pretrained(pt, config="tiny_wide")), _outputs(model))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(model.config.to_hf_dict()))
    assert torch.equal(_outputs(XGenMM.from_pretrained(pt, config=str(cfg))), _outputs(model))
    nested = str(tmp_path / "nested.pt")
    torch.save({"epoch": 1, "model_state_dict": model.state_dict()}, nested)
    assert torch.equal(_outputs(XGenMM.from_pretrained(nested, config="tiny_wide")), _outputs(model))


def test_pt_without_config_is_a_clear_error(model, tmp_path):
    pt = str(tmp_path / "ckpt.pt")
    save_training_checkpoint(model, pt)
    with pytest.raises(CheckpointError, match="pass config="):
        XGenMM.from_pretrained(pt)


def test_missing_unexpected_and_mismatched_keys_are_listed(model, tmp_path):
    sd = dict(model.state_dict())
    del sd["vision_tokenizer.norm.weight"]
    sd["lang_model.model.layers.0.self_attn.qkv_proj.weight"] = torch.zeros(3, 3)
    sd["lang_model.extra.weight"] = torch.zeros(1)
    pt = str(tmp_path / "bad.pt")
    torch.save(sd, pt)
    with pytest.raises(CheckpointError) as e:
        XGenMM.from_pretrained(pt, config="tiny_wide")
    msg = str(e.value)
    assert pt in msg
    assert "missing keys (1): vision_tokenizer.norm.weight" in msg
    assert "unexpected keys (1): lang_model.extra.weight" in msg
    assert "lang_model.model.layers.0.self_attn.qkv_proj.weight: file (3, 3)" in msg


def test_checkpoint_without_pooling_head_loads(model, tmp_path):
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("vision_encoder.head.")}
    pt = str(tmp_path / "nohead.pt")
    torch.save(sd, pt)
    m = XGenMM.from_pretrained(pt, config="tiny_wide")
    assert m.vision_encoder.head is None
    assert torch.equal(_outputs(m), _outputs(model))


# (torch warns about the raw pickle's protocol before refusing it: expected here)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_unpickling_arbitrary_objects_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    p = str(tmp_path / "evil.pt")
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(p)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 3])
def test_corrupt_or_empty_files(tmp_path, content):
    for name in ("w.safetensors", "w.pt"):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(p)):
            read_state_dict(str(p))


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        read_state_dict(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_state_dict(str(tmp_path))


def test_released_style_config_uses_table_and_ignores_unknown_keys():
    cfg = {
        "model_type": "xgenmm", "architectures": ["XGenMMModelForConditionalGeneration"], "auto_map": {"x": "y"},
        "vision_encoder_config": {"model_name": "google/siglip-so400m-patch14-384",
                                  "anyres_grids": [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]],
                                  "anyres_patch_sampling": True, "some_new_field": 1},
        "vision_tokenizer_config": {"vis_feature_dim": 1152, "lang_embedding_dim": 3072, "num_vis_tokens": 128,
                                    "image_aspect_ratio": "anyres", "repeat_latents": False},
        "text_config": {"model_type": "phi3", "initial_tokenizer_len": 32012, "pad_token_id": 32011,
                        "vocab_size": 32064, "sliding_window": 2047, "rope_scaling": None, "whatever": [1, 2]},
        "transformers_version": "4.41.1",
    }
    c = XGenMMConfig.from_hf_dict(cfg)
    assert (c.vision.hidden_size, c.vision.num_hidden_layers, c.vision.intermediate_size) == (1152, 27, 4304)
    assert c.perceiver.num_latents == 128 and c.perceiver.depth == 6 and c.perceiver.dim_head == 96
    assert c.text.num_logits == 32015 and c.text.head_dim == 96
    assert c.anyres_grids == cfg["vision_encoder_config"]["anyres_grids"]
    # explicit SigLIP fields override the table
    cfg["vision_encoder_config"].update(num_hidden_layers=3, hidden_size=64, intermediate_size=80)
    cfg["vision_tokenizer_config"]["vis_feature_dim"] = 64
    c = XGenMMConfig.from_hf_dict(cfg)
    assert (c.vision.num_hidden_layers, c.vision.hidden_size) == (3, 64)


def test_unknown_vision_encoder_without_sizes_is_an_error():
    with pytest.raises(ValueError, match="not in the built-in table"):
        XGenMMConfig.from_hf_dict({"vision_encoder_config": {"model_name": "someone/vit"}, "text_config": {}})


def test_config_round_trip():
    for name in ("tiny", "tiny_wide", "xgenmm_phi3_mini"):
        c = XGenMMConfig.resolve(name)
        assert XGenMMConfig.from_hf_dict(c.to_hf_dict()).to_hf_dict() == c.to_hf_dict()


def test_random_init_gives_every_norm_a_scale_near_one():
    """Norm weights by module type: the perceiver FF's LayerNorm (`layers.{i}.1.0`) has no "norm" in its name."""
    from xgenmm_fast.model.phi3 import RMSNorm
    model = tiny_model()
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, RMSNorm))]
    assert any(n.endswith(".1.0") for n, _ in norms)
    for name, mod in norms:
        assert abs(mod.weight.float().mean().item() - 1.0) < 0.2, name
