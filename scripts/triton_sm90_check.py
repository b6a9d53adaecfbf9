"""Compile every Triton kernel for the GPU (sm_90, bf16, the GPU launch configurations) on a machine
without one, and report each kernel's registers, spills and shared memory from the cubin.

The Triton interpreter (CPU tests) checks what a kernel computes, not whether it compiles for the GPU:
a kernel can pass every CPU test and fail to compile, or spill registers, at its real tile sizes. This
check closes that gap without a GPU:

1. record (subprocess, TRITON_INTERPRET=1): each op's public entry point runs forward + backward on small
   fp16 CPU inputs, with the kernel modules told they are *not* interpreting, so that their launchers
   pick the GPU tile sizes, warps and stages. Every launch's argument types, constexprs and options are
   recorded (fp16 tensors are recorded as bf16, the training dtype; the interpreter cannot run bf16).
2. compile (this process, no interpreter): each distinct launch is compiled with triton.compile for
   GPUTarget("cuda", 90, 32) down to a cubin (Triton ships ptxas; no driver is needed), and
   `cuobjdump --dump-resource-usage` reads registers, stack (spills) and static shared memory from it.
   CTA/SM is what follows for occupancy: thread blocks per SM by registers, warps and shared memory
   (`ctas_per_sm`), which bounds the loads in flight of kernels that loop over rows.

Fails (exit 1) on a recording or compile error, a kernel whose shared memory exceeds the H100's 227 KB per
block, or register spills (stack bytes > --max-spill-bytes, default 0), except in the kernels of
ACCEPTED_SPILLS: there spills were accepted because a GPU measurement chose those tiles anyway (or, for the
RMSNorm backward, because a sweep candidate caps registers on purpose), and only
more than that kernel's listed bound fails. At this check's introduction (2026-11-26) the attention
kernels' FA2-like 64 x 64 backward tiles spilled 90-470 bytes per thread at head dim 96/128 and spill-free
8-warp tiles were chosen with it; the tile sweep on an H200 (benchmarks/sweep_attention_tiles.py) then
found 4-warp 64-row tiles, which spill here, 1.3x faster for the backward. Spill-free is not proven fast
and the reverse holds too: the GPU benchmarks decide; this keeps a change from adding spills unseen. The
counts are from this machine's Triton, which may allocate registers differently from the GPU machine's.

    python scripts/triton_sm90_check.py                 # table on stdout
    python scripts/triton_sm90_check.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout's package, installed or not
KERNEL_MODULES = ("rms_norm", "swiglu", "rope", "fused_linear_ce", "varlen_attention", "perceiver_attention",
                  "perceiver_varlen", "vision_merge")
SHARED_LIMIT = 227 * 1024  # H100/H200: max dynamic shared memory per block (bytes)
# kernel -> (spill bound in bytes per thread, why spills are accepted there)
_SWEEP = "tiles chosen by GPU measurement despite spills (ops/triton/_flash.py BACKWARD_TILES)"
ACCEPTED_SPILLS = {
    "_attn_bwd_dkdv_kernel": (2048, _SWEEP),
    "_attn_bwd_dq_kernel": (256, _SWEEP),
    "_perceiver_bwd_dkdv_kernel": (2048, _SWEEP),
    "_perceiver_bwd_dq_kernel": (256, _SWEEP),
    "_perceiver_varlen_bwd_dkdv_kernel": (2048, _SWEEP),
    "_perceiver_varlen_bwd_dq_kernel": (256, _SWEEP),
    # only the variant with maxnreg=64 (two programs per SM instead of one), a sweep candidate: 8 B at sm_90
    "_rms_norm_bwd_kernel": (16, "register cap (maxnreg) for two programs per SM: a sweep candidate, off by default"),
}
TORCH_TO_TRITON = {"float16": "bf16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int32": "i32",
                   "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


# ---- 1. record (runs under the interpreter) ---------------------------------------------------------------
def _workloads():
    """(name, fn) pairs: each calls one op family's Triton entry point forward and backward, at the
    model's shapes where they select different code (head dims 64 / 96 / 128, windows, GQA, decode)."""
    import torch

    from xgenmm_fast.ops import rope as rope_ref
    from xgenmm_fast.ops.triton.fused_linear_ce import linear_cross_entropy_triton, linear_token_logprobs_triton
    from xgenmm_fast.ops.triton.perceiver_attention import perceiver_attention_triton
    from xgenmm_fast.ops.triton.perceiver_varlen import perceiver_attention_varlen_triton
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    from xgenmm_fast.ops.triton.rope import apply_rope_triton
    from xgenmm_fast.ops.triton.swiglu import swiglu_triton
    from xgenmm_fast.ops.triton.varlen_attention import decode_attention_triton, varlen_attention_triton
    from xgenmm_fast.ops.triton.vision_merge import merge_vision_tokens_triton

    h = torch.float16

    def leaf(*shape):
        return torch.randn(*shape, dtype=h).requires_grad_()

    def fwd_bwd(out):
        out.float().sum().backward()

    def rms():
        fwd_bwd(rms_norm_triton(leaf(4, 3072), leaf(3072), 1e-5))
        fwd_bwd(rms_norm_triton(leaf(4, 1152), leaf(1152), 1e-5))
        from xgenmm_fast.ops.triton import rms_norm as rn  # the sweep's several-rows-per-step variant
        before = dict(rn.BWD_TUNING)
        try:
            rn.BWD_TUNING.update(rows_per_step=2, num_warps=16)
            fwd_bwd(rms_norm_triton(leaf(4, 3072), leaf(3072), 1e-5))
            for warps in (8, 16):  # the prefetching variant, one row per step
                rn.BWD_TUNING.update(rows_per_step=1, num_warps=warps, prefetch=True)
                fwd_bwd(rms_norm_triton(leaf(4, 3072), leaf(3072), 1e-5))
            rn.BWD_TUNING.update(rows_per_step=1, num_warps=16, prefetch=False, max_registers=64)  # 2 per SM
            fwd_bwd(rms_norm_triton(leaf(4, 3072), leaf(3072), 1e-5))
        finally:
            rn.BWD_TUNING.update(before)

    def swiglu():
        fwd_bwd(swiglu_triton(leaf(4, 2 * 8192)))

    def rope():
        cos, sin = rope_ref.rope_cos_sin(torch.arange(4), 96, 10000.0, h)
        q, k = apply_rope_triton(leaf(4, 32, 96), leaf(4, 32, 96), cos[:, None], sin[:, None])
        fwd_bwd(q + k)

    def linear_ce():
        hid, W, b = leaf(8, 256), leaf(1052, 256), leaf(1052)
        A, a = leaf(3, 256), leaf(3)
        t = torch.randint(0, 1003, (8,))
        fwd_bwd(linear_cross_entropy_triton(hid, W, b, A, a, 1000, t, "mean"))
        fwd_bwd(linear_token_logprobs_triton(hid, W, b, A, a, 1000, t))

    def varlen_attention():
        cu = torch.tensor([0, 70, 75], dtype=torch.int32)
        for hq, hkv, d, window, causal in ((2, 2, 96, 33, True),  # (a window < the longest sequence: HAS_WINDOW)
                                           (2, 1, 64, None, True),
                                           (2, 2, 128, None, True), (2, 2, 96, None, False)):
            out = varlen_attention_triton(leaf(75, hq, d), leaf(75, hkv, d), leaf(75, hkv, d), cu, causal=causal,
                                          sliding_window=window)
            fwd_bwd(out)
        with torch.no_grad():
            decode_attention_triton(torch.randn(2, 2, 1, 96, dtype=h), torch.randn(2, 2, 40, 96, dtype=h),
                                    torch.randn(2, 2, 40, 96, dtype=h), torch.tensor([40, 17], dtype=torch.int32),
                                    sliding_window=2047)

    def varlen_attention_split_head_dim():  # the two-part head dim (SPLIT_HEAD_DIM, off by default)
        from xgenmm_fast.ops.triton import varlen_attention as va
        before, va.SPLIT_HEAD_DIM = va.SPLIT_HEAD_DIM, True
        try:
            cu = torch.tensor([0, 70, 75], dtype=torch.int32)
            for window in (33, None):
                fwd_bwd(varlen_attention_triton(leaf(75, 2, 96), leaf(75, 2, 96), leaf(75, 2, 96), cu,
                                                sliding_window=window))
            with torch.no_grad():
                decode_attention_triton(torch.randn(2, 2, 1, 96, dtype=h), torch.randn(2, 2, 40, 96, dtype=h),
                                        torch.randn(2, 2, 40, 96, dtype=h), torch.tensor([40, 17], dtype=torch.int32),
                                        sliding_window=2047)
        finally:
            va.SPLIT_HEAD_DIM = before

    def varlen_attention_switch(*names):  # off-by-default backward switches on, with and without the split
        def run():
            from xgenmm_fast.ops.triton import varlen_attention as va
            before = {n: getattr(va, n) for n in (*names, "SPLIT_HEAD_DIM")}
            try:
                cu = torch.tensor([0, 70, 75], dtype=torch.int32)
                for split in (False, True):
                    for n in names:
                        setattr(va, n, True)
                    va.SPLIT_HEAD_DIM = split
                    for window in (33, None):
                        fwd_bwd(varlen_attention_triton(leaf(75, 2, 96), leaf(75, 2, 96), leaf(75, 2, 96), cu,
                                                        sliding_window=window))
            finally:
                for n, v in before.items():
                    setattr(va, n, v)
        return run

    def perceiver():
        n, hh, lat, m, d = 2, 2, 16, 40, 96
        mask = torch.ones(n, m, dtype=torch.long)
        mask[1, :5] = 0
        fwd_bwd(perceiver_attention_triton(leaf(n, hh, lat, d), leaf(n, hh, m, d), leaf(n, hh, m, d),
                                           leaf(n, hh, lat, d), leaf(n, hh, lat, d), mask, d ** -0.5))
        cu = torch.tensor([0, 40, 75], dtype=torch.int32)
        fwd_bwd(perceiver_attention_varlen_triton(leaf(n, hh, lat, d), leaf(75, hh, d), leaf(75, hh, d), cu,
                                                  leaf(n, hh, lat, d), leaf(n, hh, lat, d), d ** -0.5, max_media=m))

    def perceiver_split_head_dim():  # the two-part head dim (perceiver SPLIT_HEAD_DIM, off by default)
        from xgenmm_fast.ops.triton import perceiver_attention as pa
        before, pa.SPLIT_HEAD_DIM = pa.SPLIT_HEAD_DIM, True
        try:
            perceiver()
        finally:
            pa.SPLIT_HEAD_DIM = before

    def perceiver_switch(*names):  # the perceiver's off-by-default backward switches, with and without the split
        def run():
            from xgenmm_fast.ops.triton import perceiver_attention as pa
            before = {n: getattr(pa, n) for n in (*names, "SPLIT_HEAD_DIM")}
            try:
                for split in (False, True):
                    for n in names:
                        setattr(pa, n, True)
                    pa.SPLIT_HEAD_DIM = split
                    perceiver()
            finally:
                for n, v in before.items():
                    setattr(pa, n, v)
        return run

    def vision_merge():
        ids = torch.tensor([1, 5, 1002, 3, 5, 1001])
        W, A, T = leaf(1000, 3072), leaf(3, 3072), leaf(4, 3072)
        fwd_bwd(merge_vision_tokens_triton(ids, W, A, 1000, torch.tensor([1, 4]), T, torch.tensor([0, 2])))

    return [("rms_norm", rms), ("swiglu", swiglu), ("rope", rope), ("fused_linear_ce", linear_ce),
            ("varlen_attention", varlen_attention),
            ("varlen_attention_split_head_dim", varlen_attention_split_head_dim),
            # the dK/dV kernel's scores as K·Qᵀ (DKDV_KEYS_MAJOR), dQ by atomic adds (ATOMIC_DQ); both off
            ("varlen_attention_keys_major", varlen_attention_switch("DKDV_KEYS_MAJOR")),
            ("varlen_attention_atomic_dq", varlen_attention_switch("ATOMIC_DQ")),
            ("varlen_attention_keys_major_atomic_dq", varlen_attention_switch("DKDV_KEYS_MAJOR", "ATOMIC_DQ")),
            ("perceiver", perceiver), ("perceiver_split_head_dim", perceiver_split_head_dim),
            # the same two switches in the perceiver's kernels (perceiver_attention.DKDV_KEYS_MAJOR, ATOMIC_DQ)
            ("perceiver_keys_major", perceiver_switch("DKDV_KEYS_MAJOR")),
            ("perceiver_atomic_dq", perceiver_switch("ATOMIC_DQ")),
            ("perceiver_keys_major_atomic_dq", perceiver_switch("DKDV_KEYS_MAJOR", "ATOMIC_DQ")),
            ("vision_merge", vision_merge)]


