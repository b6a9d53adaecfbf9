"""The C++ anyres path against the Pillow reference (SPEC §3): tiles value for value in every input
mode and many sizes, masks, grid shapes, output buffers, threads, errors; plus the resampler alone.

Acceptance bar: at most 1 pixel level off anywhere (2/255 in units normalised with std 0.5) and at
least 99.9% of values identical. The C++ resampler reproduces Pillow's fixed-point arithmetic, so
these tests also demand bit-exact equality; a failure that passes the bar but not exactness means
the two diverged in a rounding.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from PIL import Image

from tests.data._images import MODES, fresh_seed, random_image
from xgenmm_fast import _ext
from xgenmm_fast.data import preprocess as pp
from xgenmm_fast.data.anyres import TILE
from xgenmm_fast.data.preprocess import AnyresBatch, preprocess_images

pytestmark = pytest.mark.skipif(
    not _ext.HAS_CPP_EXT, reason="C++ extension not built (pip install --no-build-isolation -e .)"
)

LEVEL = 1 / 255 / 0.5  # one pixel level in normalised units (std 0.5)
SIZES = [
    (1, 1), (1, 2000), (2000, 1), (2, 3), (383, 385), (641, 479), (1000, 700),
    (384, 768), (768, 768), (3000, 2000),
]  # fmt: skip
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def assert_batches_match(got: AnyresBatch, ref: AnyresBatch, context: str) -> None:
    assert got.tiles_per_image == ref.tiles_per_image, context
    assert got.grid_shapes == ref.grid_shapes, context
    assert got.image_sizes == ref.image_sizes, context
    assert len(got.feature_masks) == len(ref.feature_masks), context
    for a, b in zip(got.feature_masks, ref.feature_masks):
        assert torch.equal(a, b), context
    a, b = got.pixel_values, ref.pixel_values
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32, context
    diff = (a - b).abs()
    max_diff = diff.max().item() if diff.numel() else 0.0
    same = diff.eq(0).float().mean().item() if diff.numel() else 1.0
    assert max_diff <= LEVEL * 1.0001, f"{context}: max abs diff {max_diff} > one level {LEVEL}"
    assert same >= 0.999, f"{context}: only {same:.5%} of values identical"
    assert torch.equal(a, b), f"{context}: within the bar but not bit-exact ({(diff > 0).sum().item()} values differ)"


@pytest.mark.parametrize("mode", MODES)
def test_cpp_matches_pillow_per_mode(mode):
    seed = fresh_seed(mode)
    rng = np.random.default_rng(seed)
    # the 6-megapixel case is the slow one for the reference: run it for one mode of each C++ input kind
    sizes = SIZES if mode in ("RGB", "L", "P") else [s for s in SIZES if s != (3000, 2000)]
    images = [random_image(mode, size, rng) for size in sizes]
    assert all(im.mode == mode for im in images)
    got = preprocess_images(images, backend="cpp")
    ref = preprocess_images(images, backend="pillow")
    assert_batches_match(got, ref, f"mode {mode}, seed {seed}")
    assert got.tiles_per_image == [1 + a * b for a, b in got.grid_shapes]
    assert [m.shape for m in got.feature_masks] == [(t, 27 * 27) for t in got.tiles_per_image]


def test_exotic_modes_go_through_pillow_convert():
    seed = fresh_seed("exotic modes")
    rng = np.random.default_rng(seed)
    rgb = random_image("RGB", (97, 203), rng)
    images = [
        rgb.convert("1"),
        rgb.convert("YCbCr"),
        rgb.convert("RGBX"),
        rgb.convert("HSV"),
        Image.fromarray(rng.integers(-5, 400, (60, 70), dtype=np.int32)),  # "I"
        Image.fromarray(rng.uniform(-10, 300, (60, 70)).astype(np.float32)),  # "F"
        Image.frombytes("I;16B", (30, 20), rng.integers(0, 256, 1200, dtype=np.uint8).tobytes()),
    ]
    got = preprocess_images(images, backend="cpp")
    ref = preprocess_images(images, backend="pillow")
    assert_batches_match(got, ref, f"modes {[im.mode for im in images]}, seed {seed}")


def test_cpp_matches_pillow_odd_sizes_one_by_one():
    seed = fresh_seed("odd sizes")
    rng = np.random.default_rng(seed)
    sizes = [tuple(int(v) for v in rng.integers(1, 1600, 2)) for _ in range(8)]
    sizes += [(int(w), int(h)) for w, h in rng.integers(1, 40, (8, 2))]
    for size in sizes:
        im = random_image("RGB", size, rng)
        assert_batches_match(
            preprocess_images([im], backend="cpp"), preprocess_images([im], backend="pillow"), f"{size}, seed {seed}"
        )


def test_numpy_inputs_match_pil_inputs():
    seed = fresh_seed("numpy")
    rng = np.random.default_rng(seed)
    arrays = [
        rng.integers(0, 256, (37, 91), dtype=np.uint8),
        rng.integers(0, 256, (91, 37, 1), dtype=np.uint8),
        rng.integers(0, 256, (50, 60, 2), dtype=np.uint8),
        rng.integers(0, 256, (500, 321, 3), dtype=np.uint8),
        rng.integers(0, 256, (123, 456, 4), dtype=np.uint8),
        rng.integers(0, 1000, (77, 66), dtype=np.uint16),
    ]
    got = preprocess_images(arrays, backend="cpp")
    ref = preprocess_images(arrays, backend="pillow")
    assert_batches_match(got, ref, f"numpy inputs, seed {seed}")
    assert got.image_sizes == [(a.shape[1], a.shape[0]) for a in arrays]
    # non-contiguous views and big-endian uint16 are accepted as the same pixels
    views = [arrays[3][:, ::-1], arrays[5].astype(">u2")]
    copies = [np.ascontiguousarray(arrays[3][:, ::-1]), arrays[5]]
    assert torch.equal(
        preprocess_images(views, backend="cpp").pixel_values, preprocess_images(copies, backend="cpp").pixel_values
    )


def test_clip_normalisation_is_exact():
    seed = fresh_seed("clip")
    rng = np.random.default_rng(seed)
    images = [random_image("RGB", (641, 479), rng), random_image("L", (200, 900), rng)]
    kw = {"mean": CLIP_MEAN, "std": CLIP_STD}
    got = preprocess_images(images, backend="cpp", **kw)
    ref = preprocess_images(images, backend="pillow", **kw)
    assert torch.equal(got.pixel_values, ref.pixel_values), f"seed {seed}"


def test_other_tile_and_patch():
    seed = fresh_seed("tile 64")
    rng = np.random.default_rng(seed)
    grids = [[64, 128], [128, 64], [128, 128]]
    images = [random_image("RGB", (300, 200), rng), random_image("RGBA", (50, 170), rng)]
    got = preprocess_images(images, grids=grids, tile=64, patch=8, backend="cpp")
    ref = preprocess_images(images, grids=grids, tile=64, patch=8, backend="pillow")
    assert_batches_match(got, ref, f"tile 64, seed {seed}")
    assert got.feature_masks[0].shape[1] == 64


def test_threads_give_identical_output():
    seed = fresh_seed("threads")
    rng = np.random.default_rng(seed)
    images = [random_image(m, tuple(int(v) for v in rng.integers(1, 1200, 2)), rng) for m in MODES for _ in range(2)]
    one = preprocess_images(images, num_threads=1, backend="cpp")
    two = preprocess_images(images, num_threads=2, backend="cpp")
    many = preprocess_images(images, num_threads=7, backend="cpp")
    assert torch.equal(one.pixel_values, two.pixel_values) and torch.equal(one.pixel_values, many.pixel_values)


def test_writes_into_preallocated_out():
    seed = fresh_seed("out")
    rng = np.random.default_rng(seed)
    images = [random_image("RGB", (1000, 700), rng), random_image("L", (383, 385), rng)]
    ref = preprocess_images(images, backend="cpp")
    total = sum(ref.tiles_per_image)
    out = torch.full((total, 3, TILE, TILE), float("nan"))
    got = preprocess_images(images, backend="cpp", out=out)
    assert got.pixel_values.data_ptr() == out.data_ptr()
    assert torch.equal(out, ref.pixel_values)
    for dtype in (torch.bfloat16, torch.float16):
        out16 = torch.empty(total, 3, TILE, TILE, dtype=dtype)
        got16 = preprocess_images(images, backend="cpp", out=out16)
        assert got16.pixel_values.dtype == dtype
        assert torch.equal(out16, ref.pixel_values.to(dtype)), dtype
    # the Pillow backend honours out as well
    out_ref = torch.empty(total, 3, TILE, TILE)
    assert torch.equal(preprocess_images(images, backend="pillow", out=out_ref).pixel_values, ref.pixel_values)


def test_out_of_wrong_shape_or_dtype_is_rejected():
    im = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="expected"):
        preprocess_images([im], backend="cpp", out=torch.empty(2, 3, TILE, TILE))
    with pytest.raises(ValueError, match="dtype"):
        preprocess_images([im], backend="cpp", out=torch.empty(3, 3, TILE, TILE, dtype=torch.float64))


def test_split_and_empty_batch():
    images = [np.zeros((10, 20, 3), np.uint8), np.zeros((900, 300), np.uint8)]
    b = preprocess_images(images, backend="cpp")
    parts = b.split()
    assert [p.shape[0] for p in parts] == b.tiles_per_image
    empty = preprocess_images([], backend="cpp")
    assert empty.pixel_values.shape == (0, 3, TILE, TILE) and empty.tiles_per_image == [] and empty.feature_masks == []


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((5, 5, 3), np.float32), "image 0.*float32"),
        (np.zeros((5, 5, 5), np.uint8), "image 0.*shape"),
        (np.zeros((5, 5, 3), np.uint16), "image 0.*uint16"),
        (np.zeros((0, 5, 3), np.uint8), "image 0.*empty"),
    ],
)
def test_bad_arrays_are_rejected(array, match):
    with pytest.raises(ValueError, match=match):
        preprocess_images([array], backend="cpp")


def test_bad_backend_and_grids():
    with pytest.raises(ValueError, match="backend"):
        preprocess_images([np.zeros((4, 4), np.uint8)], backend="opencv")
    with pytest.raises(ValueError, match="multiples of the tile"):
        preprocess_images([np.zeros((4, 4), np.uint8)], grids=[[100, 384]], backend="cpp")


def test_missing_extension_falls_back_or_explains(monkeypatch):
    im = np.zeros((20, 30, 3), np.uint8)
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "HAS_CPP_EXT", False)
    assert preprocess_images([im]).pixel_values.shape == (3, 3, TILE, TILE)  # auto -> pillow
    with pytest.raises(_ext.ExtensionNotBuiltError, match="pip install --no-build-isolation -e ."):
        preprocess_images([im], backend="cpp")


def test_numpy_inputs_work_without_pillow():
    # the GPU machine may lack Pillow: arrays through the C++ path must not need it
    code = textwrap.dedent(
        """
        import sys
        sys.modules["PIL"] = None  # any "import PIL" now raises ImportError
        import numpy as np
        from xgenmm_fast.data.preprocess import pillow_pass_order, preprocess_images
        b = preprocess_images([np.zeros((700, 1000, 3), np.uint8), np.zeros((30, 40), np.uint16)], backend="auto")
        assert b.tiles_per_image == [5, 3], b.tiles_per_image
        assert pillow_pass_order() == "pillow"
        try:
            preprocess_images([np.zeros((4, 4), np.uint8)], backend="pillow")
        except ImportError as e:
            assert "Pillow" in str(e)
        else:
            raise AssertionError("the pillow backend ran without Pillow")
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ------------------------------------------------------------------------------ the resampler alone


