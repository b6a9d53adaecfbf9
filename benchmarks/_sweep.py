"""What the GPU diagnosis scripts (sweep_attention_tiles, sweep_rms_norm, profile_kernels) share: the device
check (a GPU, or --smoke under the Triton interpreter), the timer, a candidate's error text, the check of a
candidate's results against the fp32 reference, and the header of their JSON documents. Their JSON is not the results format of _common (no ours/baseline rows)."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import cuda_graph_ms, round_sig  # (benchmarks/ is on sys.path wherever _sweep itself imports)


def device_problem(script: str, smoke: bool) -> str | None:
    """Why this run cannot go ahead (printed, exit 2), or None."""
    if not smoke and not torch.cuda.is_available():
        return f"{script}: needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)"
    if smoke and os.environ.get("TRITON_INTERPRET") != "1":
        return f"{script}: --smoke runs under the Triton interpreter; set TRITON_INTERPRET=1"
    return None


def exit_on_device_problem(script: str, smoke: bool) -> int | None:
    problem = device_problem(script, smoke)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    return None


def timer(smoke: bool, rep_ms: float, graph: bool = False) -> Callable[[Callable[[], Any]], float]:
    """ms of one call: triton.testing.do_bench's median on the GPU (graph: the median of CUDA-graph replays,
    _common.cuda_graph_ms, the device time without the host's per-call cost), one timed call under --smoke."""
    import triton.testing

    def run(fn) -> float:
        if smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        if graph:
            return cuda_graph_ms(fn, rep_ms)
        return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))
    return run


# A candidate agrees when its largest error against the fp32 reference is at most AGREE_FACTOR times the
# default's on the same inputs (bf16: a differently ordered sum moves results by an ulp or two, a wrong kernel
# by far more: the H200 attention sweep of 2026-11-26 had dK/dV candidates 0.7 to 1.0 away from the default
# tiles, e.g. BLOCK_M 32 at 4 warps, where the interpreter runs the same tiles to 1e-6 of the reference),
# plus a floor for fp32 under --smoke.
AGREE_FACTOR = 4.0
AGREE_FLOOR = 1e-5


def max_abs_diff(got, want) -> float:
    """The largest |a - b| over pairs of tensors (empty ones skipped)."""
    return max(((a.float() - b.float()).abs().max().item() for a, b in zip(got, want) if a.numel()), default=0.0)


def agreement(err: float, default_err: float) -> dict:
    """A row's error against the fp32 reference, next to the default's error on the same problem."""
    return {"max_abs_err_fp32": round_sig(err, 3),
            "err_vs_default": round_sig(err / default_err, 3) if default_err > 0 else None,
            "agrees": bool(err <= AGREE_FACTOR * default_err + AGREE_FLOOR)}


def error_text(e: BaseException) -> str:
    """A candidate that does not compile or launch is a result too: its error, one line."""
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def header(meta: dict, script: str) -> dict:
    """device, date, commit and versions from _common.run_metadata(), and the script with its arguments."""
    keys = ("device", "date", "commit", "torch", "triton", "python")
    return {**{k: meta[k] for k in keys if k in meta}, "script": script, "argv": sys.argv[1:]}
