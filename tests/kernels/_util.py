"""Shared helpers for the kernel tests: device, tolerances per dtype, error measure, fp64 references."""
from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# ‖ours − ref‖ / (‖ref‖ + floor), ref computed in float64 from the same (rounded) inputs.
# fp32: kernels use IEEE fp32 dots; fp16/bf16 operands round at ~5e-4 / ~4e-3 per element.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# attention backward in half precision rounds P and dS to the input dtype before the dots (as FA2 does)
TOL_ATTN_BWD = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.gpu),  # the interpreter's bf16 is wrong (SPEC §6)
]
# Kernel variants that are off by default (scores orientation, prefetch, register caps: candidates for the GPU
# sweeps): fp32 and fp16 under the interpreter on the CPU, bf16 (the dtype they would run in) on the GPU, where
# every further dtype is another compile of each case inside the GPU check's time limit.
VARIANT = pytest.mark.variant  # a test (or case) of such a variant: the GPU check runs them after the defaults
VARIANT_DTYPES = [pytest.param(torch.bfloat16, marks=pytest.mark.gpu)] if DEVICE == "cuda" else DTYPES
# the attention backward's off-by-default switches (sweep candidates; module attributes of varlen_attention and
# perceiver_attention), alone and together: DKDV_KEYS_MAJOR, the dK/dV kernel's scores as K·Qᵀ; ATOMIC_DQ, dQ
# summed by the dK/dV kernel with atomic adds (every (query tile, key block) pair adds its share once) and no
# dQ kernel
BACKWARD_SWITCHES = [("DKDV_KEYS_MAJOR",), ("ATOMIC_DQ",), ("DKDV_KEYS_MAJOR", "ATOMIC_DQ")]


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 1e-6) -> float:
    """Relative L2 error; `floor`·sqrt(numel) keeps near-zero references (e.g. exactly-zero gradients)
    from turning rounding noise into huge relative errors. NaN never passes."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item() + floor * max(1, ref.numel()) ** 0.5
    return (out - ref).norm().item() / denom


def leaf(t: torch.Tensor, dtype: torch.dtype, requires_grad: bool = True) -> torch.Tensor:
    return t.to(device=DEVICE, dtype=dtype).detach().requires_grad_(requires_grad)


def as64(*ts):
    """float64 leaf copies (on CPU) of the given tensors, for the high-precision reference."""
    return [None if t is None else (t.detach().double().cpu().requires_grad_(t.requires_grad)
                                    if t.is_floating_point() else t.detach().cpu()) for t in ts]


def grads(*ts):
    return [t.grad for t in ts]


def check(name: str, outs, refs, tol: float, floor: float = 1e-6):
    for i, (o, r) in enumerate(zip(outs, refs)):
        if r is None:
            assert o is None, f"{name}[{i}]: expected no gradient"
            continue
        assert o is not None, f"{name}[{i}]: missing output/gradient"
        e = rel_err(o, r, floor)
        assert e < tol, f"{name}[{i}]: relative error {e:.3e} >= {tol:.1e}"
