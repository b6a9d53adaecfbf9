"""Deterministic synthetic pictures of coloured shapes with question/answer records (LLaVA format).

Image sizes cover every default anyres grid (tall, wide, square, very wide, very tall). Records mix
multi-turn single-image conversations (colour, shape and count questions in random order), two-image
records and text-only records. Everything is derived from a seed: the same call writes the same files
on every machine, so the dataset "ships" as this generator plus a few pictures in demo_assets/.
"""
from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
# base (width, height) per grid family: tall 1x2, wide 2x1, square 2x2, very wide 3x1, very tall 1x3
ASPECTS = ((120, 224), (224, 120), (192, 176), (288, 88), (88, 280))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What shape are they?",
    "count": "How many shapes are there?",
}
TEXT_FACTS = [("What colour is grass?", "green"), ("What colour is the sky on a clear day?", "blue"),
              ("What colour is a banana?", "yellow"), ("What colour is snow?", "white"),
              ("How many sides does a triangle have?", "three"), ("How many sides does a square have?", "four")]


def draw_scene(rng: random.Random, size: tuple[int, int]):
    """A white canvas with 1-5 shapes of one colour and one kind; returns (image, facts)."""
    w, h = size
    colour, shape, count = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(1, 5)
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    r = max(6, int(0.45 * min(min(w, h), max(w, h) / count)))  # large: colour must survive 56-px tiles
    for i in range(count):  # spread along the long side so shapes never overlap
        t = (i + 0.5) / count
        cx, cy = (int(t * w), h // 2) if w >= h else (w // 2, int(t * h))
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return img, {"colour": colour, "shape": shape, "count": count}


def answer_for(kind: str, facts: dict) -> str:
    if kind == "colour":
        return facts["colour"]
    if kind == "shape":
        return facts["shape"]
    return NUMBER_WORDS[facts["count"]]


def _new_image(rng, img_dir, name):
    base = rng.choice(ASPECTS)
    jitter = rng.uniform(0.85, 1.15)
    size = (max(16, int(base[0] * jitter)), max(16, int(base[1] * jitter)))
    img, facts = draw_scene(rng, size)
    img.save(os.path.join(img_dir, name), optimize=True)
    return facts


def make_dataset(out_dir: str, n_train: int = 400, n_heldout: int = 60, seed: int = 0) -> dict[str, str]:
    """Write images/ plus train.json (mixed records) and heldout.json (single-image records, unseen
    pictures); returns {"train": path, "heldout": path}."""
    rng = random.Random(seed)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        records = []
        for i in range(n):
            rid = f"{split}-{i:04d}"
            kind = rng.random() if split == "train" else 0.0
            if kind < 0.8:  # one picture, three questions in random order
                facts = _new_image(rng, img_dir, f"{rid}.png")
                order = list(QUESTIONS)
                rng.shuffle(order)
                conv = []
                for j, q in enumerate(order):
                    conv.append({"from": "human", "value": ("<image>\n" if j == 0 else "") + QUESTIONS[q]})
                    conv.append({"from": "gpt", "value": answer_for(q, facts)})
                records.append({"id": rid, "image": f"images/{rid}.png", "conversations": conv,
                                "facts": facts})
            elif kind < 0.9:  # two pictures
                fa = _new_image(rng, img_dir, f"{rid}-a.png")
                fb = _new_image(rng, img_dir, f"{rid}-b.png")
                which, facts = rng.choice([("first", fa), ("second", fb)])
                records.append({"id": rid, "image": [f"images/{rid}-a.png", f"images/{rid}-b.png"],
                                "conversations": [
                                    {"from": "human", "value": f"<image>\n<image>\nWhat colour are the shapes "
                                                               f"in the {which} picture?"},
                                    {"from": "gpt", "value": facts["colour"]}]})
            else:  # text only
                q, a = rng.choice(TEXT_FACTS)
                records.append({"id": rid, "conversations": [{"from": "human", "value": q},
                                                             {"from": "gpt", "value": a}]})
        paths[split] = os.path.join(out_dir, f"{split}.json")
        with open(paths[split], "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    return paths


def wrong_answer(rng: random.Random, kind: str, facts: dict) -> str:
    """A plausible but false answer of the same kind (another colour, shape or count)."""
    if kind == "colour":
        options = [c for c in COLOURS if c != facts["colour"]]
    elif kind == "shape":
        options = [s for s in SHAPES if s != facts["shape"]]
    else:
        options = [w for n, w in enumerate(NUMBER_WORDS) if n >= 1 and n != facts["count"]]
    return rng.choice(options)


def make_preference_dataset(out_dir: str, n_train: int = 300, n_heldout: int = 40, seed: int = 0,
                            kinds: tuple[str, ...] = tuple(QUESTIONS)) -> dict[str, str]:
    """Preference pairs about generated pictures (canonical records, data/preference.py): per picture and
    question kind one pair, chosen = the true answer, rejected = a wrong one of the same kind. Writes
    images/ plus train_pref.json and heldout_pref.json (unseen pictures; records carry "kind" and
    "facts"); returns {"train": path, "heldout": path}."""
    rng = random.Random(seed)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        records = []
        for i in range(n):
            name = f"pref-{split}-{i:04d}.png"
            facts = _new_image(rng, img_dir, name)
            for kind in kinds:
                records.append({"id": f"pref-{split}-{i:04d}-{kind}", "image": f"images/{name}",
                                "conversations": [{"from": "human", "value": "<image>\n" + QUESTIONS[kind]}],
                                "chosen": answer_for(kind, facts), "rejected": wrong_answer(rng, kind, facts),
                                "kind": kind, "facts": facts})
        rng.shuffle(records)
        paths[split] = os.path.join(out_dir, f"{split}_pref.json")
        with open(paths[split], "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    return paths


def make_bundled_assets(out_dir: str) -> None:
    """The few pictures committed under demo_assets/ (one per grid family)."""
    rng = random.Random(1234)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    facts = {}
    for i, size in enumerate(ASPECTS):
        img, f = draw_scene(rng, size)
        name = f"scene_{i}.png"
        img.save(os.path.join(img_dir, name), optimize=True)
        facts[name] = f
    with open(os.path.join(out_dir, "facts.json"), "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=1)


if __name__ == "__main__":  # regenerate the committed pictures: python -m xgenmm_fast.demo.shapes
    make_bundled_assets(os.path.join(os.path.dirname(__file__), "..", "demo_assets"))
