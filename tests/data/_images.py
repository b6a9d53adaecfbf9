"""Shared helpers for the image preprocessing tests: random images in every Pillow mode we handle,
with a fresh seed per run that is printed (pytest shows it on failure) and can be pinned with
XGENMM_TEST_SEED=<int>."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

MODES = ("L", "LA", "RGB", "RGBA", "P", "PA", "I;16", "CMYK")


def fresh_seed(label: str = "") -> int:
    env = os.environ.get("XGENMM_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    print(f"random seed{(' for ' + label) if label else ''}: {seed} (rerun with XGENMM_TEST_SEED={seed})")
    return seed


def random_image(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Uniform-noise image (the worst case for resampling roundings and clipping) of PIL size (W, H)."""
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if mode == "LA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8))
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    if mode == "I;16":  # values past 255 too: Pillow clips them when converting to RGB
        return Image.fromarray(rng.integers(0, 700, (h, w), dtype=np.uint16))
    if mode == "CMYK":
        return Image.frombytes("CMYK", (w, h), rng.integers(0, 256, (h, w, 4), dtype=np.uint8).tobytes())
    if mode in ("P", "PA"):
        palette_len = int(rng.integers(2, 257))
        index = rng.integers(0, palette_len, (h, w), dtype=np.uint8)
        if mode == "P":
            im = Image.frombytes("P", (w, h), index.tobytes())
        else:
            alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
            im = Image.frombytes("PA", (w, h), np.stack([index, alpha], axis=-1).tobytes())
        im.putpalette(rng.integers(0, 256, palette_len * 3, dtype=np.uint8).tobytes())
        return im
    raise ValueError(f"no generator for mode {mode!r}")


# ---- raw arrays for the C++ / CUDA batch paths (test_anyres_pack_emulated, kernels/test_anyres_cuda) ----
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ARRAY_FORMATS = ("L", "LA", "RGB", "RGBA", "I;16")
# (W, H): 1x1, single rows / columns, odd, the target workload (1000x700), exact grid sizes, a base tile
# that shrinks the height much more than the width (vertical pass first under Pillow 13), very wide / tall
PACK_SIZES = [
    (1, 1), (1, 2000), (2000, 1), (2, 3), (383, 385), (641, 479), (1000, 700),
    (384, 384), (384, 768), (768, 768), (400, 1500), (5000, 40), (40, 5000),
]  # fmt: skip


def random_array(fmt: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise of PIL size (W, H) in one of the C++ input formats (ARRAY_FORMATS)."""
    w, h = size
    if fmt == "I;16":  # past 255 too: converted by clipping
        return rng.integers(0, 700, (h, w), dtype=np.uint16)
    channels = {"L": 0, "LA": 2, "RGB": 3, "RGBA": 4}[fmt]
    return rng.integers(0, 256, (h, w, channels) if channels else (h, w), dtype=np.uint8)
