"""Pillow reference for anyres preprocessing (SPEC §3): the original's ``process_anyres_image``.

This is the slow path the C++ one (``xgenmm_fast.data.preprocess``, csrc/anyres) is tested against
value for value. Steps, per image (W, H):

1. best grid (gw, gh) = ``select_best_resolution`` (xgenmm_fast.data.anyres);
2. ``image.resize((new_w, new_h))`` (Pillow's default filter, bicubic) pasted centred on a black
   (gw, gh) RGB canvas;
3. the canvas cut into s x s tiles, row-major (box (j, i, j + s, i + s), i over the height outer);
4. base tile = ``image.resize((s, s))`` (aspect ignored);
5. ``processor`` applied to [base, tile_0, ..., tile_{n-1}] and stacked: (1 + n, 3, s, s).

The original loaded every image with ``.convert("RGB")``; so does ``process_anyres_image`` here
for any image whose mode is not RGB. torchvision is not a dependency: ``ImageProcessor`` rebuilds
the original's Compose([Resize((s, s), BICUBIC), convert RGB, ToTensor, Normalize]) with the same
float32 arithmetic.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from xgenmm_fast.data.anyres import (
    DEFAULT_GRIDS,
    TILE,
    anyres_feature_masks,  # noqa: F401  (re-exported: the masks of the reference path)
    get_anyres_grid_shape,
    resize_and_pad_geometry,
    select_best_resolution,
)
from xgenmm_fast.data.preprocess import DEFAULT_MEAN, DEFAULT_STD

# ---------------------------------------------------------------------------------------------
# The tile processor (torchvision-free rebuild of the original's transform)
# ---------------------------------------------------------------------------------------------


class Resize:
    """Bicubic resize to ``size`` = (height, width) unless the image already has it."""

    def __init__(self, size: int | Sequence[int]):
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def __call__(self, image: Image.Image) -> Image.Image:
        h, w = self.size
        if image.size == (w, h):
            return image
        return image.resize((w, h), Image.BICUBIC)


class ConvertRGB:
    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


class ToTensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1]: uint8 -> float32, then / 255 (as torchvision)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            raise ValueError(f"ToTensor expects an RGB image, got mode {image.mode!r}")
        w, h = image.size
        hwc = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(h, w, 3)
        return hwc.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class Normalize:
    """(x - mean[c]) / std[c] with mean and std as float32 tensors (as torchvision)."""

    def __init__(self, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {self.mean} and {self.std}")

    def __call__(self, chw: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=chw.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=chw.dtype).view(-1, 1, 1)
        return chw.sub(mean).div(std)


class ImageProcessor:
    """PIL image -> normalised float32 (3, s, s), the original's per-tile transform.

    ``transforms[0].size`` is (s, s) and ``transforms[-1]`` carries ``mean`` / ``std``, the attributes
    the original code reads from its torchvision Compose.
    """

    def __init__(self, tile: int = TILE, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        self.transforms = [Resize(tile), ConvertRGB(), ToTensor(), Normalize(mean, std)]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = image
        for t in self.transforms:
            out = t(out)
        return out


# ---------------------------------------------------------------------------------------------
# Anyres steps
# ---------------------------------------------------------------------------------------------


def parse_grids(grid_pinpoints) -> list[tuple[int, int]]:
    """Grids as [(width, height), ...]; accepts the original's string form "[(384, 768), ...]" too."""
    if isinstance(grid_pinpoints, str):
        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    grids = [(int(g[0]), int(g[1])) for g in grid_pinpoints]
    if not grids:
        raise ValueError("grid_pinpoints is empty; expected [(width, height), ...]")
    return grids


def resize_and_pad_image(image: Image.Image, target: Sequence[int]) -> Image.Image:
    """Aspect-preserving bicubic resize into target (gw, gh), centred on a black RGB canvas."""
    new_w, new_h, paste_x, paste_y = resize_and_pad_geometry(image.size, target)
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (int(target[0]), int(target[1])), (0, 0, 0))
    canvas.paste(resized, (paste_x, paste_y))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Row-major s x s crops: box (j, i, j + s, i + s) with i over the height outer."""
    width, height = image.size
    return [
        image.crop((j, i, j + patch_size, i + patch_size))
        for i in range(0, height, patch_size)
        for j in range(0, width, patch_size)
    ]


def process_anyres_image(
    image: Image.Image,
    processor: Callable[[Image.Image], torch.Tensor],
    grid_pinpoints=DEFAULT_GRIDS,
) -> torch.Tensor:
    """One image -> (1 + n, 3, s, s): [base, tile_0, ..., tile_{n-1}] through ``processor``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    grids = parse_grids(grid_pinpoints)
    best = select_best_resolution(image.size, grids)
    padded = resize_and_pad_image(image, best)
    tile = processor.transforms[0].size[0]
    patches = divide_to_patches(padded, tile)
    base = image.resize((tile, tile))
    return torch.stack([processor(p) for p in [base, *patches]], dim=0)


