"""`xgenmm-fast dpo-demo`: generate preference pairs about pictures of shapes (chosen = the true colour,
rejected = a wrong colour; `kinds` adds shape and count questions), train the demo model with DPO on them (CPU is fine), and show
how the preference numbers moved: training reward accuracy and margin (first vs last steps) and, on
held-out pictures, how often the model prefers the right answer before and after."""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import torch

from .shapes import make_preference_dataset

CONFIG = os.path.join(os.path.dirname(__file__), "dpo_demo.yaml")
WINDOW = 10  # training steps averaged for "start" and "end"


@torch.no_grad()
def heldout_logps(model, dataset, media_token_id: int, tokens_per_tile: int, max_tokens: int):
    """{dataset index: (log p(chosen), log p(rejected))} for every good pair, packed as in training."""
    from ..data.preference import PreferenceSample, pack_pairs
    from ..data.planner import plan_rows
    lengths = dataset.estimate_lengths()
    good = [i for i in range(len(dataset)) if i not in dataset.bad_records]
    out = {}
    for row in plan_rows([lengths[i] for i in good], max_tokens):
        pairs = [p for p in (dataset[good[j]] for j in row) if isinstance(p, PreferenceSample)]
        logps = model.forward_packed_logprobs(pack_pairs(pairs, media_token_id, tokens_per_tile, max_tokens))["logps"]
        for k, p in enumerate(pairs):
            out[p.index] = (logps[2 * k].item(), logps[2 * k + 1].item())
    return out


def _mean(rows, key):
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / max(len(vals), 1)


def run_dpo_demo(out_dir: str = "runs/dpo-demo", overrides: list[str] | None = None,
                 n_train: int = 400, n_heldout: int = 60, kinds: tuple[str, ...] = ("colour",)) -> int:
    from .. import XGenMM
    from ..data.preference import PreferenceDataset, load_preference_records
    from ..data.tokenizer import load_tokenizer
    from ..training.config import load_dpo_config
    from ..training.dpo import train_dpo
    from ..training.engine import build_model
    from ..training.metrics import read_metrics

    t0 = time.time()
    data = make_preference_dataset(os.path.join(out_dir, "data"), n_train=n_train, n_heldout=n_heldout, kinds=kinds)
    cfg = load_dpo_config(CONFIG, [f"data.data_path={data['train']}", f"train.output_dir={out_dir}/run",
                                   *(overrides or [])])
    print(f"dpo-demo: DPO of a small xGen-MM on {data['train']} (chosen = the true {'/'.join(kinds)}, rejected = "
          f"a wrong one; CPU is fine) -> {cfg.train.output_dir}")
    result = train_dpo(cfg)
    train_s = time.time() - t0

    # the policy after training, and the starting weights (the reference: same seed, same init)
    tokenizer, info = load_tokenizer(cfg.data.tokenizer or os.path.join(result.output_dir, "tokenizer"))
    policy = XGenMM.from_pretrained(result.hf_export).eval()
    reference = build_model(cfg, info).eval()
    records = load_preference_records(data["heldout"])
    ds = PreferenceDataset(records, tokenizer, info, policy.config, max_text_tokens=cfg.data.max_text_tokens)
    args = (policy.media_token_id, policy.config.perceiver.num_latents, cfg.data.max_tokens)
    after, before = heldout_logps(policy, ds, *args), heldout_logps(reference, ds, *args)

    with open(data["heldout"], encoding="utf-8") as f:
        kind_of = {r["id"]: r["kind"] for r in json.load(f)}
    kinds = defaultdict(lambda: [0, 0, 0])  # kind -> [pairs, right before, right after]
    margins, reward_right = [], 0
    for i, (pc, pr) in after.items():
        rc, rr = before[i]
        k = kinds[kind_of[records[i].sample_id]]
        k[0] += 1
        k[1] += rc > rr
        k[2] += pc > pr
        margin = cfg.dpo.beta * ((pc - rc) - (pr - rr))
        margins.append(margin)
        reward_right += margin > 0
    rows = read_metrics(os.path.join(result.output_dir, "metrics.jsonl"))
    first, last = rows[:WINDOW], rows[-WINDOW:]
    summary = {
        "train": {"reward_accuracy": [_mean(first, "reward_accuracy"), _mean(last, "reward_accuracy")],
                  "reward_margin": [_mean(first, "reward_margin"), _mean(last, "reward_margin")],
                  "dpo_loss": [_mean(first, "dpo_loss"), _mean(last, "dpo_loss")],
                  "nll": [_mean(first, "nll"), _mean(last, "nll")]},
        "heldout_prefers_chosen": {k: [v[1] / v[0], v[2] / v[0]] for k, v in sorted(kinds.items())},
        "heldout_reward_accuracy": reward_right / max(len(margins), 1),
        "heldout_reward_margin": sum(margins) / max(len(margins), 1),
    }
    n_all = sum(v[0] for v in kinds.values())
    summary["heldout_prefers_chosen"]["all"] = [sum(v[1] for v in kinds.values()) / n_all,
                                                sum(v[2] for v in kinds.values()) / n_all]

    t = summary["train"]
    print(f"\nDPO training, {result.steps} steps (mean of the first / last {WINDOW} steps):   start ->   end")
    print(f"  reward accuracy (chosen reward > rejected reward)           {t['reward_accuracy'][0]:6.2f} -> "
          f"{t['reward_accuracy'][1]:5.2f}")
    print(f"  reward margin (beta x log-ratio difference)                 {t['reward_margin'][0]:6.3f} -> "
          f"{t['reward_margin'][1]:5.3f}")
    print(f"  DPO loss                                                    {t['dpo_loss'][0]:6.3f} -> "
          f"{t['dpo_loss'][1]:5.3f}")
    if cfg.dpo.nll_weight:
        print(f"  {f'NLL per chosen-answer token (weight {cfg.dpo.nll_weight:g})':60s}{t['nll'][0]:6.3f} -> "
              f"{t['nll'][1]:5.3f}")
    print(f"\nheld-out pairs ({n_all}, unseen pictures): the model prefers the true answer, log p(chosen) > "
          "log p(rejected):")
    for kind, (b, a) in summary["heldout_prefers_chosen"].items():
        print(f"  {kind:7s} start {100 * b:5.1f}%  ->  end {100 * a:5.1f}%")
    print(f"  implicit reward accuracy {100 * summary['heldout_reward_accuracy']:.1f}% (0% at the start: policy == "
          f"reference), mean margin {summary['heldout_reward_margin']:.3f}")
    print(f"\nmetrics: {result.output_dir}/metrics.jsonl, curves: {result.output_dir}/loss_curve.png and "
          f"reward_margin.png, weights: {result.hf_export}; training {train_s:.0f} s, "
          f"{time.time() - t0:.0f} s in all")
    with open(os.path.join(out_dir, "dpo_demo_result.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "result": result.__dict__, "seconds": time.time() - t0}, f, indent=2)
    return 0
