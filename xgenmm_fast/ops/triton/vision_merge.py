"""Decoupled-vocabulary embedding lookup and image-token scatter in one kernel, as the
`xgenmm_triton::merge_vision_tokens_fwd` custom op — exactly `embedding.merge_vision_tokens_reference`.

Forward: a per-row source table `slot` (N,) int32 is built with two torch ops (−1 for a text row, else
the row of `tokens` the position shows: media_source[j], or j). Each program then fills a
(BLOCK_R, BLOCK_E) tile of embeds (N, E): a row reads tokens[slot] if slot ≥ 0, else weight[id] if
id < num_base, else add_weight[id − num_base], cast to weight's dtype. One launch, no intermediate
(N, E) tensor.

Backward (deterministic, no atomics): every row gets a key in one space,
    text row: its id (< num_base: a row of weight; num_base.. num_base+n_add−1: a row of add_weight),
    media row: num_base + n_add + slot (a row of tokens),
the keys are sorted (stable), and the program at sorted position i — if i starts a run of equal keys —
sums the incoming gradient rows of that run in fp32, in stream order, and stores the sum in the row of
d_weight / d_add_weight / d_tokens the key names. Rows nothing reads keep a zero gradient. A run is summed
by one program per column block, so a key repeated r times costs r dependent steps (a token that fills
much of the stream is the slow case; torch's embedding backward splits long runs instead).
Only ids and the slot table are saved for backward, never the parameters (ZeRO-3 frees them).
One difference from the reference, whose lookup skips add_weight when no id in the stream is an added
one: here add_weight then gets a zero gradient instead of none (knowing would need a device sync; DeepSpeed
fills missing gradients with zeros anyway).

Ids are not range-checked (as F.embedding on CUDA, which only asserts): they must lie in
[0, num_base + n_add). Media positions must be distinct (as for the reference's index_put).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..embedding import merge_vision_tokens_reference
from ._utils import interpreting, next_pow2, triton_custom_op, usable


@triton.jit
def _merge_fwd_kernel(IDS, SLOT, W, A, T, OUT, N, E, num_base, stride_w, stride_a, stride_t, stride_o,
                      HAS_TOKENS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    rm = rows < N
    m2 = rm[:, None] & (cols < E)[None, :]
    ids = tl.load(IDS + rows, mask=rm, other=0).to(tl.int64)
    slot = tl.load(SLOT + rows, mask=rm, other=-1).to(tl.int64)
    is_tok = slot >= 0
    is_add = (slot < 0) & (ids >= num_base)
    is_base = (slot < 0) & (ids < num_base)
    out_ty = OUT.dtype.element_ty
    v = tl.load(W + ids[:, None] * stride_w + cols[None, :], mask=m2 & is_base[:, None], other=0.0).to(out_ty)
    a = tl.load(A + (ids - num_base)[:, None] * stride_a + cols[None, :], mask=m2 & is_add[:, None], other=0.0)
    v = tl.where(is_add[:, None], a.to(out_ty), v)
    if HAS_TOKENS:
        t = tl.load(T + slot[:, None] * stride_t + cols[None, :], mask=m2 & is_tok[:, None], other=0.0)
        v = tl.where(is_tok[:, None], t.to(out_ty), v)
    tl.store(OUT + rows.to(tl.int64)[:, None] * stride_o + cols[None, :], v, mask=m2)


@triton.jit
def _merge_bwd_kernel(G, ORDER, KEYS, SEG_END, DW, DA, DT, E, num_base, tok_key0, stride_g, stride_dw,
                      stride_da, stride_dt, NEED_W: tl.constexpr, NEED_A: tl.constexpr, NEED_T: tl.constexpr,
                      BLOCK_E: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    cm = cols < E
    key = tl.load(KEYS + i)
    prev = tl.load(KEYS + i - 1, mask=i > 0, other=-1)  # keys are >= 0
    if key != prev:  # this program starts a run of equal keys: it owns that gradient row
        end = tl.load(SEG_END + i)
        acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for j in range(i, end):
            r = tl.load(ORDER + j)
            acc += tl.load(G + r * stride_g + cols, mask=cm, other=0.0).to(tl.float32)
        if key >= tok_key0:
            if NEED_T:
                tl.store(DT + (key - tok_key0) * stride_dt + cols, acc.to(DT.dtype.element_ty), mask=cm)
        elif key >= num_base:
            if NEED_A:
                tl.store(DA + (key - num_base) * stride_da + cols, acc.to(DA.dtype.element_ty), mask=cm)
        else:
            if NEED_W:
                tl.store(DW + key * stride_dw + cols, acc.to(DW.dtype.element_ty), mask=cm)


def _block_e(E: int) -> int:
    return min(1024, next_pow2(max(E, 1)))


def _num_warps(elements: int) -> int:
    return 1 if interpreting() else min(8, max(1, elements // 512))


@triton_custom_op("xgenmm_triton::merge_vision_tokens_fwd")
def merge_vision_tokens_fwd(input_ids: torch.Tensor, weight: torch.Tensor, add_weight: torch.Tensor, num_base: int,
                            media_index: torch.Tensor, tokens: torch.Tensor | None,
                            media_source: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (embeds (N, E) in weight's dtype, slot (N,) int32: row of tokens per position, −1 for text)."""
    N, E = input_ids.shape[0], weight.shape[1]
    slot = torch.full((N,), -1, dtype=torch.int32, device=input_ids.device)
    if media_index.numel():
        src = media_source if media_source is not None else torch.arange(
            media_index.shape[0], device=input_ids.device)
        slot = slot.index_put((media_index,), src.to(torch.int32))
    out = torch.empty((N, E), dtype=weight.dtype, device=weight.device)
    if N == 0 or E == 0:
        return out, slot
    has_tokens = tokens is not None and tokens.shape[0] > 0
    T = tokens if has_tokens else weight  # never read without tokens
    block_e = _block_e(E)
    block_r = max(1, min(next_pow2(N), 4096 // block_e))
    grid = (triton.cdiv(N, block_r), triton.cdiv(E, block_e))
    wrap_triton(_merge_fwd_kernel)[grid](input_ids, slot, weight, add_weight, T, out, N, E, num_base,
                                         weight.stride(0), add_weight.stride(0), T.stride(0), out.stride(0),
                                         HAS_TOKENS=has_tokens, BLOCK_R=block_r, BLOCK_E=block_e,
                                         num_warps=_num_warps(block_r * block_e))
    return out, slot


@triton_custom_op("xgenmm_triton::merge_vision_tokens_bwd")
def merge_vision_tokens_bwd(grad: torch.Tensor, input_ids: torch.Tensor, slot: torch.Tensor, num_base: int,
                            weight_rows: int, n_add: int, n_tokens: int, weight_dtype: torch.dtype,
                            add_dtype: torch.dtype, tokens_dtype: torch.dtype, need_w: bool, need_a: bool,
                            need_t: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad (N, E) -> (d_weight (weight_rows, E), d_add_weight (n_add, E), d_tokens (n_tokens, E)); a
    gradient that is not needed comes back empty."""
    N, E = grad.shape
    dev = grad.device
    dw = torch.zeros((weight_rows, E) if need_w else (0,), dtype=weight_dtype, device=dev)
    da = torch.zeros((n_add, E) if need_a else (0,), dtype=add_dtype, device=dev)
    dt = torch.zeros((n_tokens, E) if need_t else (0,), dtype=tokens_dtype, device=dev)
    if N == 0 or E == 0 or not (need_w or need_a or need_t):
        return dw, da, dt
    tok_key0 = num_base + n_add
    keys = torch.where(slot >= 0, slot.to(torch.int64) + tok_key0, input_ids.to(torch.int64))  # (N,)
    sorted_keys, order = torch.sort(keys, stable=True)
    seg_end = torch.searchsorted(sorted_keys, sorted_keys, right=True)  # (N,) end of each position's run
    block_e = _block_e(E)
    # a stand-in pointer for a gradient that is not stored (NEED_* false): never written
    wrap_triton(_merge_bwd_kernel)[(N, triton.cdiv(E, block_e))](
        grad, order, sorted_keys, seg_end, dw if need_w else grad, da if need_a else grad, dt if need_t else grad,
        E, num_base, tok_key0, grad.stride(0), dw.stride(0) if need_w else 0, da.stride(0) if need_a else 0,
        dt.stride(0) if need_t else 0, NEED_W=need_w, NEED_A=need_a, NEED_T=need_t, BLOCK_E=block_e,
        num_warps=_num_warps(block_e))
    return dw, da, dt


def _setup(ctx, inputs, output):
    input_ids, weight, add_weight, num_base, _, tokens, _ = inputs
    ctx.num_base = num_base
    ctx.shapes = (weight.shape[0], add_weight.shape[0], 0 if tokens is None else tokens.shape[0])
    ctx.dtypes = (weight.dtype, add_weight.dtype, weight.dtype if tokens is None else tokens.dtype)
    needs = ctx.needs_input_grad
    ctx.need = (bool(needs[1]), bool(needs[2]), tokens is not None and bool(needs[5]))
    ctx.save_for_backward(input_ids, output[1])


def _backward(ctx, grad, _dslot):
    input_ids, slot = ctx.saved_tensors
    need_w, need_a, need_t = ctx.need
    dw, da, dt = merge_vision_tokens_bwd(grad.contiguous(), input_ids, slot, ctx.num_base, *ctx.shapes, *ctx.dtypes,
                                         need_w, need_a, need_t)
    return (None, dw if need_w else None, da if need_a else None, None, None, dt if need_t else None, None)


merge_vision_tokens_fwd.register_autograd(_backward, setup_context=_setup)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def merge_vision_tokens_triton(input_ids, weight, add_weight, num_base, media_index, tokens,
                               media_source=None):
    """Same signature and result as `embedding.merge_vision_tokens_reference`."""
    if input_ids.dim() != 1 or weight.dim() != 2 or add_weight.dim() != 2 or add_weight.shape[1] != weight.shape[1]:
        raise ValueError(f"merge_vision_tokens: expected input_ids (N,), weight (V, E), add_weight (n_add, E); got "
                         f"{tuple(input_ids.shape)}, {tuple(weight.shape)}, {tuple(add_weight.shape)}")
    if media_index.numel() and tokens is None:
        raise ValueError(f"merge_vision_tokens: {media_index.numel()} media positions but no image tokens")
    if tokens is not None and (tokens.dim() != 2 or tokens.shape[1] != weight.shape[1]):
        raise ValueError(f"merge_vision_tokens: tokens must be (K, {weight.shape[1]}), got {tuple(tokens.shape)}")
    if media_source is not None and media_source.shape != media_index.shape:
        raise ValueError(f"merge_vision_tokens: media_source {tuple(media_source.shape)} must match "
                         f"media_index {tuple(media_index.shape)}")
    if media_index.numel() == 0:  # tokens get no gradient, as in the reference
        tokens, media_source = None, None
    if not usable(input_ids, weight, add_weight, tokens):
        return merge_vision_tokens_reference(input_ids, weight, add_weight, num_base, media_index, tokens,
                                             media_source)
    return merge_vision_tokens_fwd(input_ids.contiguous(), _rows(weight), _rows(add_weight), int(num_base),
                                   media_index, None if tokens is None else _rows(tokens), media_source)[0]