def test_pass_order_probe_distinguishes_orders():
    C = _ext.cpp_ext()
    probe = np.random.default_rng(0).integers(0, 256, (*pp._PROBE_IN_HW, 3), dtype=np.uint8)
    a = C.resize_bicubic(torch.from_numpy(probe), pp._PROBE_OUT_WH, "pillow")
    b = C.resize_bicubic(torch.from_numpy(probe), pp._PROBE_OUT_WH, "horizontal_first")
    assert not torch.equal(a, b)
    assert pp.pillow_pass_order() in ("pillow", "horizontal_first")


def test_resize_bicubic_matches_pillow_random_sizes():
    C = _ext.cpp_ext()
    order = pp.pillow_pass_order()
    seed = fresh_seed("resize")
    rng = np.random.default_rng(seed)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(1, 160, 2))
        ow, oh = (int(v) for v in rng.integers(1, 220, 2))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).resize((ow, oh), Image.BICUBIC))
        got = C.resize_bicubic(torch.from_numpy(a), (ow, oh), order).numpy()
        assert np.array_equal(got, ref), f"{(w, h)} -> {(ow, oh)}, seed {seed}"


def test_resize_identity_is_a_copy():
    C = _ext.cpp_ext()
    a = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(C.resize_bicubic(torch.from_numpy(a), (23, 17)).numpy(), a)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16", "P", "PA"])
