"""Ops layer: every embedding, attention, norm, activation, RoPE and loss call of the model goes through here.

Each op module registers a plain-PyTorch `reference` backend (and sometimes `sdpa`); the kernels issue
adds Triton/CUDA/flash-attn backends to the same dispatch. `report()` says what each op runs on.
"""
from . import activations, attention, embedding, loss, norms, rope  # noqa: F401  (registers backends)
from . import triton  # noqa: F401,E402  (Triton backends, only where a GPU or the interpreter runs them)
from .dispatch import available_backends, backend_for, report, set_backend  # noqa: F401


def kernel_settings() -> str:
    """The attention kernels' switches and tiles in force, one line (`triton.tuning`: "defaults" unless
    XGENMM_KERNEL_SETTINGS or tuning.apply set others)."""
    from .triton import tuning
    return tuning.report()