def _type_of(value) -> str:
    import torch
    if isinstance(value, torch.Tensor):
        return "*" + TORCH_TO_TRITON[str(value.dtype).replace("torch.", "")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {value!r}")


def record() -> list[dict]:
    """Run the workloads under the interpreter with the GPU launch configurations; the recorded launches."""
    import importlib

    import torch
    from triton.runtime.interpreter import InterpretedFunction

    for name in KERNEL_MODULES:  # launchers choose GPU tiles; `usable` (in _utils) still lets CPU tensors in
        mod = importlib.import_module(f"xgenmm_fast.ops.triton.{name}")
        if hasattr(mod, "interpreting"):
            mod.interpreting = lambda: False
    torch.cuda.get_device_properties = lambda *_a, **_k: SimpleNamespace(multi_processor_count=132)

    launches: list[dict] = []
    real_run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        import inspect
        options = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
        bound = inspect.signature(self.fn).bind(*args, **{k: v for k, v in kwargs.items() if k not in options})
        bound.apply_defaults()
        signature, constexprs = {}, {}
        for pname, param in inspect.signature(self.fn).parameters.items():
            value = bound.arguments[pname]
            if "constexpr" in str(param.annotation):
                signature[pname] = "constexpr"
                constexprs[pname] = value
            else:
                signature[pname] = _type_of(value)
        launches.append({"module": self.fn.__module__, "kernel": self.fn.__name__, "signature": signature,
                         "constexprs": constexprs, "options": options, "workload": current[0]})
        return real_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    current = [""]
    torch.manual_seed(0)
    for name, fn in _workloads():
        current[0] = name
        fn()
    return launches


# ---- 2. compile for sm_90 (no interpreter) --------------------------------------------------------------
def _resource_usage(cubin: bytes) -> dict:
    import triton
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    usage = {}
    for key, field in (("registers", "REG"), ("stack_bytes", "STACK"), ("static_shared_bytes", "SHARED"),
                       ("local_bytes", "LOCAL")):
        m = re.search(rf"\b{field}:(\d+)", text)
        usage[key] = int(m.group(1)) if m else None
    return usage


# sm_90 (H100 / H200) per-SM limits, from NVIDIA's occupancy tables (compute capability 9.0)
SM90_LIMITS = dict(registers=65536, warps=64, blocks=32, shared_bytes=228 * 1024, reserved_shared_per_block=1024,
                   register_unit_per_warp=256)


def ctas_per_sm(registers: int, num_warps: int, shared_bytes: int = 0) -> int:
    """Thread blocks of one kernel that fit on an sm_90 SM at once, by registers (allocated per warp in units
    of 256), warps and shared memory: what bounds the loads in flight of a kernel that loops over rows."""
    lim = SM90_LIMITS
    unit = lim["register_unit_per_warp"]
    per_warp = -(-max(registers, 1) * 32 // unit) * unit
    by_regs = (lim["registers"] // per_warp) // num_warps
    by_warps = lim["warps"] // num_warps
    by_shared = lim["shared_bytes"] // (shared_bytes + lim["reserved_shared_per_block"])
    return max(0, min(lim["blocks"], by_regs, by_warps, by_shared))


def compile_launch(launch: dict) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    src = ASTSource(fn=fn, signature=launch["signature"], constexprs=launch["constexprs"])
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(launch["options"]))
    usage = _resource_usage(k.asm["cubin"])
    shared = getattr(k.metadata, "shared", None)  # what Triton allocates (dynamic), bytes
    usage["shared_bytes"] = shared
    usage["ctas_per_sm"] = ctas_per_sm(usage["registers"] or 0, launch["options"].get("num_warps", 4),
                                       (shared or 0) + (usage["static_shared_bytes"] or 0))
    return usage


def _constexpr_text(constexprs: dict, options: dict) -> str:
    """Tiles as M=64,N=64,..., the switches that are on by name (causal, window, keys_major, ...), maxnreg."""
    parts = [f"{k.replace('BLOCK_', '')}={v}" for k, v in constexprs.items() if k.startswith("BLOCK")]
    parts += [k.lower().replace("has_", "") for k, v in constexprs.items() if v is True and k in (
        "CAUSAL", "HAS_WINDOW", "VARLEN", "HAS_MASK", "BACKWARD", "WRITE_GRAD", "KEYS_MAJOR", "ATOMIC_DQ",
        "PREFETCH")]
    if options.get("maxnreg"):
        parts.append(f"maxnreg={options['maxnreg']}")
    return ",".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, help="write the launches and their resource usage here")
    p.add_argument("--max-spill-bytes", type=int, default=0, help="fail above this many spilled bytes per thread")
    p.add_argument("--record-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess's part
    args = p.parse_args(argv)
    if args.record_only:
        json.dump(record(), sys.stdout)
        return 0
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--record-only"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        print("recording the launches failed:\n" + proc.stderr[-4000:], file=sys.stderr)
        return 1
    launches = json.loads(proc.stdout)
    os.environ.pop("TRITON_INTERPRET", None)
    seen, rows, failed = set(), [], 0
    for launch in launches:
        key = json.dumps([launch["module"], launch["kernel"], launch["signature"], launch["constexprs"],
                          launch["options"]], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        row = {k: launch[k] for k in ("workload", "kernel", "constexprs", "options")}
        try:
            row.update(compile_launch(launch))
            if (row["shared_bytes"] or 0) > SHARED_LIMIT:
                row["error"] = f"shared memory {row['shared_bytes']} B > {SHARED_LIMIT} B"
            else:
                bound, why = ACCEPTED_SPILLS.get(launch["kernel"], (args.max_spill_bytes, None))
                bound = max(bound, args.max_spill_bytes)
                if (row["stack_bytes"] or 0) > bound:
                    row["error"] = (f"{row['stack_bytes']} B of register spills per thread ({row['registers']} "
                                    f"registers) > {bound}" + (f" ({why})" if why else " (--max-spill-bytes)"))
                elif row["stack_bytes"] and why:
                    row["accepted_spills"] = why
        except Exception as e:  # noqa: BLE001  (one kernel's failure must not hide the others)
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        failed += "error" in row
        rows.append(row)
    print(f"{'kernel':34s} {'tiles / constexprs':50s} {'warps':>5s} {'stg':>3s} {'regs':>4s} {'spill B':>7s} "
          f"{'smem KB':>7s} {'CTA/SM':>6s}")
    for r in rows:
        cx = _constexpr_text(r["constexprs"], r["options"])
        o = r["options"]
        if "error" in r:
            print(f"{r['kernel']:34s} {cx[:50]:50s} ERROR {r['error']}")
            continue
        print(f"{r['kernel']:34s} {cx[:50]:50s} {o.get('num_warps', '-')!s:>5s} {o.get('num_stages', '-')!s:>3s} "
              f"{r['registers']!s:>4s} {r['stack_bytes']!s:>7s} {(r['shared_bytes'] or 0) / 1024:7.1f} "
              f"{r['ctas_per_sm']!s:>6s}"
              + ("  (spills accepted: ACCEPTED_SPILLS)" if "accepted_spills" in r else ""))
    print(f"triton_sm90_check: {len(rows)} kernel configurations compiled for sm_90, {failed} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": "cuda sm_90, warp 32", "rows": rows}, f, indent=1)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
