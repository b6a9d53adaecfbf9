"""DPO losses and rewards against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from xgenmm_fast.training.dpo_loss import dpo_loss, nll_loss, preference_sums

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_sigmoid_dpo_by_hand():
    # h = (pc - rc) - (pr - rr) = (-1 + 1.5) - (-2 + 1.5) = 1.0; loss = -log σ(0.1) = log(1 + e^-0.1)
    out = dpo_loss(T(-1.0), T(-2.0), T(-1.5), T(-1.5), beta=0.1)
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-0.1)), rel=1e-12)
    assert out.losses.item() == pytest.approx(0.6443966600735709, rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.05) and out.rejected_rewards.item() == pytest.approx(-0.05)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards():
    out = dpo_loss(T(-3.0, -7.0), T(-4.0, -1.0), T(-3.0, -7.0), T(-4.0, -1.0), beta=0.5)
    torch.testing.assert_close(out.losses, T(math.log(2), math.log(2)))
    s = preference_sums(out, T(-3.0, -7.0), T(-4.0, -1.0))
    assert s["reward_margin"] == 0 and s["reward_accuracy"] == 0  # ties are not counted as right


def test_label_smoothing_by_hand():
    # -(1-ε) log σ(βh) - ε log σ(-βh) with βh = 0.1, ε = 0.1: 0.9·log(1+e^-0.1) + 0.1·log(1+e^0.1)
    out = dpo_loss(T(-1.0), T(-2.0), T(-1.5), T(-1.5), beta=0.1, label_smoothing=0.1)
    want = 0.9 * math.log(1 + math.exp(-0.1)) + 0.1 * math.log(1 + math.exp(0.1))
    assert out.losses.item() == pytest.approx(want, rel=1e-12)
    assert out.losses.item() == pytest.approx(0.6443966600735709 + 0.01, rel=1e-12)  # log(1+e^x)-log(1+e^-x) = x


def test_ipo_by_hand():
    # per-token means: pc -4/2 = -2, rc -6/2 = -3, pr -9/3 = -3, rr -6/3 = -2 -> h = 1 + 1 = 2;
    # beta 0.5: (h - 1/(2·0.5))² = (2 - 1)² = 1; beta 0.25: (2 - 2)² = 0
    args = (T(-4.0), T(-9.0), T(-6.0), T(-6.0))
    kw = dict(loss="ipo", chosen_tokens=T(2.0), rejected_tokens=T(3.0))
    assert dpo_loss(*args, beta=0.5, **kw).losses.item() == pytest.approx(1.0, rel=1e-12)
    assert dpo_loss(*args, beta=0.25, **kw).losses.item() == pytest.approx(0.0, abs=1e-12)
    out = dpo_loss(*args, beta=0.5, **kw)
    assert out.chosen_rewards.item() == pytest.approx(0.5 * (-2 + 3))
    with pytest.raises(ValueError, match="token counts"):
        dpo_loss(*args, beta=0.5, loss="ipo")


def test_nll_term_by_hand():
    # chosen answers with summed log-probs -3 (2 tokens) and -5 (3 tokens): mean NLL per token 8/5
    assert nll_loss(T(-3.0, -5.0), T(2.0, 3.0)).item() == pytest.approx(1.6)
    assert nll_loss(T(-3.0, -5.0), 5).item() == pytest.approx(1.6)


def test_metrics_sums():
    pc, pr, rc, rr = T(-1.0, -2.0, -3.0), T(-2.0, -1.0, -3.0), T(-1.5, -1.5, -3.0), T(-1.5, -1.5, -3.0)
    out = dpo_loss(pc, pr, rc, rr, beta=1.0)
    s = preference_sums(out, pc, pr)
    assert s["reward_chosen"] == pytest.approx(0.5 - 0.5 + 0.0)
    assert s["reward_rejected"] == pytest.approx(-0.5 + 0.5 + 0.0)
    assert s["reward_margin"] == pytest.approx(1.0 - 1.0 + 0.0)
    assert s["reward_accuracy"] == 1.0  # only the first pair prefers the chosen answer
    assert s["logp_chosen"] == pytest.approx(-6.0) and s["logp_rejected"] == pytest.approx(-6.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dpo.loss"):
        dpo_loss(T(0.0), T(0.0), T(0.0), T(0.0), loss="hinge")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(T(0.0), T(0.0), T(0.0), T(0.0), beta=0.0)
