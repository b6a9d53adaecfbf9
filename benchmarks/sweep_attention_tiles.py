"""Tile sweep for the varlen attention kernels on a GPU: which (BLOCK_M, BLOCK_N, warps, stages) is fastest
per kernel, what the heavy-first block order buys, and whether the two-part head dim (SPLIT_HEAD_DIM), the
keys-major dK/dV scores (DKDV_KEYS_MAJOR) and dQ by atomic adds from the dK/dV kernel (ATOMIC_DQ) pay.
Exploration for choosing `_cfg` in xgenmm_fast/ops/triton/varlen_attention.py; bench_kernels.py measures the
chosen tiles against baselines.

    python benchmarks/sweep_attention_tiles.py --out /tmp/sweep.json [--budget-s 90] [--rep-ms 50]

Shapes: Phi-3 (32 heads, head dim 96), bf16, causal, no window.
- fwd: 4 x 4096 tokens (bench_kernels' varlen_attn_fwd/4k); TFLOP/s counts the visible half (QKᵀ and PV).
- perceiver (family "perceiver"): the perceiver's varlen attention fwd+bwd as the model runs it (40 tiles,
  16 heads, 128 latents, 729 media tokens, 24% masked): the defaults, each switch (its own SPLIT_HEAD_DIM,
  DKDV_KEYS_MAJOR and ATOMIC_DQ in perceiver_attention.py), its dkdv / dq / fwd / dkdv_atomic_dq tiles varied
  one at a time.
- fwd_bwd (defaults, both block orders, each switch), dkdv, dq, dkdv_atomic_dq: 8 x 2048 tokens
  (bench_kernels' equal_length row); the forward + backward is timed with one backward kernel's tiles varied
  and the other at its default, so differences between rows are that kernel's; TFLOP/s over 3.5x the
  forward's FLOPs.
- sdpa (family "sdpa"): torch SDPA's flash backend on the same fwd and fwd_bwd problems, batched, right after
  our defaults: the baseline of #4's attention targets, in the same run.
- combined (rows with "combined": true, last, timed even when the budget is spent; under gpu_check.sh the
  candidates stop COMBINED_RESERVE_S before the step's deadline, XGENMM_TEST_DEADLINE, to leave them time):
  per family the fastest agreeing switch setting with, per kernel, the fastest agreeing tiles measured under
  it (`combined_choice`), on fwd_bwd (and the LM's fwd); the closing lines (`versus_sdpa`) put the LM
  defaults and this row against SDPA flash. `settings` in the JSON: each family's combined setting where it
  agrees and beats the defaults, else {} (`settings_from`); XGENMM_KERNEL_SETTINGS=<the JSON> applies them
  (xgenmm_fast/ops/triton/tuning.py).
Each row's setting (switches, and the candidate's tiles in place of `_cfg`'s answer for that kernel only) is
applied through tuning.apply for the measurement, as the settings would be; max_abs_diff compares its outputs
(and gradients) with the default tiles', and max_abs_err_fp32 with the plain-PyTorch reference run in fp32 on
the same inputs: a row `agrees` when that error is at most AGREE_FACTOR times the default tiles' (a row that
does not is a wrong kernel, never a default). `recommendations` (in the JSON and printed last): per kernel
the fastest agreeing row against the current defaults, and every disagreeing row. A candidate that fails to
compile or launch (shared memory, say) is recorded with its error. The defaults are measured first, so a
cut-off sweep still has its reference row. Results: one JSON document (device, versions, date, commit,
recommendations, settings, rows), and a table on stdout. It refuses to run with kernel settings applied
(XGENMM_KERNEL_SETTINGS): it compares with the built-in defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import round_sig, run_metadata, write_json_atomic  # noqa: E402
from _sweep import (AGREE_FACTOR, agreement, error_text, exit_on_device_problem, header,  # noqa: E402
                    max_abs_diff, timer)

import xgenmm_fast.ops.triton.perceiver_attention as pa  # noqa: E402
import xgenmm_fast.ops.triton.perceiver_varlen as pv  # noqa: E402
import xgenmm_fast.ops.triton.varlen_attention as va  # noqa: E402
from xgenmm_fast.ops.triton import tuning  # noqa: E402
from xgenmm_fast.ops.attention import (perceiver_attention_varlen_reference,  # noqa: E402
                                       varlen_attention_reference)

FWD = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
       for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 32, 8, 3),
                            (128, 32, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4),
                            (64, 128, 4, 3), (64, 32, 4, 3), (256, 64, 8, 2)]]
DKDV = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(32, 64, 8, 2), (32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 8, 2), (64, 64, 8, 2),
                             (64, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2), (64, 128, 8, 2), (16, 128, 8, 2)]]
DQ = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
      for bm, bn, w, s in [(64, 32, 8, 2), (64, 32, 4, 2), (64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 2),
                           (64, 64, 4, 2), (128, 64, 8, 2), (64, 16, 4, 2), (32, 64, 4, 2)]]

# ATOMIC_DQ's dK/dV kernel, other than its default 32 x 64 at 8 warps (sm_90 static check, head dim 96
# unsplit / split: 0 / 64 B of spills, keys-major 392 / 96 B); 64 x 32 at 8 warps spills least keys-major
# (192 / 40 B), 64 x 64 at 8 warps 584 / 224 B (keys-major 760 / 400)
ATOMIC_DKDV = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
               for bm, bn, w, s in [(64, 32, 8, 2), (64, 64, 8, 2)]]

# the perceiver (128 queries per tile: a dK/dV program sees all of them in one or two query tiles)
PERCEIVER_DKDV = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                  for bm, bn, w, st in [(32, 64, 8, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2),
                                        (128, 64, 4, 2)]]
PERCEIVER_DQ = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                for bm, bn, w, st in [(64, 32, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2)]]
# the perceiver's ATOMIC_DQ dK/dV kernel, other than its default 32 x 64 at 8 warps (sm_90 static check at head
# dim 96, perceiver_varlen, unsplit / split: 0 / 40 B of spills): 64 x 32 at 8 warps (120 / 208 B, keys-major
# 48 / 64 B), 32 x 32 at 4 warps (40 / 136 B, two programs per SM)
PERCEIVER_ATOMIC_DKDV = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                         for bm, bn, w, st in [(64, 32, 8, 2), (32, 32, 4, 2)]]
PERCEIVER_FWD = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                 for bm, bn, w, st in [(128, 64, 8, 3), (64, 128, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3)]]

# seconds kept for the combined rows before the step's deadline (XGENMM_TEST_DEADLINE, set by scripts/lib/steps.sh)
COMBINED_RESERVE_S = 20
SWITCHES = tuple(tuning.SWITCHES)  # the module switches a row may set (absent: off), as settings name them


def _settings(r: dict) -> str:
    tiles = "default tiles" if r["tiles"] == "default" else " ".join(f"{k}={v}" for k, v in r["tiles"].items())
    return ", ".join([tiles] + [f"{k}={r.get(k, False)}" for k in SWITCHES])


def recommendations(rows: list[dict], defaults: dict) -> list[str]:
    """Per family and kernel: the fastest row that agrees with the reference, against the current defaults
    (`defaults`: family -> {switch: value}, SWITCHES) timed on the same problem, and the rows that do not
    agree. What to read before changing `_cfg`, SPLIT_HEAD_DIM, DKDV_KEYS_MAJOR or ATOMIC_DQ; the switches
    apply to every kernel of a family, so the fwd_bwd lines weigh them as a whole."""
    lines = []
    for family in ("lm", "perceiver"):
        fam = [r for r in rows if r.get("family", "lm") == family and "ms" in r and r["heavy_first"]]
        # which timed problem each kernel's rows share: in the LM family the forward tiles are timed on the
        # forward (4k) and the backward tiles on fwd+bwd; the perceiver's all on its fwd+bwd
        problem = (lambda k: "fwd" if k == "fwd" else "fwd_bwd") if family == "lm" else (lambda k: "fwd_bwd")
        for kernel in ("fwd_bwd", "fwd", "dkdv", "dq", "dkdv_atomic_dq"):
            same = [r for r in fam if problem(r["kernel"]) == problem(kernel)
                    and (r["kernel"] == kernel or r["tiles"] == "default")]
            base = [r for r in same if r["tiles"] == "default"
                    and all(r.get(k, False) == v for k, v in defaults[family].items())]
            ok = [r for r in same if r.get("agrees", True)]
            if not base or not ok or (kernel != "fwd_bwd" and not any(r["kernel"] == kernel for r in same)):
                continue
            best = min(ok, key=lambda r: r["ms"])
            b = base[0]
            lines.append(f"{family} {kernel}: fastest agreeing {_settings(best)}: {best['ms']} ms vs the defaults' "
                         f"{b['ms']} ms ({b['ms'] / best['ms']:.2f}x)")
    for r in rows:
        if r.get("agrees") is False:
            lines.append(f"DISAGREES {r.get('family', 'lm')} {r['kernel']} {_settings(r)}: max |err| "
                         f"{r['max_abs_err_fp32']} vs fp32, {r['err_vs_default']}x the default tiles' (never a default)")
    return lines


def combined_choice(rows: list[dict], family: str = "lm") -> tuple[dict, dict, dict] | None:
    """What a family's combined row times: its fastest agreeing fwd+bwd switch setting (default tiles,
    heavy-first order) and, per kernel, the fastest agreeing tiles measured under that same setting that beat
    it: the backward kernels' (and the perceiver's forward, timed on its fwd+bwd) against that row, the LM
    forward's on the 4k forward against its default tiles. -> (switches, tiles by kernel timed on fwd+bwd,
    LM forward tiles by kernel), or None without a measured switch row."""
    def ms(r):
        return r["ms"]

    fam = [r for r in rows if r.get("family", "lm") == family and "ms" in r and r.get("agrees") is True
           and r["heavy_first"] and not r.get("combined")]
    setting_rows = [r for r in fam if r["kernel"] == "fwd_bwd" and r["tiles"] == "default"]
    if not setting_rows:
        return None
    best = min(setting_rows, key=ms)
    switches = {k: best.get(k, False) for k in SWITCHES}
    kernels = ("dkdv_atomic_dq",) if switches["atomic_dq"] else ("dkdv", "dq")
    backward = {}
    for kernel in kernels + (("fwd",) if family == "perceiver" else ()):
        faster = [r for r in fam if r["kernel"] == kernel and r["ms"] < best["ms"]
                  and all(r.get(k, False) == v for k, v in switches.items())]
        if faster:
            backward[kernel] = min(faster, key=ms)["tiles"]
    forward = {}
    if family == "lm":
        fwd_rows = [r for r in fam if r["kernel"] == "fwd" and r["split_head_dim"] == switches["split_head_dim"]]
        fwd_default = [r for r in fwd_rows if r["tiles"] == "default"]
        fwd_faster = [r for r in fwd_rows if r["tiles"] != "default" and fwd_default
                      and r["ms"] < fwd_default[0]["ms"]]
        forward = {"fwd": min(fwd_faster, key=ms)["tiles"]} if fwd_faster else {}
    return switches, backward, forward


def settings_from(rows: list[dict], defaults: dict) -> dict:
    """The `settings` of the JSON (xgenmm_fast/ops/triton/tuning.py applies them): per family, the switches
    and tiles of its combined fwd+bwd row when that row agrees with the reference and beats the current
    defaults' row in this run; otherwise {} (the defaults stay)."""
    out = {}
    for family in ("lm", "perceiver"):
        combined = [r for r in rows if r.get("family", "lm") == family and r.get("combined")
                    and r["kernel"] == "fwd_bwd" and "ms" in r]
        base = [r for r in rows if r.get("family", "lm") == family and r["kernel"] == "fwd_bwd" and "ms" in r
                and r["tiles"] == "default" and r["heavy_first"] and not r.get("combined")
                and all(r.get(k, False) == v for k, v in defaults[family].items())]
        out[family] = {}
        if combined and base and combined[-1].get("agrees") and combined[-1]["ms"] < base[0]["ms"]:
            r = combined[-1]
            out[family] = {k: bool(r.get(k, False)) for k in SWITCHES}
            if isinstance(r["tiles"], dict) and r["tiles"]:
                out[family]["tiles"] = r["tiles"]
    return out


