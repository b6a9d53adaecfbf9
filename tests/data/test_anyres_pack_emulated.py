"""The CUDA anyres kernel's per-pixel code (csrc/anyres/anyres_pack_device.h), run on the CPU by
``_C.anyres_pack_emulated``, against the C++ CPU path ``_C.anyres_preprocess`` (itself bit-exact with
Pillow, tests/data/test_preprocess_cpp_vs_pillow.py): every value of every tile must be identical, in
every input format, for odd, tiny, very wide and very tall sizes, both resampling pass orders, float32
and bfloat16 / float16 outputs. No GPU needed; tests/kernels/test_anyres_cuda.py runs the kernel itself.

The acceptance bar for the GPU path is one pixel level (1/255 before normalisation); the shared code
reproduces the integer arithmetic exactly, so these tests demand bit equality.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xgenmm_fast import _ext
from xgenmm_fast.data import preprocess as pp
from xgenmm_fast.data.anyres import DEFAULT_GRIDS, TILE

from ._images import (
    ARRAY_FORMATS,
    CLIP_MEAN,
    CLIP_STD,
    PACK_SIZES,
    fresh_seed,
    random_array,
)

pytestmark = pytest.mark.skipif(
    not _ext.HAS_CPP_EXT, reason="C++ extension not built (pip install --no-build-isolation -e .)"
)

GRIDS = [tuple(g) for g in DEFAULT_GRIDS]
MEAN, STD = [0.5] * 3, [0.5] * 3
ORDERS = ("pillow", "horizontal_first")




def run_emulated(arrays, grids=GRIDS, tile=TILE, mean=MEAN, std=STD, out=None, order="pillow"):
    return pp._run_packed(arrays, grids, tile, mean, std, out, order, emulate=True)


def run_cpp(arrays, grids=GRIDS, tile=TILE, mean=MEAN, std=STD, out=None, order="pillow"):
    tensors = [torch.from_numpy(a) for a in arrays]
    return _ext.cpp_ext().anyres_preprocess(tensors, grids, tile, mean, std, 0, out, order)


def assert_same(got, ref, context: str) -> None:
    (a, tiles_a, shapes_a), (b, tiles_b, shapes_b) = got, ref
    assert list(tiles_a) == list(tiles_b), context
    assert [tuple(s) for s in shapes_a] == [tuple(s) for s in shapes_b], context
    assert a.shape == b.shape and a.dtype == b.dtype, f"{context}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if not torch.equal(a, b):
        diff = (a.float() - b.float()).abs()
        bad = torch.nonzero(diff)[0].tolist()
        raise AssertionError(
            f"{context}: {(diff > 0).sum().item()} of {diff.numel()} values differ, max {diff.max().item()}, "
            f"first at (tile, c, y, x) = {tuple(bad)}"
        )


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fmt", ARRAY_FORMATS)
def test_emulation_matches_cpp_per_format(fmt, order):
    seed = fresh_seed(f"{fmt} {order}")
    rng = np.random.default_rng(seed)
    arrays = [random_array(fmt, size, rng) for size in PACK_SIZES]  # one batch: images at different offsets
    assert_same(run_emulated(arrays, order=order), run_cpp(arrays, order=order), f"{fmt}, {order}, seed {seed}")


@pytest.mark.parametrize("order", ORDERS)
def test_emulation_matches_cpp_random_sizes_mixed_formats(order):
    seed = fresh_seed(f"random sizes {order}")
    rng = np.random.default_rng(seed)
    sizes = [tuple(int(v) for v in rng.integers(1, 1600, 2)) for _ in range(12)]
    sizes += [tuple(int(v) for v in rng.integers(1, 60, 2)) for _ in range(12)]
    arrays = [random_array(ARRAY_FORMATS[int(rng.integers(len(ARRAY_FORMATS)))], s, rng) for s in sizes]
    assert_same(run_emulated(arrays, order=order), run_cpp(arrays, order=order), f"{sizes}, {order}, seed {seed}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_outputs_are_the_float32_values_rounded_once(dtype):
    seed = fresh_seed(f"{dtype}")
    rng = np.random.default_rng(seed)
    arrays = [random_array("RGB", (1000, 700), rng), random_array("L", (383, 385), rng),
              random_array("I;16", (50, 900), rng)]  # fmt: skip
    ref32 = run_cpp(arrays)[0]
    out = torch.full(ref32.shape, float("nan"), dtype=dtype)
    got = run_emulated(arrays, out=out)
    assert got[0].data_ptr() == out.data_ptr() and got[0].dtype == dtype
    assert torch.equal(out, ref32.to(dtype)), f"{dtype}, seed {seed}"
    assert_same(got, run_cpp(arrays, out=torch.empty_like(out)), f"{dtype}, seed {seed}")


def test_float32_into_out():
    rng = np.random.default_rng(3)
    arrays = [random_array("RGBA", (300, 200), rng)]
    ref = run_cpp(arrays)[0]
    out = torch.full(ref.shape, float("nan"))
    got = run_emulated(arrays, out=out)
    assert got[0].data_ptr() == out.data_ptr() and torch.equal(out, ref)


def test_clip_normalisation_other_tiles_and_grids():
    seed = fresh_seed("tiles")
    rng = np.random.default_rng(seed)
    arrays = [random_array(f, (int(rng.integers(1, 400)), int(rng.integers(1, 400))), rng) for f in ARRAY_FORMATS]
    for tile, grids in [
        (64, [(64, 128), (128, 64), (128, 128)]),
        (50, [(50, 100), (100, 50), (150, 50), (50, 150), (100, 100)]),  # tile not a multiple of 32
        (7, [(7, 7), (14, 7), (21, 14)]),
    ]:
        for order in ORDERS:
            context = f"tile {tile}, {order}, seed {seed}"
            got = run_emulated(arrays, grids, tile, CLIP_MEAN, CLIP_STD, order=order)
            assert_same(got, run_cpp(arrays, grids, tile, CLIP_MEAN, CLIP_STD, order=order), context)


def test_empty_batch():
    pixel_values, tiles, shapes = run_emulated([])
    assert pixel_values.shape == (0, 3, TILE, TILE) and list(tiles) == [] and list(shapes) == []


def test_source_buffer_layout():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), rng.integers(0, 60000, (7, 2), dtype=np.uint16),
              rng.integers(0, 256, (1, 1), dtype=np.uint8), rng.integers(0, 256, (2, 9, 2), dtype=np.uint8)]  # fmt: skip
    data, descs = pp.pack_source_buffer(arrays)
    assert data.dtype == torch.uint8 and data.dim() == 1 and descs.dtype == torch.int64
    assert descs.tolist() == [[0, 3, 5, 3, 1], [48, 7, 2, 1, 2], [80, 1, 1, 1, 1], [96, 2, 9, 2, 1]]
    flat = data.numpy()
    for a, (off, *_rest) in zip(arrays, descs.tolist()):
        assert off % 16 == 0
        assert np.array_equal(flat[off : off + a.nbytes].view(a.dtype.newbyteorder("<")).reshape(a.shape), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        pp.pack_source_buffer([arrays[0][:, ::-1]])


def test_bad_tables_are_rejected():
    C = _ext.cpp_ext()
    data, descs = pp.pack_source_buffer([np.zeros((10, 20, 3), np.uint8)])
    run = C.anyres_pack_emulated
    bad = descs.clone()
    bad[0, 0] = 16  # 600 bytes at offset 16 of a 608-byte buffer
    with pytest.raises(ValueError, match="image 0 .*does not lie inside the source buffer"):
        run(data, bad, GRIDS, TILE, MEAN, STD)
    bad = descs.clone()
    bad[0, 3] = 5
    with pytest.raises(ValueError, match="image 0 has 5 channels"):
        run(data, bad, GRIDS, TILE, MEAN, STD)
    bad = descs.clone()
    bad[0, 1] = 0
    with pytest.raises(ValueError, match="non-empty"):
        run(data, bad, GRIDS, TILE, MEAN, STD)
    with pytest.raises(ValueError, match="int64"):
        run(data, descs.int(), GRIDS, TILE, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        run(data.float(), descs, GRIDS, TILE, MEAN, STD)
    with pytest.raises(ValueError, match="dtype must be"):
        run(data, descs, GRIDS, TILE, MEAN, STD, None, "int8")
    with pytest.raises(ValueError, match="expected \\(3, 3, 384, 384\\)"):
        run(data, descs, GRIDS, TILE, MEAN, STD, torch.empty(2, 3, TILE, TILE))
    with pytest.raises(ValueError, match="disagrees"):
        run(data, descs, GRIDS, TILE, MEAN, STD, torch.empty(3, 3, TILE, TILE), "bfloat16")
    with pytest.raises(ValueError, match="multiples of the tile"):
        run(data, descs, [(100, 384)], TILE, MEAN, STD)
    got, _, _ = run(data, descs, GRIDS, TILE, MEAN, STD, None, "float16")
    assert got.dtype == torch.float16


# ------------------------------------------------------------------------- the backend="cuda" entry


def test_auto_still_means_cpp():
    assert pp._resolve_backend("auto") == "cpp"
    with pytest.raises(ValueError, match="device applies to"):
        pp.preprocess_images([np.zeros((4, 4), np.uint8)], backend="cpp", device="cuda")


def test_cuda_backend_explains_a_build_without_cuda(monkeypatch):
    real = _ext.cpp_ext()
    no_cuda = SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if k != "anyres_preprocess_cuda"})
    monkeypatch.setattr(_ext, "_C", no_cuda)
    with pytest.raises(_ext.ExtensionNotBuiltError, match="built without CUDA"):
        pp.preprocess_images([np.zeros((4, 4), np.uint8)], backend="cuda")


def test_cuda_backend_explains_a_missing_device(monkeypatch):
    real = _ext.cpp_ext()
    fake = SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    fake.anyres_preprocess_cuda = lambda *a: pytest.fail("the kernel must not be called without a device")
    monkeypatch.setattr(_ext, "_C", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pp.preprocess_images([np.zeros((4, 4), np.uint8)], backend="cuda")


def test_this_build_has_the_cuda_entry_point_iff_torch_has_cuda():
    """setup.py's hook: a CUDA torch (with nvcc at build time) builds the kernel in; a CPU torch does not."""
    has_entry = hasattr(_ext.cpp_ext(), "anyres_preprocess_cuda")
    if torch.version.cuda is None:
        assert not has_entry
    elif not has_entry:
        pytest.skip("CUDA torch but the extension was built without the kernel (no nvcc, or XGENMM_NO_CUDA=1)")