def test_mode_conversion_matches_pillow_convert(mode):
    seed = fresh_seed(mode)
    rng = np.random.default_rng(seed)
    im = random_image(mode, (61, 47), rng)
    arr = pp.image_to_array(im)
    # the same-size "resize" is a copy: what C++ receives and converts, against Pillow's convert
    got = _ext.cpp_ext().resize_bicubic(torch.from_numpy(np.array(arr)), im.size).numpy()
    assert np.array_equal(got, np.asarray(im.convert("RGB"))), f"mode {mode}, seed {seed}"


def test_palette_edge_cases():
    idx = np.arange(12, dtype=np.uint8).reshape(3, 4)
    short = Image.frombytes("P", (4, 3), idx.tobytes())
    short.putpalette(bytes(range(15)))  # 5 entries; indices 5..11 are past the palette
    assert np.array_equal(pp.image_to_array(short), np.asarray(short.convert("RGB")))
    rgba_pal = Image.frombytes("P", (4, 3), idx.tobytes())
    rgba_pal.putpalette(bytes(range(256)) * 4, "RGBA")
    assert np.array_equal(pp.image_to_array(rgba_pal), np.asarray(rgba_pal.convert("RGB")))
    transparent = Image.frombytes("P", (4, 3), idx.tobytes())
    transparent.putpalette(bytes(range(36)))
    transparent.info["transparency"] = 2
    assert np.array_equal(pp.image_to_array(transparent), np.asarray(transparent.convert("RGB")))


def test_resize_order_choices():
    """'installed' equals the Pillow path; the two explicit orders differ somewhere on a base tile
    that shrinks height much more than width, and bad names are rejected."""
    import numpy as np
    from PIL import Image

    from xgenmm_fast.data.preprocess import preprocess_images

    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 256, (1500, 400, 3), dtype=np.uint8))
    installed = preprocess_images([img], backend="cpp").pixel_values
    assert torch.equal(installed, preprocess_images([img], backend="pillow").pixel_values)
    a = preprocess_images([img], backend="cpp", resize_order="pillow13").pixel_values
    b = preprocess_images([img], backend="cpp", resize_order="horizontal_first").pixel_values
    assert not torch.equal(a, b)
    assert (a - b).abs().max() <= 0.25  # a few levels of 255 at most, in normalised units
    with pytest.raises(ValueError, match="resize_order"):
        preprocess_images([img], backend="cpp", resize_order="lanczos")
