"""`xgenmm-fast generate | chat | eval`: the inference commands (registered in xgenmm_fast/cli.py).

    xgenmm-fast generate --model DIR [--image a.jpg ...] --prompt "..." [--max-new-tokens N]
                         [--temperature T --top-p P --top-k K --seed S]      streams the answer to stdout
    xgenmm-fast chat --model DIR [--image a.jpg ...]    conversation on stdin: one question per line;
                         /image PATH adds an image, /reset starts over, /quit ends (so does end of input)
    xgenmm-fast eval --model DIR --questions q.jsonl [--out results.json]   see inference/evaluate.py

DIR is an HF-format model directory (`save_pretrained`, e.g. a training run's `hf/`) holding the
tokenizer too. Temperature 0 (the default) is greedy decoding.
"""
from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model_and_tokenizer(model_dir: str, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode, prepared tokenizer) from an HF-format directory with its tokenizer."""
    from ..data.tokenizer import load_tokenizer
    from ..model.xgenmm import XGenMM
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json (model_type xgenmm) and warns about it
    try:
        tokenizer, info = load_tokenizer(model_dir)
    finally:
        hf_logging.set_verbosity(level)
    model = XGenMM.from_pretrained(model_dir, dtype=DTYPES[dtype], device=dev).eval()
    if info.media_token_id != model.media_token_id:
        raise ValueError(f"{model_dir}: the tokenizer puts <image> at id {info.media_token_id}, the model expects "
                         f"{model.media_token_id}; the tokenizer there does not belong to these weights")
    return model, tokenizer


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF-format model directory with its tokenizer")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bf16 on GPU, fp32 on CPU")


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible answers)")


def _config(args, gen):
    from .generate import DEFAULT_STOP_STRINGS, GenerationConfig
    return GenerationConfig.from_sampling_args(args.temperature, args.top_p, args.top_k, args.seed,
                                               max_new_tokens=args.max_new_tokens,
                                               stop_token_ids=gen.default_stop_token_ids(),
                                               stop_strings=DEFAULT_STOP_STRINGS)


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


# ---- generate ------------------------------------------------------------------------------------
def add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--prompt", required=True, help="the question; <image> tags place the images (default: "
                                                   "all images before the question)")
    _add_sampling_args(p, max_new_tokens=256)


def run_generate(args) -> int:
    from .generate import Generator
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    gen = Generator(model, tokenizer)
    request, _ = gen.chat_request(args.image, args.prompt)
    gen.generate([request], _config(args, gen), on_text=lambda _i, piece: _write(piece))
    _write("\n")
    return 0


# ---- chat ----------------------------------------------------------------------------------------
def add_chat_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--image", action="append", default=[], help="an image to start with (repeat for several)")
    _add_sampling_args(p, max_new_tokens=512)


CHAT_HELP = "commands: /image PATH (add an image), /reset (new conversation), /quit"


def run_chat(args) -> int:
    from ..data.image_io import ImageLoadError, load_image
    from .generate import Generator
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    gen = Generator(model, tokenizer)
    config = _config(args, gen)
    interactive = sys.stdin.isatty()
    start_images = [load_image(p) for p in args.image]
    images, history = list(start_images), []
    print(f"chat with {args.model} ({len(images)} image(s)); {CHAT_HELP}", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/reset":
                images, history = list(start_images), []
                print("(conversation reset)", file=sys.stderr)
            elif cmd == "/image":
                try:
                    images.append(load_image(arg.strip()))
                    print(f"(image {len(images)} added: {arg.strip()})", file=sys.stderr)
                except ImageLoadError as e:
                    print(f"(not added: {e})", file=sys.stderr)
            else:
                print(f"(unknown command {cmd}; {CHAT_HELP})", file=sys.stderr)
            continue
        request, sent = gen.chat_request(images, line, history)
        out = gen.generate([request], config, on_text=lambda _i, piece: _write(piece))[0]
        _write("\n")
        history.append((sent, out.text.strip()))
    return 0


# ---- eval ----------------------------------------------------------------------------------------
def add_eval_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--questions", required=True, help="JSONL: {id, image (optional, path or list, relative to "
                                                      "the file), question, answer, choices (optional)} per line")
    p.add_argument("--out", default=None, help="results JSON (per item and overall); default: not written")
    p.add_argument("--batch-size", type=int, default=8, help="questions per batched generation")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_eval(args) -> int:
    import json

    from .evaluate import evaluate_file
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    results = evaluate_file(model, tokenizer, args.questions, model_path=args.model, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens, limit=args.limit, progress=not args.no_progress)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    summary = {k: results[k] for k in ("accuracy", "accuracy_by_type", "count_by_type", "num_items", "seconds")}
    if results.get("accuracy_by_category"):
        summary["accuracy_by_category"] = results["accuracy_by_category"]
    print(json.dumps(summary, indent=2))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
