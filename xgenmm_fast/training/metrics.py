"""Metrics sinks: JSONL (always), TensorBoard (when installed), and a loss-curve PNG drawn with Pillow."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from PIL import Image, ImageDraw


class MetricsWriter:
    def __init__(self, out_dir: str, enabled: bool = True, tensorboard: bool = True, resume: bool = False):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._f = open(self.path, "a" if resume else "w", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps({"step": step, **values}) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(metrics_path: str, png_path: str, key: str = "loss", size=(800, 480)) -> bool:
    """Line plot of `key` over steps; returns False when there is nothing to plot."""
    pts = [(m["step"], m[key]) for m in read_metrics(metrics_path)
           if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    if len(pts) < 2:
        return False
    w, h = size
    left, right, top, bottom = 70, 20, 30, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y1 = y0 + 1e-6
    sx = lambda x: left + (x - x0) / max(1e-9, x1 - x0) * (w - left - right)  # noqa: E731
    sy = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):  # y ticks
        yv = y0 + (y1 - y0) * i / 4
        d.line([left - 5, sy(yv), left, sy(yv)], fill="black")
        d.text((5, sy(yv) - 6), f"{yv:.3g}", fill="black")
    for i in range(5):  # x ticks
        xv = x0 + (x1 - x0) * i / 4
        d.line([sx(xv), h - bottom, sx(xv), h - bottom + 5], fill="black")
        d.text((sx(xv) - 10, h - bottom + 8), f"{int(xv)}", fill="black")
    d.line([(sx(x), sy(y)) for x, y in pts], fill=(30, 90, 200), width=2)
    d.text((left, 8), f"training {key} per step", fill="black")
    d.text((w // 2 - 15, h - 20), "step", fill="black")
    img.save(png_path)
    return True
