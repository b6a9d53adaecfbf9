"""Sequence-packing planner speed: the C++ FFD (xgenmm_fast._C.plan_rows_ffd) against the Python reference
(xgenmm_fast.data.planner.plan_rows_reference), on a LLaVA-665k-like dataset of sample lengths.

Length model (token counts per sample, tokens of the packed row; an approximation of LLaVA-v1.5's 665k
instruction mix, not measured from the real data):
  * 665,000 samples; 85% have one image, 15% are text-only.
  * text tokens: lognormal with median 150 (sigma 0.8) for image samples; text-only conversations
    (ShareGPT-like) are longer, median 400 (sigma 1.0), so a few exceed the row budget; at least 8.
  * image tokens: (1 + n) tiles x 128 perceiver latents, n = tiles of the anyres grid that
    select_best_resolution picks (grids 1x2, 2x1, 2x2, 3x1, 1x3 of 384 px) for an image size drawn
    from a mixture: 55% COCO-like (long side 640, 4:3 or 3:2, a quarter portrait), 15% VG/GQA-like
    (long side 500), 15% OCR-VQA book covers (about 330 x 500), 10% TextVQA-like (1024 x 768),
    5% small (long side 200..383).

Measured, for rows of 4096 and 8192 tokens:
  * windows: what plan_epoch does, shuffle (seed, epoch) then FFD over windows of 2048 samples; time of
    the planner calls summed over the epoch (C++ vs reference, both over the full dataset).
    config.plan_epoch_ms is the library's plan_epoch end to end (shuffles, remapping, efficiency).
  * whole: one FFD over the whole dataset. The reference is O(n * rows), so it runs on a random subset
    (--ref-subset, 20k) where C++ runs too; the full 665k plan is C++ only (baseline null).
Plans are checked identical wherever both run. Efficiency = tokens placed / (rows * budget).

Rows keep the plans' rows and efficiency (and plan_epoch's time) in `extra`; `config` holds the inputs.

    python benchmarks/bench_planner.py                  # JSON to stdout, table to stderr
    python benchmarks/bench_planner.py --results-dir benchmarks/results
    python benchmarks/bench_planner.py --smoke --out /tmp/planner.json   # 20k samples, one budget
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

import numpy as np
import torch

from _common import add_output_args, emit, load_average, result  # noqa: E402  (benchmarks/_common.py)
from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import DEFAULT_GRIDS, TILE, get_anyres_grid_shape
from xgenmm_fast.data.planner import packing_efficiency, plan_epoch, plan_rows_reference

TOKENS_PER_TILE = 128  # perceiver resampler latents per tile (config.num_latents)
IMAGE_FRACTION = 0.85
# (weight, long side range, aspect ratios w/h) of the image-size mixture
IMAGE_MIX = (
    (0.55, (640, 640), (4 / 3, 3 / 2, 3 / 4, 2 / 3)),  # COCO-like; a quarter portrait
    (0.15, (500, 500), (4 / 3, 3 / 2, 3 / 4)),  # VG / GQA-like
    (0.15, (480, 520), (0.66,)),  # OCR-VQA book covers
    (0.10, (1024, 1024), (4 / 3,)),  # TextVQA-like
    (0.05, (200, 383), (1.0, 4 / 3, 3 / 4)),  # small images
)


def llava_like_lengths(n: int, seed: int) -> tuple[list[int], dict]:
    """Token counts of n samples following the length model in the module docstring, plus its stats."""
    rng = np.random.default_rng(seed)
    has_image = rng.random(n) < IMAGE_FRACTION
    text = np.where(
        has_image,
        rng.lognormal(math.log(150), 0.8, n),
        rng.lognormal(math.log(400), 1.0, n),
    )
    text = np.maximum(text.astype(np.int64), 8)

    weights = np.array([w for w, _, _ in IMAGE_MIX])
    source = rng.choice(len(IMAGE_MIX), size=n, p=weights / weights.sum())
    tiles_of: dict[tuple[int, int], int] = {}  # (w, h) -> 1 + n tiles
    image_tokens = np.zeros(n, dtype=np.int64)
    for k in np.flatnonzero(has_image):
        _, (lo, hi), aspects = IMAGE_MIX[source[k]]
        long_side = int(rng.integers(lo, hi + 1))
        aspect = aspects[int(rng.integers(len(aspects)))]
        w, h = (long_side, max(1, round(long_side / aspect))) if aspect >= 1 else (max(1, round(long_side * aspect)), long_side)
        if (w, h) not in tiles_of:
            across, down = get_anyres_grid_shape((w, h), DEFAULT_GRIDS, TILE)
            tiles_of[(w, h)] = 1 + across * down
        image_tokens[k] = tiles_of[(w, h)] * TOKENS_PER_TILE
    lengths = (text + image_tokens).tolist()
    arr = np.asarray(lengths)
    tiles_hist = {int(t): int(c) for t, c in zip(*np.unique(image_tokens[has_image] // TOKENS_PER_TILE, return_counts=True))}
    stats = {
        "samples": n,
        "with_image": int(has_image.sum()),
        "tiles_per_image_histogram": tiles_hist,
        "mean_tokens": round(float(arr.mean()), 1),
        "median_tokens": int(np.median(arr)),
        "p99_tokens": int(np.percentile(arr, 99)),
        "max_tokens": int(arr.max()),
    }
    return lengths, stats


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order plan_epoch uses (same RNG and seeding)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def windowed_plan(order: list[int], lengths: list[int], budget: int, window: int, planner) -> tuple[list, float]:
    """plan_epoch's windows with `planner`; returns (rows, seconds spent inside the planner calls)."""
    rows: list[list[int]] = []
    spent = 0.0
    for s in range(0, len(order), window):
        chunk = order[s : s + window]
        chunk_lengths = [lengths[i] for i in chunk]
        t0 = time.perf_counter()
        plan = planner(chunk_lengths, budget)
        spent += time.perf_counter() - t0
        rows.extend([chunk[j] for j in r] for r in plan)
    return rows, spent


