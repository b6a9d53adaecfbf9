"""Shared launcher helpers for the Triton backends (no kernels here)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1; read by @triton.jit at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver must not break import
        return False


def usable(*tensors: torch.Tensor) -> bool:
    """Can the Triton kernels run on these tensors here? (CUDA tensors, or any tensor under the interpreter.)

    Under the interpreter bf16 is refused (its bf16 arithmetic is wrong). The backends fall back to the reference when this is False, so that a CPU tensor reaching a backend
    preferred on a CUDA machine (CPU tests on the GPU box, a CPU-offloaded module) still works.
    """
    ts = [t for t in tensors if t is not None]
    if interpreting():
        # the interpreter computes bf16 wrongly (SPEC §6): leave bf16 to the reference there
        return not any(t.dtype == torch.bfloat16 for t in ts)
    return len(ts) > 0 and all(t.is_cuda for t in ts)  # (len, not bool(list): torch.compile traces this)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def unwritten(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An output buffer the kernel writes completely (torch.empty: no zero fill). The tests replace this with a
    NaN-filled buffer to check that every element is written."""
    return torch.empty(shape, dtype=dtype, device=device)


def unwritten_like(t: torch.Tensor) -> torch.Tensor:
    """unwritten() in t's memory layout: torch.empty_like keeps the strides of a dense tensor (a contiguous
    one otherwise), so that a result or gradient of a transposed view comes back as the same view and the
    caller's reshape (or the autograd of its view) needs no copy. The tests NaN-fill it as unwritten()."""
    return torch.empty_like(t)


def row_view(x: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (rows, N) with unit stride on the last dim (copies only when it has to)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[-1] > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    """x with unit stride on the last dim (the kernels' loads assume it); other strides are passed along."""
    return x if x.stride(-1) == 1 else x.contiguous()
