"""The whole perceiver resampler, forward + backward, ours vs the original algorithm, same module, same inputs.

    python benchmarks/bench_perceiver.py --results-dir benchmarks/results          # GPU: released size, bf16
    python benchmarks/bench_perceiver.py --size released --images 1 --out /tmp/p.json  # CPU, fp32 (GEMM-bound)
    python benchmarks/bench_perceiver.py --smoke                                    # CPU, tiny: does it run

Issue #4's target: the perceiver forward + backward at the released size (16 x 96 heads, 729 + 128 keys,
128 queries, batches of 5-tile images) >= 3x the reference module. bench_kernels.py measures the
attention op alone; this measures the module: 6 layers of LayerNorms, to_q / to_kv / to_out, attention
and the feed-forward block, then the final norm and projection.

ours      `PerceiverResampler(media, mask)` (xgenmm_fast/model/perceiver.py) through the ops dispatch: on CUDA
          its default choices (Triton where registered), on the CPU the `reference` backend of every op,
          forced (`dispatch.set_backend`) so that nothing runs under the Triton interpreter even where
          TRITON_INTERPRET=1 is set. The backends it used are in config.ops / config.ops_backends.
baseline  `original_perceive(resampler, media, mask)` (benchmarks/_original_perceiver.py): the original
          OpenFlamingo-style algorithm on the same parameters: keys = to_kv(cat(normed media, normed
          latents)) over all media tokens, the (N, M + L) mask materialised, masked_fill -inf, amax
          subtraction, softmax; stock torch ops only.

Inputs: `--images` images x 5 tiles (anyres base tile + a 2x2 grid) = N tiles of M media tokens (729 =
27 x 27 at the released size), random normal features; the anyres-style mask of bench_kernels: each
image's 4 grid tiles lose 15% of their tokens at each end (padding of a ~1000x700 image), the base tile
none (24% of the tokens masked overall). bf16 on CUDA, fp32 on the CPU. Random weights
(xgenmm_fast.model.init: norm scales near 1).

Rows (common format, benchmarks/README.md), each: median ms per side (`rate`: tiles/s), speedup =
baseline ms / ours ms, peak memory of one call above what was allocated before it (CUDA: max allocated;
CPU: sampled C heap, see _common.PeakMemory):
- perceiver_module_fwd_bwd/frozen_vision: media without grad (SFT: the vision encoder is frozen), every
  perceiver parameter with grad; forward, then backward of a fixed random cotangent (parameter grads set
  to None before each call, so they are allocated inside it as in a training step).
- perceiver_module_fwd_bwd/vision_grad: the same with media.requires_grad_(True).
- perceiver_module_fwd: forward only under torch.no_grad (inference).
Timing: CUDA triton.testing.do_bench (median, `--rep-ms`), CPU the interleaved median of `--repeats` calls
after `--warmup` (runs.bench_perceiver records torch's thread count and the load average: on a shared 2-core
machine the tiny size, a few ms per call, swings several-fold with other jobs' load; use more repeats or
`--threads 1` there).
--profile adds runs.bench_perceiver.profile_ours_fwd_bwd_frozen_vision: torch.profiler over ours, kernel
time grouped (matmul, perceiver attention, layer_norm, gelu, elementwise), the top kernels, and the aten ops
behind the copies / fills / concatenations with their input shapes (elementwise_ops; on the H200 the
elementwise group was 20% of the module's GPU time, its sources not yet attributed).
extra: the forward GFLOP of each side (matmuls; the baseline's work on masked tokens included) and the
largest difference between the two outputs (a correctness check).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import (PeakMemory, add_output_args, emit, kernel_settings_config, load_average,  # noqa: E402
                     median_times, result, round_sig)
from _original_perceiver import original_perceive  # noqa: E402  (benchmarks/_original_perceiver.py)

from xgenmm_fast.config import PerceiverConfig, XGenMMConfig  # noqa: E402
from xgenmm_fast.model.init import init_random_weights  # noqa: E402
from xgenmm_fast.model.perceiver import PerceiverResampler  # noqa: E402
from xgenmm_fast.ops import dispatch  # noqa: E402

TILES_PER_IMAGE = 5  # anyres: the base tile + a 2x2 grid
TARGET = ">= 3x the reference module (issue #4), fwd+bwd at the released size"
BASELINE_IMPL = "original (cat keys, masked_fill)"
OURS_IMPL = "PerceiverResampler"


# ---- the module and its inputs ------------------------------------------------------------------------
def sizes(size: str) -> dict:
    """dim, out_dim, media tokens per tile M, and the PerceiverConfig of a size."""
    if size == "released":
        cfg = XGenMMConfig.resolve("xgenmm_phi3_mini")
        return {"dim": cfg.vision.hidden_size, "out_dim": cfg.text.hidden_size, "media": cfg.vision.grid ** 2,
                "perceiver": cfg.perceiver}
    if size == "tiny":  # the released structure scaled down; 27 media tokens so that the mask is non-trivial
        return {"dim": 64, "out_dim": 96, "media": 27,
                "perceiver": PerceiverConfig(depth=2, heads=4, dim_head=16, num_latents=16, ff_mult=2)}
    raise ValueError(f"unknown size {size!r}")


def build_resampler(size: str, device: str, dtype: torch.dtype, seed: int = 0) -> PerceiverResampler:
    s = sizes(size)
    with torch.device(device):
        r = PerceiverResampler(s["dim"], s["out_dim"], s["perceiver"])
    init_random_weights(r, seed=seed)
    return r.to(device, dtype).train()


def anyres_mask(tiles: int, media: int, device: str) -> torch.Tensor:
    """(tiles, media) 0/1: every image's 4 grid tiles lose 15% of their tokens at each end, the base tile none."""
    mask = torch.ones(tiles, media, dtype=torch.long, device=device)
    pad = media * 3 // 20
    for n in range(tiles):
        if n % TILES_PER_IMAGE:
            mask[n, :pad] = 0
            mask[n, media - pad:] = 0
    return mask


