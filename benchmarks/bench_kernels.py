"""Benchmark the Triton kernels against their references and the best library path.

For each kernel: median time, TFLOP/s (matrix-bound ops) or GB/s (memory-bound ops, fewest bytes: each
input read once, each output written once), the fraction of the peak MEASURED in the same run (a large
bf16 matmul for TFLOP/s, a large device-to-device copy, read + write, for GB/s), and the speedup over the
baseline (the op's reference). Attention also gets a library row, the first present of: flash-attn's
flash_attn_varlen_func, torch's torch.nn.attention.varlen.varlen_attn (both with the sliding window), SDPA's
flash backend per sequence (no window: `sdpa_flash_per_seq_causal_no_window`, causal only). Three rows
check issue #4's attention targets against SDPA's flash backend (causal, no window on either side):
`varlen_attn_fwd_bwd/equal_length` (8 x 2048, SDPA batched), `varlen_attn_fwd_bwd/vs_padded_sdpa` (the
length mix, SDPA on the batch padded to its longest; both rates count the unpadded work) and
`varlen_attn_fwd/4k` (4 x 4096: ours' fraction of the matmul peak).

  python benchmarks/bench_kernels.py --results-dir benchmarks/results    # GPU
  python benchmarks/bench_kernels.py --out results/kernels.json          # GPU, to a given file
  python benchmarks/bench_kernels.py --smoke                             # CPU: interpreter, tiny shapes

Results in the common format (benchmarks/README.md): one row per kernel, `ours`/`baseline` =
{value: median ms, unit: "ms", impl, rate: {value, unit: "TFLOP/s" | "GB/s"}, frac_peak}, speedup =
baseline ms / ours ms; where a library alternative exists, a second row `<kernel>/vs_library` with the
library as the baseline. The measured peaks are in runs.bench_kernels.peak. Without --out/--results-dir
the JSON goes to stdout; the table is printed last either way.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # the kernels can only run on the CPU through the interpreter (read at kernel definition)
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import (  # noqa: E402  (benchmarks/_common.py)
    add_output_args, cuda_graph_ms, emit, kernel_settings_config, median_time, result, round_sig)

# Rows whose calls take well under a millisecond of GPU time. Timed eagerly (do_bench, one call per event
# pair) they measure the host: enqueuing a call (Python, the custom op, autograd, launches) takes longer than
# its kernels run, so the GPU waits between calls. The H200 run's rms_norm_fwd_bwd took 0.85 ms eagerly, while
# the SFT profile's RMSNorm kernels (129 forward + 65 backward calls at 11k tokens) add up to 11 ms, ~0.2 ms
# per fwd+bwd at these 16k rows. These rows are timed from a CUDA graph, both sides (cuda_graph_ms); each
# side keeps its eager time as `eager_ms`. Their working sets (>= 200 MB) are far above the L2 size.
GRAPH_TIMED = frozenset({"rms_norm_fwd", "rms_norm_fwd_bwd", "swiglu_fwd", "swiglu_fwd_bwd", "rope_fwd",
                         "decode_attn_fwd"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, few repeats (CPU interpreter check)")
    add_output_args(p)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="kernel dtype (default bf16 on GPU, fp32 with --smoke)")
    p.add_argument("--only", default=None, help="comma-separated kernel names to run (default all)")
    p.add_argument("--rep-ms", type=float, default=200.0, help="do_bench repetition time per measurement (GPU)")
    return p.parse_args(argv)


def timer(fn, device: str, rep_ms: float, smoke: bool) -> float:
    """Median milliseconds of fn()."""
    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=max(25, rep_ms / 4), rep=rep_ms, return_mode="median"))
    return 1e3 * median_time(fn, 1 if smoke else 5, warmup=1, device="cpu")  # warm-up compiles / interprets


def measure(name: str, impl: str, fn, device: str, args, flops, nbytes, peak: dict) -> dict:
    """One side of a row (rate()): the eager median; for GRAPH_TIMED rows on CUDA the CUDA-graph median,
    with the eager one kept (`eager_ms`), or the eager one with `graph_error` where capture fails."""
    eager = timer(fn, device, args.rep_ms, args.smoke)
    if device != "cuda" or name not in GRAPH_TIMED:
        return rate(impl, eager, flops, nbytes, peak)
    try:
        graph = cuda_graph_ms(fn, args.rep_ms)
    except Exception as e:  # noqa: BLE001 -- e.g. a host sync in fn: the eager time is still a measurement
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # let a failed capture's stream settle before the next row
        side = rate(impl, eager, flops, nbytes, peak)
        side.update(timer="do_bench", graph_error=f"{type(e).__name__}: {str(e)[:200]}")
        return side
    side = rate(impl, graph, flops, nbytes, peak)
    side.update(timer="cuda_graph", eager_ms=round_sig(eager))
    return side


def measure_peaks(device: str, dtype: torch.dtype, rep_ms: float, smoke: bool) -> dict:
    n = 256 if smoke else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = timer(lambda: a @ b, device, rep_ms, smoke)
    nbytes = (1 << 20) if smoke else (1 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms_copy = timer(lambda: dst.copy_(src), device, rep_ms, smoke)
    return {"matmul_tflops": 2 * n ** 3 / ms / 1e9, "copy_gbps": 2 * nbytes / ms_copy / 1e6,
            "matmul_n": n, "copy_bytes": nbytes}


def rate(impl: str, ms: float, flops: float | None, nbytes: float | None, peak: dict) -> dict:
    """One side of a row: median ms, and TFLOP/s or GB/s with its fraction of the measured peak."""
    out = {"value": ms, "unit": "ms", "impl": impl}
    if flops:
        tflops = flops / ms / 1e9
        out["rate"] = {"value": round_sig(tflops, 4), "unit": "TFLOP/s"}
        out["frac_peak"] = round_sig(tflops / peak["matmul_tflops"], 3)
    elif nbytes:
        gbps = nbytes / ms / 1e6
        out["rate"] = {"value": round_sig(gbps, 4), "unit": "GB/s"}
        out["frac_peak"] = round_sig(gbps / peak["copy_gbps"], 3)
    return out


def call_peak_gb(fn) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 30


def _fwd_bwd(fn, inputs, grad=None):
    def run():
        for t in inputs:
            t.grad = None
        out = fn()
        out.backward(grad if grad is not None else torch.ones_like(out))
    return run


def varlen_library(q, k, v, cu, max_len: int, window: int, device: str, dtype: torch.dtype):
    """The best library path for packed causal attention with an HF sliding window W, as (name, fn), or None
    (no CUDA). Preference: flash-attn's flash_attn_varlen_func, then torch's own
    torch.nn.attention.varlen.varlen_attn (both take the window as (W - 1, 0)), then SDPA's flash backend
    once per sequence, which has no window: causal only, the name says so (an upper bound on the speed)."""
    if device != "cuda":
        return None
    try:
        from flash_attn import flash_attn_varlen_func
        return ("flash_attn_varlen", lambda: flash_attn_varlen_func(
            q, k, v, cu, cu, max_len, max_len, causal=True, window_size=(window - 1, 0)))
    except ImportError:
        pass
    from xgenmm_fast.ops import library_attention as lib
    try:
        from torch.nn.attention.varlen import varlen_attn
        windowed = "window_size" in inspect.signature(varlen_attn).parameters  # torch 2.10's: is_causal only
    except ImportError:
        windowed = False
    if windowed and lib.torch_varlen_available() and dtype in (torch.float16, torch.bfloat16):
        # (the wrapper falls back to the reference on fp32: no library row from it then)
        return ("torch_varlen_attn", lambda: lib.varlen_attention_torch_varlen(
            q, k, v, cu, causal=True, sliding_window=window, max_seqlen=max_len))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    pads = [(q[s:e], k[s:e], v[s:e]) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]

    def sdpa_flash():  # per-sequence flash SDPA (no window support: causal only — an upper bound)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.cat([torch.nn.functional.scaled_dot_product_attention(
                a.transpose(0, 1)[None], b.transpose(0, 1)[None], c.transpose(0, 1)[None], is_causal=True
            )[0].transpose(0, 1) for a, b, c in pads])
    return ("sdpa_flash_per_seq_causal_no_window", sdpa_flash)


def cases(device: str, dtype: torch.dtype, smoke: bool):
    """Yield (name, config, ours_fn, baseline(name, fn), library(name, fn) | None, flops, bytes)."""
    from xgenmm_fast.ops import activations, attention, loss, norms, rope
    from xgenmm_fast.ops.triton.fused_linear_ce import linear_cross_entropy_triton
    from xgenmm_fast.ops.triton.perceiver_attention import perceiver_attention_triton
    from xgenmm_fast.ops.triton.perceiver_varlen import perceiver_attention_varlen_triton
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    from xgenmm_fast.ops.triton.rope import apply_rope_triton
    from xgenmm_fast.ops.triton.swiglu import swiglu_triton
    from xgenmm_fast.ops.triton.varlen_attention import decode_attention_triton, varlen_attention_triton

    es = torch.empty((), dtype=dtype).element_size()
    dev = dict(device=device, dtype=dtype)

    # RMSNorm (Phi-3 hidden 3072): read x, write y
    R, E = (64, 256) if smoke else (16384, 3072)
    x, w = torch.randn(R, E, **dev), torch.randn(E, **dev)
    yield ("rms_norm_fwd", {"rows": R, "hidden": E}, lambda: rms_norm_triton(x, w, 1e-5),
           ("reference", lambda: norms.rms_norm_reference(x, w, 1e-5)), None, None, 2 * R * E * es)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    dy = torch.randn_like(x)
    yield ("rms_norm_fwd_bwd", {"rows": R, "hidden": E}, _fwd_bwd(lambda: rms_norm_triton(xg, wg, 1e-5), [xg, wg], dy),
           ("reference", _fwd_bwd(lambda: norms.rms_norm_reference(xg, wg, 1e-5), [xg, wg], dy)), None, None,
           5 * R * E * es)

    # SwiGLU (Phi-3 intermediate 8192): read 2I, write I
    R, I = (64, 256) if smoke else (16384, 8192)
    gu = torch.randn(R, 2 * I, **dev)
    yield ("swiglu_fwd", {"rows": R, "inter": I}, lambda: swiglu_triton(gu),
           ("reference", lambda: activations.swiglu_reference(gu)), None, None, 3 * R * I * es)
    gug = gu.clone().requires_grad_()
    dy = torch.randn(R, I, **dev)
    yield ("swiglu_fwd_bwd", {"rows": R, "inter": I}, _fwd_bwd(lambda: swiglu_triton(gug), [gug], dy),
           ("reference", _fwd_bwd(lambda: activations.swiglu_reference(gug), [gug], dy)), None, None,
           (3 + 5) * R * I * es)

    # RoPE on q and k (32 heads, head dim 96), packed layout
    T, H, D = (64, 4, 32) if smoke else (16384, 32, 96)
    q, k = torch.randn(T, H, D, **dev), torch.randn(T, H, D, **dev)
    cos, sin = rope.rope_cos_sin(torch.arange(T, device=device) % 2048, D, 10000.0, dtype)
    cos, sin = cos[:, None], sin[:, None]
    yield ("rope_fwd", {"tokens": T, "heads": H, "head_dim": D}, lambda: apply_rope_triton(q, k, cos, sin),
           ("reference", lambda: rope.apply_rope_reference(q, k, cos, sin)), None, None,
           (4 * T * H * D + 2 * T * D) * es)

    # fused linear CE over the decoupled head (vocab 32012 + 3), fwd + bwd
    N, E, V = (64, 64, 1000) if smoke else (8192, 3072, 32012)
    h = torch.randn(N, E, **dev, requires_grad=True)
    W = (torch.randn(V + 52, E, **dev) * E ** -0.5).requires_grad_()
    b = torch.zeros(V + 52, **dev, requires_grad=True)
    A = (torch.randn(3, E, **dev) * E ** -0.5).requires_grad_()
    a = torch.zeros(3, **dev, requires_grad=True)
    t = torch.randint(0, V + 3, (N,), device=device)
    ins = [h, W, b, A, a]
    flops = 3 * 2 * N * E * (V + 3)
    yield ("linear_ce_fwd_bwd", {"tokens": N, "hidden": E, "vocab": V + 3},
           _fwd_bwd(lambda: linear_cross_entropy_triton(h, W, b, A, a, V, t, "mean"), ins),
           ("reference", _fwd_bwd(lambda: loss.linear_cross_entropy_reference(h, W, b, A, a, V, t, "mean"), ins)),
           None, flops, None)

    # varlen causal attention, Phi-3 shape: packed sequences, 32 heads, head dim 96, window 2047
    lens = [48, 16] if smoke else [2048] * 4 + [1024] * 4 + [512] * 8
    H, D = (2, 32) if smoke else (32, 96)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    T = sum(lens)
    qv, kv, vv = (torch.randn(T, H, D, **dev, requires_grad=True) for _ in range(3))
    causal_flops = sum(4 * n * (n + 1) / 2 * H * D for n in lens)  # QKᵀ and PV over the visible half
    window = 2047
    cfg = {"seqlens": lens if smoke else "4x2048+4x1024+8x512", "heads": H, "head_dim": D, "window": window}
    max_len = max(lens)
    library = varlen_library(qv, kv, vv, cu, max_len, window, device, dtype)
    yield ("varlen_attn_fwd", cfg,
           lambda: varlen_attention_triton(qv, kv, vv, cu, sliding_window=window, max_seqlen=max_len),
           ("sdpa_per_seq", lambda: attention.varlen_attention_sdpa(qv, kv, vv, cu, sliding_window=window)),
           library, causal_flops, None)
    yield ("varlen_attn_fwd_bwd", cfg,
           _fwd_bwd(lambda: varlen_attention_triton(qv, kv, vv, cu, sliding_window=window, max_seqlen=max_len),
                    [qv, kv, vv]),
           ("sdpa_per_seq", _fwd_bwd(lambda: attention.varlen_attention_sdpa(qv, kv, vv, cu, sliding_window=window),
                                     [qv, kv, vv])),
           None if library is None else (library[0], _fwd_bwd(library[1], [qv, kv, vv])), 3.5 * causal_flops, None)

    # the #4 attention targets against torch SDPA's flash backend (causal, no window: SDPA has none):
    # equal lengths (ours packed, SDPA batched; target >= 0.9x), the mix above padded to its longest for SDPA
    # (valid rows of a right-padded causal batch see only valid keys; target >= 1.5x), and the forward at 4k
    # tokens per sequence (target >= 45% of the matmul peak)
    def sdpa_causal(a, b, c):
        if device != "cuda":
            return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True)

    def sdpa_case(seq_lens, pad_to):
        """Packed (T, H, D) leaves for ours, padded (B, H, pad_to, D) leaves for SDPA, cu, causal FLOPs."""
        cu_s = torch.tensor([0] + torch.tensor(seq_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
        packed = [torch.randn(int(cu_s[-1]), H, D, **dev, requires_grad=True) for _ in range(3)]
        padded = [torch.randn(len(seq_lens), H, pad_to, D, **dev, requires_grad=True) for _ in range(3)]
        return packed, padded, cu_s, sum(4 * n * (n + 1) / 2 * H * D for n in seq_lens)

    eq_lens = [48] * 2 if smoke else [2048] * 8
    (pq, pk, pv), (sq, sk, sv), cu_eq, eq_flops = sdpa_case(eq_lens, max(eq_lens))
    yield ("varlen_attn_fwd_bwd/equal_length", {"seqlens": eq_lens if smoke else "8x2048", "heads": H,
                                                "head_dim": D, "window": None, "target": ">= 0.9x SDPA flash"},
           _fwd_bwd(lambda: varlen_attention_triton(pq, pk, pv, cu_eq, max_seqlen=max(eq_lens)), [pq, pk, pv]),
           ("sdpa_flash_batched", _fwd_bwd(lambda: sdpa_causal(sq, sk, sv), [sq, sk, sv])), None,
           3.5 * eq_flops, None)
    del pq, pk, pv, sq, sk, sv
    (pq, pk, pv), (sq, sk, sv), cu_mix, mix_flops = sdpa_case(lens, max_len)
    yield ("varlen_attn_fwd_bwd/vs_padded_sdpa", {"seqlens": cfg["seqlens"], "heads": H, "head_dim": D,
                                                  "window": None, "padded_to": max_len,
                                                  "target": ">= 1.5x SDPA flash on the padded batch"},
           _fwd_bwd(lambda: varlen_attention_triton(pq, pk, pv, cu_mix, max_seqlen=max_len), [pq, pk, pv]),
           ("sdpa_flash_padded", _fwd_bwd(lambda: sdpa_causal(sq, sk, sv), [sq, sk, sv])), None,
           3.5 * mix_flops, None)  # useful (unpadded) FLOPs on both sides
    del pq, pk, pv, sq, sk, sv
    long_lens = [64] * 2 if smoke else [4096] * 4
    (pq, pk, pv), (sq, sk, sv), cu_long, long_flops = sdpa_case(long_lens, max(long_lens))
    yield ("varlen_attn_fwd/4k", {"seqlens": long_lens if smoke else "4x4096", "heads": H, "head_dim": D,
                                  "window": None, "target": "ours >= 45% of the matmul peak"},
           lambda: varlen_attention_triton(pq, pk, pv, cu_long, max_seqlen=max(long_lens)),
           ("sdpa_flash_batched", lambda: sdpa_causal(sq, sk, sv)), None, long_flops, None)
    del pq, pk, pv, sq, sk, sv

    # perceiver at the released size: 8 images x 5 tiles, 16 heads, 128 latents, 729 media tokens, head dim
    # 96; each image's 4 grid tiles lose 15% of their tokens at each end to anyres padding at both ends (as a ~1000x700
    # image does, ~30% of a grid tile), its base tile none
    N, H, L, M, D = (4, 2, 16, 27, 32) if smoke else (40, 16, 128, 729, 96)
    qp, kl, vl = (torch.randn(N, H, L, D, **dev, requires_grad=True) for _ in range(3))
    km, vm = (torch.randn(N, H, M, D, **dev, requires_grad=True) for _ in range(2))
    mask = torch.ones(N, M, dtype=torch.long, device=device)
    pad = M * 3 // 20
    for n in range(N):
        if n % 5:
            mask[n, :pad] = 0
            mask[n, M - pad:] = 0
    pins = [qp, km, vm, kl, vl]
    pflops = 4 * N * H * L * (M + L) * D
    pcfg = {"tiles": N, "heads": H, "latents": L, "media": M, "head_dim": D, "masked": f"{1 - mask.float().mean():.2f}"}
    ref_masked = ("reference", _fwd_bwd(lambda: attention.perceiver_attention_reference(qp, km, vm, kl, vl, mask,
                                                                                          D ** -0.5), pins))
    yield ("perceiver_attn_fwd_bwd", pcfg,
           _fwd_bwd(lambda: perceiver_attention_triton(qp, km, vm, kl, vl, mask, D ** -0.5), pins),
           ref_masked, None, 3.5 * pflops, None)
    # the same attention with the masked media keys left out (the model's path): packed (total, H, D) keys
    keep = mask.bool()
    cu_p = torch.zeros(N + 1, dtype=torch.int32, device=device)
    cu_p[1:] = keep.sum(1).cumsum(0)
    kp = km.detach().transpose(1, 2)[keep].clone().requires_grad_(True)  # (total, H, D)
    vp = vm.detach().transpose(1, 2)[keep].clone().requires_grad_(True)
    vflops = 4 * H * L * D * (int(keep.sum()) + N * L)
    yield ("perceiver_varlen_fwd_bwd", pcfg,
           _fwd_bwd(lambda: perceiver_attention_varlen_triton(qp, kp, vp, cu_p, kl, vl, D ** -0.5, max_media=M),
                    [qp, kp, vp, kl, vl]),
           ref_masked, None, 3.5 * vflops, None)

    # decode: one new token against a KV cache (memory-bound: the cache is read once)
    B, H, Tmax, D = (2, 2, 64, 32) if smoke else (8, 32, 4096, 96)
    qd = torch.randn(B, H, 1, D, **dev)
    kc, vc = torch.randn(B, H, Tmax, D, **dev), torch.randn(B, H, Tmax, D, **dev)
    seqlens = torch.full((B,), Tmax, dtype=torch.int32, device=device)
    yield ("decode_attn_fwd", {"batch": B, "heads": H, "cache": Tmax, "head_dim": D},
           lambda: decode_attention_triton(qd, kc, vc, seqlens),
           ("reference", lambda: attention.decode_attention_reference(qd, kc, vc, seqlens)), None, None,
           2 * B * H * Tmax * D * es)


def main(argv=None):
    args = parse_args(argv)
    device = "cuda" if HAS_CUDA else "cpu"
    if not HAS_CUDA and not args.smoke:
        print("no CUDA device: only --smoke (interpreter, tiny shapes) is meaningful here", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if args.smoke or not HAS_CUDA else "bf16")]
    if not HAS_CUDA and dtype == torch.bfloat16:
        print("bf16 is wrong under the Triton interpreter (SPEC §6); use fp32/fp16 on CPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    peak = measure_peaks(device, dtype if HAS_CUDA else torch.float32, args.rep_ms, args.smoke)
    only = set(args.only.split(",")) if args.only else None
    results = []
    for name, cfg, ours, base, lib, flops, nbytes in cases(device, dtype, args.smoke):
        if only and name not in only:
            continue
        cfg = {**cfg, "dtype": str(dtype).replace("torch.", ""), "smoke": args.smoke, **kernel_settings_config()}
        try:
            o = measure(name, "triton", ours, device, args, flops, nbytes, peak)
            b = measure(name, base[0], base[1], device, args, flops, nbytes, peak)
            mem = None
            if HAS_CUDA:  # memory one call allocates on top of its inputs (the fused CE target is about this)
                mem = {"ours": call_peak_gb(ours), "baseline": call_peak_gb(base[1]),
                       "how": "torch.cuda.max_memory_allocated during one call, minus what was allocated before"}
            results.append(result(name, cfg, o, b, higher_is_better=False, peak_memory_gb=mem))
        except Exception as e:  # one failing kernel must not hide the others' numbers
            results.append(result(name, cfg, None, higher_is_better=False, error=f"{type(e).__name__}: {e}"))
            o = None
        if lib is not None and o is not None:
            try:
                lb = measure(name, lib[0], lib[1], device, args, flops, nbytes, peak)
                results.append(result(f"{name}/vs_library", cfg, o, lb, higher_is_better=False))
            except Exception as e:
                results.append(result(f"{name}/vs_library", cfg, None, higher_is_better=False,
                                      error=f"{lib[0]}: {type(e).__name__}: {e}"))
        if device == "cuda":
            torch.cuda.empty_cache()
    backend = "triton" if HAS_CUDA else "triton interpreter (TRITON_INTERPRET=1): timings mean nothing"
    dt = str(dtype).replace("torch.", "")
    run_info = {
        "backend": backend, "dtype": dt, "smoke": args.smoke, "rep_ms": args.rep_ms, "peak": peak,
        "note": f"measured peak in this run: {peak['matmul_tflops']:.1f} TFLOP/s "
                f"({'fp32' if not HAS_CUDA else dt} matmul {peak['matmul_n']}^3), {peak['copy_gbps']:.0f} GB/s "
                "(device copy, read + write)",
    }
    emit(args, results, "bench_kernels", run_info)
    print(f"device={torch.cuda.get_device_name() if HAS_CUDA else 'cpu (triton interpreter)'} dtype={dt} "
          f"peak: {peak['matmul_tflops']:.1f} TFLOP/s matmul, {peak['copy_gbps']:.0f} GB/s copy")
    lib_speedup = {r["name"][: -len("/vs_library")]: r for r in results if r["name"].endswith("/vs_library")}
    print(f"{'kernel':36s} {'ours ms':>9s} {'rate':>13s} {'%peak':>6s} {'base ms':>9s} {'speedup':>8s} {'lib x':>6s} "
          f"{'eager ms':>9s}")
    for r in results:  # one line per kernel (scripts/gpu_check.sh shows the last 18 lines)
        if r["name"].endswith("/vs_library"):
            continue
        if "error" in r:
            print(f"{r['name']:36s} ERROR {r['error'][:80]}")
            continue
        o = r["ours"]
        rt = f"{o['rate']['value']:.1f} {o['rate']['unit']}" if "rate" in o else ""
        lib = lib_speedup.get(r["name"])
        lib = f"{lib['speedup']:.2f}" if lib and lib.get("speedup") is not None else "-"
        eager = f"{o['eager_ms']:9.3f}" if "eager_ms" in o else f"{'-':>9s}"  # ours' eager time (CUDA-graph rows)
        print(f"{r['name']:36s} {o['value']:9.3f} {rt:>13s} {100 * o.get('frac_peak', 0):5.1f}% "
              f"{r['baseline']['value']:9.3f} {r['speedup']:8.2f} {lib:>6s} {eager}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
