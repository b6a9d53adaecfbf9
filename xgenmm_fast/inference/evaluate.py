"""Question-answering evaluation over JSONL files (`xgenmm-fast eval`).

One question per line::

    {"id": "q1", "image": "imgs/a.png" | ["a.png", "b.png"] (optional, relative to the JSONL file),
     "question": "What colour is the circle?", "answer": "red" | ["red", "crimson"],
     "choices": ["red", "blue", "green"] (optional: a multiple-choice question),
     "category": "colour" (optional: accuracy is also reported per category)}

- Open questions ("open"): the prediction is correct when it equals an answer after normalisation
  (lowercase, punctuation removed, articles a/an/the removed, whitespace collapsed).
- Multiple choice ("multiple_choice"): the prompt lists the options as "A. ...", "B. ..." and asks for
  the letter; the prediction is parsed to a letter (a leading letter "B", "(B)", "B.", "the answer is B")
  or matched to an option's text (normalised); `answer` is a letter or an option's text.

Questions are answered greedily in batches (one packed prefill per batch) with the chat template; the
results hold every item's prediction, overall accuracy and accuracy per type (and category), the model
path, the date and the seconds taken.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import string
import time
from collections import defaultdict
from collections.abc import Sequence

TYPE_OPEN, TYPE_MC = "open", "multiple_choice"
LETTERS = string.ascii_uppercase
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def mc_prompt(question: str, choices: Sequence[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\n{options}\n{MC_INSTRUCTION}"


def _letter(text: str, n: int) -> str | None:
    """A bare option letter: "B", "(B)", "B.", "B)" (within the first n letters)."""
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.:)]?\s*", text)
    if m and m.group(1).upper() in LETTERS[:n]:
        return m.group(1).upper()
    return None


def parse_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter a prediction names, or None when it names none (or several)."""
    n = len(choices)
    pred = prediction.strip()
    if (lt := _letter(pred, n)) is not None:
        return lt
    m = re.match(r"\(?([A-Z])\)?(?:[.:)]|\s|$)", pred)  # leading capital letter: "B. red", "(B) red"
    if m and m.group(1) in LETTERS[:n] and not (m.group(1) in ("A", "I") and re.match(r"[AI]\s+[a-z]", pred)):
        return m.group(1)
    m = re.search(r"answer(?: is|:)?\s*:?\s*\(?([A-Z])\)?(?:[.:)\s]|$)", pred, flags=re.IGNORECASE)
    if m and m.group(1).upper() in LETTERS[:n]:
        return m.group(1).upper()
    norm = normalize_answer(pred)
    texts = [normalize_answer(c) for c in choices]
    exact = [i for i, t in enumerate(texts) if t and t == norm]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    inside = [i for i, t in enumerate(texts) if t and re.search(rf"\b{re.escape(t)}\b", norm)]
    if len(inside) == 1:
        return LETTERS[inside[0]]
    return None


def answer_letter(answer, choices: Sequence[str], where: str) -> str:
    """The correct option's letter from `answer` (a letter or an option's text)."""
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, str):
        raise ValueError(f"{where}: a multiple-choice answer must be a letter or an option's text, got {answer!r}")
    if (lt := _letter(answer, len(choices))) is not None:
        return lt
    hits = [i for i, c in enumerate(choices) if normalize_answer(c) == normalize_answer(answer)]
    if len(hits) != 1:
        raise ValueError(f"{where}: answer {answer!r} is neither an option letter (A..{LETTERS[len(choices) - 1]}) "
                         f"nor exactly one of the choices {list(choices)!r}")
    return LETTERS[hits[0]]


