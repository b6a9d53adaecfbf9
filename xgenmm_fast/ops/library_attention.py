"""Attention backends from libraries, used when installed: the flash-attn package and torch's own
`torch.nn.attention.varlen.varlen_attn` (a flash-attention build inside PyTorch, CUDA only).

Both are registered for `varlen_attention` (flash-attn also for `decode_attention`) ahead of the
per-sequence SDPA fallback but behind our Triton kernels (registered later, preferred on CUDA): the
default order on a GPU is triton, flash_attn, torch_varlen, sdpa, reference. Force one with
`XGENMM_OPS=varlen_attention=flash_attn` (or `torch_varlen`) or `ops.set_backend`. Each is available only when its import works and CUDA is
present; calls it cannot take (CPU tensors, fp32, a head dim that is not a multiple of 8 or above 256, and
with torch's varlen_attn without a window argument (torch 2.11) a window that matters, i.e. a sequence
longer than it) go to our Triton kernel on CUDA, else to SDPA once per sequence.

Window convention: our ops follow HF (a key j is visible to query i iff i - j < sliding_window);
flash-style (left, right) windows admit j in [i - left, i + right], so sliding_window W is (W - 1, 0).
"""
from __future__ import annotations

import functools

import torch


def _cuda() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def _flash_attn_module():
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    except Exception:
        return None
    return flash_attn_varlen_func, flash_attn_with_kvcache


@functools.lru_cache(maxsize=None)
def _torch_varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return None
    return varlen_attn


@functools.lru_cache(maxsize=None)
def _accepts(fn, arg: str) -> bool:
    """Does `fn` take the keyword `arg`? (torch 2.11's varlen_attn has neither window_size nor enable_gqa.)"""
    import inspect
    try:
        return arg in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def flash_attn_available() -> bool:
    return _flash_attn_module() is not None and _cuda()


def torch_varlen_available() -> bool:
    return _torch_varlen_fn() is not None and _cuda()


def flash_window(sliding_window: int | None, causal: bool) -> tuple[int, int]:
    """Our (HF) sliding window -> flash-style (left, right); (-1, -1) means unlimited."""
    if sliding_window is None:
        return (-1, 0) if causal else (-1, -1)
    if sliding_window <= 0:
        raise ValueError(f"sliding_window must be positive or None, got {sliding_window}")
    return (int(sliding_window) - 1, 0 if causal else -1)  # HF's window only bounds the look-back


def _takes(*tensors: torch.Tensor) -> bool:
    """Can the flash kernels take these? CUDA, fp16/bf16, a head dim that is a multiple of 8 up to 256
    (FlashAttention-2's limits; torch's varlen_attn does not pad it)."""
    d = tensors[0].shape[-1]
    return d % 8 == 0 and d <= 256 and all(t.is_cuda and t.dtype in (torch.float16, torch.bfloat16)
                                           for t in tensors)


def _max_seqlen(cu_seqlens: torch.Tensor) -> int:
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0


def varlen_attention_flash_attn(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool = True, sliding_window=None,
                                scale: float | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """`varlen_attention` through flash-attn's `flash_attn_varlen_func` (grouped-query native)."""
    if not _takes(q, k, v) or q.shape[0] == 0:
        return _without_library(q, k, v, cu_seqlens, causal, sliding_window, scale, max_seqlen)
    varlen_func, _ = _flash_attn_module()
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    m = _max_seqlen(cu) if max_seqlen is None else int(max_seqlen)
    return varlen_func(q, k, v, cu, cu, m, m, dropout_p=0.0, softmax_scale=scale, causal=causal,
                       window_size=flash_window(sliding_window, causal))


def decode_attention_flash_attn(q, k_cache, v_cache, cache_seqlens: torch.Tensor, *, sliding_window=None,
                                scale: float | None = None) -> torch.Tensor:
    """`decode_attention` through flash-attn's `flash_attn_with_kvcache`: our caches are (B, Hkv, Tmax, D),
    flash-attn reads (B, Tmax, Hkv, D) views of them; causal alignment is bottom-right, as ours."""
    if not _takes(q, k_cache, v_cache) or q.shape[0] == 0 or q.shape[2] == 0:
        from . import dispatch
        from .attention import decode_attention_reference
        # our Triton decode kernel on CUDA (it takes any head dim and fp32), else the reference
        use_triton = q.is_cuda and "triton" in dispatch.available_backends("decode_attention")
        fn = dispatch.backend_for("decode_attention", "triton") if use_triton else decode_attention_reference
        return fn(q, k_cache, v_cache, cache_seqlens, sliding_window=sliding_window, scale=scale)
    _, with_kvcache = _flash_attn_module()
    out = with_kvcache(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                       cache_seqlens=cache_seqlens.to(device=q.device, dtype=torch.int32), softmax_scale=scale,
                       causal=True, window_size=flash_window(sliding_window, True))
    return out.transpose(1, 2)


def varlen_attention_torch_varlen(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool = True, sliding_window=None,
                                  scale: float | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """`varlen_attention` through `torch.nn.attention.varlen.varlen_attn` (PyTorch's flash kernel)."""
    if not _takes(q, k, v) or q.shape[0] == 0:
        return _without_library(q, k, v, cu_seqlens, causal, sliding_window, scale, max_seqlen)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    m = _max_seqlen(cu) if max_seqlen is None else int(max_seqlen)
    fn = _torch_varlen_fn()
    kwargs = {}
    if _accepts(fn, "window_size"):
        kwargs["window_size"] = flash_window(sliding_window, causal)
    else:  # an older varlen_attn (torch 2.11): no window; causal through is_causal, if at all
        window_matters = sliding_window is not None and sliding_window < m
        if window_matters or (causal and not _accepts(fn, "is_causal")):
            return _without_library(q, k, v, cu_seqlens, causal, sliding_window, scale, m)
        if _accepts(fn, "is_causal"):
            kwargs["is_causal"] = causal
    if q.shape[1] != k.shape[1]:
        if _accepts(fn, "enable_gqa"):
            kwargs["enable_gqa"] = True
        else:  # repeat the shared K/V heads for each query group
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return fn(q, k, v, cu, cu, m, m, scale=scale, **kwargs)


def _without_library(q, k, v, cu_seqlens, causal, sliding_window, scale, max_seqlen):
    """A call the library cannot take (CPU tensors, fp32, a head dim that is not a multiple of 8 or above
    256, an empty pack; torch 2.11's varlen_attn and a window shorter than the longest sequence): our
    Triton kernel on CUDA when it is registered, else SDPA once per sequence."""
    from . import dispatch
    from .attention import varlen_attention_sdpa
    if q.is_cuda and "triton" in dispatch.available_backends("varlen_attention"):
        return dispatch.backend_for("varlen_attention", "triton")(
            q, k, v, cu_seqlens, causal=causal, sliding_window=sliding_window, scale=scale, max_seqlen=max_seqlen)
    return varlen_attention_sdpa(q, k, v, cu_seqlens, causal=causal, sliding_window=sliding_window, scale=scale)


def register() -> None:
    from . import dispatch
    # prefer=True puts each ahead of what is registered so far (sdpa, reference); flash_attn last = first
    dispatch.register("varlen_attention", "torch_varlen", varlen_attention_torch_varlen,
                      available=torch_varlen_available, prefer=True)
    dispatch.register("varlen_attention", "flash_attn", varlen_attention_flash_attn, available=flash_attn_available,
                      prefer=True)
    dispatch.register("decode_attention", "flash_attn", decode_attention_flash_attn, available=flash_attn_available,
                      prefer=True)
