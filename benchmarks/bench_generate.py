"""Generation speed: ours (packed prefill + KV cache + decode_attention) against the original's path.

Baseline: what the original `XGenMMPerceiver.generate` ran: the images encoded, each prompt's multimodal
embeddings stacked LEFT-padded, then transformers' `Phi3ForCausalLM.generate(inputs_embeds=...,
attention_mask=...)` (stock HF modules: sdpa attention, DynamicCache) with the decoupled embedding and head
swapped in as the original did (`xgenmm_fast.inference.hf_reference`). Same weights (shared tensors),
same prompts, same process, greedy, no early stop (both run exactly --new-tokens tokens).

Per batch size (default 1, 8, 32):
- time to first token (s): images + prefill + first token = a run with max_new_tokens=1;
- prefill throughput (prompt tokens/s): multimodal prompt tokens (image tokens included, padding not)
  divided by the time to first token;
- decode throughput (tokens/s): B·(N-1) / (time of an N-token run - time to first token).
Median of --repeats runs, ours and the baseline taking turns. Both must produce the same greedy tokens
in fp32 (checked; reported as `tokens_match`).

    python benchmarks/bench_generate.py --device cpu --size tiny --out /tmp/gen.json
    python benchmarks/bench_generate.py --device cuda --size released --results-dir benchmarks/results
    python benchmarks/bench_generate.py --smoke          # tiny, batch 1 and 2, 4 tokens: does it all run

Rows (common format, benchmarks/README.md): time_to_first_token and end_to_end (s, lower is better),
prefill_throughput and decode_throughput (tokens/s, higher is better), each /batch=B. Without --out or
--results-dir the JSON goes to stdout; the table goes to stderr.

Sizes: tiny (tests' preset), small (a few-million-parameter CPU model with a real-size vocabulary),
released (SPEC §1 sizes, random weights: for a GPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from _common import add_output_args, cpu_model, emit, load_average, result  # noqa: E402  (benchmarks/)

from xgenmm_fast import XGenMM, XGenMMConfig
from xgenmm_fast.config import PerceiverConfig, TextConfig, VisionConfig
from xgenmm_fast.data.anyres import get_anyres_grid_shape
from xgenmm_fast.inference.generate import GenerationConfig, Generator, Request
from xgenmm_fast.inference.hf_reference import hf_causal_lm, original_inputs_embeds


def small_config() -> XGenMMConfig:
    return XGenMMConfig(
        vision=VisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=14),
        perceiver=PerceiverConfig(depth=2, heads=4, dim_head=32, num_latents=16, ff_mult=2),
        text=TextConfig(vocab_size=32064, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096),
        vision_model_name="small-siglip")


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> XGenMM:
    cfg = {"tiny": lambda: XGenMMConfig.resolve("tiny"), "small": small_config,
           "released": lambda: XGenMMConfig.resolve("xgenmm_phi3_mini")}[size]()
    with torch.device("meta"):
        model = XGenMM(cfg)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # quick random init on the device (released sizes: billions of weights)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("latents"):
                p.normal_(0, 1, generator=gen)
            else:
                p.normal_(0, 0.02, generator=gen)
        model.lang_model.lm_head.additional_fc.bias.fill_(-100.0)  # never generate <image> and co.
    return model.to(dtype).eval()


def make_requests(model: XGenMM, batch: int, seed: int = 0) -> list[Request]:
    """Prompts of 24..72 text tokens; 3 of 4 carry an image (every 8th two) of varying aspect ratio."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    s = cfg.tile_size
    sizes = [(int(s * 1.7), int(s * 1.5)), (int(s * 0.8), int(s * 1.9)), (int(s * 1.9), int(s * 0.7)), (s, s)]
    out = []
    for i in range(batch):
        n_img = 0 if i % 4 == 3 else (2 if i % 8 == 5 else 1)
        n_txt = int(torch.randint(24, 73, (1,), generator=g))
        ids = torch.randint(3, cfg.text.pad_token_id, (n_txt,), generator=g).tolist()
        ids = [cfg.text.bos_token_id] + [model.media_token_id] * n_img + ids
        imgs, szs = [], []
        for k in range(n_img):
            size = sizes[(i + k) % len(sizes)]
            npw, nph = get_anyres_grid_shape(size, cfg.anyres_grids, s)
            imgs.append(torch.rand(1 + npw * nph, 3, s, s, generator=g) * 2 - 1)
            szs.append(size)
        out.append(Request(ids, imgs, szs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "released"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, batch 1 and 2, 4 new tokens, 1 repeat")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.size, args.batch_sizes, args.new_tokens, args.repeats = "cpu", "tiny", [1, 2], 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "fp32": torch.float32,
             "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load_at_start = load_average()

    model = build_model(args.size, device, dtype)
    hf = hf_causal_lm(model, attn_implementation="sdpa")
    hf.generation_config.eos_token_id = None  # run every sequence for exactly N tokens
    ours_gen = Generator(model)

    def ours(requests, n):
        outs = ours_gen.generate(requests, GenerationConfig(max_new_tokens=n, stop_token_ids=()))
        return [o.token_ids for o in outs]

    def baseline(requests, n):
        with torch.no_grad():
            embeds, mask = original_inputs_embeds(model, requests)
            out = hf.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n,
                              do_sample=False, pad_token_id=model.pad_token_id)
        return out.tolist()

    def timed(fn, *a):
        sync()
        t0 = time.perf_counter()
        r = fn(*a)
        sync()
        return time.perf_counter() - t0, r

    results, N = [], args.new_tokens
    for B in args.batch_sizes:
        requests = make_requests(model, B, seed=B)
        prompt_tokens = sum(len(r.input_ids) - len(r.images) + model.config.perceiver.num_latents
                            * sum(t.shape[0] for t in r.images) for r in requests)
        ours(requests, 2), baseline(requests, 2)  # warm-up
        t = {k: [] for k in ("ours1", "oursN", "base1", "baseN")}
        for _ in range(args.repeats):
            t["ours1"].append(timed(ours, requests, 1)[0])
            t["base1"].append(timed(baseline, requests, 1)[0])
            dt, ours_tokens = timed(ours, requests, N)
            t["oursN"].append(dt)
            dt, base_tokens = timed(baseline, requests, N)
            t["baseN"].append(dt)
        med = {k: statistics.median(v) for k, v in t.items()}
        same = sum(a == b for a, b in zip(ours_tokens, base_tokens))
        config = {"batch": B, "size": args.size, "device": device.type, "dtype": str(dtype).replace("torch.", ""),
                  "new_tokens": N, "prompt_tokens": prompt_tokens, "images": sum(len(r.images) for r in requests),
                  "repeats": args.repeats, "smoke": args.smoke}
        extra = {"tokens_match": f"{same}/{B} sequences"}

        def dec(t_n, t_1, b=B):  # None when noise made the N-token run no slower than the 1-token run
            return b * (N - 1) / (t_n - t_1) if t_n > t_1 and N > 1 else None

        for name, o, b, unit, higher in (
            ("time_to_first_token", med["ours1"], med["base1"], "s", False),
            ("prefill_throughput", prompt_tokens / med["ours1"], prompt_tokens / med["base1"], "tokens/s", True),
            ("decode_throughput", dec(med["oursN"], med["ours1"]), dec(med["baseN"], med["base1"]), "tokens/s", True),
            ("end_to_end", med["oursN"], med["baseN"], "s", False),
        ):
            if o is None or b is None:
                why = ("decode time not measurable: the N-token run took no longer than the 1-token run "
                       "(noise; raise --new-tokens or --repeats)")
                results.append(result(f"{name}/batch={B}", config, None, higher_is_better=higher, skipped=why,
                                      extra=extra))
                print(f"{name}/batch={B}: skipped, {why}", file=sys.stderr)
                continue
            results.append(result(f"{name}/batch={B}", config, (o, unit), (b, unit), higher_is_better=higher,
                                  extra=extra))
            r = results[-1]
            print(f"{r['name']:<32} ours {o:>12.4g} {unit:<9} baseline {b:>12.4g}  speedup {r['speedup']:.2f}x"
                  f"  ({extra['tokens_match']} match)", file=sys.stderr)

    run_info = {
        "device_detail": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "transformers": __import__("transformers").__version__,
        "load_average_1min_at_start": load_at_start,
        "cpu_threads": torch.get_num_threads(),
        "ops": __import__("xgenmm_fast.ops", fromlist=["report"]).report(),
        "baseline": "transformers Phi3ForCausalLM.generate(inputs_embeds, attention_mask), left-padded "
                    "multimodal embeddings, sdpa attention (the original's generate)",
    }
    emit(args, results, "bench_generate", run_info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
