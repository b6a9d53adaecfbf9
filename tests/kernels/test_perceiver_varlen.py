"""Triton perceiver attention over packed (varlen) media keys vs a per-chunk loop reference (fp64)."""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.ops.attention import perceiver_attention_varlen_reference
from xgenmm_fast.ops.triton.perceiver_varlen import perceiver_attention_varlen_triton

from ._util import (BACKWARD_SWITCHES, DEVICE, DTYPES, TOL, TOL_ATTN_BWD, VARIANT, VARIANT_DTYPES, as64,
                    check, leaf)

GRAD_FLOOR = 0.1  # as in test_perceiver_attention.py: some gradients are exactly zero in exact arithmetic


def loop_reference(q, k_media, v_media, cu_media, k_latent, v_latent, scale):
    """Chunk by chunk: keys = [its packed media rows; its latents], plain softmax. Independent of the op's
    pad-and-mask reference."""
    bounds = cu_media.tolist()
    outs = []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        k = torch.cat([k_media[s:e].transpose(0, 1), k_latent[n]], dim=1)  # (H, e - s + L, D)
        v = torch.cat([v_media[s:e].transpose(0, 1), v_latent[n]], dim=1)
        outs.append(torch.softmax(q[n] @ k.transpose(-1, -2) * scale, dim=-1) @ v)
    return torch.stack(outs)


def _cu(counts) -> torch.Tensor:
    return torch.tensor([0] + list(counts), dtype=torch.long).cumsum(0).to(torch.int32)


def _inputs(N, H, L, T, D, dtype):
    """Strided views: q/k_latent/v_latent (N, L, H, D) -> (N, H, L, D), as the model makes them; k/v media the
    two halves of one (T, 2·H·D) tensor, viewed (T, H, D) (the model's are two contiguous projections)."""
    q, kl, vl = (leaf(torch.randn(N, L, H, D), dtype).transpose(1, 2) for _ in range(3))
    kv = leaf(torch.randn(T, 2 * H * D), dtype)
    km, vm = (t.view(T, H, D) for t in kv.chunk(2, dim=-1))
    for t in (q, kl, vl, km, vm):
        t.retain_grad()
    return q, km, vm, kl, vl


# (heads H, latents L, head dim D, media key count per chunk)
CASES = [
    (3, 5, 24, [0, 1, 17, 5]),   # ragged: an empty chunk and a single-key chunk
    (2, 16, 96, [40, 0, 33]),    # the released head dim (96, not a power of two); several key blocks
    (1, 1, 16, [1]),             # one latent, one media key
    (2, 3, 32, [0, 0]),          # no media key anywhere: latents only
    (5, 7, 40, "random"),        # random counts from the test's seed (0 and 1 forced in)
    (2, 16, 32, [32, 16, 48]),   # key counts at tile multiples: full tiles only (no masked tile at all)
]


# each case with the padded head dim, and those whose head dim is not a power of two also split in two
# tile parts (SPLIT_HEAD_DIM: 24 = 16 + 16, 96 = 64 + 32, 40 = 32 + 16)
SPLIT_CASES = [(*c, False) for c in CASES] + [pytest.param(*c, True, marks=VARIANT)
                                                 for c in CASES if c[2] & (c[2] - 1)]


@pytest.mark.parametrize("H,L,D,counts,split", SPLIT_CASES)
@pytest.mark.parametrize("bound", ["exact", "padded"])  # max_media computed by the op / a larger upper bound
@pytest.mark.parametrize("dtype", DTYPES)
def test_perceiver_varlen_matches_loop_reference(H, L, D, counts, split, bound, dtype, monkeypatch, seed):
    _check_varlen(H, L, D, counts, split, bound, dtype, monkeypatch)


# the backward's off-by-default switches (_util.BACKWARD_SWITCHES), alone and together: every case with the
# padded head dim and the exact bound, those with a non-power-of-two head dim also split, with the padded bound
SWITCH_CASES = [(*c, False, "exact") for c in CASES] + [(*c, True, "padded") for c in CASES if c[2] & (c[2] - 1)]