def make_inputs(size: str, images: int, device: str, dtype: torch.dtype, seed: int = 1):
    """media (N, M, D), mask (N, M), cotangent (N, L, out_dim)."""
    s = sizes(size)
    N = images * TILES_PER_IMAGE
    g = torch.Generator(device="cpu").manual_seed(seed)
    media = torch.randn(N, s["media"], s["dim"], generator=g).to(device, dtype)
    cot = torch.randn(N, s["perceiver"].num_latents, s["out_dim"], generator=g).to(device, dtype)
    return media, anyres_mask(N, s["media"], device), cot


def forward_gflop(cfg: PerceiverConfig, dim: int, out_dim: int, keys_per_tile: list[int]) -> float:
    """Matmul GFLOP of one forward that runs LayerNorm'd to_kv and attention over `keys_per_tile` media tokens."""
    L, inner, N = cfg.num_latents, cfg.heads * cfg.dim_head, len(keys_per_tile)
    Q, V = N * L, sum(keys_per_tile)
    per_layer = (2 * V * dim * 2 * inner            # to_kv on the media tokens
                 + 2 * Q * dim * 3 * inner          # to_q and to_kv on the latents
                 + 4 * inner * L * (V + N * L)      # QK^T and PV over media + latent keys
                 + 2 * Q * inner * dim              # to_out
                 + 2 * 2 * Q * dim * cfg.ff_mult * dim)  # FF up and down
    return (cfg.depth * per_layer + 2 * Q * dim * out_dim) / 1e9


# ---- ops backends ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def reference_backends(force: bool):
    """Force every op with a `reference` backend to it (then restore what was forced before); no-op when not force."""
    if not force:
        yield
        return
    before = dict(getattr(dispatch, "_FORCED", {}))
    changed = []
    try:
        for op in dispatch.report():
            if "reference" in dispatch.available_backends(op):
                dispatch.set_backend(op, "reference")
                changed.append(op)
        yield
    finally:
        for op in changed:
            dispatch.set_backend(op, before.get(op))


