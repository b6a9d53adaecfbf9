"""Embedding lookup + image-token scatter kernel (merge_vision_tokens) vs the reference.

The forward only copies and casts rows, so it must equal the reference bit for bit in every dtype. The
gradients (d_weight, d_add_weight, d_tokens) are sums of incoming gradient rows; they are compared with
the reference run in float64 on the same inputs, at the per-dtype tolerance.
"""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops import dispatch
from xgenmm_fast.ops.embedding import merge_vision_tokens, merge_vision_tokens_reference
from xgenmm_fast.ops.triton import register_backends
from xgenmm_fast.ops.triton.vision_merge import merge_vision_tokens_triton

from ._util import DEVICE, DTYPES, TOL, as64, check, leaf

# (N stream rows, E width, weight rows, num_base, n_add, M media positions, K token rows, shared sources)
SHAPES = [
    (0, 16, 20, 18, 3, 0, 0, False),      # empty stream
    (1, 16, 20, 18, 3, 0, 0, False),      # one text row
    (1, 16, 20, 18, 3, 1, 1, False),      # one media row
    (37, 33, 50, 45, 3, 0, 0, False),     # no media, odd width
    (37, 33, 50, 45, 3, 37, 37, False),   # all media
    (64, 96, 40, 40, 3, 20, 20, False),   # weight has exactly num_base rows
    (50, 96, 60, 45, 3, 24, 10, True),    # slots sharing token rows
    (30, 33, 20, 18, 1, 30, 7, True),     # all media, shared, one additional row
    (20, 1100, 30, 28, 3, 8, 4, True),    # width over one column block
]


