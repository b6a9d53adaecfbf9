"""Where a bench_kernels row's time goes: the GPU kernels of its `ours` side, by torch.profiler.

    python benchmarks/profile_kernels.py --only rms_norm_fwd_bwd,varlen_attn_fwd_bwd [--calls 5] [--out p.json]

For each named row of benchmarks/bench_kernels.py (same inputs, bf16 on CUDA), one warm-up call, then
`--calls` calls under torch.profiler: per kernel its calls and GPU microseconds per row call, the GPU total,
and the wall time per call (GPU idle gaps = launch or host overhead show as wall - GPU). Diagnosis, not a
benchmark: bench_kernels.py's do_bench medians are the numbers to quote. --smoke runs on the CPU (interpreter,
tiny shapes; CPU operator times instead of kernels) to check that the script runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels  # noqa: E402
from _common import round_sig, run_metadata, write_json_atomic  # noqa: E402
from _sweep import exit_on_device_problem, header  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", required=True, help="comma-separated bench_kernels row names")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=8, help="kernels listed per row")
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny shapes")
    return p.parse_args(argv)


def profile_row(fn, calls: int, cuda: bool, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6 / calls
    kernels = []
    for e in prof.key_averages():
        if cuda:
            us = getattr(e, "self_device_time_total", None)
            us = e.self_cuda_time_total if us is None else us
        else:
            us = e.self_cpu_time_total
        if us and us > 0:
            kernels.append({"kernel": e.key[:120], "calls_per_call": round_sig(e.count / calls, 3),
                            "us_per_call": round_sig(us / calls, 4)})
    kernels.sort(key=lambda k: -k["us_per_call"])
    if cuda:  # CPU-side operator rows have no device time; what is left are kernels and copies
        kernels = [k for k in kernels if not k["kernel"].startswith(("aten::", "cuda", "Memcpy"))] or kernels
    total = sum(k["us_per_call"] for k in kernels)
    return {"wall_us_per_call": round_sig(wall_us, 4), "gpu_us_per_call" if cuda else "cpu_us_per_call":
            round_sig(total, 4), "kernels": kernels[:top]}


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = exit_on_device_problem("profile_kernels", args.smoke)
    if problem:
        return problem
    cuda = not args.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    only = args.only.split(",")
    rows = {}
    for name, cfg, ours, *_ in bench_kernels.cases(device, dtype, args.smoke):
        if name in only:
            rows[name] = {"config": cfg, **profile_row(ours, args.calls, cuda, args.top)}
            r = rows[name]
            print(f"== {name}: wall {r['wall_us_per_call']:.1f} us/call, "
                  f"{'GPU' if cuda else 'CPU'} {r.get('gpu_us_per_call', r.get('cpu_us_per_call')):.1f} us/call")
            for k in r["kernels"]:
                print(f"   {k['us_per_call']:10.1f} us  x{k['calls_per_call']:<4g} {k['kernel']}")
    missing = [n for n in only if n not in rows]
    if missing:
        print(f"profile_kernels: no bench_kernels row named {missing}", file=sys.stderr)
    if args.out:
        meta = run_metadata()
        write_json_atomic(args.out, {**header(meta, "profile_kernels"), "rows": rows})
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
