"""Shared pieces of the attention kernels (ops/triton/_flash.py) tested on their own: backward_delta, the
backward's rowsum(dO ∘ O), against its fp64 torch form on strided views (the LM backward passes
(head, token, D) transposes of (token, head, D) tensors), odd head dims, one row, no rows."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.triton._flash import backward_delta
from xgenmm_fast.ops.triton._utils import interpreting

from ._util import DEVICE, DTYPES, TOL, check


@pytest.mark.parametrize("tokens,heads,dim", [(37, 3, 96), (1, 1, 24), (130, 2, 64), (5, 4, 128), (0, 2, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_delta_transposed_views(tokens, heads, dim, dtype, seed):
    o = torch.randn(tokens, heads, dim).to(DEVICE, dtype)
    do = torch.randn(tokens, heads, dim).to(DEVICE, dtype)
    out = torch.full((heads, tokens), float("nan"), dtype=torch.float32, device=DEVICE)  # every entry written
    got = backward_delta(o.transpose(0, 1), do.transpose(0, 1), out, interpreting())
    assert got is out
    ref = (o.double() * do.double()).sum(-1).t()
    check("delta", [got], [ref], TOL[torch.float32])


def test_backward_delta_row_stride_not_packed(seed):
    """Rows of a wider buffer (a strided slice), output into a slice of a larger tensor."""
    base_o, base_do = torch.randn(2, 50, 40, device=DEVICE), torch.randn(2, 50, 40, device=DEVICE)
    o, do = base_o[:, ::2, :33], base_do[:, ::2, :33]  # (2, 25, 33), row stride 80
    out_base = torch.zeros(2, 30, device=DEVICE)
    backward_delta(o, do, out_base[:, 3:28], interpreting())
    check("delta", [out_base[:, 3:28]], [(o.double() * do.double()).sum(-1)], TOL[torch.float32])
    assert (out_base[:, :3] == 0).all() and (out_base[:, 28:] == 0).all()
