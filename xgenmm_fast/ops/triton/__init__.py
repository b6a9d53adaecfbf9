"""Triton backends for the ops dispatch (backend name "triton").

Registered only when Triton imports AND a CUDA device is present or TRITON_INTERPRET=1 (CPU
interpreter, used by tests/kernels). On CUDA the Triton backends are preferred over the references;
on CPU they are registered but not preferred, so the default choice stays reference/sdpa. A missing GPU
or Triton never breaks `import xgenmm_fast`. Each backend also falls back to the reference by itself
for tensors it cannot run on (CPU tensors without the interpreter; bf16 under the interpreter).

One op per file: rms_norm, rope, swiglu, fused_linear_ce (linear_cross_entropy + linear_token_logprobs),
varlen_attention (varlen_attention + decode_attention), perceiver_attention,
perceiver_varlen (perceiver_attention_varlen), vision_merge (merge_vision_tokens). tuning: the attention
kernels' switches and tiles as measured on one GPU (XGENMM_KERNEL_SETTINGS=sweep JSON applies them on import).
"""
from __future__ import annotations

from ._utils import cuda_available, interpreting

REGISTERED: list[tuple[str, str]] = []  # (op, backend) pairs this module added


def triton_importable() -> bool:
    try:
        import triton
        import triton.language
        from torch.library import triton_op, wrap_triton
    except Exception:
        return False
    return True


def enabled() -> bool:
    """Can the Triton backends run here at all?"""
    return triton_importable() and (cuda_available() or interpreting())


def register_backends() -> list[tuple[str, str]]:
    """Import the kernel modules and add them to the dispatch. Idempotent. Call it after setting
    TRITON_INTERPRET=1 when kernels should run on the CPU (the variable is read when kernels are defined)."""
    if REGISTERED:
        return REGISTERED
    from .. import dispatch
    from .fused_linear_ce import linear_cross_entropy_triton, linear_token_logprobs_triton
    from .perceiver_attention import perceiver_attention_triton
    from .perceiver_varlen import perceiver_attention_varlen_triton
    from .rms_norm import rms_norm_triton
    from .rope import apply_rope_triton
    from .swiglu import swiglu_triton
    from .varlen_attention import decode_attention_triton, varlen_attention_triton
    from .vision_merge import merge_vision_tokens_triton

    prefer = cuda_available()
    for op, fn in (("rms_norm", rms_norm_triton), ("rope", apply_rope_triton), ("swiglu", swiglu_triton),
                   ("linear_cross_entropy", linear_cross_entropy_triton),
                   ("linear_token_logprobs", linear_token_logprobs_triton),
                   ("varlen_attention", varlen_attention_triton), ("decode_attention", decode_attention_triton),
                   ("perceiver_attention", perceiver_attention_triton),
                   ("perceiver_attention_varlen", perceiver_attention_varlen_triton),
                   ("merge_vision_tokens", merge_vision_tokens_triton)):
        dispatch.register(op, "triton", fn, available=enabled, prefer=prefer)
        REGISTERED.append((op, "triton"))
    return REGISTERED


if enabled():
    try:
        register_backends()
    except Exception as e:  # never break `import xgenmm_fast` over an optional backend
        import warnings
        warnings.warn(f"xgenmm_fast.ops.triton: Triton backends not registered ({type(e).__name__}: {e})")
    else:  # XGENMM_KERNEL_SETTINGS (tuning.py): asked for explicitly, so a bad file is an error, not a warning
        from . import tuning
        tuning.apply_environment()
