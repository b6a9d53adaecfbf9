"""Where one packed SFT step of ours spends its GPU time: torch.profiler over a step of bench_sft_step's
workload (same model size, synthetic samples, packing and activation checkpointing), kernels grouped by
what they do. Writes JSON (groups, the top kernels) and prints a short table.

    python benchmarks/profile_sft_step.py --size released --out /tmp/profile.json      # GPU
    python benchmarks/profile_sft_step.py --smoke                                        # CPU, tiny: does it run

Groups are by kernel name (Triton kernels carry their Python names; cuBLAS/cutlass GEMMs are "matmul"),
so the split is indicative: a fused kernel counts once under its own name.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_sft_step import make_samples, materialise  # noqa: E402

from xgenmm_fast import XGenMM, XGenMMConfig  # noqa: E402
from xgenmm_fast.data.packed import StreamSample, pack_samples  # noqa: E402
from xgenmm_fast.data.planner import plan_rows  # noqa: E402
from xgenmm_fast.model.init import init_random_weights  # noqa: E402
from xgenmm_fast.training.engine import adamw_fused  # noqa: E402

GROUPS = [  # (group, substrings of the kernel name), first match wins
    ("attention (varlen, LM)", ("varlen_attn", "_attn_fwd", "_attn_bwd", "flash")),
    ("perceiver attention", ("perceiver",)),
    ("fused linear CE (LM head)", ("linear_ce", "_ce_", "logsumexp")),
    ("rms_norm", ("rms_norm",)),
    ("rope", ("rope",)),
    ("swiglu", ("swiglu",)),
    ("vision-token merge", ("vision_merge", "merge_")),
    ("matmul (cuBLAS/cutlass)", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul", "wgmma")),
    ("vision encoder attention (SDPA)", ("fmha", "pytorch_flash", "mem_eff", "attention")),
    ("optimizer (AdamW)", ("adam", "multi_tensor", "foreach")),
    ("elementwise / copies / reductions", ("elementwise", "copy", "reduce", "fill", "cat", "index", "gather",
                                            "scatter", "layer_norm", "gelu", "softmax", "memcpy", "memset")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "released"], default="released")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.samples, args.warmup = "tiny", 4, 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = XGenMMConfig.resolve("xgenmm_phi3_mini" if args.size == "released" else "tiny")
    torch.manual_seed(0)
    with torch.device(device):
        model = init_random_weights(XGenMM(cfg)).to(device, dtype)
    model.vision_encoder.requires_grad_(False)
    model.set_gradient_checkpointing(True)
    model.train()
    specs = make_samples(cfg, args.samples, seed=1, max_text=512 if args.smoke else 2048)
    L = cfg.perceiver.num_latents
    stream = []
    for s in specs:
        ids, labels, tiles = materialise(cfg, s)
        stream.append(StreamSample(ids.tolist(), labels.tolist(), tiles, [s["size"]] if tiles else []))
    lengths = [len(x.input_ids) - len(x.tiles) + L * sum(t.shape[0] for t in x.tiles) for x in stream]
    packed = [pack_samples([stream[i] for i in r], cfg.media_token_id, L, args.max_tokens).to(device, dtype)
              for r in plan_rows(lengths, args.max_tokens)]
    # the trainer's AdamW (optim.fused=auto: single-kernel on CUDA), as bench_sft_step's ours steps it
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-6,
                            fused=adamw_fused("auto", torch.device(device)))

    def step():
        for b in packed:
            model.forward_packed(b)["loss_sum"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # Triton compiles, allocator warm
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    kernels = defaultdict(float)  # name -> device µs (self)
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0.0) if device == "cuda" else e.self_cpu_time_total
        if t > 0 and (device != "cuda" or getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA):
            kernels[e.key] += t
    total = sum(kernels.values()) or 1.0
    groups = defaultdict(float)
    for name, t in kernels.items():
        groups[group_of(name)] += t
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
        "size": args.size, "samples": args.samples, "packed_rows": len(packed),
        "lm_tokens": int(sum(b.num_tokens for b in packed)), "device_time_ms": total / 1e3,
        "groups": {g: {"ms": t / 1e3, "share": t / total} for g, t in sorted(groups.items(), key=lambda x: -x[1])},
        "top_kernels": [{"name": n[:160], "ms": t / 1e3, "share": t / total, "group": group_of(n)}
                        for n, t in sorted(kernels.items(), key=lambda x: -x[1])[:30]],
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"{out['device']}: one step, {out['packed_rows']} packed rows, {out['lm_tokens']} LM tokens, "
          f"{out['device_time_ms']:.1f} ms of kernel time")
    for g, v in out["groups"].items():
        print(f"  {g:38s} {v['ms']:9.2f} ms  {100 * v['share']:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
