"""Anyres preprocessing throughput: the C++ path (xgenmm_fast._C) against the Pillow path.

Both take the same PIL images (random RGB, 1000x700 by default -> a 2x2 grid, 5 tiles of 384^2 per
image) and return the same float32 (total_tiles, 3, 384, 384) tensor (bit-identical; checked here).
Reported: images/s, median over repeats. The Pillow path runs per image in Python; with 2 threads
it uses a thread pool (Pillow and torch release the GIL in their heavy parts).

    python benchmarks/bench_preprocess.py                 # JSON to stdout, table to stderr
    python benchmarks/bench_preprocess.py --out results.json --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL
import torch
from PIL import Image

from _common import cpu_model, git_commit  # noqa: E402  (benchmarks/_common.py)
from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import resize_and_pad_geometry
from xgenmm_fast.data.preprocess import pillow_pass_order, preprocess_images


def median_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of each callable. They take turns within every repeat, so a machine whose
    background load drifts during the run (shared CI boxes) weighs on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="images per batch")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=700)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here (default: print it)")
    args = ap.parse_args(argv)
    if not _ext.HAS_CPP_EXT:
        _ext.cpp_ext()  # raises with the build command

    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(args.seed)
    images = [
        Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)) for _ in range(args.images)
    ]
    ref = preprocess_images(images, backend="pillow")
    got = preprocess_images(images, backend="cpp", num_threads=1)
    if not torch.equal(ref.pixel_values, got.pixel_values):
        print("warning: C++ and Pillow outputs differ", file=sys.stderr)
    tiles = ref.tiles_per_image[0]
    n = args.images
    results = []
    out = torch.empty_like(got.pixel_values)
    for threads in args.threads:
        secs = median_seconds(
            {
                # one core per Pillow worker: torch's own ops in the Pillow path stay single-threaded
                "baseline": with_torch_threads(1, lambda t=threads: pillow_batch(images, t)),
                "ours": lambda t=threads: preprocess_images(images, backend="cpp", num_threads=t),
                "ours_out": lambda t=threads: preprocess_images(images, backend="cpp", num_threads=t, out=out),
            },
            args.repeats,
        )
        base_s = secs["baseline"]
        config = {
            "threads": threads,
            "images": n,
            "image_size": [args.width, args.height],
            "tiles_per_image": tiles,
            "tile": 384,
            "input": "PIL RGB, random pixels",
            "baseline_impl": "Pillow resize/paste/crop + torch ToTensor/Normalize per tile"
            + ("" if threads == 1 else f", {threads} Python threads"),
        }
        for name, key, note in (
            ("anyres_preprocess", "ours", "new output tensor per batch"),
            ("anyres_preprocess_into_out", "ours_out", "preallocated output tensor"),
        ):
            results.append(
                {
                    "name": f"{name}/threads={threads}",
                    "config": {**config, "output": note},
                    "ours": {"value": round(n / secs[key], 2), "unit": "images/s"},
                    "baseline": {"value": round(n / base_s, 2), "unit": "images/s"},
                    "speedup": round(base_s / secs[key], 2),
                }
            )

    # the resampler alone, one resize of the benchmark size to its grid size (one thread)
    C = _ext.cpp_ext()
    nw, nh = ref.grid_shapes[0][0] * 384, ref.grid_shapes[0][1] * 384  # the grid, then fit the aspect
    nw, nh = resize_and_pad_geometry((args.width, args.height), (nw, nh))[:2]
    order = pillow_pass_order()
    t_arr = torch.from_numpy(np.array(images[0]))
    secs = median_seconds(
        {
            "ours": lambda: C.resize_bicubic(t_arr, (nw, nh), order),
            "baseline": lambda: images[0].resize((nw, nh), Image.BICUBIC),
        },
        args.repeats * 4,
    )
    ours_r, base_r = secs["ours"], secs["baseline"]
    results.append(
        {
            "name": "bicubic_resize",
            "config": {"threads": 1, "from": [args.width, args.height], "to": [nw, nh], "mode": "RGB"},
            "ours": {"value": round(1 / ours_r, 2), "unit": "resizes/s"},
            "baseline": {"value": round(1 / base_r, 2), "unit": "resizes/s"},
            "speedup": round(base_r / ours_r, 2),
        }
    )

    report = {
        "benchmark": "bench_preprocess",
        "device": {"cpu": cpu_model(), "logical_cores": os.cpu_count()},
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "git_commit": git_commit(),
        "load_average_1min_at_start": load_at_start,
        "pass_order": order,
        "results": results,
    }
    for r in results:
        print(
            f"{r['name']:<40} ours {r['ours']['value']:>9.1f} {r['ours']['unit']:<10} "
            f"baseline {r['baseline']['value']:>8.1f}  speedup {r['speedup']:.2f}x",
            file=sys.stderr,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
