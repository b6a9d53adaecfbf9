"""DPO losses on per-pair sequence log-probs, and the preference metrics logged with them.

Inputs are (P,) tensors for P pairs: the policy's and the reference's log-probs of the chosen and the
rejected answer (summed over the answer's labelled tokens). With
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
the losses per pair are
    sigmoid (DPO, Rafailov et al. 2023; label smoothing ε = conservative DPO):
        -(1 - ε) · log σ(β h) - ε · log σ(-β h)
    ipo (Azar et al. 2023), on log-probs averaged over each answer's tokens (as TRL does):
        (h - 1 / (2β))²
Rewards: β · (policy - reference) of each answer (of the quantities entering the loss); margin =
chosen reward - rejected reward; accuracy = the share of pairs with chosen reward > rejected reward.
The optional NLL term is the mean negative log-likelihood per token of the chosen answers (its weight
is `dpo.nll_weight`, "RPO"); the trainer normalises it over the global batch's chosen tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOLossOutput:
    losses: torch.Tensor  # (P,) per pair
    chosen_rewards: torch.Tensor  # (P,) detached
    rejected_rewards: torch.Tensor  # (P,) detached


def sigmoid_dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """-(1 - ε) log σ(β h) - ε log σ(-β h), per pair."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """(h - 1/(2β))², per pair (h on per-token averaged log-probs)."""
    return (h - 1.0 / (2.0 * beta)) ** 2


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> DPOLossOutput:
    """Per-pair DPO losses and rewards from summed log-probs (module docstring). IPO needs the answers'
    token counts (`chosen_tokens`, `rejected_tokens`, (P,)) to average the log-probs per token."""
    if loss not in LOSS_TYPES:
        raise ValueError(f"dpo.loss must be one of {LOSS_TYPES}, got {loss!r}")
    if beta <= 0:
        raise ValueError(f"dpo.beta must be positive, got {beta}")
    if loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the IPO loss needs the answers' token counts (chosen_tokens, rejected_tokens)")
        nc = chosen_tokens.to(policy_chosen.dtype).clamp_min(1)
        nr = rejected_tokens.to(policy_rejected.dtype).clamp_min(1)
        policy_chosen, ref_chosen = policy_chosen / nc, ref_chosen / nc
        policy_rejected, ref_rejected = policy_rejected / nr, ref_rejected / nr
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    losses = ipo_loss(h, beta) if loss == "ipo" else sigmoid_dpo_loss(h, beta, label_smoothing)
    return DPOLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def nll_loss(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor | int) -> torch.Tensor:
    """Mean negative log-likelihood per token of the chosen answers: -Σ logp / Σ tokens."""
    n = chosen_tokens.sum() if isinstance(chosen_tokens, torch.Tensor) else chosen_tokens
    return -chosen_logps.sum() / max(float(n), 1.0)


def preference_sums(out: DPOLossOutput, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> dict:
    """Sums over the pairs of a batch (divide by the global pair count for means)."""
    cr, rr = out.chosen_rewards, out.rejected_rewards
    return {"reward_chosen": cr.sum().item(), "reward_rejected": rr.sum().item(),
            "reward_margin": (cr - rr).sum().item(), "reward_accuracy": (cr > rr).float().sum().item(),
            "logp_chosen": policy_chosen.detach().sum().item(),
            "logp_rejected": policy_rejected.detach().sum().item()}