@pytest.mark.parametrize("switch", BACKWARD_SWITCHES, ids="+".join)
@pytest.mark.parametrize("H,L,D,counts,split,bound", SWITCH_CASES)
@pytest.mark.parametrize("dtype", VARIANT_DTYPES)
@VARIANT
def test_perceiver_varlen_backward_switch(switch, H, L, D, counts, split, bound, dtype, monkeypatch, seed):
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    for name in switch:
        monkeypatch.setattr(pa, name, True)
    _check_varlen(H, L, D, counts, split, bound, dtype, monkeypatch)


def _check_varlen(H, L, D, counts, split, bound, dtype, monkeypatch):
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    monkeypatch.setattr(pa, "SPLIT_HEAD_DIM", split)
    assert (pa._cfg(D, "fwd")["BLOCK_DB"] > 0) == split
    if counts == "random":
        counts = [0, 1] + torch.randint(0, 37, (3,)).tolist()
    N, T = len(counts), sum(counts)
    cu = _cu(counts).to(DEVICE)
    q, km, vm, kl, vl = _inputs(N, H, L, T, D, dtype)
    scale = D ** -0.5
    max_media = None if bound == "exact" else max(counts) + 9
    o = perceiver_attention_varlen_triton(q, km, vm, cu, kl, vl, scale, max_media=max_media)
    do = torch.randn(o.shape).to(DEVICE, dtype)
    o.backward(do)
    ins64 = as64(q, km, vm, kl, vl)
    ref = loop_reference(ins64[0], ins64[1], ins64[2], cu.cpu(), ins64[3], ins64[4], scale)
    ref.backward(do.double().cpu())
    check("perceiver_varlen_fwd", [o], [ref], TOL[dtype])
    check("perceiver_varlen_bwd", [t.grad for t in (q, km, vm, kl, vl)], [t.grad for t in ins64],
          TOL_ATTN_BWD[dtype], GRAD_FLOOR)


def test_pad_and_mask_reference_matches_loop(seed):
    counts = [0, 3, 1, 12, 0, 7]
    N, H, L, D, T = len(counts), 3, 4, 8, sum(counts)
    cu = _cu(counts)
    q, km, vm, kl, vl = (t.detach().double().requires_grad_() for t in _inputs(N, H, L, T, D, torch.float32))
    do = torch.randn(N, H, L, D, dtype=torch.float64)
    outs = []
    for fn in (perceiver_attention_varlen_reference, loop_reference):
        o = fn(q.cpu(), km.cpu(), vm.cpu(), cu, kl.cpu(), vl.cpu(), D ** -0.5)
        outs.append([o] + list(torch.autograd.grad(o, (q, km, vm, kl, vl), do)))
    check("reference", outs[0], outs[1], 1e-12)


def test_varlen_equals_masked_kernel_on_the_visible_keys(seed):
    """The packed op over the visible keys = the masked op over all keys (what the model did before)."""
    from xgenmm_fast.ops.triton.perceiver_attention import perceiver_attention_triton
    N, H, L, M, D = 3, 2, 6, 20, 16
    mask = torch.rand(N, M, device=DEVICE) > 0.5
    mask[0] = False
    mask[1] = True
    q, kl, vl = (torch.randn(N, H, L, D, device=DEVICE) for _ in range(3))
    km, vm = (torch.randn(N, H, M, D, device=DEVICE) for _ in range(2))
    masked = perceiver_attention_triton(q, km, vm, kl, vl, mask.int(), D ** -0.5)
    packed = [x.transpose(1, 2)[mask] for x in (km, vm)]  # (T, H, D) in chunk order
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).int()
    varlen = perceiver_attention_varlen_triton(q, packed[0], packed[1], cu, kl, vl, D ** -0.5, max_media=M)
    check("varlen_vs_masked", [varlen], [masked], TOL[torch.float32])


