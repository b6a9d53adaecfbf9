"""pil_memory.pixel_view (a PIL image's memory as a numpy array, no copy) and preprocess.source_array,
which hands those views to the C++ / CUDA anyres paths: the views hold the image's pixels, share its
memory, outlive the image object, and are refused (None) wherever the export is not the layout expected;
preprocessing from views gives exactly the tiles that preprocessing from copied arrays gives."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
import torch
from PIL import Image

from xgenmm_fast import _ext
from xgenmm_fast.data import preprocess as pp
from xgenmm_fast.data.pil_memory import pixel_view

from ._images import fresh_seed, random_image

needs_arrow = pytest.mark.skipif(not hasattr(Image.Image, "__arrow_c_array__"),
                                 reason="Pillow < 11.2 has no Arrow export; pixel_view is then always None")
SIZES = [(1, 1), (1, 7), (7, 1), (3, 2), (383, 385), (1000, 700)]  # (W, H)


@needs_arrow
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", SIZES)
def test_view_holds_the_pixels(mode, size):
    seed = fresh_seed(f"{mode} {size}")
    im = random_image(mode, size, np.random.default_rng(seed))
    ref = np.asarray(im)
    view = pixel_view(im)
    assert view is not None, f"{mode} {size}"
    w, h = size
    assert view.dtype == np.uint8 and view.flags.c_contiguous and not view.flags.writeable
    if mode == "L":
        assert view.shape == (h, w)
        assert np.array_equal(view, ref), f"seed {seed}"
    else:
        assert view.shape == (h, w, 4)
        assert np.array_equal(view[..., : ref.shape[2]], ref), f"seed {seed}"


@needs_arrow
def test_view_shares_memory_and_outlives_the_image():
    im = random_image("RGB", (31, 17), np.random.default_rng(fresh_seed("alias")))
    view = pixel_view(im)
    im.putpixel((5, 3), (1, 2, 3))
    assert tuple(view[3, 5, :3]) == (1, 2, 3)  # the image's own memory, not a copy
    expected = np.asarray(im).copy()
    del im
    gc.collect()
    garbage = [bytearray(b"\x07" * 4096) for _ in range(2000)]  # would reuse the pixels' memory had it been freed
    assert np.array_equal(view[..., :3], expected)
    del garbage


@needs_arrow
def test_decoded_file_and_rgbx():
    rng = np.random.default_rng(fresh_seed("png"))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buf, format="PNG")
    im = Image.open(io.BytesIO(buf.getvalue()))  # lazily decoded: the export must load it first
    view = pixel_view(im)
    assert view is not None and np.array_equal(view[..., :3], np.asarray(im))
    rgbx = im.convert("RGBX")
    assert np.array_equal(pixel_view(rgbx), np.asarray(rgbx))


@pytest.mark.parametrize("mode", ["LA", "I;16", "P", "PA", "CMYK"])
def test_other_modes_are_refused(mode):
    im = random_image(mode, (9, 5), np.random.default_rng(0))
    assert pixel_view(im) is None


def test_not_an_image_is_refused():
    assert pixel_view(np.zeros((3, 3), np.uint8)) is None
    assert pixel_view(object()) is None


@needs_arrow
def test_image_over_pillows_block_is_refused_and_copied():
    # 2100 x 2100 RGB is 17.6 MB at four bytes a pixel: more than Pillow's 16 MB block, rows in two blocks
    a = np.zeros((2100, 2100, 3), np.uint8)
    a[::97, ::89] = 200
    im = Image.fromarray(a)
    assert pixel_view(im) is None
    got = pp.source_array(im)
    assert got.shape == (2100, 2100, 3) and np.array_equal(got, a)


@needs_arrow
def test_an_export_in_another_layout_is_refused():
    """A mode that says four bytes a pixel over an export of one byte a pixel (or the reverse) is not read."""
    gray = random_image("L", (6, 4), np.random.default_rng(1))
    color = random_image("RGB", (6, 4), np.random.default_rng(2))

    class Liar:
        def __init__(self, mode, real):
            self.mode, self.size, self._real = mode, real.size, real

        def __arrow_c_array__(self, requested_schema=None):
            return self._real.__arrow_c_array__()

    assert pixel_view(Liar("RGB", gray)) is None
    assert pixel_view(Liar("L", color)) is None
    assert pixel_view(Liar("L", gray)) is not None  # the honest case is read: the check above is not vacuous


def test_source_array_falls_back_to_a_copy():
    im = random_image("LA", (8, 6), np.random.default_rng(3))
    assert np.array_equal(pp.source_array(im), pp.image_to_array(im))
    arr = np.random.default_rng(4).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    assert pp.source_array(arr) is arr or np.array_equal(pp.source_array(arr), arr)


@pytest.mark.skipif(not _ext.HAS_CPP_EXT, reason="C++ extension not built (pip install --no-build-isolation -e .)")
@pytest.mark.parametrize("backend", ["cpp", "emulated"])
def test_preprocessing_from_views_equals_from_copies(backend, monkeypatch):
    """Every mode the views cover, converted modes (CMYK: Pillow converts, then the view is of the
    converted image) and a copy-only mode in one batch, the tiles bit-equal to those from copied arrays."""
    seed = fresh_seed(backend)
    rng = np.random.default_rng(seed)
    images = [random_image(m, s, rng) for m, s in
              [("RGB", (1000, 700)), ("L", (383, 385)), ("RGBA", (641, 479)), ("CMYK", (400, 1500)),
               ("LA", (2, 3)), ("RGB", (1, 1))]]

    def run():
        if backend == "cpp":
            return pp.preprocess_images(images, backend="cpp", num_threads=0).pixel_values
        arrays = [pp.source_array(im) for im in images]
        return pp._run_packed(arrays, [tuple(g) for g in pp.DEFAULT_GRIDS], pp.TILE, [0.5] * 3, [0.5] * 3, None,
                              pp.pillow_pass_order(), emulate=True)[0]

    from_views = run()
    if hasattr(Image.Image, "__arrow_c_array__"):
        assert pixel_view(images[0]) is not None  # views were really used
    monkeypatch.setattr(pp, "source_array", pp.image_to_array)
    from_copies = run()
    assert torch.equal(from_views, from_copies), f"seed {seed}"