def _inputs(N, E, rows, nb, na, M, K, shared, dtype, tokens_dtype=None):
    ids = torch.randint(0, nb + na, (N,))
    for i, v in enumerate([0, nb - 1, nb, nb + na - 1, nb - 1, nb]):  # both vocabulary boundaries, repeated
        if i < N:
            ids[i] = v
    media_index = torch.randperm(N)[:M]
    source = None
    if shared:
        source = torch.randint(0, K, (M,))
        source[: M // 2] = source[M // 2: 2 * (M // 2)]  # force repeats
    W = leaf(torch.randn(rows, E), dtype)
    A = leaf(torch.randn(na, E), dtype)
    T = leaf(torch.randn(K, E), tokens_dtype or dtype) if M else None
    return ids.to(DEVICE), W, A, media_index.to(DEVICE), T, None if source is None else source.to(DEVICE)


def _run(fn, ids, W, A, nb, mi, T, src, g):
    for t in (W, A, T):
        if t is not None:
            t.grad = None
    out = fn(ids, W, A, nb, mi, T, src)
    (out.float() * g).sum().backward()
    return out, [None if t is None else t.grad for t in (W, A, T)]


@pytest.mark.parametrize("N,E,rows,nb,na,M,K,shared", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_matches_reference(N, E, rows, nb, na, M, K, shared, dtype, seed):
    ids, W, A, mi, T, src = _inputs(N, E, rows, nb, na, M, K, shared, dtype)
    g = torch.randn(N, E, device=DEVICE)
    out, grads = _run(merge_vision_tokens_triton, ids, W, A, nb, mi, T, src, g)
    ref_same, _ = _run(merge_vision_tokens_reference, ids, W, A, nb, mi, T, src, g)
    assert out.dtype == dtype and out.shape == (N, E)
    assert torch.equal(out, ref_same), "forward is a copy/cast of rows: must equal the reference exactly"
    W64, A64, T64 = as64(W, A, T)
    _, grads64 = _run(merge_vision_tokens_reference, ids.cpu(), W64, A64, nb, mi.cpu(), T64,
                          None if src is None else src.cpu(), g.double().cpu())
    if grads64[1] is None:  # no added id in the stream: the reference never reads add_weight (no
        assert not grads[1].any()  # gradient); the kernel gives it a zero one (documented)
        grads, grads64 = [grads[0], grads[2]], [grads64[0], grads64[2]]
    if N == 0:
        assert all(gr is None or not gr.any() for gr in grads)
        return
    check("merge_grads", grads, grads64, TOL[dtype])


def test_gradients_go_where_rows_were_read(seed):
    """By hand: media positions give nothing to the embedding rows their ids name; shared token rows
    get the sum of their positions' gradients; unused token rows get zero."""
    nb, na, E = 6, 2, 5
    ids = torch.tensor([1, 6, 3, 1, 7, 2], device=DEVICE)
    mi = torch.tensor([2, 5], device=DEVICE)  # ids 3 and 2 are overwritten
    src = torch.tensor([1, 1], device=DEVICE)
    W, A, T = (leaf(torch.randn(r, E), torch.float32) for r in (8, na, 3))
    g = torch.arange(6 * E, dtype=torch.float32, device=DEVICE).view(6, E)
    out = merge_vision_tokens_triton(ids, W, A, nb, mi, T, src)
    (out * g).sum().backward()
    assert torch.equal(out[0], W[1]) and torch.equal(out[1], A[0]) and torch.equal(out[4], A[1])
    assert torch.equal(out[2], T[1]) and torch.equal(out[5], T[1])
    expect_w = torch.zeros(8, E, device=DEVICE)
    expect_w[1] = g[0] + g[3]
    assert torch.equal(W.grad, expect_w)
    assert torch.equal(A.grad, torch.stack([g[1], g[4]]))
    assert torch.equal(T.grad, torch.stack([torch.zeros(E, device=DEVICE), g[2] + g[5], torch.zeros(E, device=DEVICE)]))


def test_mixed_dtypes_and_frozen_inputs(seed):
    """fp16 embedding table with fp32 image tokens: output in the table's dtype, d_tokens in fp32; inputs
    that need no gradient get none (a frozen table is never given a dense zero gradient)."""
    ids, W, A, mi, T, src = _inputs(40, 33, 50, 45, 3, 12, 6, True, torch.float16, tokens_dtype=torch.float32)
    W.requires_grad_(False)
    g = torch.randn(40, 33, device=DEVICE)
    out, (gw, ga, gt) = _run(merge_vision_tokens_triton, ids, W, A, 45, mi, T, src, g)
    ref, (rw, ra, rt) = _run(merge_vision_tokens_reference, ids, W, A, 45, mi, T, src, g)
    assert out.dtype == torch.float16 and torch.equal(out, ref)
    assert gw is None and rw is None
    assert gt.dtype == torch.float32
    check("mixed", [ga, gt], [ra, rt], TOL[torch.float16])
    T.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(merge_vision_tokens_triton(ids, W, A, 45, mi, T, src), ref.detach())


def test_no_media_leaves_tokens_without_gradient(seed):
    ids, W, A, _, _, _ = _inputs(9, 16, 20, 18, 3, 0, 0, False, torch.float32)
    T = leaf(torch.randn(4, 16), torch.float32)
    empty = torch.zeros(0, dtype=torch.long, device=DEVICE)
    out = merge_vision_tokens_triton(ids, W, A, 18, empty, T, None)
    out.sum().backward()
    assert T.grad is None and torch.equal(out, merge_vision_tokens_reference(ids, W, A, 18, empty, None))


def test_backward_is_deterministic(seed):
    ids, W, A, mi, T, src = _inputs(50, 96, 60, 45, 3, 24, 10, True, torch.float32)
    ids[ids < 45] = ids[ids < 45] % 4  # long runs of few ids
    g = torch.randn(50, 96, device=DEVICE)
    first = _run(merge_vision_tokens_triton, ids, W, A, 45, mi, T, src, g)[1]
    second = _run(merge_vision_tokens_triton, ids, W, A, 45, mi, T, src, g)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_bad_shapes_name_the_argument():
    W, A = torch.zeros(10, 4), torch.zeros(2, 4)
    ids, mi = torch.zeros(5, dtype=torch.long), torch.tensor([1])
    with pytest.raises(ValueError, match="no image tokens"):
        merge_vision_tokens_triton(ids, W, A, 8, mi, None)
    with pytest.raises(ValueError, match="tokens must be"):
        merge_vision_tokens_triton(ids, W, A, 8, mi, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="media_source"):
        merge_vision_tokens_triton(ids, W, A, 8, mi, torch.zeros(1, 4), torch.tensor([0, 0]))


def test_dispatch_forced_triton(seed):
    register_backends()
    ids, W, A, mi, T, src = _inputs(37, 33, 50, 45, 3, 10, 5, True, torch.float32)
    dispatch.set_backend("merge_vision_tokens", "triton")
    try:
        assert dispatch.choose("merge_vision_tokens").name == "triton"
        out = merge_vision_tokens(ids, W, A, 45, mi, T, src)
    finally:
        dispatch.set_backend("merge_vision_tokens", None)
    assert torch.equal(out, merge_vision_tokens_reference(ids, W, A, 45, mi, T, src))


@pytest.mark.gpu
def test_torch_compile_over_merge(seed):
    """torch.compile (fullgraph) traces through the custom op, forward and backward, in bf16."""
    ids, W, A, mi, T, src = _inputs(300, 96, 120, 100, 3, 128, 64, True, torch.bfloat16)
    g = torch.randn(300, 96, device=DEVICE)

    def f(ids, W, A, mi, T, src):
        return (merge_vision_tokens_triton(ids, W, A, 100, mi, T, src).float() * g).sum()

    eager = f(ids, W, A, mi, T, src)
    eager.backward()
    eager_grads = [t.grad.clone() for t in (W, A, T)]
    for t in (W, A, T):
        t.grad = None
    compiled = torch.compile(f, fullgraph=True)(ids, W, A, mi, T, src)
    compiled.backward()
    assert abs(compiled.item() - eager.item()) <= 1e-5 * abs(eager.item()) + 1e-3  # sum order may differ
    for a, b in zip((W.grad, A.grad, T.grad), eager_grads):
        torch.testing.assert_close(a, b)