def median_ms(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def plan_summary(rows, lengths, budget) -> dict:
    return {"rows": len(rows), "efficiency": round(packing_efficiency(rows, lengths, budget), 5)}


def entry(name: str, config: dict, ours_ms: float, base_ms: float | None, extra: dict) -> dict:
    return result(name, config, (ours_ms, "ms"), None if base_ms is None else (base_ms, "ms"),
                  higher_is_better=False, extra=extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=665_000)
    ap.add_argument("--budgets", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--window", type=int, default=2048, help="plan_epoch window (config data.pack_window)")
    ap.add_argument("--ref-subset", type=int, default=20_000, help="samples for the whole-dataset reference")
    ap.add_argument("--repeats", type=int, default=5, help="C++ timings: median of this many runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="20,000 samples, budget 4096, 2,000-sample reference "
                    "subset, 1 repeat: does it all run")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.samples, args.budgets, args.ref_subset, args.repeats = 20_000, [4096], 2_000, 1
    ffd = _ext.cpp_function("plan_rows_ffd")  # raises with the build command when missing

    load_at_start = load_average()
    lengths, stats = llava_like_lengths(args.samples, args.seed)
    print(f"dataset: {stats}", file=sys.stderr)
    subset = sorted(random.Random(args.seed + 1).sample(range(len(lengths)), min(args.ref_subset, len(lengths))))
    sub_lengths = [lengths[i] for i in subset]
    order = epoch_order(len(lengths), args.seed, epoch=0)
    results = []
    mismatches = []
    dataset = {"dataset": "LLaVA-665k-like", "seed": args.seed, "smoke": args.smoke}

    for budget in args.budgets:
        oversized = sum(1 for x in lengths if x > budget)

        # windows, as plan_epoch: planner time only, summed over the epoch
        ours_rows, _ = windowed_plan(order, lengths, budget, args.window, ffd)  # warm-up
        ours_times = [windowed_plan(order, lengths, budget, args.window, ffd)[1] for _ in range(args.repeats)]
        ref_rows, ref_s = windowed_plan(order, lengths, budget, args.window, plan_rows_reference)
        if ours_rows != ref_rows:
            mismatches.append(f"windows/budget={budget}")
        epoch_ms, ep = median_ms(lambda b=budget: plan_epoch(range(len(lengths)), lengths, b, args.seed, 0, args.window), 3)
        results.append(
            entry(
                f"ffd_windows/budget={budget}",
                {
                    **dataset,
                    "samples": len(lengths),
                    "budget": budget,
                    "window": args.window,
                    "windows": math.ceil(len(lengths) / args.window),
                    "timed": "planner calls only, summed over the windows; C++ median of repeats, reference once",
                },
                statistics.median(ours_times) * 1e3,
                ref_s * 1e3,
                {
                    "oversized_samples": oversized,
                    **plan_summary(ours_rows, lengths, budget),
                    "plans_identical": ours_rows == ref_rows,
                    "plan_epoch_ms": round(epoch_ms, 1),
                    "plan_epoch_efficiency": round(ep.efficiency, 5),
                },
            )
        )

        # one FFD over a subset, both planners
        ours_ms, ours_sub = median_ms(lambda b=budget: ffd(sub_lengths, b), args.repeats)
        t0 = time.perf_counter()
        ref_sub = plan_rows_reference(sub_lengths, budget)
        ref_ms = (time.perf_counter() - t0) * 1e3
        if ours_sub != ref_sub:
            mismatches.append(f"whole_subset/budget={budget}")
        results.append(
            entry(
                f"ffd_whole/subset={len(sub_lengths)}/budget={budget}",
                {
                    **dataset,
                    "samples": len(sub_lengths),
                    "budget": budget,
                    "subset": f"uniform random subset of the {len(lengths)} samples (seed {args.seed + 1})",
                    "timed": "one call; C++ median of repeats, reference once",
                },
                ours_ms,
                ref_ms,
                {**plan_summary(ours_sub, sub_lengths, budget), "plans_identical": ours_sub == ref_sub},
            )
        )

        # one FFD over the whole dataset: C++ only (list input, and an int64 tensor input)
        ours_ms, ours_full = median_ms(lambda b=budget: ffd(lengths, b), args.repeats)
        t_lengths = torch.tensor(lengths, dtype=torch.int64)
        tensor_ms, _ = median_ms(lambda b=budget: ffd(t_lengths, b), args.repeats)
        results.append(
            entry(
                f"ffd_whole/full/budget={budget}",
                {
                    **dataset,
                    "samples": len(lengths),
                    "budget": budget,
                    "baseline": "not run: the reference is O(n * rows) (about 10^10 row checks at 665k samples)",
                },
                ours_ms,
                None,
                {
                    "oversized_samples": oversized,
                    **plan_summary(ours_full, lengths, budget),
                    "tensor_input_ms": round(tensor_ms, 2),
                },
            )
        )

    run_info = {
        "load_average_1min_at_start": load_at_start,
        "numpy": np.__version__,
        "dataset": {"model": "LLaVA-665k-like (see bench_planner.py docstring)", "seed": args.seed, **stats},
        "plans_identical": not mismatches,
    }
    for r in results:
        base = f"baseline {r['baseline']['value']:>10.1f} ms  speedup {r['speedup']:>7.1f}x" if r["baseline"] else "baseline -"
        print(
            f"{r['name']:<36} ours {r['ours']['value']:>8.2f} ms  {base}  "
            f"rows {r['extra']['rows']:>6}  eff {r['extra']['efficiency']:.4f}",
            file=sys.stderr,
        )
    if mismatches:
        print(f"warning: C++ and reference plans differ: {mismatches}", file=sys.stderr)
    emit(args, results, "bench_planner", run_info)
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
