"""Drop-in API: create_model_and_transforms from local SigLIP / Phi-3 / tokenizer directories."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Phi3Config, Phi3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

import xgenmm_fast
from xgenmm_fast.data.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                  num_attention_heads=4, image_size=28, patch_size=14))
    vision.save_pretrained(root / "siglip")
    tok = build_tiny_tokenizer(root / "tok")
    lm = Phi3ForCausalLM(Phi3Config(vocab_size=800, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
                                    max_position_embeddings=256))
    lm.save_pretrained(root / "phi3")
    return root, vision.eval(), lm.eval(), tok


def test_create_model_and_transforms(dirs):
    root, vision, lm, tok = dirs
    model, processor, tokenizer = xgenmm_fast.create_model_and_transforms(
        clip_vision_encoder_path=str(root / "siglip"), clip_vision_encoder_pretrained="google",
        lang_model_path=str(root / "phi3"), tokenizer_path=str(tok), model_family="xgenmm_v1",
        num_vision_tokens=4, image_aspect_ratio="anyres", anyres_patch_sampling=True, verbose=False)
    n = len(tokenizer)
    info = model.tokenizer_info
    assert n == info.initial_tokenizer_len + 3 and tokenizer.convert_tokens_to_ids("<image>") == model.media_token_id
    assert model.config.perceiver.num_latents == 4 and processor.transforms[0].size == (28, 28)
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model.vision_encoder(x), vision(x).last_hidden_state, rtol=1e-5, atol=1e-6)
        ids = torch.randint(3, info.initial_tokenizer_len - 1, (2, 7))
        ours = model(vision_x=None, lang_x=ids).logits
        theirs = lm(input_ids=ids).logits
    base = info.initial_tokenizer_len
    assert ours.shape[-1] == base + 3
    torch.testing.assert_close(ours[..., :base], theirs[..., :base], rtol=1e-5, atol=1e-5)
    # the original's preprocessing entry point, with the returned processor
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    tiles = xgenmm_fast.process_anyres_image(img, processor, model.config.anyres_grids)
    from xgenmm_fast.data.anyres import get_anyres_grid_shape
    npw, nph = get_anyres_grid_shape(img.size, model.config.anyres_grids, 28)
    assert tiles.shape == (1 + npw * nph, 3, 28, 28)
    fast = xgenmm_fast.preprocess_images([img], grids=model.config.anyres_grids, tile=28)
    assert torch.equal(fast.pixel_values, tiles)  # the C++ batch path gives the same tiles
    with torch.no_grad():
        out = model(vision_x=[tiles[None]], lang_x=torch.tensor([[1, model.media_token_id, 5, 6]]),
                    image_size=[img.size])
    assert out.logits.shape[1] == 3 + tiles.shape[0] * 4


def test_missing_parts_are_clear_errors(dirs, tmp_path):
    root, _, _, tok = dirs
    with pytest.raises(FileNotFoundError, match="config.json"):
        xgenmm_fast.create_model_and_transforms(str(tmp_path / "nope"), "google", str(root / "phi3"), str(tok),
                                                verbose=False)
    with pytest.raises(ValueError, match="model_family"):
        xgenmm_fast.create_model_and_transforms(str(root / "siglip"), "google", str(root / "phi3"), str(tok),
                                                model_family="flamingo", verbose=False)
