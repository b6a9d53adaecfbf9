"""LM head and loss: the decoupled two-part biased head (SPEC §1.4) and shifted cross entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch

IGNORE_INDEX = -100


def decoupled_logits_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               add_weight: torch.Tensor, add_bias: torch.Tensor | None,
                               num_base: int) -> torch.Tensor:
    """cat((h Wᵀ + b)[..., :num_base], h Aᵀ + a): (..., num_base + n_additional) logits."""
    base = F.linear(h, weight[:num_base], None if bias is None else bias[:num_base])
    extra = F.linear(h, add_weight, add_bias)
    return torch.cat([base, extra], dim=-1)


def causal_lm_loss_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE in fp32, mean over labelled (≠ -100) targets; logits (B, T, V), labels (B, T)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="mean")


def token_cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum"):
    """CE of already-aligned (N, V) logits vs (N,) targets, ignoring -100 (the packed path's form)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def linear_token_logprobs_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                    add_weight: torch.Tensor, add_bias: torch.Tensor | None, num_base: int,
                                    targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row under the decoupled head, fp32: h (N, E), targets (N,) -> (N,).
    Rows whose target is -100 get 0. (The fused kernel computes this without (N, V) logits.)"""
    logits = decoupled_logits_reference(h, weight, bias, add_weight, add_bias, num_base).float()
    keep = targets != IGNORE_INDEX
    lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0)[:, None])[:, 0]
    return torch.where(keep, lp, torch.zeros_like(lp))


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   add_weight: torch.Tensor, add_bias: torch.Tensor | None, num_base: int,
                                   targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """CE of the decoupled head's logits vs already-aligned targets, fp32, -100 ignored: h (..., E),
    targets (...,). Builds the full logits (the fused Triton backend never does)."""
    logits = decoupled_logits_reference(h, weight, bias, add_weight, add_bias, num_base)
    return token_cross_entropy_reference(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction)


dispatch.register("decoupled_logits", "reference", decoupled_logits_reference)
dispatch.register("linear_token_logprobs", "reference", linear_token_logprobs_reference)
dispatch.register("causal_lm_loss", "reference", causal_lm_loss_reference)
dispatch.register("token_cross_entropy", "reference", token_cross_entropy_reference)
dispatch.register("linear_cross_entropy", "reference", linear_cross_entropy_reference)


def decoupled_logits(h, weight, bias, add_weight, add_bias, num_base):
    return dispatch.call("decoupled_logits", h, weight, bias, add_weight, add_bias, num_base)


def linear_token_logprobs(h, weight, bias, add_weight, add_bias, num_base, targets):
    return dispatch.call("linear_token_logprobs", h, weight, bias, add_weight, add_bias, num_base, targets)


def causal_lm_loss(logits, labels):
    return dispatch.call("causal_lm_loss", logits, labels)


def token_cross_entropy(logits, targets, reduction="sum"):
    return dispatch.call("token_cross_entropy", logits, targets, reduction)


def linear_cross_entropy(h, weight, bias, add_weight, add_bias, num_base, targets, reduction="sum"):
    return dispatch.call("linear_cross_entropy", h, weight, bias, add_weight, add_bias, num_base, targets, reduction)
