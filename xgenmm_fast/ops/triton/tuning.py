"""Attention kernel settings measured on one GPU, applied over the built-in defaults.

`benchmarks/sweep_attention_tiles.py` ends its JSON with `settings`: per family ("lm": varlen_attention.py;
"perceiver": perceiver_attention.py, whose switches and tiles perceiver_varlen.py reads too) the fastest
setting that agreed with the fp32 reference there, as its switches and the tiles of the kernels it changed:

    {"lm": {"split_head_dim": true, "atomic_dq": true,
            "tiles": {"dkdv_atomic_dq": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}}},
     "perceiver": {}}

`apply(settings)` sets them on the modules (and returns how to undo it); for a whole run (training, the
benchmarks), point XGENMM_KERNEL_SETTINGS at such a file (the sweep's output, or a file holding just the
settings object): `xgenmm_fast.ops.triton` applies it on import, and a bad file is an error naming it.
Settings belong to a GPU and a Triton version: a file from another card is valid, but need not be faster.
"""
from __future__ import annotations

import json
import os
from typing import Callable

ENV = "XGENMM_KERNEL_SETTINGS"
SWITCHES = {"split_head_dim": "SPLIT_HEAD_DIM", "dkdv_keys_major": "DKDV_KEYS_MAJOR", "atomic_dq": "ATOMIC_DQ"}
KERNELS = {"lm": ("fwd", "fwd_window", "dkdv", "dq", "dkdv_atomic_dq"),
           "perceiver": ("fwd", "dkdv", "dq", "dkdv_atomic_dq")}
TILE_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")

_applied: dict = {}  # what apply() set, per family (describe() reports it)
_sources: list[str] = []  # where applied settings came from ("XGENMM_KERNEL_SETTINGS=...", ...), for report()


def _modules(family: str) -> list:
    """The module that owns the family's switches and _cfg first, then those that imported _cfg by name."""
    from . import perceiver_attention, perceiver_varlen, varlen_attention
    return [varlen_attention] if family == "lm" else [perceiver_attention, perceiver_varlen]


def validate(settings, where: str = "settings") -> dict:
    """The settings, checked: known families, boolean switches, and per kernel tiles with BLOCK_M / BLOCK_N
    powers of two >= 16, num_warps in 1..16 (a power of two) and num_stages in 1..8. ValueError names `where`
    and the entry."""
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected an object {{family: {{...}}}}, got {type(settings).__name__}")
    out = {}
    for family, s in settings.items():
        if family not in KERNELS:
            raise ValueError(f"{where}: unknown family {family!r}; expected one of {sorted(KERNELS)}")
        if not isinstance(s, dict):
            raise ValueError(f"{where}: {family}: expected an object, got {type(s).__name__}")
        unknown = set(s) - set(SWITCHES) - {"tiles"}
        if unknown:
            raise ValueError(f"{where}: {family}: unknown keys {sorted(unknown)}; expected "
                             f"{sorted(SWITCHES)} and 'tiles'")
        for key in SWITCHES:
            if key in s and not isinstance(s[key], bool):
                raise ValueError(f"{where}: {family}.{key}: expected true or false, got {s[key]!r}")
        tiles = s.get("tiles", {})
        if not isinstance(tiles, dict):
            raise ValueError(f"{where}: {family}.tiles: expected an object {{kernel: tiles}}")
        for kernel, t in tiles.items():
            _check_tiles(t, family, kernel, where)
        out[family] = {**{k: s[k] for k in SWITCHES if k in s}, **({"tiles": dict(tiles)} if tiles else {})}
    return out


def _check_tiles(t, family: str, kernel: str, where: str) -> None:
    at = f"{where}: {family}.tiles.{kernel}"
    if kernel not in KERNELS[family]:
        raise ValueError(f"{where}: {family}.tiles: unknown kernel {kernel!r}; expected one of {KERNELS[family]}")
    if not isinstance(t, dict) or not t or set(t) - set(TILE_KEYS):
        raise ValueError(f"{at}: expected an object with some of {TILE_KEYS}, got {t!r}")
    for key in ("BLOCK_M", "BLOCK_N"):
        v = t.get(key)
        if v is not None and (type(v) is not int or v < 16 or v & (v - 1)):
            raise ValueError(f"{at}.{key}: expected a power of two >= 16, got {v!r}")
    w, st = t.get("num_warps"), t.get("num_stages")
    if w is not None and (type(w) is not int or w not in (1, 2, 4, 8, 16)):
        raise ValueError(f"{at}.num_warps: expected 1, 2, 4, 8 or 16, got {w!r}")
    if st is not None and (type(st) is not int or not 1 <= st <= 8):
        raise ValueError(f"{at}.num_stages: expected 1 to 8, got {st!r}")


