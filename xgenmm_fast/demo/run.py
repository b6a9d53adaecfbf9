"""`xgenmm-fast demo`: generate the shapes dataset, train the demo model on it (CPU is fine), measure
answer accuracy on held-out pictures against chance, then answer a question about a bundled picture."""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict

from PIL import Image

from .shapes import COLOURS, NUMBER_WORDS, QUESTIONS, SHAPES, make_dataset

ASSETS = os.path.join(os.path.dirname(__file__), "..", "demo_assets")
CONFIG = os.path.join(os.path.dirname(__file__), "demo.yaml")
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / (len(NUMBER_WORDS) - 1)}


def answer_all(model, tokenizer, questions, max_new_tokens: int = 4, batch_size: int = 32) -> list[str]:
    """Greedy answers to [(PIL image, question), ...], batched through the cached generator."""
    from ..inference.generate import GenerationConfig, Generator
    gen = Generator(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=gen.default_stop_token_ids())
    answers = []
    for i in range(0, len(questions), batch_size):
        requests = [gen.chat_request([img], q)[0] for img, q in questions[i:i + batch_size]]
        answers += [o.text.strip() for o in gen.generate(requests, config)]
    return answers


def evaluate(model, tokenizer, info, heldout_json: str, limit: int | None = None) -> dict[str, float]:
    """Exact-match accuracy of greedy answers per question kind on held-out single-image records."""
    with open(heldout_json, encoding="utf-8") as f:
        records = [r for r in json.load(f) if "facts" in r][:limit]
    base = os.path.dirname(heldout_json)
    asked = []  # (kind, expected, image, question)
    for r in records:
        img = Image.open(os.path.join(base, r["image"])).convert("RGB")
        for kind, q in QUESTIONS.items():
            expected = {"colour": r["facts"]["colour"], "shape": r["facts"]["shape"],
                        "count": NUMBER_WORDS[r["facts"]["count"]]}[kind]
            asked.append((kind, expected, img, q))
    hits, total = defaultdict(int), defaultdict(int)
    for (kind, expected, _, _), got in zip(asked, answer_all(model, tokenizer, [(a[2], a[3]) for a in asked])):
        hits[kind] += int(got == expected)
        total[kind] += 1
    return {k: hits[k] / total[k] for k in total}


def run_demo(out_dir: str = "runs/demo", overrides: list[str] | None = None, eval_limit: int | None = None) -> int:
    from .. import XGenMM
    from ..data.tokenizer import load_tokenizer
    from ..training.config import load_config
    from ..training.sft import train

    t0 = time.time()
    data = make_dataset(os.path.join(out_dir, "data"))
    cfg = load_config(CONFIG, [f"data.data_path={data['train']}", f"train.output_dir={out_dir}/run",
                               *(overrides or [])])
    print(f"demo: training a small xGen-MM on {data['train']} (CPU is fine) -> {cfg.train.output_dir}")
    result = train(cfg)
    model = XGenMM.from_pretrained(result.hf_export)
    tokenizer, info = load_tokenizer(result.hf_export)
    acc = evaluate(model, tokenizer, info, data["heldout"], limit=eval_limit)
    print("\nheld-out answer accuracy (greedy, exact match) vs chance:")
    for kind, a in acc.items():
        print(f"  {kind:7s} {100 * a:5.1f}%   (chance {100 * CHANCE[kind]:.0f}%)")
    picture = os.path.join(ASSETS, "images", "scene_1.png")
    with open(os.path.join(ASSETS, "facts.json"), encoding="utf-8") as f:
        truth = json.load(f)["scene_1.png"]
    img = Image.open(picture).convert("RGB")
    print(f"\nbundled picture {os.path.relpath(picture)} (truth: {truth['count']} {truth['colour']} "
          f"{truth['shape']}(s))")
    for q, a in zip(QUESTIONS.values(), answer_all(model, tokenizer, [(img, q) for q in QUESTIONS.values()])):
        print(f"  Q: {q}\n  A: {a}")
    print(f"\nloss curve: {result.output_dir}/loss_curve.png, metrics: {result.output_dir}/metrics.jsonl, "
          f"weights: {result.hf_export}; packing efficiency {100 * result.packing_efficiency:.1f}%; "
          f"{time.time() - t0:.0f} s in all")
    with open(os.path.join(out_dir, "demo_result.json"), "w", encoding="utf-8") as f:
        json.dump({"heldout_accuracy": acc, "chance": CHANCE, "train": result.__dict__,
                   "seconds": time.time() - t0}, f, indent=2)
    return 0
