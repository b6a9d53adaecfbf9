"""The perceiver on packed visible media tokens equals its masked form (fp32, 1e-5), forward and backward.

`masked_forward` is the resampler as it ran before packing: LayerNorm and to_kv over all M media tokens
of every chunk, masked keys removed by the mask inside `perceiver_attention`. Same module, same weights.
"""
from __future__ import annotations

import pytest
import torch

from xgenmm_fast.config import PerceiverConfig
from xgenmm_fast.model import perceiver as perceiver_mod
from xgenmm_fast.model.perceiver import PerceiverResampler
from xgenmm_fast.ops import attention, dispatch

RTOL = 1e-5
DIM, OUT_DIM, M = 32, 24, 27


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def masked_forward(model: PerceiverResampler, media: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    latents = model.latents.to(media.dtype).expand(media.shape[0], -1, -1)
    for attn, ff in model.layers:
        xn, ln = attn.norm_media(media), attn.norm_latents(latents)
        q = attn._heads(attn.to_q(ln))
        k_media, v_media = (attn._heads(t) for t in attn.to_kv(xn).chunk(2, dim=-1))
        k_lat, v_lat = (attn._heads(t) for t in attn.to_kv(ln).chunk(2, dim=-1))
        out = attention.perceiver_attention(q, k_media, v_media, k_lat, v_lat, mask, attn.scale)
        latents = attn.to_out(out.transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)) + latents
        latents = ff(latents) + latents
    return model.projection(model.norm(latents))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PerceiverResampler(DIM, OUT_DIM, PerceiverConfig(depth=2, heads=3, dim_head=8, num_latents=5, ff_mult=2))
    with torch.no_grad():  # LayerNorms away from (1, 0), so that the folded norm_media affine is exercised
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith(".1.0.weight") or name.endswith(".1.0.bias"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
    return m


def _mask(kind: str, gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "random":  # chunk 0 fully masked, chunk 1 all visible, the rest random
        m = (torch.rand(6, M, generator=gen) > 0.5).float()
        m[0], m[1] = 0, 1
        return m
    # anyres padding (SPEC §3.4): a run of masked rows at both ends of the strip, some chunks untouched
    m = torch.ones(6, M)
    m[2, :9], m[3, -9:], m[4, :18] = 0, 0, 0
    m[5] = 0
    return m


def _loss_and_grads(model, fn, media, mask, dout, media_grad=True):
    model.zero_grad(set_to_none=True)
    media = media.detach().requires_grad_(media_grad)
    out = fn(model, media, mask)
    (out * dout).sum().backward()
    return out.detach(), [media.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("kind", ["random", "padding", "none"])
def test_varlen_equals_masked(model, kind):
    gen = torch.Generator().manual_seed(3)
    media, mask = torch.randn(6, M, DIM, generator=gen), _mask(kind, gen)
    dout = torch.randn(6, model.config.num_latents, OUT_DIM, generator=gen)
    out, grads = _loss_and_grads(model, lambda m, x, k: m(x, k), media, mask, dout)
    ref, ref_grads = _loss_and_grads(model, masked_forward, media, mask, dout)
    assert rel_err(out, ref) < RTOL
    names = ["media"] + [n for n, _ in model.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        assert g is not None and r is not None, name
        assert rel_err(g, r) < RTOL, name
    if mask is not None:  # masked tokens get no row, hence exactly zero gradient
        assert torch.all(grads[0][mask == 0] == 0)


@pytest.mark.parametrize("kind", ["padding", "none"])
def test_frozen_media_param_grads_equal_masked(model, kind):
    """Media without gradient (frozen vision encoder): the norm_media dγ/dβ then come from to_kv's weight
    gradient through the fold, not from an input gradient: they must still equal the masked form's."""
    gen = torch.Generator().manual_seed(6)
    media, mask = torch.randn(6, M, DIM, generator=gen) * 2 + 0.5, _mask(kind, gen)
    dout = torch.randn(6, model.config.num_latents, OUT_DIM, generator=gen)
    out, grads = _loss_and_grads(model, lambda m, x, k: m(x, k), media, mask, dout, media_grad=False)
    ref, ref_grads = _loss_and_grads(model, masked_forward, media, mask, dout, media_grad=False)
    assert grads[0] is None and ref_grads[0] is None
    assert rel_err(out, ref) < RTOL
    for (name, _), g, r in zip(model.named_parameters(), grads[1:], ref_grads[1:]):
        assert g is not None and r is not None, name
        assert rel_err(g, r) < RTOL, name


def test_media_kv_folds_norm_media_affine(model):
    """media_kv(x̂) == to_kv(norm_media(x)) for x̂ the affine-free LayerNorm of x (fp64: exact algebra)."""
    attn = model.layers[0][0].double()
    try:
        x = torch.randn(11, DIM, dtype=torch.float64) * 3 + 1
        x_hat = torch.nn.functional.layer_norm(x, (DIM,), eps=attn.norm_media.eps)
        k, v = attn.media_kv(x_hat)
        assert k.shape == v.shape == (11, attn.heads, attn.dim_head)
        assert rel_err(torch.cat([k.flatten(1), v.flatten(1)], 1), attn.to_kv(attn.norm_media(x))) < 1e-12
    finally:
        attn.float()


def test_only_visible_tokens_are_normed_and_projected_and_packed_once(model, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    media, mask = torch.randn(6, M, DIM, generator=gen), _mask("random", gen)
    kv_rows, packs, media_norms = [], [], []
    real_pack, real_kv = perceiver_mod.pack_visible_media, perceiver_mod.PerceiverAttention.media_kv
    real_ln = perceiver_mod.norms.layer_norm
    monkeypatch.setattr(perceiver_mod, "pack_visible_media", lambda *a: packs.append(1) or real_pack(*a))
    monkeypatch.setattr(perceiver_mod.PerceiverAttention, "media_kv",
                        lambda self, x: kv_rows.append(x.shape[0]) or real_kv(self, x))
    monkeypatch.setattr(perceiver_mod.norms, "layer_norm",
                        lambda x, w, b, eps: (media_norms.append(x.shape[0]) if w is None else None)
                        or real_ln(x, w, b, eps))
    with torch.no_grad():
        model(media, mask)
    assert kv_rows == [int(mask.sum())] * len(model.layers)
    assert media_norms == [int(mask.sum())]  # the media statistics: once per forward, not once per layer
    assert len(packs) == 1


def test_pack_visible_media_layout():
    media = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    packed = perceiver_mod.pack_visible_media(media, mask, 1e-5)
    assert packed.cu.tolist() == [0, 2, 2, 6] and packed.cu.dtype == torch.int32 and packed.max_len == 4
    expected = torch.cat([media[0, [0, 2]], media[2]])
    assert torch.allclose(packed.tokens, torch.nn.functional.layer_norm(expected, (2,), eps=1e-5))
    with pytest.raises(ValueError, match="media_mask must be"):
        perceiver_mod.pack_visible_media(media, mask[:, :3], 1e-5)


def test_triton_backend_in_the_model_matches_reference(model):
    """perceiver_attention_varlen forced to Triton (interpreter on CPU) inside the resampler, fwd + bwd."""
    if "triton" not in dispatch.available_backends("perceiver_attention_varlen"):
        pytest.skip("Triton backends not registered here")
    gen = torch.Generator().manual_seed(5)
    media, mask = torch.randn(6, M, DIM, generator=gen), _mask("random", gen)
    dout = torch.randn(6, model.config.num_latents, OUT_DIM, generator=gen)

    def fn(m, x, k):
        return m(x, k)

    ref, ref_grads = _loss_and_grads(model, fn, media, mask, dout)
    dispatch.set_backend("perceiver_attention_varlen", "triton")
    try:
        out, grads = _loss_and_grads(model, fn, media, mask, dout)
    finally:
        dispatch.set_backend("perceiver_attention_varlen", None)
    assert rel_err(out, ref) < RTOL
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < RTOL


def test_attention_block_copies_no_projection_sized_tensor(model):
    """With the Triton op (interpreter on CPU), a perceiver attention block's forward + backward makes no copy
    of a (tiles, latents, heads·dim_head) tensor: the op's output and its q / latent gradients come in the
    projections' layout, so the head-split views and the output reshape stay views (each such copy was a
    tensor of 40 x 128 x 1536 per layer at the released size). And it concatenates no key/value gradients:
    keys and values come from the halves of to_kv's weight, so only the two weight halves' gradients are
    concatenated (chunking one projection's output concatenated the media dK and dV, 22k x 3072 per layer at
    the released size)."""
    if "triton" not in dispatch.available_backends("perceiver_attention_varlen"):
        pytest.skip("Triton backends not registered here")
    from torch.utils._python_dispatch import TorchDispatchMode
    attn, cfg = model.layers[0][0], model.config
    gen = torch.Generator().manual_seed(9)
    media, mask = torch.randn(4, M, DIM, generator=gen), _mask("random", gen)[:4]
    visible = perceiver_mod.pack_visible_media(media, mask, cfg.layer_norm_eps)
    latents = torch.randn(4, cfg.num_latents, DIM, generator=gen, requires_grad=True)
    projection_sized = 4 * cfg.num_latents * cfg.heads * cfg.dim_head
    copies, cats = [], []

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("clone", "copy_", "_to_copy", "contiguous") and args[0].numel() == projection_sized:
                copies.append((name, tuple(args[0].shape), args[0].stride()))
            out = func(*args, **(kwargs or {}))
            if name == "cat":
                cats.append(tuple(out.shape))
            return out

    dispatch.set_backend("perceiver_attention_varlen", "triton")
    try:
        with Copies():
            attn(visible, latents).backward(torch.randn(4, cfg.num_latents, DIM, generator=gen))
    finally:
        dispatch.set_backend("perceiver_attention_varlen", None)
    assert not copies, copies
    kv_weight = tuple(attn.to_kv.weight.shape)
    assert cats and set(cats) <= {kv_weight, kv_weight[:1]}, cats  # the weight's and the folded bias's halves
