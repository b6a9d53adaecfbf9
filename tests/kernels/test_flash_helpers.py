"""Shared pieces of the attention kernels (ops/triton/_flash.py) tested on their own: backward_delta, the
backward's rowsum(dO ∘ O), against its fp64 torch form on strided views (the LM backward passes
(head, token, D) transposes of (token, head, D) tensors), odd head dims, one row, no rows."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.triton._flash import backward_delta
from xgenmm_fast.ops.triton._utils import interpreting

from ._util import DEVICE, DTYPES, TOL, check

# Each delta is a sum of D products of N(0, 1) values, rounded in fp32: its error scales with the terms, not
# with the sum, which can cancel to near zero (a single such delta then failed a purely relative check:
# 4.9e-5 at tokens=1, D=24, fp16, in CI). The floor measures errors against the O(1) size of the terms.
TERM_FLOOR = 1.0


@pytest.mark.parametrize("tokens,heads,dim", [(37, 3, 96), (1, 1, 24), (130, 2, 64), (5, 4, 128), (0, 2, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_delta_transposed_views(tokens, heads, dim, dtype, seed):
    o = torch.randn(tokens, heads, dim).to(DEVICE, dtype)
    do = torch.randn(tokens, heads, dim).to(DEVICE, dtype)
    out = torch.full((heads, tokens), float("nan"), dtype=torch.float32, device=DEVICE)  # every entry written
    got = backward_delta(o.transpose(0, 1), do.transpose(0, 1), out, interpreting())
    assert got is out
    ref = (o.double() * do.double()).sum(-1).t()
    check("delta", [got], [ref], TOL[torch.float32], TERM_FLOOR)


def test_backward_delta_row_stride_not_packed(seed):
    """Rows of a wider buffer (a strided slice), output into a slice of a larger tensor."""
    base_o, base_do = torch.randn(2, 50, 40, device=DEVICE), torch.randn(2, 50, 40, device=DEVICE)
    o, do = base_o[:, ::2, :33], base_do[:, ::2, :33]  # (2, 25, 33), row stride 80
    out_base = torch.zeros(2, 30, device=DEVICE)
    backward_delta(o, do, out_base[:, 3:28], interpreting())
    check("delta", [out_base[:, 3:28]], [(o.double() * do.double()).sum(-1)], TOL[torch.float32], TERM_FLOOR)
    assert (out_base[:, :3] == 0).all() and (out_base[:, 28:] == 0).all()


@pytest.mark.parametrize("tiles,heads,latents,dim", [(3, 2, 17, 96), (1, 1, 1, 32), (2, 3, 40, 64), (0, 2, 8, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_delta_perceiver_layout(tiles, heads, latents, dim, dtype, seed):
    """(tile, head, latent, D) inputs: O contiguous, dO the (tile, head, latent) view of a (tile, latent,
    head·D) gradient, as the perceiver's output projection hands it back; delta a contiguous (tile, head,
    latent) tensor, as the perceiver kernels read it."""
    o = torch.randn(tiles, heads, latents, dim).to(DEVICE, dtype)
    do = torch.randn(tiles, latents, heads * dim).to(DEVICE, dtype).view(tiles, latents, heads, dim).transpose(1, 2)
    out = torch.full((tiles, heads, latents), float("nan"), dtype=torch.float32, device=DEVICE)
    assert backward_delta(o, do, out, interpreting()) is out
    check("delta", [out], [(o.double() * do.double()).sum(-1)], TOL[torch.float32], TERM_FLOOR)


def test_backward_delta_rejects_mismatched_shapes():
    o = torch.zeros(2, 3, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="must match"):
        backward_delta(o, torch.zeros(2, 3, 5, 8, device=DEVICE), torch.zeros(2, 3, 4, device=DEVICE), interpreting())
    with pytest.raises(ValueError, match="must match"):
        backward_delta(o, o, torch.zeros(2, 3, 5, device=DEVICE), interpreting())
