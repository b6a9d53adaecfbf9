"""Tiny models and inputs for model tests: random weights, random tiles of the right counts."""
from __future__ import annotations

import torch

from xgenmm_fast import XGenMM
from xgenmm_fast.data.anyres import get_anyres_grid_shape
from xgenmm_fast.model.init import init_random_weights


def tiny_model(preset: str = "tiny", seed: int = 0) -> XGenMM:
    torch.manual_seed(seed)
    return init_random_weights(XGenMM(preset), seed=seed).eval()


def sizes_for_every_grid(tile: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(w, h) image sizes that select each of the five default grids (npw, nph)."""
    return {
        (1, 2): (int(tile * 0.8), int(tile * 1.9)),
        (2, 1): (int(tile * 1.9) + 1, int(tile * 0.7)),
        (2, 2): (int(tile * 1.7), int(tile * 1.5) + 1),
        (3, 1): (int(tile * 3.3), int(tile * 0.9)),
        (1, 3): (int(tile * 0.9) + 1, int(tile * 3.1)),
    }


def random_tiles(model: XGenMM, size, gen: torch.Generator) -> torch.Tensor:
    """(1, 1 + n, 3, s, s) tiles in [-1, 1] for an image of `size`, n from its anyres grid."""
    cfg = model.config
    npw, nph = get_anyres_grid_shape(size, cfg.anyres_grids, cfg.tile_size)
    return torch.rand(1, 1 + npw * nph, 3, cfg.tile_size, cfg.tile_size, generator=gen) * 2 - 1


def random_text(model: XGenMM, n: int, gen: torch.Generator, n_images: int = 0) -> torch.Tensor:
    """n ids from the base vocabulary (no pad) with `n_images` <image> ids at random places."""
    cfg = model.config.text
    ids = torch.randint(3, cfg.pad_token_id, (n,), generator=gen)
    if n_images:
        where = torch.randperm(n, generator=gen)[:n_images]
        ids[where] = model.media_token_id
    return ids
