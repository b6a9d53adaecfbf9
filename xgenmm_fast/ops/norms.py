"""LayerNorm (SigLIP, perceiver) and RMSNorm (Phi-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Phi-3's RMSNorm: statistics in fp32, scale applied after casting back to the input dtype."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


dispatch.register("layer_norm", "reference", layer_norm_reference)
dispatch.register("rms_norm", "reference", rms_norm_reference)


def layer_norm(x, weight, bias, eps):
    return dispatch.call("layer_norm", x, weight, bias, eps)


def rms_norm(x, weight, eps):
    return dispatch.call("rms_norm", x, weight, eps)