def test_bad_shapes_name_the_argument():
    q = torch.randn(2, 2, 3, 8, device=DEVICE)
    km = torch.randn(5, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="cu_media"):
        perceiver_attention_varlen_triton(q, km, km, torch.tensor([0, 5], dtype=torch.int32), q, q, 0.3)
    with pytest.raises(ValueError, match="total_media, H, D"):
        perceiver_attention_varlen_triton(q, km[:, :1], km[:, :1], torch.tensor([0, 2, 5]), q, q, 0.3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_released_sizes_anyres_counts(dtype, seed):
    """16 heads × 96, 128 latents, 729-token chunks with anyres-like visible counts (full, strips, none)."""
    counts = [729, 729, 486, 729, 405, 0]
    N, H, L, D, T = len(counts), 16, 128, 96, sum(counts)
    cu = _cu(counts).to(DEVICE)
    q, km, vm, kl, vl = _inputs(N, H, L, T, D, dtype)
    o = perceiver_attention_varlen_triton(q, km, vm, cu, kl, vl, D ** -0.5, max_media=729)
    do = torch.randn(o.shape).to(DEVICE, dtype)
    o.backward(do)
    ins64 = as64(q, km, vm, kl, vl)
    ref = loop_reference(ins64[0], ins64[1], ins64[2], cu.cpu(), ins64[3], ins64[4], D ** -0.5)
    ref.backward(do.double().cpu())
    tol = {torch.float32: 3e-3, torch.bfloat16: 3e-2}[dtype]  # fp32 dots run as TF32 on the GPU
    check("released_fwd", [o], [ref], tol)
    check("released_bwd", [t.grad for t in (q, km, vm, kl, vl)], [t.grad for t in ins64], tol, GRAD_FLOOR)


@pytest.mark.gpu
def test_torch_compile_over_perceiver_varlen(seed):
    counts = [64, 0, 17]
    N, H, L, D, T = len(counts), 4, 32, 96, sum(counts)
    cu = _cu(counts).to("cuda")

    def f(q, km, vm, kl, vl):
        return perceiver_attention_varlen_triton(q, km, vm, cu, kl, vl, D ** -0.5, max_media=64).float().sum()

    args = _inputs(N, H, L, T, D, torch.bfloat16)
    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True)(*args)
    compiled.backward()
    assert abs(eager.item() - compiled.item()) <= 1e-3 * abs(eager.item()) + 1e-2


def _check_fp32_vs_loop(counts, H, L, D):
    """The varlen op's forward and gradients against the per-tile loop reference (fp32 inputs, fp64 reference,
    interpreter); returns the inputs, the output gradient, the fp64 leaves and the reference output."""
    N, T = len(counts), sum(counts)
    cu = _cu(counts)
    q, km, vm, kl, vl = _inputs(N, H, L, T, D, torch.float32)
    o = perceiver_attention_varlen_triton(q, km, vm, cu, kl, vl, D ** -0.5)
    do = torch.randn(o.shape)
    o.backward(do)
    ins64 = as64(q, km, vm, kl, vl)
    ref = loop_reference(ins64[0], ins64[1], ins64[2], cu, ins64[3], ins64[4], D ** -0.5)
    ref.backward(do.double())
    check("perceiver_varlen_fwd", [o], [ref], TOL[torch.float32])
    check("perceiver_varlen_bwd", [t.grad for t in (q, km, vm, kl, vl)], [t.grad for t in ins64],
          TOL_ATTN_BWD[torch.float32], GRAD_FLOOR)
    return q, km, vm, kl, vl, do, ins64, ref


