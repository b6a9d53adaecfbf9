"""Anyres grid arithmetic (SPEC §3): best grid, resize/pad geometry, feature-map mask.

The Pillow reference path, the C++ path (which mirrors these formulas in csrc/) and the model's
feature grouping all use these. Float expressions keep the original's operation
order because the released models were trained with exactly these roundings.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

TILE = 384  # SigLIP so400m/14 input size: base tile and grid cell
GRID_MULTIPLIERS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # (tiles across, tiles down)


def grids_from_multipliers(base: int = TILE, multipliers=GRID_MULTIPLIERS) -> list[list[int]]:
    """[(m, n), ...] -> [[base*m, base*n], ...] pixel grids (width, height), as the original data code."""
    return [[base * m, base * n] for (m, n) in multipliers]


DEFAULT_GRIDS = grids_from_multipliers()


def select_best_resolution(image_size: Sequence[int], grids: Sequence[Sequence[int]]) -> tuple[int, int]:
    """Pick the grid (width, height) keeping the most image pixels, ties to the least waste, then first.

    image_size is (W, H) as PIL's ``Image.size``.
    """
    width, height = int(image_size[0]), int(image_size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got (w, h) = ({width}, {height})")
    best, best_eff, best_waste = None, 0, float("inf")
    for gw, gh in grids:
        scale = min(gw / width, gh / height)
        down_w, down_h = int(width * scale), int(height * scale)
        eff = min(down_w * down_h, width * height)
        waste = gw * gh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(gw), int(gh)), eff, waste
    if best is None:  # only when every grid keeps 0 pixels (extreme aspect ratios): take the first
        best = (int(grids[0][0]), int(grids[0][1]))
    return best


def get_anyres_grid_shape(image_size: Sequence[int], grids: Sequence[Sequence[int]], tile: int = TILE) -> tuple[int, int]:
    """Tiles (across, down) of the best grid for an image of size (W, H)."""
    gw, gh = select_best_resolution(image_size, grids)
    return gw // tile, gh // tile


def resize_and_pad_geometry(image_size: Sequence[int], target: Sequence[int]) -> tuple[int, int, int, int]:
    """(new_w, new_h, paste_x, paste_y) for fitting (W, H) into target (gw, gh) keeping aspect, centred."""
    width, height = int(image_size[0]), int(image_size[1])
    tw, th = int(target[0]), int(target[1])
    scale_w = tw / width
    scale_h = th / height
    if scale_w < scale_h:
        new_w = tw
        new_h = min(math.ceil(height * scale_w), th)
    else:
        new_h = th
        new_w = min(math.ceil(width * scale_h), tw)
    return new_w, new_h, (tw - new_w) // 2, (th - new_h) // 2


def feature_map_padding(image_size: Sequence[int], map_w: int, map_h: int) -> tuple[str, int]:
    """Which axis of a (map_h, map_w) feature map is padding, and how many entries on each side.

    Returns ("rows", pad) or ("cols", pad): entries [0, pad) and [len - pad, len) on that axis are 0.
    Mirrors the original ``unpad_image`` (scale factor computed first, then multiplied).
    """
    orig_w, orig_h = int(image_size[0]), int(image_size[1])
    if orig_w / orig_h > map_w / map_h:
        new_h = int(orig_h * (map_w / orig_w))
        return "rows", (map_h - new_h) // 2
    new_w = int(orig_w * (map_h / orig_h))
    return "cols", (map_w - new_w) // 2


def feature_map_mask(image_size: Sequence[int], grid_shape: Sequence[int], g: int) -> list[list[int]]:
    """0/1 mask [nph*g rows][npw*g cols] over the tiles' joint feature map (SPEC §3.4).

    Note the original zeroes ``[h - pad:]`` which is empty when pad == 0 (not the whole axis).
    """
    npw, nph = int(grid_shape[0]), int(grid_shape[1])
    map_w, map_h = npw * g, nph * g
    axis, pad = feature_map_padding(image_size, map_w, map_h)
    mask = [[1] * map_w for _ in range(map_h)]
    if pad > 0:
        if axis == "rows":
            for r in list(range(0, pad)) + list(range(map_h - pad, map_h)):
                mask[r] = [0] * map_w
        else:
            for row in mask:
                for c in list(range(0, pad)) + list(range(map_w - pad, map_w)):
                    row[c] = 0
    return mask


def anyres_feature_masks(image_size: Sequence[int], grids: Sequence[Sequence[int]] = DEFAULT_GRIDS, tile: int = TILE,
                         g: int = TILE // 14, device=None) -> torch.Tensor:
    """Perceiver masks (1 + n, g*g) float32 with the grouping quirk (SPEC §3.5).

    Row 0 (base tile) is all ones; then the (nph*g, npw*g) feature-map mask flattened row-major and cut
    into n consecutive chunks of g*g, which are horizontal strips of the map when npw > 1.
    """
    npw, nph = get_anyres_grid_shape(image_size, grids, tile)
    map_h, map_w = nph * g, npw * g
    mask = torch.ones(map_h, map_w, device=device)
    axis, pad = feature_map_padding(image_size, map_w, map_h)
    if pad > 0:
        if axis == "rows":
            mask[:pad] = 0
            mask[map_h - pad:] = 0
        else:
            mask[:, :pad] = 0
            mask[:, map_w - pad:] = 0
    return torch.cat([torch.ones(1, g * g, device=device), mask.reshape(npw * nph, g * g)])
