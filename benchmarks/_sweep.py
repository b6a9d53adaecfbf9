"""What the GPU diagnosis scripts (sweep_attention_tiles, sweep_rms_norm, profile_kernels) share: the device
check (a GPU, or --smoke under the Triton interpreter), the timer, a candidate's error text, and the header
of their JSON documents. Their JSON is not the results format of _common (no ours/baseline rows)."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import cuda_graph_ms  # (benchmarks/ is on sys.path wherever _sweep itself imports)


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


def error_text(e: BaseException) -> str:
    """A candidate that does not compile or launch is a result too: its error, one line."""
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def header(meta: dict, script: str) -> dict:
    """device, date, commit and versions from _common.run_metadata(), and the script with its arguments."""
    keys = ("device", "date", "commit", "torch", "triton", "python")
    return {**{k: meta[k] for k in keys if k in meta}, "script": script, "argv": sys.argv[1:]}
