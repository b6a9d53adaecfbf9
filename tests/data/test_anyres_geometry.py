"""Anyres grid arithmetic (SPEC §3.1, 3.2, 3.4, 3.5): hand-checked values for the Python formulas,
the Pillow reference's masks, and the C++ mirror of the same formulas on many random sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.data._images import fresh_seed
from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import (
    DEFAULT_GRIDS,
    TILE,
    feature_map_mask,
    feature_map_padding,
    get_anyres_grid_shape,
    grids_from_multipliers,
    resize_and_pad_geometry,
    select_best_resolution,
)
from xgenmm_fast.data.pillow_ref import anyres_feature_masks

G = 27  # 384 // 14
needs_cpp = pytest.mark.skipif(
    not _ext.HAS_CPP_EXT, reason="C++ extension not built (pip install --no-build-isolation -e .)"
)


def test_default_grids():
    assert DEFAULT_GRIDS == [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]
    assert grids_from_multipliers(10, ((1, 2),)) == [[10, 20]]


# ------------------------------------------------------------------------------ best grid (§3.1)


@pytest.mark.parametrize(
    "size, expected",
    [
        # (1000, 700): 768x768 keeps 768*537 pixels, 2x1 / 3x1 only 548*384, 1x2 / 1x3 384*268
        ((1000, 700), (768, 768)),
        ((700, 1000), (768, 768)),
        # aspect 4: 3x1 keeps 1152*288, 2x1 and 2x2 768*192
        ((2000, 500), (1152, 384)),
        ((500, 2000), (384, 1152)),
        ((768, 768), (768, 768)),
        ((384, 768), (384, 768)),
        ((768, 384), (768, 384)),
    ],
)
def test_best_grid_most_pixels(size, expected):
    assert select_best_resolution(size, DEFAULT_GRIDS) == expected


def test_best_grid_ties_go_to_least_waste_then_first():
    # 384x384 keeps all 147456 pixels in every grid; the 1x2 and 2x1 grids waste the least (147456 each)
    assert select_best_resolution((384, 384), DEFAULT_GRIDS) == (384, 768)
    assert select_best_resolution((384, 384), list(reversed(DEFAULT_GRIDS))) == (768, 384)
    # tiny image: every grid keeps its 100 pixels; least waste again
    assert select_best_resolution((10, 10), DEFAULT_GRIDS) == (384, 768)
    # 1x2000: every grid keeps 0 pixels (int(1 * scale) == 0); ties resolve the same way
    assert select_best_resolution((1, 2000), DEFAULT_GRIDS) == (384, 768)
    assert select_best_resolution((2000, 1), DEFAULT_GRIDS) == (384, 768)
    # a waste tie between non-adjacent grids keeps the first
    assert select_best_resolution((384, 384), [[768, 768], [384, 768], [768, 384]]) == (384, 768)


def test_best_grid_rejects_empty_image():
    with pytest.raises(ValueError, match="positive"):
        select_best_resolution((0, 10), DEFAULT_GRIDS)


def test_grid_shape():
    assert get_anyres_grid_shape((1000, 700), DEFAULT_GRIDS, TILE) == (2, 2)
    assert get_anyres_grid_shape((2000, 500), DEFAULT_GRIDS, TILE) == (3, 1)
    assert get_anyres_grid_shape((500, 2000), DEFAULT_GRIDS, TILE) == (1, 3)


# ------------------------------------------------------------------------------ resize and pad (§3.2)


@pytest.mark.parametrize(
    "size, target, expected",
    [
        ((1000, 700), (768, 768), (768, 538, 0, 115)),  # ceil(700 * 0.768) = ceil(537.6) = 538
        ((700, 1000), (768, 768), (538, 768, 115, 0)),
        ((384, 384), (384, 768), (384, 384, 0, 192)),  # scale_w 1 < scale_h 2: width fills
        ((100, 50), (768, 384), (768, 384, 0, 0)),  # equal scales take the height branch
        ((384, 768), (384, 768), (384, 768, 0, 0)),
        ((1, 2000), (384, 768), (1, 768, 191, 0)),  # ceil(1 * 0.384) = 1
        ((2000, 1), (384, 768), (384, 1, 0, 383)),
        ((2000, 500), (1152, 384), (1152, 288, 0, 48)),
    ],
)
def test_resize_and_pad_geometry(size, target, expected):
    assert resize_and_pad_geometry(size, target) == expected


def test_resize_never_exceeds_target():
    for w, h in [(3, 7), (7, 3), (999, 1), (1, 999), (385, 383)]:
        for gw, gh in DEFAULT_GRIDS:
            nw, nh, px, py = resize_and_pad_geometry((w, h), (gw, gh))
            assert 1 <= nw <= gw and 1 <= nh <= gh and px == (gw - nw) // 2 and py == (gh - nh) // 2


# ------------------------------------------------------------------------------ feature-map mask (§3.4)


@pytest.mark.parametrize(
    "size, shape, expected",
    [
        ((1000, 700), (2, 2), ("rows", 8)),  # new_h = int(700 * 54 / 1000) = 37, (54 - 37) // 2
        ((700, 1000), (2, 2), ("cols", 8)),
        ((2000, 500), (3, 1), ("rows", 3)),  # new_h = int(500 * 81 / 2000) = 20, (27 - 20) // 2
        ((768, 768), (2, 2), ("cols", 0)),  # exact fit
        ((770, 768), (2, 2), ("rows", 0)),  # new_h = 53: a 1-row gap rounds to pad 0
        ((1, 2000), (1, 2), ("cols", 13)),  # new_w = int(0.027) = 0
        ((2000, 1), (1, 2), ("rows", 27)),  # new_h = 0: every row is padding
    ],
)
def test_feature_map_padding(size, shape, expected):
    assert feature_map_padding(size, shape[0] * G, shape[1] * G) == expected


def test_feature_map_mask_rows_and_cols():
    rows = np.array(feature_map_mask((1000, 700), (2, 2), G))
    assert rows.shape == (54, 54)
    assert (rows[:8] == 0).all() and (rows[46:] == 0).all() and (rows[8:46] == 1).all()
    cols = np.array(feature_map_mask((700, 1000), (2, 2), G))
    assert (cols[:, :8] == 0).all() and (cols[:, 46:] == 0).all() and (cols[:, 8:46] == 1).all()


def test_feature_map_mask_pad_zero_keeps_everything():
    # the original zeroes [h - pad:], which for pad == 0 is empty, not the whole axis
    assert np.array(feature_map_mask((770, 768), (2, 2), G)).all()
    assert np.array(feature_map_mask((768, 768), (2, 2), G)).all()


def test_feature_map_mask_all_padding():
    assert not np.array(feature_map_mask((2000, 1), (1, 2), G)).any()


# ------------------------------------------------------------------------------ grouping quirk (§3.5)


def test_masks_grouping_quirk_strips():
    m = anyres_feature_masks((1000, 700), DEFAULT_GRIDS, TILE, G)
    assert m.shape == (5, G * G) and m.dtype == torch.float32
    assert m[0].eq(1).all()  # base tile
    # the 54x54 map is cut row-major into 4 chunks of 729 = 13.5 map rows each: chunk 0 starts with
    # the 8 zero rows (432 entries), chunk 3 ends with them, chunks 1 and 2 are all ones
    assert m[1, :432].eq(0).all() and m[1, 432:].eq(1).all()
    assert m[2].eq(1).all() and m[3].eq(1).all()
    assert m[4, : 729 - 432].eq(1).all() and m[4, 729 - 432 :].eq(0).all()


def test_masks_single_column_grid_is_per_tile():
    # npw == 1: chunks are whole tiles; (500, 2000) -> 1x3 grid, map 81 x 27, columns padded
    m = anyres_feature_masks((500, 2000), DEFAULT_GRIDS, TILE, G)
    pad = feature_map_padding((500, 2000), 27, 81)
    assert pad[0] == "cols" and pad[1] > 0
    tiles = m[1:].view(3, G, G)
    assert tiles[:, :, : pad[1]].eq(0).all() and tiles[:, :, pad[1] : G - pad[1]].eq(1).all()


# ------------------------------------------------------------------------------ C++ mirror


def _random_sizes(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 4000, (n, 2))]
    sizes += [(int(w), int(h)) for w, h in rng.integers(1, 64, (n // 4, 2))]
    sizes += [(1, int(h)) for h in rng.integers(1, 20000, 20)] + [(int(w), 1) for w in rng.integers(1, 20000, 20)]
    sizes += [(384 * a, 384 * b) for a in range(1, 4) for b in range(1, 4)]
    return sizes


@needs_cpp
def test_cpp_geometry_matches_python():
    C = _ext.cpp_ext()
    seed = fresh_seed("geometry")
    rng = np.random.default_rng(seed)
    grids = [tuple(g) for g in DEFAULT_GRIDS]
    odd_grids = [(384 * int(a), 384 * int(b)) for a, b in rng.integers(1, 5, (6, 2))]
    for size in _random_sizes(rng, 1500):
        for gl in (grids, odd_grids):
            best = select_best_resolution(size, gl)
            assert tuple(C.best_grid(size, gl)) == best, (size, gl, seed)
            assert tuple(C.grid_shape(size, gl, TILE)) == get_anyres_grid_shape(size, gl, TILE), (size, seed)
            assert tuple(C.resize_and_pad_geometry(size, best)) == resize_and_pad_geometry(size, best), (size, seed)
        shape = get_anyres_grid_shape(size, grids, TILE)
        mw, mh = shape[0] * G, shape[1] * G
        assert tuple(C.feature_map_padding(size, mw, mh)) == feature_map_padding(size, mw, mh), (size, seed)


@needs_cpp
def test_cpp_masks_match_reference():
    C = _ext.cpp_ext()
    seed = fresh_seed("masks")
    rng = np.random.default_rng(seed)
    sizes = _random_sizes(rng, 200) + [(1000, 700), (700, 1000), (770, 768), (2000, 1), (1, 2000)]
    got = C.anyres_feature_masks(sizes, [tuple(g) for g in DEFAULT_GRIDS], TILE, G)
    assert len(got) == len(sizes)
    for size, m in zip(sizes, got):
        assert torch.equal(m, anyres_feature_masks(size, DEFAULT_GRIDS, TILE, G)), (size, seed)


@needs_cpp
def test_cpp_geometry_rejects_bad_input():
    C = _ext.cpp_ext()
    with pytest.raises(ValueError, match="positive"):
        C.best_grid((0, 5), [(384, 768)])
    with pytest.raises(ValueError, match="grids"):
        C.best_grid((5, 5), [])


def test_extension_loader_without_a_build():
    # importing must work without xgenmm_fast._C; using it must say how to build it
    code = (
        "import sys\n"
        "sys.modules['xgenmm_fast._C'] = None\n"
        "from xgenmm_fast import _ext\n"
        "assert not _ext.HAS_CPP_EXT\n"
        "try:\n"
        "    _ext.cpp_function('anyres_preprocess')\n"
        "except _ext.ExtensionNotBuiltError as e:\n"
        "    assert 'pip install --no-build-isolation -e .' in str(e), str(e)\n"
        "    print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