@pytest.mark.parametrize("blocks,split", [((32, 16), False), ((16, 32), False), ((32, 16), True)])
def test_unequal_tiles_varlen_and_masked(blocks, split, monkeypatch, seed):
    """Unequal query and key tiles (the GPU's dQ tiles are 64 x 32) under the interpreter, fp32."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only")
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    from xgenmm_fast.ops.triton.perceiver_attention import perceiver_attention_triton
    monkeypatch.setattr(pa, "INTERPRET_BLOCKS", blocks)
    monkeypatch.setattr(pa, "SPLIT_HEAD_DIM", split)
    counts = [45, 0, 33, 64]
    N, H, L, D = len(counts), 2, 40, 24
    cu = _cu(counts)
    q, km, vm, kl, vl, do, ins64, ref = _check_fp32_vs_loop(counts, H, L, D)
    # the masked kernel on the same keys laid out (N, H, M, D) with a mask
    M = max(counts)
    mask = torch.zeros(N, M, dtype=torch.long)
    km_p, vm_p = (torch.zeros(N, H, M, D) for _ in range(2))
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        mask[n, : e - s] = 1
        km_p[n, :, : e - s] = km.detach()[s:e].transpose(0, 1)
        vm_p[n, :, : e - s] = vm.detach()[s:e].transpose(0, 1)
    qm, klm, vlm = (t.detach().clone().requires_grad_() for t in (q, kl, vl))
    om = perceiver_attention_triton(qm, km_p.requires_grad_(), vm_p.requires_grad_(), klm, vlm, mask, D ** -0.5)
    om.backward(do)
    check("perceiver_masked_fwd", [om], [ref], TOL[torch.float32])
    check("perceiver_masked_bwd", [qm.grad, klm.grad, vlm.grad], [ins64[0].grad, ins64[3].grad, ins64[4].grad],
          TOL_ATTN_BWD[torch.float32], GRAD_FLOOR)


@pytest.mark.parametrize("switch", [(), *BACKWARD_SWITCHES], ids=lambda s: "+".join(s) or "defaults")
@pytest.mark.parametrize("tiles", [{"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 64), "dkdv_atomic_dq": (16, 32)},
                                   {"fwd": (64, 16), "dkdv": (16, 64), "dq": (32, 16), "dkdv_atomic_dq": (32, 16)}])
def test_tiles_per_kernel(tiles, switch, monkeypatch, seed):
    """Each kernel with tiles of its own, as on the GPU (INTERPRET_BLOCKS gives all the same), fp32; with each
    backward switch (ATOMIC_DQ's dK/dV kernel has tiles of its own, "dkdv_atomic_dq")."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tile sizes only")
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    from xgenmm_fast.ops.triton import perceiver_varlen as pv
    for name in switch:
        monkeypatch.setattr(pa, name, True)
    default = pa._cfg
    asked = set()

    def cfg(d, kernel):
        asked.add(kernel)
        c = default(d, kernel)
        c.update(BLOCK_M=tiles[kernel][0], BLOCK_N=tiles[kernel][1])
        return c
    monkeypatch.setattr(pa, "_cfg", cfg)
    monkeypatch.setattr(pv, "_cfg", cfg)  # imported by name there
    _check_fp32_vs_loop([45, 0, 33, 70], 2, 40, 24)
    atomic = "ATOMIC_DQ" in switch  # its dK/dV kernel (own tiles) ran, and no dQ kernel
    assert asked == ({"fwd", "dkdv_atomic_dq"} if atomic else {"fwd", "dkdv", "dq"})


@pytest.mark.parametrize("atomic_dq", [False, True])
@pytest.mark.parametrize("transposed", [True, False])
def test_out_and_latent_grads_take_q_layout(transposed, atomic_dq, monkeypatch, seed):
    """out, dQ and the latent dK/dV come back in q's memory layout: for the model's (tile, head, latent) views
    of (tile, latent, head·D) projections that makes out.transpose(1, 2) contiguous (the model's reshape is a
    view) and the gradients of the views need no copy; a contiguous q gives contiguous ones. (The backward op
    is called directly: autograd's retained gradients are copies in its own layout.)"""
    from xgenmm_fast.ops.triton import perceiver_attention as pa
    from xgenmm_fast.ops.triton.perceiver_varlen import perceiver_varlen_bwd, perceiver_varlen_fwd
    monkeypatch.setattr(pa, "ATOMIC_DQ", atomic_dq)  # (then dQ is summed in fp32 and rounded into q's layout)
    N, H, L, D, counts = 2, 3, 5, 16, [4, 7]
    cu = _cu(counts).to(DEVICE)
    q, km, vm, kl, vl = (t.detach() for t in _inputs(N, H, L, sum(counts), D, torch.float32))
    if not transposed:
        q, kl, vl = (t.contiguous() for t in (q, kl, vl))
    o, lse = perceiver_varlen_fwd(q, km, vm, cu, kl, vl, max(counts), D ** -0.5)
    assert o.stride() == q.stride() and o.transpose(1, 2).is_contiguous() == transposed
    grads = perceiver_varlen_bwd(torch.randn(o.shape, device=DEVICE), q, km, vm, cu, kl, vl, max(counts), o, lse,
                                 D ** -0.5)
    dq, dkm, dvm, dkl, dvl = grads
    assert dq.stride() == dkl.stride() == dvl.stride() == q.stride()
    assert dkm.is_contiguous() and dvm.is_contiguous() and dkm.shape == km.shape
    assert not any(torch.isnan(g).any() for g in grads)  # every element written (buffers start as NaN here)