def load_questions(path: str, limit: int | None = None) -> list[dict]:
    """Read and check a JSONL question file; image paths become absolute (relative to the file)."""
    base = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or "answer" not in rec:
                raise ValueError(f"{where}: each line needs a JSON object with a 'question' string and an 'answer'")
            images = rec.get("image")
            images = [] if images is None else [images] if isinstance(images, str) else images
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                raise ValueError(f"{where}: 'image' must be a path or a list of paths")
            images = [p if os.path.isabs(p) else os.path.join(base, p) for p in images]
            for p in images:
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{where}: image {p!r} not found")
            choices = rec.get("choices")
            item = {"id": rec.get("id", lineno), "question": rec["question"], "images": images,
                    "answer": rec["answer"], "category": rec.get("category"), "where": where}
            if choices is not None:
                if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
                    raise ValueError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} options")
                item["choices"] = [str(c) for c in choices]
                item["answer_letter"] = answer_letter(rec["answer"], item["choices"], where)
            else:
                answers = rec["answer"] if isinstance(rec["answer"], list) else [rec["answer"]]
                item["answers"] = [str(a) for a in answers]
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    return items


def score(item: dict, prediction: str) -> dict:
    """Per-item result: type, prediction, correctness (and the parsed letter for multiple choice)."""
    out = {"id": item["id"], "question": item["question"], "answer": item["answer"], "prediction": prediction}
    if item.get("category") is not None:
        out["category"] = item["category"]
    if "choices" in item:
        parsed = parse_choice(prediction, item["choices"])
        out.update(type=TYPE_MC, choices=item["choices"], answer_letter=item["answer_letter"], parsed=parsed,
                   correct=parsed == item["answer_letter"])
    else:
        norm = normalize_answer(prediction)
        out.update(type=TYPE_OPEN, correct=any(norm == normalize_answer(a) for a in item["answers"]))
    return out


def evaluate_items(model, tokenizer, items: Sequence[dict], batch_size: int = 8, max_new_tokens: int = 64,
                   progress: bool = True) -> tuple[list[dict], dict]:
    """Answer every item (batched, greedy) and score it. Returns (per-item results, generation totals)."""
    from tqdm.auto import tqdm

    from .generate import DEFAULT_STOP_STRINGS, GenerationConfig, Generator
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen = Generator(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=gen.default_stop_token_ids(),
                              stop_strings=DEFAULT_STOP_STRINGS)
    results, totals = [], defaultdict(float)
    bar = tqdm(total=len(items), unit="q", desc="eval", disable=not progress)
    correct = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        requests = []
        for it in chunk:
            prompt = mc_prompt(it["question"], it["choices"]) if "choices" in it else it["question"]
            requests.append(gen.chat_request(it["images"], prompt)[0])
        outputs = gen.generate(requests, config)
        st = gen.last_stats
        totals["prompt_tokens"] += st.prompt_tokens
        totals["generated_tokens"] += st.generated_tokens
        totals["generation_seconds"] += st.time_to_first_token + st.decode_seconds
        for it, out in zip(chunk, outputs):
            r = score(it, out.text.strip())
            correct += int(r["correct"])
            results.append(r)
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{correct / len(results):.3f}")
    bar.close()
    return results, dict(totals)


def _accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / len(rows) if rows else 0.0


def summarize(results: list[dict]) -> dict:
    by_type, by_cat = defaultdict(list), defaultdict(list)
    for r in results:
        by_type[r["type"]].append(r)
        if "category" in r:
            by_cat[str(r["category"])].append(r)
    return {
        "accuracy": _accuracy(results),
        "num_items": len(results),
        "accuracy_by_type": {k: _accuracy(v) for k, v in sorted(by_type.items())},
        "count_by_type": {k: len(v) for k, v in sorted(by_type.items())},
        "accuracy_by_category": {k: _accuracy(v) for k, v in sorted(by_cat.items())},
    }


def evaluate_file(model, tokenizer, questions: str, model_path: str | None = None, batch_size: int = 8,
                  max_new_tokens: int = 64, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate a JSONL question file; returns the results dict that `xgenmm-fast eval --out` writes."""
    t0 = time.time()
    items = load_questions(questions, limit=limit)
    results, totals = evaluate_items(model, tokenizer, items, batch_size, max_new_tokens, progress)
    return {
        "model": model_path,
        "questions": os.path.abspath(questions),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": time.time() - t0,
        **summarize(results),
        "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                     "device": str(model.device), "dtype": str(next(model.parameters()).dtype)},
        "generation": totals,
        "items": results,
    }
