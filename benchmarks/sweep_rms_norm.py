"""Launch-option sweep for the RMSNorm backward on a GPU: rows per step, prefetch, programs per SM and warps
(`rms_norm.BWD_TUNING`), timed as bench_kernels' rms_norm_fwd_bwd row (16384 x 3072, bf16, from a CUDA graph;
the eager time kept as eager_ms) and as GB/s against the device copy bandwidth measured in the same run.
Exploration for choosing BWD_TUNING, like sweep_attention_tiles.py for the attention tiles; #4's target is
>= 70% of the copy bandwidth.

    python benchmarks/sweep_rms_norm.py --out /tmp/rms.json [--budget-s 40] [--rep-ms 50]

Each candidate is compared with the default options' dx and dweight (max_abs_diff) and with the fp32
reference's (`agrees`: within _sweep.AGREE_FACTOR times the defaults' error; a row that does not is a
wrong kernel, never a default); the defaults are measured first. Writes one JSON document (device, versions, date, commit, rows) after every row and a table
on stdout. --smoke: CPU under TRITON_INTERPRET=1, tiny shapes, a few candidates.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import round_sig, run_metadata, write_json_atomic  # noqa: E402
from _sweep import agreement, error_text, exit_on_device_problem, header, max_abs_diff, timer  # noqa: E402

import xgenmm_fast.ops.triton.rms_norm as rn  # noqa: E402
from xgenmm_fast.ops.norms import rms_norm_reference  # noqa: E402

# Static model (scripts/triton_sm90_check.py's CTA/SM, 16384 x 3072 bf16): the default (1 row per step, 16
# warps) has 72 registers, one program per SM and one row's loads in flight per SM; the candidates raise the
# rows in flight per SM (prefetch, several rows per step, more CTAs at 8 warps). Programs per SM beyond what
# fits run in waves; 1 is the no-wave case. Grouped by (rows per step, prefetch), 6 candidates each.
# First (the sweep is budget-limited) the register-capped ones: two programs per SM by the static check.
CANDIDATES = [dict(rows_per_step=r, prefetch=f, programs_per_sm=2, num_warps=w, max_registers=m)
              for r, f, w, m in ((1, False, 16, 64), (1, True, 16, 64), (1, True, 8, 128), (2, False, 16, 64))]
CANDIDATES += [dict(rows_per_step=r, prefetch=f, programs_per_sm=p, num_warps=w, max_registers=None)
               for (r, f), w, p in itertools.product(((1, True), (1, False), (2, False), (4, False)), (8, 16, 32),
                                                     (1, 4))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--rep-ms", type=float, default=50.0)
    p.add_argument("--budget-s", type=float, default=40.0, help="stop starting candidates after this long")
    p.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny shapes")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = exit_on_device_problem("sweep_rms_norm", args.smoke)
    if problem:
        return problem

    dev, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    R, E = (37, 200) if args.smoke else (16384, 3072)
    torch.manual_seed(0)
    x = torch.randn(R, E, device=dev, dtype=dtype, requires_grad=True)
    w = torch.randn(E, device=dev, dtype=dtype, requires_grad=True)
    dy = torch.randn(R, E, device=dev, dtype=dtype)
    nbytes = 5 * R * E * x.element_size()  # as bench_kernels: fwd read x + write y, bwd read x, dy + write dx

    def fwd_bwd():
        x.grad = w.grad = None
        rn.rms_norm_triton(x, w, 1e-5).backward(dy)
        return [x.grad, w.grad]

    timer_ms = timer(args.smoke, args.rep_ms)
    # Candidates are compared by their CUDA-graph time: eagerly, a fwd+bwd call through autograd costs the host
    # more than its kernels take (bench_kernels.GRAPH_TIMED), and every candidate would measure the same host.
    graph_ms = timer(args.smoke, args.rep_ms, graph=True)

    copy_gbps = None
    if not args.smoke:  # device copy bandwidth, bytes read + written, as bench_kernels measures it
        a = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=dev)
        b = torch.empty_like(a)
        copy_gbps = 2 * a.numel() / timer_ms(lambda: b.copy_(a)) / 1e6
    default = dict(rn.BWD_TUNING)
    expected = fwd_bwd()
    expected = [t.clone() for t in expected]
    x32, w32 = (t.detach().float().requires_grad_() for t in (x, w))
    rms_norm_reference(x32, w32, 1e-5).backward(dy.float())
    reference = [x32.grad, w32.grad]
    default_err = max_abs_diff(expected, reference)
    del x32, w32
    rows = []
    meta = run_metadata()
    t_start = time.time()

    def save():
        write_json_atomic(args.out, {**header(meta, "sweep_rms_norm"), "shape": [R, E],
                                     "dtype": str(dtype).replace("torch.", ""), "copy_gbps": copy_gbps,
                                     "seconds": round(time.time() - t_start, 1), "rows": rows})

    smoke = CANDIDATES[:1] + CANDIDATES[4::6]  # one capped, then one of each (rows per step, prefetch) group
    for cand in [default] + (smoke if args.smoke else CANDIDATES):
        if time.time() - t_start > args.budget_s:
            break
        row = {"options": cand, "default": cand == default}
        rn.BWD_TUNING.update(cand)
        try:
            eager = timer_ms(fwd_bwd)
            try:
                ms = graph_ms(fwd_bwd)
                row["timer"] = "cuda_graph" if not args.smoke else "one call (smoke)"
            except Exception as e:  # noqa: BLE001 -- capture failed: the eager time, and why
                ms = eager
                row.update(timer="do_bench", graph_error=error_text(e))
            got = fwd_bwd()
            row.update(ms=round_sig(ms, 4), eager_ms=round_sig(eager, 4), gbps=round_sig(nbytes / ms / 1e6, 4),
                       max_abs_diff=round_sig(max_abs_diff(got, expected), 3),
                       **agreement(max_abs_diff(got, reference), default_err))
            if copy_gbps:
                row["frac_copy"] = round_sig(row["gbps"] / copy_gbps, 3)
        except Exception as e:  # noqa: BLE001 -- a candidate that does not compile is a result too
            row["error"] = error_text(e)
        finally:
            rn.BWD_TUNING.clear()
            rn.BWD_TUNING.update(default)
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)
    save()
    print(f"{'rows/step':>9s} {'prefetch':>8s} {'prog/SM':>7s} {'warps':>5s} {'maxreg':>6s} {'ms':>8s} {'GB/s':>8s} "
          f"{'%copy':>6s} {'agrees':>6s} err/default")
    for r in sorted(rows, key=lambda r: r.get("ms", 1e9)):
        o = r["options"]
        print(f"{o['rows_per_step']:9d} {str(o.get('prefetch', False)):>8s} {o['programs_per_sm']:7d} "
              f"{str(o['num_warps']):>5s} {str(o.get('max_registers')):>6s} "
              f"{r.get('ms', float('nan')):8.3f} {r.get('gbps', float('nan')):8.1f} "
              f"{100 * r.get('frac_copy', float('nan')):6.1f} {str(r.get('agrees', '')):>6s} "
              f"{r.get('err_vs_default', '')} {r.get('error', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
