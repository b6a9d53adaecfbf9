"""Fused linear cross-entropy and per-token log-probs (decoupled two-part head) vs the references (fp64)."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.loss import IGNORE_INDEX, linear_cross_entropy_reference, linear_token_logprobs_reference
from xgenmm_fast.ops.triton.fused_linear_ce import (
    chunk_rows_for,
    linear_cross_entropy_triton,
    linear_token_logprobs_triton,
)

from ._util import DEVICE, DTYPES, TOL, as64, check, leaf

# Bias gradients are sums over tokens of (softmax − onehot) terms of size ~1 that cancel; in half precision
# each term is rounded (in the logits buffer, as in the reference) before the sum, so measure their error
# against the size of the terms, not of the (small) sum.
FLOOR = {torch.float32: 1e-6, torch.float16: 3e-2, torch.bfloat16: 3e-2}
# A bias gradient element is Σ_t g_t·(p_t − onehot_t): its rounding error grows with Σ_t |g_t| (the size of
# the terms), not with the element, which can be tiny (one additional-head column); allow this much per unit.
BIAS_ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check_bias_grads(outs, refs, term_scale: float, dtype):
    for name, o, r in zip(("bias", "additional_bias"), outs, refs):
        torch.testing.assert_close(o.detach().double().cpu(), r, rtol=TOL[dtype],
                                   atol=BIAS_ATOL[dtype] * max(term_scale, 1e-3), msg=lambda m: f"{name}: {m}")

# (N tokens, E hidden, W rows, num_base, n_additional, chunk_rows): chunks that split N unevenly,
# one chunk, one token per chunk, a single token, an empty batch
SHAPES = [(13, 16, 50, 45, 3, 4), (7, 24, 40, 40, 3, None), (5, 8, 33, 20, 1, 1), (1, 16, 1100, 1090, 3, 2),
          (0, 16, 20, 18, 3, 4)]


def _inputs(N, E, rows, nb, ne, dtype, bias=True):
    h = leaf(torch.randn(N, E), dtype)
    W = leaf(torch.randn(rows, E) * E ** -0.5, dtype)
    A = leaf(torch.randn(ne, E) * E ** -0.5, dtype)
    b = leaf(torch.randn(rows) * 0.1, dtype) if bias else None
    a = leaf(torch.randn(ne) * 0.1, dtype) if bias else None
    t = torch.randint(0, nb + ne, (N,))
    if N > 2:
        t[1] = IGNORE_INDEX
        t[-1] = nb + ne - 1  # an additional-head target
    return h, W, b, A, a, t.to(DEVICE)


@pytest.mark.parametrize("N,E,rows,nb,ne,chunk", SHAPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_matches_reference(N, E, rows, nb, ne, chunk, reduction, dtype, seed):
    h, W, b, A, a, t = _inputs(N, E, rows, nb, ne, dtype)
    loss = linear_cross_entropy_triton(h, W, b, A, a, nb, t, reduction, chunk_rows=chunk)
    g = 0.7
    (loss * g).backward()
    h64, W64, b64, A64, a64 = as64(h, W, b, A, a)
    ref = linear_cross_entropy_reference(h64, W64, b64, A64, a64, nb, t.cpu(), reduction)
    assert loss.dtype == torch.float32 and loss.shape == ()
    if N == 0:
        assert loss.item() == 0 if reduction == "sum" else torch.isnan(loss)
        return
    (ref * g).backward()
    check("linear_ce", [loss, h.grad, W.grad, A.grad], [ref, h64.grad, W64.grad, A64.grad], TOL[dtype], FLOOR[dtype])
    n_valid = int((t != IGNORE_INDEX).sum())
    check_bias_grads([b.grad, a.grad], [b64.grad, a64.grad], g * (n_valid if reduction == "sum" else 1), dtype)


@pytest.mark.parametrize("N,E,rows,nb,ne,chunk", SHAPES[:3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_token_logprobs_matches_reference(N, E, rows, nb, ne, chunk, dtype, seed):
    h, W, b, A, a, t = _inputs(N, E, rows, nb, ne, dtype)
    lp = linear_token_logprobs_triton(h, W, b, A, a, nb, t, chunk_rows=chunk)
    g = torch.randn(N).to(DEVICE)
    (lp * g).sum().backward()
    h64, W64, b64, A64, a64 = as64(h, W, b, A, a)
    ref = linear_token_logprobs_reference(h64, W64, b64, A64, a64, nb, t.cpu())
    (ref * g.double().cpu()).sum().backward()
    assert lp.dtype == torch.float32 and lp[1].item() == 0.0
    check("logprobs", [lp, h.grad, W.grad, A.grad], [ref, h64.grad, W64.grad, A64.grad], TOL[dtype], FLOOR[dtype])
    check_bias_grads([b.grad, a.grad], [b64.grad, a64.grad], g[t.cpu() != IGNORE_INDEX].abs().sum().item(), dtype)


def test_no_bias_and_no_grad(seed):
    h, W, _, A, _, t = _inputs(9, 16, 30, 28, 3, torch.float32, bias=False)
    loss = linear_cross_entropy_triton(h, W, None, A, None, 28, t, "mean", chunk_rows=4)
    loss.backward()
    h64, W64, A64 = as64(h, W, A)
    ref = linear_cross_entropy_reference(h64, W64, None, A64, None, 28, t.cpu(), "mean")
    ref.backward()
    check("linear_ce_nobias", [loss, h.grad, W.grad, A.grad], [ref, h64.grad, W64.grad, A64.grad], 1e-5)
    with torch.no_grad():
        check("linear_ce_nograd", [linear_cross_entropy_triton(h, W, None, A, None, 28, t, "sum", chunk_rows=2)],
              [linear_cross_entropy_reference(h64, W64, None, A64, None, 28, t.cpu(), "sum")], 1e-5)


def test_chunk_rows_follow_vocab_and_budget():
    assert chunk_rows_for(100_000, 32015, torch.bfloat16, budget_bytes=1 << 30) == 16768
    assert chunk_rows_for(100, 32015, torch.bfloat16, budget_bytes=1 << 30) == 100
    assert chunk_rows_for(10_000, 32015, torch.float32, budget_bytes=1 << 20) == 8
    assert chunk_rows_for(10_000, 32015, torch.float32, budget_bytes=1) == 1
