"""One dispatch for every op: each op name maps to named backends; the chosen one is reported.

Choice order: an explicit `set_backend(op, name)` call (from code or the training config), then the
environment (`XGENMM_OPS=op1=name,op2=name` or `XGENMM_OPS=name` for all ops), then the op's default
preference list filtered by availability. Missing GPUs or libraries never break import: a backend
registers an `available()` check and is skipped when it is false.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass
class Backend:
    name: str
    fn: Callable
    available: Callable[[], bool] = lambda: True


_REGISTRY: dict[str, dict[str, Backend]] = {}
_PREFERENCE: dict[str, list[str]] = {}
_FORCED: dict[str, str] = {}


def register(op: str, name: str, fn: Callable, available: Callable[[], bool] | None = None,
             prefer: bool = False) -> None:
    """Add backend `name` for `op`. `prefer=True` puts it ahead of earlier registrations."""
    _REGISTRY.setdefault(op, {})[name] = Backend(name, fn, available or (lambda: True))
    order = _PREFERENCE.setdefault(op, [])
    if name in order:
        order.remove(name)
    order.insert(0, name) if prefer else order.append(name)


def set_backend(op: str, name: str | None) -> None:
    """Force `op` to backend `name` (None clears the override). Unknown names fail loudly."""
    if name is None:
        _FORCED.pop(op, None)
        return
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    if name not in _REGISTRY[op]:
        raise KeyError(f"op {op!r} has no backend {name!r}; known: {sorted(_REGISTRY[op])}")
    _FORCED[op] = name


def _env_choice(op: str) -> str | None:
    spec = os.environ.get("XGENMM_OPS", "").strip()
    if not spec:
        return None
    for part in spec.split(","):
        part = part.strip()
        if "=" in part:
            k, v = part.split("=", 1)
            if k.strip() == op:
                return v.strip()
        elif part:
            return part
    return None


def choose(op: str) -> Backend:
    backends = _REGISTRY[op]
    wanted = _FORCED.get(op) or _env_choice(op)
    if wanted:
        if wanted not in backends:
            raise KeyError(f"op {op!r} was asked for backend {wanted!r}, which does not exist; "
                           f"known: {sorted(backends)}")
        b = backends[wanted]
        if not b.available():
            raise RuntimeError(f"op {op!r}: backend {wanted!r} was requested but is not available here")
        return b
    for name in _PREFERENCE[op]:
        b = backends[name]
        if b.available():
            return b
    raise RuntimeError(f"op {op!r}: no available backend among {_PREFERENCE[op]}")


def call(op: str, *args, **kwargs):
    return choose(op).fn(*args, **kwargs)


def backend_for(op: str, name: str) -> Callable:
    """The function of one named backend (tests compare backends directly)."""
    return _REGISTRY[op][name].fn


def report() -> dict[str, str]:
    """{op: chosen backend} for every registered op."""
    return {op: choose(op).name for op in sorted(_REGISTRY)}


def available_backends(op: str) -> list[str]:
    return [n for n in _PREFERENCE[op] if _REGISTRY[op][n].available()]
