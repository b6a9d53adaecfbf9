"""One DPO training step (policy forward + backward, reference forward), ours vs the usual approach,
same pairs, same weights, same process.

    python benchmarks/bench_dpo.py --size tiny --device cpu                       # a couple of minutes on CPU
    python benchmarks/bench_dpo.py --size released --device cuda --results-dir benchmarks/results
    python benchmarks/bench_dpo.py --smoke --out /tmp/dpo.json                   # seconds: does it all run

ours      each step's pairs packed into one row per `--max-tokens` (data/preference.pack_pairs): prompt +
          chosen and prompt + rejected back to back, each pair's image encoded ONCE and its tokens shown
          to both sequences; per-sequence log-probs from the labelled hidden rows only
          (XGenMM.forward_packed_logprobs -> ops.loss.linear_token_logprobs, no logits); the reference
          pass reuses the packing and the policy's (frozen) vision-encoder features.
baseline  the usual approach: a right-padded batch of the chosen sequences and one of the rejected
          sequences (XGenMM.forward, the original's padded path), each image encoded in both, full
          logits -> log_softmax -> gather, for the policy and again for the reference.
Both: the same modules and ops backends (so the difference is the algorithm, not the kernels), the same
DPO loss (sigmoid, beta 0.1), frozen vision encoder, bf16 on GPU and fp32 on CPU, gradients of the
policy's trainable weights (the optimizer step, identical in both, is not timed).

Synthetic pairs: a prompt of `--prompt-tokens` text tokens with one image (sizes cycling through every
anyres grid, i.e. 1 + n tiles with n in {2, 3, 4}) and answers of lognormal length (median
`--answer-tokens`). Reported per config: pairs/s (median step time over `--repeats`), speedup, peak
memory above the weights (CUDA: max allocated; CPU: peak C heap in use, glibc mallinfo2, sampled) and
the largest log-prob difference between the two ways (a correctness check).

Rows (common format, benchmarks/README.md): dpo_step (pairs/s, higher is better; target >= 2x) with
peak_memory_gb, and dpo_step/peak_memory (GB, lower is better; target ours <= 0.5x the baseline, i.e. a
"speedup" >= 2). The JSON goes to stdout unless --out / --results-dir is given; the table to stderr.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import PeakMemory, add_output_args, cpu_model, emit, median_time, result  # noqa: E402

from xgenmm_fast import XGenMM, XGenMMConfig  # noqa: E402
from xgenmm_fast.data.anyres import get_anyres_grid_shape  # noqa: E402
from xgenmm_fast.data.preference import PreferenceSample, pack_pairs  # noqa: E402
from xgenmm_fast.model.init import init_random_weights  # noqa: E402
from xgenmm_fast.training.dpo_loss import dpo_loss  # noqa: E402

BETA = 0.1
IGNORE = -100


# ---- models and data ----------------------------------------------------------------------------------
def model_config(size: str) -> XGenMMConfig:
    if size == "released":
        return XGenMMConfig.resolve("xgenmm_phi3_mini")
    # the demo's small model (released structure, scaled down) with the RELEASED vocabulary (32,015 logits),
    # so that the share of the LM head -- where full logits cost most -- is realistic
    cfg = XGenMMConfig.resolve("tiny")
    v, p, t = cfg.vision, cfg.perceiver, cfg.text
    released = XGenMMConfig.resolve("xgenmm_phi3_mini").text
    t.vocab_size, t.initial_tokenizer_len, t.pad_token_id = (released.vocab_size, released.initial_tokenizer_len,
                                                             released.pad_token_id)
    t.max_position_embeddings = 4096
    v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 64, 128, 2, 4
    v.image_size, v.patch_size = 56, 14
    p.depth, p.heads, p.dim_head, p.num_latents, p.ff_mult = 2, 4, 16, 8, 2
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads = 128, 256, 4, 4
    t.num_key_value_heads = 4
    return cfg


def image_sizes(tile: int) -> list[tuple[int, int]]:
    """(w, h) selecting each of the five default grids: 1x2, 2x1, 2x2, 3x1, 1x3."""
    return [(int(tile * 0.8), int(tile * 1.9)), (int(tile * 1.9) + 1, int(tile * 0.7)),
            (int(tile * 1.7), int(tile * 1.5) + 1), (int(tile * 3.3), int(tile * 0.9)),
            (int(tile * 0.9) + 1, int(tile * 3.1))]


def make_pairs(cfg: XGenMMConfig, n: int, prompt_tokens: int, answer_tokens: int, seed: int) -> list[PreferenceSample]:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    sizes = image_sizes(cfg.tile_size)
    out = []
    for i in range(n):
        size = sizes[i % len(sizes)]
        npw, nph = get_anyres_grid_shape(size, cfg.anyres_grids, cfg.tile_size)
        prompt = torch.randint(3, cfg.text.pad_token_id, (prompt_tokens,), generator=g)
        prompt[1] = cfg.media_token_id
        lens = [max(2, int(rng.lognormvariate(math.log(answer_tokens), 0.6))) for _ in range(2)]
        c, r = (torch.randint(3, cfg.text.pad_token_id, (k,), generator=g).tolist() for k in lens)
        tiles = torch.rand(1 + npw * nph, 3, cfg.tile_size, cfg.tile_size, generator=g) * 2 - 1
        out.append(PreferenceSample(prompt.tolist(), c, list(c), r, list(r), [tiles], [size], f"pair{i}", i))
    return out


# ---- the two ways -------------------------------------------------------------------------------------
def ours_step(policy, reference, pairs, max_tokens, device, dtype):
    """-> (loss, per-sequence policy log-probs (2P,) in pair order)."""
    L = policy.config.perceiver.num_latents
    rows, row, used = [], [], 0
    for p in pairs:  # fill rows in order (the trainer's FFD planner would pack at least as tightly)
        n = 2 * (len(p.prompt_ids) - 1 + L * p.tiles[0].shape[0]) + len(p.chosen_ids) + len(p.rejected_ids)
        if row and used + n > max_tokens:
            rows.append(row)
            row, used = [], 0
        row.append(p)
        used += n
    rows.append(row)
    losses, logps = [], []
    for row in rows:
        batch = pack_pairs(row, policy.media_token_id, L, max_tokens).to(device, dtype=dtype)
        out = policy.forward_packed_logprobs(batch)
        with torch.no_grad():
            ref = reference.forward_packed_logprobs(batch, vision_features=out["vision_features"])["logps"]
        lp = out["logps"]
        losses.append(dpo_loss(lp[0::2], lp[1::2], ref[0::2], ref[1::2], beta=BETA).losses)
        logps.append(lp.detach())
    loss = torch.cat(losses).mean()
    loss.backward()
    return loss.detach(), torch.cat(logps)


def _padded_logps(model, seqs, device, dtype):
    """Full-logit log-probs of each sequence's labels; one right-padded batch, images encoded per sequence."""
    T = max(len(s[0]) for s in seqs)
    pad = model.pad_token_id
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    labels = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, (x, y, _, _) in enumerate(seqs):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    out = model(vision_x=[[t.to(device, dtype) for t in s[2]] for s in seqs], lang_x=ids.to(device),
                attention_mask=mask.to(device), labels=labels.to(device), image_size=[s[3] for s in seqs])
    logits, y = out.logits[:, :-1].float(), out.labels[:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    return (lp * (y != IGNORE)).sum(-1)


def baseline_step(policy, reference, pairs, device, dtype):
    chosen = [(p.prompt_ids + p.chosen_ids, [IGNORE] * len(p.prompt_ids) + p.chosen_labels, p.tiles, p.image_sizes)
              for p in pairs]
    rejected = [(p.prompt_ids + p.rejected_ids, [IGNORE] * len(p.prompt_ids) + p.rejected_labels, p.tiles,
                 p.image_sizes) for p in pairs]
    pc, pr = _padded_logps(policy, chosen, device, dtype), _padded_logps(policy, rejected, device, dtype)
    with torch.no_grad():
        rc, rr = _padded_logps(reference, chosen, device, dtype), _padded_logps(reference, rejected, device, dtype)
    loss = dpo_loss(pc, pr, rc, rr, beta=BETA).losses.mean()
    loss.backward()
    return loss.detach(), torch.stack([pc.detach(), pr.detach()], 1).flatten()


def run_config(policy, reference, cfg_row, device, dtype, repeats, warmup):
    pairs = make_pairs(policy.config, cfg_row["pairs"], cfg_row["prompt_tokens"], cfg_row["answer_tokens"], seed=7)
    policy.zero_grad(set_to_none=True)
    _, lp_ours = ours_step(policy, reference, pairs, cfg_row["max_tokens"], device, dtype)
    policy.zero_grad(set_to_none=True)
    _, lp_base = baseline_step(policy, reference, pairs, device, dtype)
    diff = (lp_ours.float() - lp_base.float()).abs().max().item()
    scale = lp_base.float().abs().max().item()

    def ours():
        policy.zero_grad(set_to_none=True)
        ours_step(policy, reference, pairs, cfg_row["max_tokens"], device, dtype)

    def base():
        policy.zero_grad(set_to_none=True)
        baseline_step(policy, reference, pairs, device, dtype)

    t_ours = median_time(ours, repeats, warmup, device)
    t_base = median_time(base, repeats, warmup, device)
    with PeakMemory(device) as m_ours:
        ours()
    with PeakMemory(device) as m_base:
        base()
    n = len(pairs)
    name, config = cfg_row["name"], {k: v for k, v in cfg_row.items() if k != "name"}
    memory = {"ours": m_ours.gb, "baseline": m_base.gb, "how": m_ours.how}
    extra = {"step_s": {"ours": t_ours, "baseline": t_base}, "max_abs_logp_diff": diff, "max_abs_logp": scale}
    return [result(name, config, (n / t_ours, "pairs/s"), (n / t_base, "pairs/s"), higher_is_better=True,
                   peak_memory_gb=memory, extra=extra),
            result(f"{name}/peak_memory", config, (m_ours.gb, "GB"), (m_base.gb, "GB"), higher_is_better=False,
                   extra={"how": m_ours.how})]


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("tiny", "released"), default="tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 16 tiny, 8 released)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prompt text tokens (default 64 / 200)")
    ap.add_argument("--answer-tokens", type=int, default=None, help="median answer tokens (default 16 / 120)")
    ap.add_argument("--max-tokens", type=int, default=None, help="packing budget per row (default 2048 / 8192)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing on the decoder layers")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, 4 pairs, 1 repeat: does it all run")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.device, args.repeats, args.warmup = "tiny", "cpu", 1, 0
        args.pairs, args.prompt_tokens, args.answer_tokens = args.pairs or 4, args.prompt_tokens or 32, \
            args.answer_tokens or 8
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here")
    tiny = args.size == "tiny"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = model_config(args.size)
    torch.manual_seed(0)
    with torch.device(args.device):  # build (and initialise) on the device: released-size models in seconds
        policy = init_random_weights(XGenMM(cfg), seed=0).to(args.device, dtype)
    policy.vision_encoder.requires_grad_(False)
    policy.set_gradient_checkpointing(args.checkpointing)
    policy.train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    rows = [{"name": "dpo_step", "pairs": args.pairs or (16 if tiny else 8),
             "prompt_tokens": args.prompt_tokens or (64 if tiny else 200),
             "answer_tokens": args.answer_tokens or (16 if tiny else 120),
             "max_tokens": args.max_tokens or (2048 if tiny else 8192),
             "size": args.size, "device": args.device, "dtype": str(dtype).replace("torch.", ""), "beta": BETA,
             "activation_checkpointing": args.checkpointing, "smoke": args.smoke}]
    results = []
    for row in rows:
        r, m = run_config(policy, reference, row, args.device, dtype, args.repeats, args.warmup)
        results += [r, m]
        pm = r["peak_memory_gb"]
        print(f"{r['name']}: ours {r['ours']['value']:.2f} pairs/s, baseline {r['baseline']['value']:.2f} "
              f"pairs/s, speedup {r['speedup']:.2f}x; peak memory ours {pm['ours']:.3f} GB, "
              f"baseline {pm['baseline']:.3f} GB (ours {pm['ours'] / max(pm['baseline'], 1e-12):.2f}x); "
              f"max |logp diff| {r['extra']['max_abs_logp_diff']:.2e} (|logp| up to {r['extra']['max_abs_logp']:.1f})",
              file=sys.stderr)
    emit(args, results, "bench_dpo", {"device_detail": device_name(args.device)})


if __name__ == "__main__":
    main()
