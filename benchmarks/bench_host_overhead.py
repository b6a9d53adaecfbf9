"""Host time per call of the Triton backends: their eager path vs their torch.library custom ops.

    python benchmarks/bench_host_overhead.py --results-dir benchmarks/results   # CPU (interpreter) or GPU
    python benchmarks/bench_host_overhead.py --smoke                           # a few calls: does it run

Every Triton backend is a custom op (`torch.library.triton_op`, so that torch.compile traces it), and in eager
mode on plain tensors it runs that op's Python body directly instead (`ops/triton/_utils.TritonOp`: same body,
same setup_context and backward, through a plain autograd.Function). This measures what that saves on the
host: the microseconds one call of each bench_kernels case (smoke shapes: bench_kernels.cases(..., smoke=True))
spends in Python, the dispatcher and autograd, with every Triton kernel launch replaced by a no-op, so that
neither the kernels nor Triton's own launcher (the same on both paths) count.

ours      the eager path (what the public functions do in eager mode)
baseline  the custom-op path (`_utils.eager` forced False: every call through the triton_op and its
          registered autograd, as before the eager path existed)

Rows `host_overhead/<case>`: median µs per call (unit "us"; lower is better), over --repeats samples of
--calls calls each, the two paths interleaved within every sample; on CUDA each sample ends with one
synchronize (the bodies still enqueue their torch ops: allocations, a reduction or a cast). CPU: kernels
defined under TRITON_INTERPRET=1 (set here), fp32; CUDA: bf16.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # the kernels are defined for the interpreter (never launched here)
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import add_output_args, emit, load_average, result, round_sig  # noqa: E402

import bench_kernels  # noqa: E402  (its smoke cases)


@contextlib.contextmanager
def no_kernel_launches():
    """kernel[grid](...) does nothing, for JIT and interpreted Triton functions alike (restored after)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    saved = {cls: cls.__dict__.get("__getitem__") for cls in (JITFunction, InterpretedFunction)}
    for cls in saved:
        cls.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for cls, attr in saved.items():
            if attr is None:
                del cls.__getitem__
            else:
                cls.__getitem__ = attr


@contextlib.contextmanager
def custom_op_path():
    """Every TritonOp call through its custom op (the path the eager one replaced)."""
    from xgenmm_fast.ops.triton import _utils
    saved = _utils.eager
    _utils.eager = lambda *tensors: False
    try:
        yield
    finally:
        _utils.eager = saved


def time_paths(fn, calls: int, repeats: int, device: str) -> dict[str, float]:
    """Median µs per call of fn on each path, the paths alternating within every repeat."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    paths = {"eager": contextlib.nullcontext, "custom_op": custom_op_path}
    for ctx in paths.values():  # warm-up: first-call work (imports, caches) out of the samples
        with ctx():
            for _ in range(3):
                fn()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for name, ctx in paths.items():
            with ctx():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync()
                samples[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="few calls and repeats (does it run)")
    p.add_argument("--calls", type=int, default=200, help="calls per sample")
    p.add_argument("--repeats", type=int, default=7, help="samples per path (median)")
    p.add_argument("--only", default=None, help="comma-separated bench_kernels case names (default all)")
    add_output_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    calls, repeats = (5, 2) if args.smoke else (args.calls, args.repeats)
    device = "cuda" if HAS_CUDA else "cpu"
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    from xgenmm_fast.ops.triton import _utils
    if _utils._wrap_triton_enabled is None:
        print("this torch has no torch._library.triton.set_wrap_triton_enabled: every call takes the custom op, "
              "nothing to compare", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    torch.manual_seed(0)
    load = load_average()
    rows = []
    with no_kernel_launches():
        for name, cfg, ours, *_ in bench_kernels.cases(device, dtype, smoke=True):
            if only and name not in only:
                continue
            cfg = {k: v for k, v in cfg.items() if k != "target"}  # bench_kernels' GPU target: not this row's
            config = {"case": name, **cfg, "dtype": str(dtype).replace("torch.", ""), "device": device,
                      "calls_per_sample": calls, "kernels": "launches replaced by a no-op", "smoke": args.smoke}
            try:
                us = time_paths(ours, calls, repeats, device)
            except Exception as e:  # noqa: BLE001 -- one case failing must not hide the others
                rows.append(result(f"host_overhead/{name}", config, None, higher_is_better=False,
                                   error=f"{type(e).__name__}: {e}"))
                continue
            rows.append(result(f"host_overhead/{name}", config,
                               {"value": us["eager"], "unit": "us", "impl": "eager path"},
                               {"value": us["custom_op"], "unit": "us", "impl": "custom op"}, higher_is_better=False))
    run_info = {"device": device, "calls": calls, "repeats": repeats, "load_average_1min_at_start": load,
                "torch_threads": torch.get_num_threads(),
                "note": "host µs per call with Triton launches stubbed out; ours = eager path, baseline = custom op"}
    emit(args, rows, "bench_host_overhead", run_info)
    print(f"{'case':36s} {'eager us':>9s} {'op us':>9s} {'saved':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']['case']:36s} ERROR {r['error'][:80]}")
            continue
        o, b = r["ours"]["value"], r["baseline"]["value"]
        print(f"{r['config']['case']:36s} {o:9.1f} {b:9.1f} {round_sig(1 - o / b, 2):7.0%}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