def versus_sdpa(rows: list[dict], defaults: dict) -> list[str]:
    """The LM rows against torch SDPA's flash backend timed in the same run on the same problem (issue #4's
    targets: fwd+bwd >= 0.9x SDPA's speed on equal lengths; the forward at 4k >= 45% of the matmul peak, which
    bench_kernels.py measures): the defaults (`defaults["lm"]`: the switches in force) and the combined row."""
    lines = []
    sdpa = {r["kernel"]: r for r in rows if r.get("family") == "sdpa" and "ms" in r}
    for kernel, target in (("fwd_bwd", " (target >= 0.9x)"), ("fwd", "")):
        if kernel not in sdpa:
            continue
        ref = sdpa[kernel]
        lm = [r for r in rows if r.get("family", "lm") == "lm" and r["kernel"] == kernel and "ms" in r
              and r["heavy_first"]]
        picks = [("defaults", r) for r in lm if r["tiles"] == "default" and not r.get("combined")
                 and all(r.get(k, False) == v for k, v in defaults["lm"].items())][:1]
        picks += [(f"combined ({_settings(r)}{'' if r.get('agrees') else ', DISAGREES'})", r)
                  for r in lm if r.get("combined")]
        parts = [f"{what} {r['ms']} ms, {r['tflops']} TFLOP/s = {ref['ms'] / r['ms']:.2f}x SDPA's speed"
                 for what, r in picks]
        lines.append(f"lm {kernel} vs SDPA flash ({ref['ms']} ms, {ref['tflops']} TFLOP/s){target}: "
                     + "; ".join(parts))
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--rep-ms", type=float, default=50.0, help="do_bench repetition time per candidate")
    p.add_argument("--budget-s", type=float, default=90.0, help="stop starting candidates after this long")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=96)
    p.add_argument("--smoke", action="store_true",
                   help="CPU under TRITON_INTERPRET=1: tiny shapes, two candidates per kernel, one timed call each "
                        "(does the script run; the tiles are the interpreter's)")
    return p.parse_args(argv)


