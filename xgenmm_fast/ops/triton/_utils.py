"""Shared launcher helpers for the Triton backends (no kernels here)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

try:  # kernels wrapped by wrap_triton launch directly instead of through the tracing HOP (eager mode)
    from torch._library.triton import set_wrap_triton_enabled as _wrap_triton_enabled
except ImportError:  # a torch without it: every call goes through the custom ops
    _wrap_triton_enabled = None


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


# ---- the custom ops and their eager path ---------------------------------------------------------------
# Every Triton backend is a torch.library custom op (triton_op), so that torch.compile traces it into Inductor,
# with its backward registered on it. Called eagerly, a custom op costs the host more than the kernel launch
# itself: the dispatcher, torch.library's autograd wrapper, a dynamo-disable guard per call. And an eager call
# of a sub-millisecond op takes as long as its host part (bench_kernels' GRAPH_TIMED rows; decoding at small
# batch is host-bound throughout). So in eager mode, on plain tensors, `TritonOp` calls the op's Python body
# directly, with the same setup_context and backward through a plain torch.autograd.Function; under
# torch.compile, or on tensor subclasses (FakeTensor, FunctionalTensor, DTensor), it calls the custom op.
# benchmarks/bench_host_overhead.py measures both paths' host time per call.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors: torch.Tensor | None) -> bool:
    """The direct path applies: eager mode (not torch.compile tracing), plain tensors only."""
    if _wrap_triton_enabled is None or torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in _PLAIN_TENSOR_TYPES for t in tensors)


def _direct_launch():
    """wrap_triton hands back the kernel itself (no tracing HOP), as inside a triton_op's eager call."""
    return _wrap_triton_enabled(False) if _wrap_triton_enabled is not None else contextlib.nullcontext()


class TritonOp:
    """A torch.library.triton_op (`.op`) over `body`, callable like it. Eager calls on plain tensors run `body`
    itself: alone when no input needs a gradient, else through a torch.autograd.Function built from the pair
    given to `register_autograd` (registered on the custom op as well, for traced calls)."""

    def __init__(self, name: str, body: Callable[..., Any]):
        from torch.library import triton_op
        self.name, self.body = name, body
        self.op = triton_op(name, mutates_args={})(body)
        self.function: type[torch.autograd.Function] | None = None

    def register_autograd(self, backward: Callable[..., Any], *, setup_context: Callable[..., None]) -> None:
        self.op.register_autograd(backward, setup_context=setup_context)
        body = self.body

        # forward(ctx, ...) rather than a setup_context staticmethod, which binds the arguments through
        # inspect.signature on every call
        def forward(ctx, *args):
            out = body(*args)
            setup_context(ctx, args, out)
            return out

        def run_backward(ctx, *grads):
            with _direct_launch():
                return backward(ctx, *grads)
        self.function = type(self.name.split("::")[-1], (torch.autograd.Function,),
                             {"forward": staticmethod(forward), "backward": staticmethod(run_backward)})

    def __call__(self, *args):
        if torch.compiler.is_compiling():  # first, and alone: what torch.compile traces is this line only
            return self.op(*args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not eager(*tensors):
            return self.op(*args)
        with _direct_launch():
            if self.function is not None and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
                return self.function.apply(*args)
            return self.body(*args)


def triton_custom_op(name: str) -> Callable[[Callable[..., Any]], TritonOp]:
    """Decorator: `TritonOp(name, fn)` (every op here is functional: mutates_args={})."""
    return lambda fn: TritonOp(name, fn)
