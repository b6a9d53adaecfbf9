"""Anyres preprocessing throughput: the C++ path (xgenmm_fast._C) and the CUDA path against the Pillow path.

All take the same images (random RGB, 1000x700 by default -> a 2x2 grid, 5 tiles of 384^2 per image). The
Pillow and C++ paths return the same float32 (total_tiles, 3, 384, 384) tensor (bit-identical, checked
here); the CUDA path returns it on the GPU in bfloat16. Reported: images/s, median over repeats, the paths
taking turns. The Pillow path runs per image in Python; with 2 threads it uses a thread pool (Pillow and
torch release the GIL in their heavy parts).

Rows: anyres_preprocess/threads=N and anyres_preprocess_into_out/threads=N (C++, new or preallocated
output) vs Pillow with N threads; bicubic_resize (one resize, C++ vs Pillow); anyres_preprocess_cuda
(preprocess_images(backend="cuda"): bfloat16 tiles on the GPU, its default) vs Pillow (1 thread), and
anyres_preprocess_cuda/vs_cpp against the C++ path on all cores into a pinned bfloat16 buffer plus the copy
to the GPU (the largest difference to that C++ output is recorded; 0 expected; `extra` also has the kernel
alone on already-uploaded sources, kernel_only_images_per_s, the host's share of a call, and host_stage_ms:
source_array of the batch (zero-copy views of the PIL images), image_to_array (the copies np.asarray makes,
what a call did before 2026-11-26's fourth session), the packing into a pinned buffer, the upload);
pil_source_arrays (preprocess.source_array, the views the C++ and CUDA paths now take, vs image_to_array's
copies through np.asarray, 1 thread); anyres_preprocess_cuda/from_arrays
(the same from decoded numpy uint8 arrays, #4's input and its >= 1000 images/s target, vs the C++ path from
the same arrays, all cores, pinned buffer, copy to the GPU). The CUDA rows
run only when torch.cuda.is_available() and the call works; otherwise they are recorded as skipped with
the reason. Without Pillow, the C++ rows run on numpy images and the Pillow baselines are skipped.

    python benchmarks/bench_preprocess.py                 # JSON to stdout, table to stderr
    python benchmarks/bench_preprocess.py --results-dir benchmarks/results --repeats 7
    python benchmarks/bench_preprocess.py --smoke --out /tmp/pre.json   # 2 small images, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from _common import add_output_args, emit, load_average, median_times, result  # noqa: E402  (benchmarks/)
from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import resize_and_pad_geometry
from xgenmm_fast.data.pil_memory import pixel_view
from xgenmm_fast.data.preprocess import image_to_array, pillow_pass_order, preprocess_images, source_array

try:
    import PIL
    from PIL import Image
except ImportError:  # the GPU machines may lack Pillow: the C++ and CUDA paths take numpy images
    PIL = Image = None

TILE = 384
CUDA_ROW = "anyres_preprocess_cuda"


def with_torch_threads(n: int, fn):
    def run():
        prev = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(prev)

    return run


def pillow_batch(images, threads: int):
    if threads == 1:
        return preprocess_images(images, backend="pillow")
    chunks = [images[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda c: preprocess_images(c, backend="pillow"), chunks))


def cuda_rows(images, config: dict, repeats: int, pillow_fn) -> list[dict]:
    """The CUDA path's rows, or the same rows marked skipped with the reason.

    anyres_preprocess_cuda: preprocess_images(backend="cuda") (bfloat16 tiles on the GPU, its default) vs
    the Pillow path (1 thread). anyres_preprocess_cuda/vs_cpp: the same vs the best CPU route to the same
    tensor: the C++ path on all cores into a preallocated pinned bfloat16 buffer, then copied to the GPU."""
    n = len(images)
    cfg = {**config, "threads": None, "output": "new bfloat16 tensor on the GPU",
           "baseline_impl": "Pillow, 1 thread"}
    cfg_cpp = {**cfg, "baseline_impl": f"C++ path, all {os.cpu_count()} cores, into a pinned bfloat16 buffer, "
                                       "then .to('cuda')"}
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False)"
    else:
        try:
            got = preprocess_images(images, backend="cuda")
            if got.pixel_values.device.type != "cuda":
                reason = f'preprocess_images(backend="cuda") returned pixel_values on {got.pixel_values.device}'
        except Exception as e:  # the extension built without CUDA, an older library, ...: say what happened
            reason = f'preprocess_images(backend="cuda") failed: {type(e).__name__}: {e}'
    if reason:
        print(f"skipped {CUDA_ROW}: {reason}", file=sys.stderr)
        return [result(CUDA_ROW, cfg, None, higher_is_better=True, skipped=reason),
                result(f"{CUDA_ROW}/vs_cpp", cfg_cpp, None, higher_is_better=True, skipped=reason),
                result(f"{CUDA_ROW}/from_arrays", {**cfg_cpp, "input": "numpy uint8 arrays (H, W, 3), decoded"}, None,
                       higher_is_better=True, skipped=reason)]
    pinned = torch.empty(got.pixel_values.shape, dtype=got.pixel_values.dtype, pin_memory=True)
    cpp = preprocess_images(images, backend="cpp", num_threads=0, out=pinned).pixel_values
    diff = (got.pixel_values.float().cpu() - cpp.float()).abs().max().item()
    fns = {
        "cuda": lambda: preprocess_images(images, backend="cuda"),
        "cpp_to_gpu": lambda: preprocess_images(images, backend="cpp", num_threads=0, out=pinned).pixel_values.to(
            "cuda", non_blocking=True),
    }
    # the kernel alone: sources already uploaded (what a loader that keeps decoded images on the GPU pays)
    from xgenmm_fast import _ext
    from xgenmm_fast.data.anyres import DEFAULT_GRIDS, TILE
    from xgenmm_fast.data.preprocess import DEFAULT_MEAN, DEFAULT_STD, pack_source_buffer
    sources = [source_array(im) for im in images]  # what a call packs (views of the PIL images' memory)
    data, descs = pack_source_buffer(sources, pin_memory=True)
    data_gpu = data.to("cuda")
    kernel = _ext.cpp_ext().anyres_preprocess_cuda
    grids = [tuple(g) for g in DEFAULT_GRIDS]
    fns["cuda_kernel_only"] = lambda: kernel(data_gpu, descs, grids, TILE, list(DEFAULT_MEAN), list(DEFAULT_STD),
                                             None, "bfloat16", "pillow")
    # where the host time of a call goes (the H200 run of 2026-11-26: 99% of the call was host work, most of
    # it, by the CPU measurements since, np.asarray's copy of each PIL image)
    arrays = [image_to_array(im) for im in images]  # decoded (H, W, 3) numpy copies: the from_arrays input
    fns["stage_source_array"] = lambda: [source_array(im) for im in images]
    fns["stage_image_to_array"] = lambda: [image_to_array(im) for im in images]
    fns["stage_pack_pinned"] = lambda: pack_source_buffer(sources, pin_memory=True)
    fns["stage_upload"] = lambda: data.to("cuda", non_blocking=True)
    # from decoded uint8 arrays (#4's input: decoded images of any sizes), both sides
    fns["cuda_from_arrays"] = lambda: preprocess_images(arrays, backend="cuda")
    fns["cpp_from_arrays_to_gpu"] = lambda: preprocess_images(arrays, backend="cpp", num_threads=0,
                                                              out=pinned).pixel_values.to("cuda", non_blocking=True)
    if pillow_fn is not None:
        fns["pillow"] = pillow_fn
    secs = median_times(fns, repeats, device="cuda")
    extra = {"max_abs_diff_vs_cpp": diff, "dtype": str(got.pixel_values.dtype).replace("torch.", ""),
             "kernel_only_images_per_s": n / secs["cuda_kernel_only"],
             "host_share_of_call": 1 - secs["cuda_kernel_only"] / secs["cuda"],
             "host_stage_ms": {k[len("stage_"):]: 1e3 * v for k, v in secs.items() if k.startswith("stage_")}}
    cfg_arrays = {**cfg_cpp, "input": "numpy uint8 arrays (H, W, 3), decoded",
                  "baseline_impl": f"C++ path from the same arrays, all {os.cpu_count()} cores, into a pinned "
                                   "bfloat16 buffer, then .to('cuda')"}
    rows = [result(f"{CUDA_ROW}/vs_cpp", cfg_cpp, (n / secs["cuda"], "images/s"),
                   (n / secs["cpp_to_gpu"], "images/s"), higher_is_better=True, extra=extra),
            result(f"{CUDA_ROW}/from_arrays", cfg_arrays, (n / secs["cuda_from_arrays"], "images/s"),
                   (n / secs["cpp_from_arrays_to_gpu"], "images/s"), higher_is_better=True,
                   extra={"target": ">= 1000 images/s (#4)"})]
    if pillow_fn is None:
        rows.insert(0, result(CUDA_ROW, cfg, (n / secs["cuda"], "images/s"), None, higher_is_better=True,
                              extra={**extra, "baseline_skipped": "Pillow not installed"}))
    else:
        rows.insert(0, result(CUDA_ROW, cfg, (n / secs["cuda"], "images/s"), (n / secs["pillow"], "images/s"),
                              higher_is_better=True, extra=extra))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="images per batch")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=700)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="2 images of 600x400, 1 repeat: does it all run")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.width, args.height, args.repeats = 2, 600, 400, 1
    if not _ext.HAS_CPP_EXT:
        _ext.cpp_ext()  # raises with the build command

    load_at_start = load_average()
    rng = np.random.default_rng(args.seed)
    arrays = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(args.images)]
    images = [Image.fromarray(a) for a in arrays] if Image is not None else arrays
    no_pillow = None if Image is not None else "Pillow not installed"
    got = preprocess_images(images, backend="cpp", num_threads=1)
    identical = None
    if no_pillow is None:
        ref = preprocess_images(images, backend="pillow")
        identical = torch.equal(ref.pixel_values, got.pixel_values)
        if not identical:
            print("warning: C++ and Pillow outputs differ", file=sys.stderr)
    tiles = got.tiles_per_image[0]
    n = args.images
    results = []
    out = torch.empty_like(got.pixel_values)
    base_config = {
        "images": n,
        "image_size": [args.width, args.height],
        "tiles_per_image": tiles,
        "tile": TILE,
        "input": "PIL RGB, random pixels" if no_pillow is None else "numpy uint8 RGB, random pixels",
        "smoke": args.smoke,
    }
    for threads in args.threads:
        fns = {
            "ours": lambda t=threads: preprocess_images(images, backend="cpp", num_threads=t),
            "ours_out": lambda t=threads: preprocess_images(images, backend="cpp", num_threads=t, out=out),
        }
        if no_pillow is None:
            # one core per Pillow worker: torch's own ops in the Pillow path stay single-threaded
            fns["baseline"] = with_torch_threads(1, lambda t=threads: pillow_batch(images, t))
        secs = median_times(fns, args.repeats, device="cpu")
        config = {
            **base_config,
            "threads": threads,
            "baseline_impl": "Pillow resize/paste/crop + torch ToTensor/Normalize per tile"
            + ("" if threads == 1 else f", {threads} Python threads"),
        }
        base = None if no_pillow else (n / secs["baseline"], "images/s")
        for name, key, note in (
            ("anyres_preprocess", "ours", "new output tensor per batch"),
            ("anyres_preprocess_into_out", "ours_out", "preallocated output tensor"),
        ):
            results.append(result(f"{name}/threads={threads}", {**config, "output": note},
                                  (n / secs[key], "images/s"), base, higher_is_better=True,
                                  extra={"baseline_skipped": no_pillow} if no_pillow else None))

    # the resampler alone, one resize of the benchmark size to its grid size (one thread)
    C = _ext.cpp_ext()
    nw, nh = got.grid_shapes[0][0] * TILE, got.grid_shapes[0][1] * TILE  # the grid, then fit the aspect
    nw, nh = resize_and_pad_geometry((args.width, args.height), (nw, nh))[:2]
    order = pillow_pass_order()  # "pillow" without Pillow
    t_arr = torch.from_numpy(arrays[0])
    fns = {"ours": lambda: C.resize_bicubic(t_arr, (nw, nh), order)}
    if no_pillow is None:
        fns["baseline"] = lambda: images[0].resize((nw, nh), Image.BICUBIC)
    secs = median_times(fns, args.repeats * 4, device="cpu")
    results.append(result(
        "bicubic_resize",
        {"threads": 1, "from": [args.width, args.height], "to": [nw, nh], "mode": "RGB", "smoke": args.smoke},
        (1 / secs["ours"], "resizes/s"), None if no_pillow else (1 / secs["baseline"], "resizes/s"),
        higher_is_better=True, extra={"baseline_skipped": no_pillow} if no_pillow else None))

    # a PIL image to the array the C++ / CUDA paths read: its own memory (source_array) vs a copy (np.asarray)
    if no_pillow is None:
        secs = median_times({"ours": lambda: [source_array(im) for im in images],
                             "baseline": lambda: [image_to_array(im) for im in images]}, args.repeats * 4, device="cpu")
        results.append(result(
            "pil_source_arrays", {**base_config, "threads": 1, "baseline_impl": "image_to_array (np.asarray copy)"},
            (n / secs["ours"], "images/s"), (n / secs["baseline"], "images/s"), higher_is_better=True,
            extra={"zero_copy_views": sum(pixel_view(im) is not None for im in images)}))

    pillow_1 = None if no_pillow else with_torch_threads(1, lambda: pillow_batch(images, 1))
    results += cuda_rows(images, base_config, args.repeats, pillow_1)

    run_info = {
        "load_average_1min_at_start": load_at_start,
        "pass_order": order,
        "cpp_identical_to_pillow": identical,
        "pillow": PIL.__version__ if PIL is not None else None,
        "numpy": np.__version__,
        "cpu_threads_available": os.cpu_count(),
    }
    for r in results:
        if r["ours"] is None:
            print(f"{r['name']:<40} skipped: {r['skipped']}", file=sys.stderr)
            continue
        base = f"baseline {r['baseline']['value']:>8.1f}  speedup {r['speedup']:.2f}x" if r["baseline"] else \
            "baseline -"
        print(f"{r['name']:<40} ours {r['ours']['value']:>9.1f} {r['ours']['unit']:<10} {base}", file=sys.stderr)
    emit(args, results, "bench_preprocess", run_info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
