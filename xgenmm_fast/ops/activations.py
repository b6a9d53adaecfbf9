"""Activations and gated MLP cores."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def swiglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """Phi-3 MLP core: `gate_up` is (..., 2*I) with gate first; returns up * silu(gate), (..., I)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return up * F.silu(gate)


def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    """SigLIP MLP activation (tanh approximation)."""
    return F.gelu(x, approximate="tanh")


def gelu_erf_reference(x: torch.Tensor) -> torch.Tensor:
    """Perceiver FF activation (exact erf GELU)."""
    return F.gelu(x)


dispatch.register("swiglu", "reference", swiglu_reference)
dispatch.register("gelu_tanh", "reference", gelu_tanh_reference)
dispatch.register("gelu_erf", "reference", gelu_erf_reference)


def swiglu(gate_up):
    return dispatch.call("swiglu", gate_up)


def gelu_tanh(x):
    return dispatch.call("gelu_tanh", x)


def gelu_erf(x):
    return dispatch.call("gelu_erf", x)