def packed(lens, H, D, dev, dtype):
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=dev)
    qkv = [torch.randn(sum(lens), H, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
    return qkv, cu, sum(4 * n * (n + 1) / 2 * H * D for n in lens)


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = exit_on_device_problem("sweep_attention_tiles", args.smoke)
    if problem:
        return problem
    if tuning.describe() != "defaults":  # its rows, recommendations and settings are relative to the defaults
        print(f"sweep_attention_tiles: kernel settings are applied ({tuning.report()}); the sweep compares "
              f"with the built-in defaults: run it without {tuning.ENV}", file=sys.stderr)
        return 2
    timer_ms = timer(args.smoke, args.rep_ms)

    meta = run_metadata()

    def save():  # after every row: a sweep cut off by its time limit keeps what it measured
        doc = {**header(meta, "sweep_attention_tiles"), "heads": H, "head_dim": D,
               "shapes": {"fwd": f"{long_lens} causal", "fwd_bwd/dkdv/dq": f"{eq_lens} causal fwd+bwd"},
               "seconds": round(time.time() - t_start, 1), "agree_factor": AGREE_FACTOR,
               "recommendations": recommendations(rows, defaults) + versus_sdpa(rows, defaults),
               "settings": settings_from(rows, defaults), "rows": rows}
        write_json_atomic(args.out, doc)

    t_start = time.time()
    # inside scripts/gpu_check.sh the step's own deadline (scripts/lib/steps.sh) may come before the budget: stop
    # starting candidates early enough for the combined rows, which are what the settings come from
    step_deadline = float(os.environ.get("XGENMM_TEST_DEADLINE") or 0)

    def out_of_time() -> bool:
        now = time.time()
        return now - t_start > args.budget_s or bool(step_deadline and now > step_deadline - COMBINED_RESERVE_S)
    H, D = (2, 24) if args.smoke else (args.heads, args.head_dim)
    dev, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    long_lens, eq_lens = ([40, 24], [32, 17]) if args.smoke else ([4096] * 4, [2048] * 8)
    # the switches in force when the sweep starts (the modules' defaults): what `recommendations` and `settings`
    # compare with
    defaults = {family: {key: getattr(mod, attr) for key, attr in tuning.SWITCHES.items()}
                for family, mod in (("lm", va), ("perceiver", pa))}
    rows = []

    def measure(kernel: str, tiles: dict | None, fn, flops: float, heavy_first: bool = True, split: bool = False,
                family: str = "lm", keys_major: bool = False, atomic_dq: bool = False,
                tiles_by_kernel: dict | None = None):
        """One row. tiles: that kernel's candidate; tiles_by_kernel: several kernels' tiles at once (the
        combined row, timed even past the budget)."""
        if tiles_by_kernel is None and out_of_time():
            return
        row = {"kernel": kernel, "tiles": tiles or tiles_by_kernel or "default", "heavy_first": heavy_first,
               "split_head_dim": split, "dkdv_keys_major": keys_major, "atomic_dq": atomic_dq}
        if tiles_by_kernel is not None:
            row["combined"] = True
        if family != "lm":
            row = {"family": family, **row}
        chosen = dict(tiles_by_kernel or {}, **({kernel: tiles} if tiles is not None else {}))
        # the row's setting, applied as XGENMM_KERNEL_SETTINGS would apply the JSON's `settings`
        restore = tuning.apply({family: {"split_head_dim": split, "dkdv_keys_major": keys_major,
                                         "atomic_dq": atomic_dq, **({"tiles": chosen} if chosen else {})}})
        va.HEAVY_FIRST = heavy_first if family == "lm" else True
        try:
            ms = timer_ms(fn)
            got = fn()
            row["max_abs_diff"] = round_sig(max_abs_diff(got, expected[fn]), 3)
            row.update(agreement(max_abs_diff(got, reference[fn]), default_err[fn]))
            row.update(ms=round_sig(ms, 4), tflops=round_sig(flops / ms / 1e9, 4))
        except Exception as e:  # noqa: BLE001 -- a candidate that does not compile is a result too
            row["error"] = error_text(e)
            if not args.smoke:
                torch.cuda.synchronize()
        finally:
            restore()
            va.HEAVY_FIRST = True
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)

    (q4, k4, v4), cu4, flops4 = packed(long_lens, H, D, dev, dtype)
    (q2, k2, v2), cu2, flops2 = packed(eq_lens, H, D, dev, dtype)
    g2 = torch.randn_like(q2)

    def fwd():
        with torch.no_grad():
            return [va.varlen_attention_triton(q4, k4, v4, cu4, max_seqlen=max(long_lens))]

    def sdpa_row(kernel: str, lens: list[int], backward: bool):
        """torch SDPA (its flash backend on the GPU), causal, on the same problem batched (B, H, T, D): the
        reference the #4 targets name, timed in this run (bench_kernels' rows use the same call)."""
        if out_of_time():
            return
        B, T = len(lens), max(lens)  # (the GPU shapes are equal lengths; the smoke run's pad to the longest)
        x = [torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=backward) for _ in range(3)]
        gy = torch.randn(B, H, T, D, device=dev, dtype=dtype)

        def call():
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if dev == "cuda" else contextlib.nullcontext():
                if not backward:
                    with torch.no_grad():
                        return F.scaled_dot_product_attention(*x, is_causal=True)
                for t in x:
                    t.grad = None
                F.scaled_dot_product_attention(*x, is_causal=True).backward(gy)
        row = {"family": "sdpa", "kernel": kernel, "tiles": "sdpa_flash" if dev == "cuda" else "sdpa",
               "batched": [B, H, T, D]}
        try:
            ms = timer_ms(call)
            row.update(ms=round_sig(ms, 4), tflops=round_sig(
                (3.5 if backward else 1.0) * B * 4 * T * (T + 1) / 2 * H * D / ms / 1e9, 4))
        except Exception as e:  # noqa: BLE001 -- recorded, as a candidate's error is
            row["error"] = error_text(e)
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)

    def fwd_bwd():
        for t in (q2, k2, v2):
            t.grad = None
        out = va.varlen_attention_triton(q2, k2, v2, cu2, max_seqlen=max(eq_lens))
        out.backward(g2)
        return [out.detach(), q2.grad, k2.grad, v2.grad]

    # the perceiver's attention as the model runs it (perceiver_varlen): 40 tiles (8 images x 5), 16 heads,
    # 128 latents, 729 media tokens of which 24% masked (bench_kernels' perceiver rows), head dim 96
    PN, PH, PL, PM = (4, 2, 16, 27) if args.smoke else (40, 16, 128, 729)
    keep = torch.ones(PN, PM, dtype=torch.bool)
    for n in range(PN):
        if n % 5:
            keep[n, :PM * 3 // 20] = keep[n, PM - PM * 3 // 20:] = False
    cu_p = torch.tensor([0] + keep.sum(1).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    total = int(keep.sum())
    pq, pkl, pvl = (torch.randn(PN, PH, PL, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    pkm, pvm = (torch.randn(total, PH, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    pg = torch.randn(PN, PH, PL, D, device=dev, dtype=dtype)
    pflops = 3.5 * 4 * PH * PL * D * (total + PN * PL)

    def perceiver_fwd_bwd():
        for t in (pq, pkm, pvm, pkl, pvl):
            t.grad = None
        out = pv.perceiver_attention_varlen_triton(pq, pkm, pvm, cu_p, pkl, pvl, D ** -0.5, max_media=PM)
        out.backward(pg)
        return [out.detach(), pq.grad, pkm.grad, pvm.grad, pkl.grad, pvl.grad]

    expected = {fwd: fwd(), fwd_bwd: fwd_bwd(), perceiver_fwd_bwd: perceiver_fwd_bwd()}  # default tiles' outputs

    def fp32_reference(leaves, ref_fn, grad):
        """The same outputs (and gradients) from the plain-PyTorch reference in fp32 on the same inputs."""
        x = [t.detach().float().requires_grad_(grad is not None) for t in leaves]
        out = ref_fn(*x)
        if grad is None:
            return [out.detach()]
        out.backward(grad.float())
        return [out.detach()] + [t.grad for t in x]

    reference = {
        fwd: fp32_reference((q4, k4, v4), lambda q, k, v: varlen_attention_reference(q, k, v, cu4), None),
        fwd_bwd: fp32_reference((q2, k2, v2), lambda q, k, v: varlen_attention_reference(q, k, v, cu2), g2),
        perceiver_fwd_bwd: fp32_reference(
            (pq, pkm, pvm, pkl, pvl),
            lambda q, km, vm, kl, vl: perceiver_attention_varlen_reference(q, km, vm, cu_p, kl, vl, D ** -0.5,
                                                                           max_media=PM), pg),
    }
    default_err = {fn: max_abs_diff(expected[fn], reference[fn]) for fn in expected}
    if not args.smoke:
        torch.cuda.empty_cache()

    measure("fwd", None, fwd, flops4)
    sdpa_row("fwd", long_lens, backward=False)
    measure("fwd", None, fwd, flops4, split=True)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2)
    sdpa_row("fwd_bwd", eq_lens, backward=True)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, split=True)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, keys_major=True)  # dK/dV scores as K·Qᵀ (DKDV_KEYS_MAJOR)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, split=True, keys_major=True)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, atomic_dq=True)  # dQ by atomic adds (ATOMIC_DQ)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, split=True, atomic_dq=True)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, keys_major=True, atomic_dq=True)  # no transposed matmul result
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, split=True, keys_major=True, atomic_dq=True)
    measure("fwd", None, fwd, flops4, heavy_first=False)
    measure("fwd_bwd", None, fwd_bwd, 3.5 * flops2, heavy_first=False)
    measure("fwd_bwd", None, perceiver_fwd_bwd, pflops, family="perceiver")
    measure("fwd_bwd", None, perceiver_fwd_bwd, pflops, family="perceiver", split=True)
    measure("fwd_bwd", None, perceiver_fwd_bwd, pflops, family="perceiver", keys_major=True)
    measure("fwd_bwd", None, perceiver_fwd_bwd, pflops, family="perceiver", split=True, keys_major=True)
    for keys_major, split in itertools.product((False, True), (False, True)):  # the perceiver's ATOMIC_DQ
        measure("fwd_bwd", None, perceiver_fwd_bwd, pflops, family="perceiver", split=split, keys_major=keys_major,
                atomic_dq=True)
    for kernel, cands in (("dkdv", PERCEIVER_DKDV), ("dq", PERCEIVER_DQ), ("fwd", PERCEIVER_FWD)):
        for tiles in cands[:1] if args.smoke else cands:
            measure(kernel, tiles, perceiver_fwd_bwd, pflops, family="perceiver")
    for tiles in PERCEIVER_ATOMIC_DKDV[:1] if args.smoke else PERCEIVER_ATOMIC_DKDV:  # its dK/dV kernel, other tiles
        measure("dkdv_atomic_dq", tiles, perceiver_fwd_bwd, pflops, family="perceiver", atomic_dq=True)
    for keys_major, split in itertools.product((False, True), (False, True)):  # ATOMIC_DQ's dK/dV kernel, other tiles
        for tiles in ATOMIC_DKDV[:1] if args.smoke else ATOMIC_DKDV:
            measure("dkdv_atomic_dq", tiles, fwd_bwd, 3.5 * flops2, split=split, keys_major=keys_major,
                    atomic_dq=True)
    for split in (True, False):  # the two-part head dim first: the padded tiles were swept on 2026-11-26
        for kernel, cands, fn, fl in (("fwd", FWD, fwd, flops4), ("dkdv", DKDV, fwd_bwd, 3.5 * flops2),
                                      ("dq", DQ, fwd_bwd, 3.5 * flops2)):
            for tiles in cands[:2] if args.smoke else cands:
                measure(kernel, tiles, fn, fl, split=split)

    for family, fn, flops in (("lm", fwd_bwd, 3.5 * flops2), ("perceiver", perceiver_fwd_bwd, pflops)):
        choice = combined_choice(rows, family)  # timed even when the budget is spent (a few seconds)
        if choice is None:
            continue
        switches, backward, forward = choice
        sw = dict(split=switches["split_head_dim"], keys_major=switches["dkdv_keys_major"],
                  atomic_dq=switches["atomic_dq"], family=family)
        measure("fwd_bwd", None, fn, flops, tiles_by_kernel={**backward, **forward}, **sw)
        if family == "lm":
            measure("fwd", None, fwd, flops4, tiles_by_kernel=forward, **sw)

    save()
    print(f"{'family':9s} {'kernel':14s} {'tiles':44s} {'heavy':>5s} {'split':>5s} {'k-maj':>5s} {'atomic':>6s} "
          f"{'ms':>8s} "
          f"{'TFLOP/s':>8s} {'agrees':>6s} err/default")
    for r in sorted(rows, key=lambda r: (r.get("family", "lm"), r["kernel"], r.get("ms", 1e9))):
        t = r["tiles"] if isinstance(r["tiles"], str) else " ".join(f"{k}={v}" for k, v in r["tiles"].items())
        print(f"{r.get('family', 'lm'):9s} {r['kernel']:14s} {t:44s} {str(r.get('heavy_first', '')):>5s} "
              f"{str(r.get('split_head_dim', '')):>5s} {str(r.get('dkdv_keys_major', False)):>5s} "
              f"{str(r.get('atomic_dq', False)):>6s} "
              f"{r.get('ms', float('nan')):8.3f} {r.get('tflops', float('nan')):8.1f} "
              f"{str(r.get('agrees', '')):>6s} {r.get('err_vs_default', '')} {r.get('error', '')}")
    print("\n".join(recommendations(rows, defaults) + versus_sdpa(rows, defaults)))
    print(f"settings (XGENMM_KERNEL_SETTINGS={args.out} applies them): {json.dumps(settings_from(rows, defaults))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
