"""Shared helpers for the SFT data tests: records, data files, small images, a dataset with planted bad records."""
from __future__ import annotations

import json
from pathlib import Path

from xgenmm_fast.config import tiny_config

MAX_TEXT_TOKENS = 96  # small so over-length records are cheap to make


def conv(*pairs, system=None) -> list[dict]:
    """conv(("human", q), ("gpt", a), ...) -> a conversations list."""
    turns = [{"from": "system", "value": system}] if system is not None else []
    return turns + [{"from": r, "value": v} for r, v in pairs]


def record(rid, question="What is in the image?", answer="A red circle.", image=None, conversations=None) -> dict:
    """A LLaVA record; an image record gets "<image>\\n" in front of the question."""
    r = {"id": rid}
    if image is not None:
        r["image"] = image
        n = 1 if isinstance(image, str) else len(image)
        question = "<image>\n" * n + question
    r["conversations"] = conversations if conversations is not None else conv(("human", question), ("gpt", answer))
    return r


def write_json(path, records) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def write_jsonl(path, records, blank_lines: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def make_image(path, size=(40, 30), color=(200, 30, 30), fmt=None) -> Path:
    """A small RGB image with a square drawn on it (PNG or JPEG by suffix)."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).rectangle([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=(20, 20, 220))
    im.save(path, format=fmt)
    return path


def make_truncated_jpeg(path, size=(160, 120)) -> Path:
    """A noisy JPEG cut in half: its header (well inside the first half) reads fine, its pixels do not decode."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:  # the header must still read
        assert im.size == size
    return path


def make_empty_file(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def small_config():
    """The tiny model config: 28-px tiles, 4 latents per tile, the released grid multipliers."""
    return tiny_config()


# Planted records: id -> (what it is, substring the bad reason must contain, or None when good).
GOOD_IMAGE, GOOD_WIDE, GOOD_MULTI = "good_image", "good_wide", "good_multi"
GOOD_TEXT, GOOD_LONG = "good_text", "good_long"
BAD_MISSING, BAD_EMPTY, BAD_TRUNC_JPEG = "bad_missing_image", "bad_empty_image", "bad_truncated_jpeg"
BAD_TAG_TEXT, BAD_ORDER = "bad_tag_text_only", "bad_order"
BAD_EMPTY_ANSWER, BAD_OVERLONG = "bad_empty_answer", "bad_overlong"

EXPECTED_REASONS = {
    BAD_MISSING: "image file not found",
    BAD_EMPTY: "empty (0-byte)",
    BAD_TRUNC_JPEG: "cannot decode image",
    BAD_TAG_TEXT: "has no image but",
    BAD_ORDER: "'gpt' was expected",
    BAD_EMPTY_ANSWER: "empty gpt answer",
    BAD_OVERLONG: "no labelled token left",
}
GOOD_IDS = (GOOD_IMAGE, GOOD_WIDE, GOOD_MULTI, GOOD_TEXT, GOOD_LONG)
# found by estimate_lengths (text or header); the truncated JPEG only when its pixels are decoded
BAD_FOUND_BY_HEADER = tuple(k for k in EXPECTED_REASONS if k != BAD_TRUNC_JPEG)

LONG_ANSWER = " ".join(["There is a big red circle on the left and a small blue square on the right."] * 12)
LONG_QUESTION = " ".join(["How many shapes are there in the image?"] * 30)


def planted_dataset(root) -> dict:
    """Two data files under ``root`` with good and bad records (ids above), images relative to the files.

    Returns {"files": [a.json, b.jsonl], "ids": {id: (file, index)}, "image_sizes": {id: [(W, H), ...]}}.
    """
    root = Path(root)
    img = root / "images"
    make_image(img / "red.png", (40, 30))
    make_image(img / "wide.jpg", (90, 25), fmt="JPEG")
    make_image(img / "tall.png", (20, 70))
    make_empty_file(img / "empty.png")
    make_truncated_jpeg(img / "cut.jpg")
    a = [
        record(GOOD_IMAGE, image="images/red.png"),
        record(BAD_MISSING, image="images/nope.png"),
        record(GOOD_TEXT, question="Why is the sky blue?", answer="Because of Rayleigh scattering."),
        record(BAD_EMPTY, image="images/empty.png"),
        record(BAD_TAG_TEXT, question="<image>\nDescribe the picture.", answer="It is red."),
        record(GOOD_WIDE, image="images/wide.jpg", answer="A wide picture."),
        record(BAD_ORDER, conversations=conv(("human", "Hi"), ("human", "Hello?"), ("gpt", "Hello!"))),
    ]
    b = [
        record(BAD_TRUNC_JPEG, image="images/cut.jpg"),
        record(GOOD_MULTI, image=["images/red.png", "images/tall.png"], question="Compare the pictures.",
               answer="The first is wide, the second is tall."),
        record(BAD_EMPTY_ANSWER, image="images/red.png", answer="   "),
        record(GOOD_LONG, question="Describe the image in detail.", answer=LONG_ANSWER),
        record(BAD_OVERLONG, question=LONG_QUESTION, answer="Two."),
    ]
    fa = write_json(root / "a.json", a)
    fb = write_jsonl(root / "b.jsonl", b)
    ids = {r["id"]: (str(fa), k) for k, r in enumerate(a)} | {r["id"]: (str(fb), k) for k, r in enumerate(b)}
    sizes = {GOOD_IMAGE: [(40, 30)], GOOD_WIDE: [(90, 25)], GOOD_MULTI: [(40, 30), (20, 70)], GOOD_TEXT: [],
             GOOD_LONG: []}
    return {"files": [fa, fb], "ids": ids, "image_sizes": sizes}
