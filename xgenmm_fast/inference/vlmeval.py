"""A model class with the interface of VLMEvalKit (the toolkit the original xGen-MM was evaluated with).

VLMEvalKit is not needed to import or use this module. A message is a list of
``{"type": "image" | "text", "value": path_or_text}`` items, in order (``INTERLEAVE = True``: images may
sit between texts); each image becomes an ``<image>`` tag at its place in the user turn, which is then
wrapped in the Phi-3 chat template and answered greedily with the cached generator.

    from xgenmm_fast.inference.vlmeval import XGenMMFast
    model = XGenMMFast("runs/sft/hf")
    model.generate([{"type": "image", "value": "cat.jpg"}, {"type": "text", "value": "What is this?"}])

To run it inside VLMEvalKit, register it in ``vlmeval/config.py`` (``supported_VLM`` maps names to
constructors)::

    from functools import partial
    from xgenmm_fast.inference.vlmeval import XGenMMFast
    supported_VLM["xgenmm-fast"] = partial(XGenMMFast, model_path="/models/xgen-mm-phi3-mini-instruct-r-v1.5")

then ``python run.py --data MMBench_DEV_EN --model xgenmm-fast``. When VLMEvalKit is installed, the class
derives from its ``BaseModel``; every method that toolkit calls is defined here either way.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

try:  # pragma: no cover - only where VLMEvalKit is installed
    from vlmeval.vlm.base import BaseModel as _Base
except Exception:  # ImportError, or a broken install: this module must import regardless
    _Base = object

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class XGenMMFast(_Base):
    INTERLEAVE = True
    allowed_types = ("text", "image")

    def __init__(self, model_path: str, max_new_tokens: int = 1024, device: str = "auto", dtype: str = "auto",
                 model=None, tokenizer=None, **kwargs):
        """`model`/`tokenizer` may be given directly (already loaded) instead of read from `model_path`."""
        from .cli import load_model_and_tokenizer
        from .generate import DEFAULT_STOP_STRINGS, GenerationConfig, Generator
        if model is None or tokenizer is None:
            model, tokenizer = load_model_and_tokenizer(model_path, device, dtype)
        self.model_path = model_path
        self.model, self.tokenizer = model, tokenizer
        self.generator = Generator(model, tokenizer)
        self.config = GenerationConfig(max_new_tokens=max_new_tokens,
                                       stop_token_ids=self.generator.default_stop_token_ids(),
                                       stop_strings=DEFAULT_STOP_STRINGS, **kwargs)
        self.dump_image_func = None

    # ---- what VLMEvalKit's BaseModel expects -----------------------------------------------------
    def use_custom_prompt(self, dataset) -> bool:
        """False: the dataset's own prompt builder is used (question, options and hints as text)."""
        return False

    def build_prompt(self, line, dataset=None):
        raise NotImplementedError("XGenMMFast uses the datasets' default prompts (use_custom_prompt is False)")

    def set_dump_image(self, dump_image_func) -> None:
        self.dump_image_func = dump_image_func

    def dump_image(self, line, dataset):
        return self.dump_image_func(line)

    def generate(self, message, dataset=None) -> str:
        """Answer one message (a str, a list of str, a dict or a list of dicts); see the module docstring."""
        return self.generate_inner(self.preproc_content(message), dataset)

    def generate_inner(self, message: Sequence[dict], dataset=None) -> str:
        return self.generate_batch([message], dataset)[0]

    def chat(self, messages: Sequence[dict], dataset=None) -> str:
        """Multi-turn: [{"role": "user" | "assistant", "content": [items]}, ...] ending with a user turn."""
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("chat messages must end with a user turn")
        history, images, pending = [], [], None
        for turn in messages[:-1]:
            text, imgs = self._turn(self.preproc_content(turn["content"]))
            if turn.get("role") == "user":
                pending = text
                images += imgs
            elif pending is not None:
                history.append((pending, text))
                pending = None
        text, imgs = self._turn(self.preproc_content(messages[-1]["content"]))
        request, _ = self.generator.chat_request(images + imgs, text, history)
        return self.generator.generate([request], self.config)[0].text.strip()

    # ---- batched (not part of VLMEvalKit's interface; several messages per prefill) ---------------
    def generate_batch(self, messages: Sequence[Sequence[dict]], dataset=None) -> list[str]:
        requests = []
        for msg in messages:
            text, images = self._turn(msg)
            requests.append(self.generator.chat_request(images, text)[0])
        return [o.text.strip() for o in self.generator.generate(requests, self.config)]

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _turn(items: Sequence[dict]) -> tuple[str, list[str]]:
        """Items in order -> (user text with an <image> tag per image, image paths)."""
        parts, images = [], []
        for it in items:
            if it["type"] == "image":
                images.append(it["value"])
                parts.append("<image>")
            elif it["type"] == "text":
                parts.append(str(it["value"]))
            else:
                raise ValueError(f"message item type {it['type']!r} is not supported (text, image)")
        return "\n".join(parts), images

    def preproc_content(self, message) -> list[dict]:
        """VLMEvalKit's accepted forms -> a list of {"type", "value"} dicts (a str that is an existing
        image file counts as an image, as in VLMEvalKit)."""
        def one(x):
            if isinstance(x, dict):
                if "type" not in x or "value" not in x:
                    raise ValueError(f"message item {x!r} needs 'type' and 'value'")
                return dict(x)
            if isinstance(x, str):
                is_img = os.path.isfile(x) and x.lower().endswith(IMAGE_EXTENSIONS)
                return {"type": "image" if is_img else "text", "value": x}
            raise ValueError(f"message item of type {type(x).__name__} (expected str or dict)")
        items = [one(x) for x in (message if isinstance(message, (list, tuple)) else [message])]
        for it in items:
            if it["type"] not in self.allowed_types:
                raise ValueError(f"message item type {it['type']!r} is not supported ({list(self.allowed_types)})")
        return items