def ops_used(fn) -> dict[str, str]:
    """{op: backend} of the dispatch choices made while fn() runs."""
    used: dict[str, str] = {}
    choose = dispatch.choose

    def recording(op):
        b = choose(op)
        used[op] = b.name
        return b
    dispatch.choose = recording
    try:
        fn()
    finally:
        dispatch.choose = choose
    return dict(sorted(used.items()))


# ---- timing ---------------------------------------------------------------------------------------------
def timer(device: str, repeats: int, warmup: int, rep_ms: float):
    """{name: fn} -> {name: median ms}."""
    def cpu(fns):
        return {k: 1e3 * s for k, s in median_times(fns, repeats, warmup, device).items()}

    if device != "cuda":
        return cpu
    try:
        import triton.testing
    except ImportError:
        return cpu

    def cuda(fns):
        return {k: float(triton.testing.do_bench(fn, warmup=max(25, rep_ms / 4), rep=rep_ms, return_mode="median"))
                for k, fn in fns.items()}
    return cuda


def fwd_bwd(module, media, run, cot):
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        media.grad = None
        run().backward(cot)
    return step


def no_grad(run):
    def step():
        with torch.no_grad():
            run()
    return step


PROFILE_GROUPS = [  # (group, substrings of the kernel / op name), first match wins
    ("perceiver attention", ("perceiver",)),
    ("matmul", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul", "wgmma", "aten::mm", "aten::addmm", "aten::bmm")),
    ("layer_norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("softmax / masking (reference attention)", ("softmax", "masked_fill", "amax")),
    ("elementwise / copies / reductions", ("elementwise", "copy", "reduce", "fill", "cat", "index", "gather",
                                            "scatter", "memcpy", "memset", "aten::add", "aten::mul", "aten::sum")),
]


def profile_ours(step, device: str, calls: int = 3) -> dict:
    """torch.profiler over `calls` calls of ours: kernel time by group, the top 15 kernels (the split
    that decides what to fuse next, e.g. the FF block's LayerNorm and GELU), and the aten ops behind the
    copies / fills / concatenations with their input shapes (elementwise_ops)."""
    from torch.profiler import ProfilerActivity, profile
    step()  # warm
    def profiled(activities, record_shapes):
        with profile(activities=activities, record_shapes=record_shapes) as prof:
            for _ in range(calls):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
        return prof

    # kernels only (CUDA activity alone: every event is a kernel or a copy, none counted twice)
    prof = profiled([ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU], False)
    times: dict[str, float] = {}
    for ev in prof.key_averages():
        us = ev.self_device_time_total if device == "cuda" else ev.self_cpu_time_total
        if us > 0 and not ev.key.startswith("ProfilerStep"):
            times[ev.key] = times.get(ev.key, 0.0) + us / 1e3 / calls
    # then the aten ops behind the copies, fills and concatenations, with their input shapes (where the
    # "elementwise / copies" group comes from): device time of each op's kernels, per call
    ops_prof = profiled([ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else []), True)
    copy_ops = []
    for ev in ops_prof.key_averages(group_by_input_shape=True):
        if ev.key in ("aten::copy_", "aten::cat", "aten::fill_", "aten::zero_", "aten::add_", "aten::add",
                      "aten::mul", "aten::sum", "aten::index", "aten::index_put_", "aten::clone"):
            us = ev.device_time_total if device == "cuda" else ev.cpu_time_total
            if us > 0:
                copy_ops.append({"op": ev.key, "shapes": str(ev.input_shapes)[:160],
                                 "calls": ev.count // calls, "ms": round_sig(us / 1e3 / calls, 4)})
    copy_ops.sort(key=lambda r: -r["ms"])
    total = sum(times.values()) or 1.0
    groups: dict[str, float] = {}
    for name, ms in times.items():
        low = name.lower()
        group = next((g for g, keys in PROFILE_GROUPS if any(k in low for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + ms
    top = sorted(times.items(), key=lambda kv: -kv[1])[:15]
    return {"ms_per_call": round_sig(total, 4), "calls": calls,
            "what": "self device time per kernel (CUDA) or self CPU time per op (CPU), per call",
            "groups": {g: {"ms": round_sig(ms, 4), "frac": round_sig(ms / total, 3)}
                       for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"name": n[:120], "ms": round_sig(ms, 4), "frac": round_sig(ms / total, 3)} for n, ms in top],
            "elementwise_ops": copy_ops[:12]}


def timed_side(value_ms: float, impl: str, tiles: int) -> dict:
    return {"value": value_ms, "unit": "ms", "impl": impl,
            "rate": {"value": round_sig(tiles / (value_ms / 1e3), 4), "unit": "tiles/s"}}


def run(args) -> tuple[list[dict], dict]:
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dt = str(dtype).replace("torch.", "")
    force_reference = device != "cuda"
    torch.manual_seed(0)
    resampler = build_resampler(args.size, device, dtype)
    media, mask, cot = make_inputs(args.size, args.images, device, dtype)
    s, pcfg = sizes(args.size), resampler.config
    N, M = media.shape[:2]
    measure = timer(device, args.repeats, args.warmup, args.rep_ms)
    visible = mask.sum(1).tolist()
    gflop = {"ours": forward_gflop(pcfg, s["dim"], s["out_dim"], visible),
             "baseline": forward_gflop(pcfg, s["dim"], s["out_dim"], [M] * N)}
    rows: list[dict] = []
    with reference_backends(force_reference):
        ops = ops_used(lambda: resampler(media, mask))
        ops_text = "reference (forced on CPU)" if force_reference else (
            "triton" if "triton" in ops.values() else "dispatch default")
        config = {"size": args.size, "images": args.images, "tiles": N, "tiles_per_image": TILES_PER_IMAGE,
                  "media_tokens": M, "latents": pcfg.num_latents, "depth": pcfg.depth, "heads": pcfg.heads,
                  "dim_head": pcfg.dim_head, "dim": s["dim"], "out_dim": s["out_dim"],
                  "masked": f"{1 - mask.float().mean().item():.2f}", "dtype": dt, "device": device,
                  "ops": ops_text, "ops_backends": ops, "smoke": args.smoke,
                  "cpu_threads": torch.get_num_threads() if device == "cpu" else None,
                  **(kernel_settings_config() if "triton" in ops.values() else {})}
        with torch.no_grad():
            out_ours = resampler(media, mask).float()
            out_base = original_perceive(resampler, media, mask).float()
            max_diff = (out_ours - out_base).abs().max().item()
            rel_diff = max_diff / max(out_base.abs().max().item(), 1e-30)
            del out_ours, out_base

        def ours_call():
            return resampler(media, mask)

        def base_call():
            return original_perceive(resampler, media, mask)

        for name, media_grad, train in (("perceiver_module_fwd_bwd/frozen_vision", False, True),
                                        ("perceiver_module_fwd_bwd/vision_grad", True, True),
                                        ("perceiver_module_fwd", False, False)):
            media.requires_grad_(media_grad)
            if train:
                fns = {"ours": fwd_bwd(resampler, media, ours_call, cot),
                       "baseline": fwd_bwd(resampler, media, base_call, cot)}
            else:
                fns = {"ours": no_grad(ours_call), "baseline": no_grad(base_call)}
            try:
                ms = measure(fns)
                peaks, how = {}, None
                for side, fn in fns.items():
                    with PeakMemory(device) as pm:
                        fn()
                    peaks[side], how = pm.gb, pm.how
            except Exception as e:  # noqa: BLE001  (e.g. out of memory: a row that says so)
                rows.append(result(name, config, None, higher_is_better=False, error=f"{type(e).__name__}: {e}"))
                continue
            finally:
                for p in resampler.parameters():
                    p.grad = None
                media.grad = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            extra = {"fwd_gflop": {k: round(v, 3) for k, v in gflop.items()},
                     "max_abs_diff_fwd": round_sig(max_diff, 3), "max_rel_diff_fwd": round_sig(rel_diff, 3),
                     "media_requires_grad": media_grad, "params_require_grad": train}
            if train:
                extra["target"] = TARGET
            rows.append(result(name, config, timed_side(ms["ours"], OURS_IMPL, N),
                               timed_side(ms["baseline"], BASELINE_IMPL, N), higher_is_better=False,
                               peak_memory_gb={"ours": peaks["ours"], "baseline": peaks["baseline"], "how": how},
                               extra=extra))
        media.requires_grad_(False)
        profile = None
        if args.profile:
            profile = profile_ours(fwd_bwd(resampler, media, ours_call, cot), device)
            for p in resampler.parameters():
                p.grad = None
    run_info = {"device": device, "dtype": dt, "size": args.size, "images": args.images, "smoke": args.smoke,
                "repeats": args.repeats, "warmup": args.warmup, "rep_ms": args.rep_ms if device == "cuda" else None,
                "timer": "triton.testing.do_bench (median)" if device == "cuda" else "interleaved median (CPU)",
                "ops_backends": ops, "torch_threads": torch.get_num_threads(),
                "profile_ours_fwd_bwd_frozen_vision": profile,
                "load_average_1min_at_start": args.load_average,
                "note": f"ours runs {ops_text} ops; output max |ours - baseline| = {max_diff:.3g} "
                        f"(relative {rel_diff:.2g})"}
    return rows, run_info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "released"], default="released")
    p.add_argument("--images", type=int, default=8,
                   help=f"images of {TILES_PER_IMAGE} tiles each (default 8: 40 tiles)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5, help="CPU: timed calls per side (median)")
    p.add_argument("--warmup", type=int, default=1, help="CPU: untimed calls per side first")
    p.add_argument("--rep-ms", type=float, default=200.0, help="CUDA: do_bench repetition time per measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (torch.set_num_threads; default torch's own choice)")
    p.add_argument("--smoke", action="store_true", help="tiny size on the CPU, 2 images, few repeats: does it run")
    p.add_argument("--profile", action="store_true",
                   help="also profile ours (fwd+bwd, frozen vision): kernel time by group in runs.bench_perceiver")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be >= 1")
    if args.smoke:
        args.size, args.device, args.images, args.repeats, args.warmup = "tiny", "cpu", 2, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)  # recorded in config.cpu_threads (CPU rows)
    args.load_average = load_average()
    rows, run_info = run(args)
    print(f"{'row':42s} {'ours ms':>10s} {'base ms':>10s} {'speedup':>8s} {'tiles/s ours':>13s} "
          f"{'peak GB ours/base':>18s}", file=sys.stderr)
    for r in rows:
        if r["ours"] is None:
            print(f"{r['name']:42s} ERROR {r['error'][:100]}", file=sys.stderr)
            continue
        pm = r["peak_memory_gb"]
        print(f"{r['name']:42s} {r['ours']['value']:10.4g} {r['baseline']['value']:10.4g} {r['speedup']:8.2f} "
              f"{r['ours']['rate']['value']:13.4g} {pm['ours']:8.3g} / {pm['baseline']:<8.3g}", file=sys.stderr)
    print(f"({run_info['note']})", file=sys.stderr)
    prof = run_info["profile_ours_fwd_bwd_frozen_vision"]
    if prof:
        print(f"ours fwd+bwd (frozen vision), {prof['ms_per_call']} ms per call by group: " + ", ".join(
            f"{g} {100 * v['frac']:.0f}%" for g, v in prof["groups"].items()), file=sys.stderr)
    emit(args, rows, "bench_perceiver", run_info)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