def load(path: str) -> dict:
    """Settings from a JSON file: a sweep_attention_tiles document (its `settings`) or the object itself."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"kernel settings {path}: {type(e).__name__}: {e}") from None
    if isinstance(doc, dict) and "rows" in doc and "settings" not in doc:
        raise ValueError(f"kernel settings {path}: a sweep document without `settings` (written before the sweep "
                         "chose settings, or cut off before its combined rows)")
    return validate(doc.get("settings", doc) if isinstance(doc, dict) else doc, f"kernel settings {path}")


def apply(settings: dict, source: str | None = None) -> Callable[[], None]:
    """Set the switches and wrap each family's `_cfg` so that the listed kernels get the listed tiles (other
    kernels, and the head-dim parts, stay as `_cfg` computes them). `source` says where they came from (for
    report()). Returns a function that restores the modules as they were."""
    settings = validate(settings)
    saved = []
    for family, s in settings.items():
        mods = _modules(family)
        owner = mods[0]
        for key, attr in SWITCHES.items():
            if key in s:
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, s[key])
        tiles = s.get("tiles")
        if tiles:
            base = owner._cfg

            def cfg(D: int, kernel: str, _base=base, _tiles=tiles) -> dict:
                c = _base(D, kernel)
                c.update(_tiles.get(kernel, {}))
                return c
            for m in mods:
                saved.append((m, "_cfg", m._cfg))
                m._cfg = cfg
    previous, previous_sources = dict(_applied), list(_sources)
    for family, s in settings.items():  # on top of what earlier calls set, as the modules now are
        before = _applied.get(family, {})
        tiles = {**before.get("tiles", {}), **s.get("tiles", {})}
        _applied[family] = {**before, **s, **({"tiles": tiles} if tiles else {})}
    if source:
        _sources.append(source)

    def restore() -> None:
        for m, attr, value in reversed(saved):
            setattr(m, attr, value)
        _applied.clear()
        _applied.update(previous)
        _sources[:] = previous_sources
    return restore


def load_from(path: str, origin: str) -> dict:
    """load(path), its errors prefixed with `origin`: where the path came from (the environment variable, a
    config key)."""
    try:
        return load(path)
    except ValueError as e:
        raise ValueError(f"{origin}: {e}") from None


def apply_file(path: str, origin: str) -> Callable[[], None]:
    """load_from(path, origin) applied; report() names `origin`."""
    return apply(load_from(path, origin), source=f"{origin}={path}")


def apply_environment() -> str | None:
    """Apply the file XGENMM_KERNEL_SETTINGS names, if set; returns its path."""
    path = os.environ.get(ENV, "").strip()
    if not path:
        return None
    apply_file(path, ENV)
    return path


def describe() -> str:
    """What apply() set, one line ("defaults" when nothing): e.g. "lm: atomic_dq, dkdv_atomic_dq=32x64/8w/2s"."""
    parts = []
    for family, s in sorted(_applied.items()):
        items = [k if s[k] else f"{k}=off" for k in SWITCHES if k in s]
        for kernel, t in sorted(s.get("tiles", {}).items()):
            shape = f"{t.get('BLOCK_M', '-')}x{t.get('BLOCK_N', '-')}"
            items.append(f"{kernel}={shape}/{t.get('num_warps', '-')}w/{t.get('num_stages', '-')}s")
        if items:
            parts.append(f"{family}: " + ", ".join(items))
    return "; ".join(parts) or "defaults"


def report() -> str:
    """describe(), and where the settings came from, or why XGENMM_KERNEL_SETTINGS was not applied (no Triton
    backends here: no GPU and no interpreter)."""
    path = os.environ.get(ENV, "").strip()
    if _sources:
        return f"{describe()} (from {', '.join(_sources)})"
    if path:
        return f"{describe()} ({ENV}={path} not applied: the Triton backends are not enabled here)"
    return describe()
