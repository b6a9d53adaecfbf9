"""The benchmark scripts as importable modules: benchmarks/ is no package, its scripts import `_common`
by that name, so the folder goes on sys.path once, here."""
from __future__ import annotations

import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)


def load(name: str):
    """benchmarks/<name>.py as a module (`_common`, `bench_sft_step`, ...)."""
    return importlib.import_module(name)
