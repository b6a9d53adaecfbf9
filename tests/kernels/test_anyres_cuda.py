"""The CUDA anyres kernel (csrc/anyres/anyres_cuda.cu, ``preprocess_images(backend="cuda")``) against
the C++ CPU path (``backend="cpp"``, bit-exact with Pillow). GPU only: scripts/gpu_check.sh runs these.

Acceptance bar: at most one pixel level (1/255 before normalisation) off anywhere in float32, and
bfloat16 / float16 within their rounding of the float32 values. The kernel runs the integer
arithmetic of the CPU path (its per-pixel code is tested on the CPU in
tests/data/test_anyres_pack_emulated.py), so the tests then also demand bit equality; a failure that
passes the bar but not equality means the GPU build rounds somewhere the CPU one does not.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import TILE
from xgenmm_fast.data.preprocess import preprocess_images

from ..data._images import (
    ARRAY_FORMATS,
    CLIP_MEAN,
    CLIP_STD,
    PACK_SIZES,
    fresh_seed,
    random_array,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _ext.HAS_CPP_EXT, reason="C++ extension not built (pip install --no-build-isolation -e .)"),
]

LEVEL = 1 / 255 / 0.5  # one pixel level in normalised units (std 0.5)
ORDERS = ("pillow13", "horizontal_first")




def assert_within_a_level_and_exact(got: torch.Tensor, ref: torch.Tensor, context: str, level: float = LEVEL):
    assert got.is_cuda and got.shape == ref.shape, f"{context}: {got.device} {got.shape} vs {ref.shape}"
    got = got.cpu()
    diff = (got.float() - ref.float()).abs()
    max_diff = diff.max().item() if diff.numel() else 0.0
    same = diff.eq(0).float().mean().item() if diff.numel() else 1.0
    assert max_diff <= level * 1.0001, f"{context}: max abs diff {max_diff} > one level {level}"
    assert same >= 0.999, f"{context}: only {same:.5%} of values identical"
    assert torch.equal(got, ref), f"{context}: within the bar but not bit-exact ({(diff > 0).sum().item()} differ)"


def run_both(arrays, dtype=torch.float32, **kw):
    ref = preprocess_images(arrays, backend="cpp", **kw)
    out = torch.full(ref.pixel_values.shape, float("nan"), dtype=dtype, device="cuda")
    got = preprocess_images(arrays, backend="cuda", out=out, **kw)
    assert got.pixel_values.data_ptr() == out.data_ptr()
    assert got.tiles_per_image == ref.tiles_per_image and got.grid_shapes == ref.grid_shapes
    assert got.image_sizes == ref.image_sizes
    assert all(torch.equal(a, b) for a, b in zip(got.feature_masks, ref.feature_masks))
    torch.cuda.synchronize()
    return got, ref


def test_extension_has_the_cuda_kernel():
    assert hasattr(_ext.cpp_ext(), "anyres_preprocess_cuda"), (
        "xgenmm_fast._C has no anyres_preprocess_cuda: setup.py's CUDA hook did not build csrc/**/*.cu "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}; is nvcc on PATH / CUDA_HOME set?)"
    )


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fmt", ARRAY_FORMATS)
def test_cuda_matches_cpp_float32(fmt, order):
    seed = fresh_seed(f"{fmt} {order}")
    rng = np.random.default_rng(seed)
    arrays = [random_array(fmt, size, rng) for size in PACK_SIZES]
    got, ref = run_both(arrays, resize_order=order)
    assert_within_a_level_and_exact(got.pixel_values, ref.pixel_values, f"{fmt}, {order}, seed {seed}")


def test_cuda_random_sizes_mixed_formats_clip_norm():
    seed = fresh_seed("random sizes")
    rng = np.random.default_rng(seed)
    sizes = [tuple(int(v) for v in rng.integers(1, 2500, 2)) for _ in range(24)]
    sizes += [tuple(int(v) for v in rng.integers(1, 60, 2)) for _ in range(8)]
    arrays = [random_array(ARRAY_FORMATS[int(rng.integers(len(ARRAY_FORMATS)))], s, rng) for s in sizes]
    got, ref = run_both(arrays, mean=CLIP_MEAN, std=CLIP_STD)
    # one level of 255 in CLIP units is 1 / 255 / min(std)
    assert_within_a_level_and_exact(got.pixel_values, ref.pixel_values, f"seed {seed}", 1 / 255 / min(CLIP_STD))


def test_cuda_other_tile_sizes():
    seed = fresh_seed("tiles")
    rng = np.random.default_rng(seed)
    arrays = [random_array(f, tuple(int(v) for v in rng.integers(1, 500, 2)), rng) for f in ARRAY_FORMATS]
    for tile, grids in [(64, [[64, 128], [128, 64], [128, 128]]), (50, [[50, 100], [100, 50], [150, 50]])]:
        got, ref = run_both(arrays, grids=grids, tile=tile, patch=8)
        assert_within_a_level_and_exact(got.pixel_values, ref.pixel_values, f"tile {tile}, seed {seed}")


def test_cuda_default_is_bfloat16_within_its_rounding():
    seed = fresh_seed("bf16")
    rng = np.random.default_rng(seed)
    arrays = [random_array("RGB", (1000, 700), rng) for _ in range(8)] + [random_array("L", (383, 385), rng)]
    ref = preprocess_images(arrays, backend="cpp").pixel_values
    got = preprocess_images(arrays, backend="cuda").pixel_values
    assert got.is_cuda and got.dtype == torch.bfloat16
    got = got.cpu()
    # within bf16's rounding of the float32 values (8 significant bits: half an ulp is 2^-8 relative) ...
    err = (got.float() - ref).abs()
    bound = ref.abs() * 2.0**-8 + 1e-30
    assert bool((err <= bound).all()), f"seed {seed}: max error {err.max().item()} beyond bf16 rounding"
    # ... and exactly that rounding
    assert torch.equal(got, ref.to(torch.bfloat16)), f"seed {seed}: not the float32 values rounded once"


def test_cuda_float16_out():
    seed = fresh_seed("fp16")
    rng = np.random.default_rng(seed)
    arrays = [random_array(f, (641, 479), rng) for f in ARRAY_FORMATS]
    got, ref = run_both(arrays, dtype=torch.float16)
    assert torch.equal(got.pixel_values.cpu(), ref.pixel_values.to(torch.float16)), f"seed {seed}"


def test_cuda_big_batch_of_the_target_workload():
    """64 images of ~1000x700 (5 tiles each): many blocks, offsets far into the buffer."""
    seed = fresh_seed("batch")
    rng = np.random.default_rng(seed)
    arrays = [random_array("RGB", (1000 + int(rng.integers(-50, 50)), 700 + int(rng.integers(-50, 50))), rng)
              for _ in range(64)]  # fmt: skip
    got, ref = run_both(arrays)
    assert_within_a_level_and_exact(got.pixel_values, ref.pixel_values, f"seed {seed}")


def test_cuda_runs_on_the_current_stream():
    rng = np.random.default_rng(7)
    arrays = [random_array("RGB", (900, 600), rng), random_array("I;16", (300, 1200), rng)]
    ref = preprocess_images(arrays, backend="cpp").pixel_values
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = preprocess_images(arrays, backend="cuda", out=torch.empty(ref.shape, device="cuda"))
    stream.synchronize()
    assert torch.equal(got.pixel_values.cpu(), ref)


def test_cuda_empty_batch_and_errors():
    empty = preprocess_images([], backend="cuda")
    assert empty.pixel_values.shape == (0, 3, TILE, TILE) and empty.pixel_values.is_cuda
    assert empty.tiles_per_image == [] and empty.feature_masks == []
    im = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="out is on cpu"):
        preprocess_images([im], backend="cuda", out=torch.empty(3, 3, TILE, TILE))
    with pytest.raises(ValueError, match="expected \\(3, 3, 384, 384\\)"):
        preprocess_images([im], backend="cuda", out=torch.empty(2, 3, TILE, TILE, device="cuda"))
    with pytest.raises(ValueError, match="CUDA device"):
        preprocess_images([im], backend="cuda", device="cpu")


# The extension's own checks, each in a fresh process: a crash while raising (seen once on the first GPU run,
# a segfault inside the call with a wrong-shaped `out`) then fails this test with its exit code instead of
# killing the test worker.
_CPP_ERROR_CASES = {
    "cpu data": ("data = torch.zeros(1800, dtype=torch.uint8)", "CUDA tensor"),
    "data too short": ("data = torch.zeros(100, dtype=torch.uint8, device='cuda')", "does not lie inside"),
    "out shape": ("data = torch.zeros(1800, dtype=torch.uint8, device='cuda'); "
                  "kw = dict(out=torch.empty(2, 3, 384, 384, device='cuda'))", "expected \\(3, 3, 384, 384\\)"),
}


@pytest.mark.parametrize("case", sorted(_CPP_ERROR_CASES))
def test_cuda_extension_raises_cleanly(case):
    setup, message = _CPP_ERROR_CASES[case]
    code = (
        "import re, torch\nfrom xgenmm_fast import _ext\nC = _ext.cpp_ext()\nkw = {}\n" + setup + "\n"
        "descs = torch.tensor([[0, 20, 30, 3, 1]])\n"
        "try:\n    C.anyres_preprocess_cuda(data, descs, [(384, 768)], 384, [0.5] * 3, [0.5] * 3, **kw)\n"
        "except ValueError as e:\n"
        f"    raise SystemExit(0 if re.search({message!r}, str(e)) else 'wrong message: ' + str(e))\n"
        "raise SystemExit('no error raised')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert p.returncode == 0, f"{case}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
