"""The whole model on CUDA through the default dispatch (Triton kernels, the CUDA-preferred backends)
against the same model through the plain-PyTorch references: the packed training forward (loss and
gradients), the original-API padded forward, and greedy generation. Marked `gpu`: scripts/gpu_check.sh
runs them; without CUDA they are skipped visibly.

What they catch that the kernel tests cannot: a kernel fed the model's real layouts (strided qkv views,
packed cu_seqlens, GQA, the sliding window) or dtype mixes (bf16 activations, fp32 loss) wrongly.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from xgenmm_fast.data.packed import IGNORE_INDEX, StreamSample, pack_samples
from xgenmm_fast.ops import dispatch

from ._tiny import random_text, random_tiles, sizes_for_every_grid, tiny_model

pytestmark = pytest.mark.gpu

# Triton's fp32 dots use TF32 (~3e-4 per product); bf16 end to end over a few layers ~1e-2.
TOL = {torch.float32: 3e-3, torch.bfloat16: 5e-2}


@contextlib.contextmanager
def reference_ops():
    """Every op on its plain-PyTorch reference backend."""
    forced = [op for op in dispatch._REGISTRY if "reference" in dispatch._REGISTRY[op]]
    try:
        for op in forced:
            dispatch.set_backend(op, "reference")
        yield
    finally:
        for op in forced:
            dispatch.set_backend(op, None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _model(dtype):
    return tiny_model("tiny_wide", seed=31).to("cuda", dtype)


def _packed_batch(model, gen):
    sizes = list(sizes_for_every_grid(model.config.tile_size).values())
    samples = []
    for i, imgs in enumerate([[sizes[0]], [sizes[1], sizes[3]], [], [sizes[2]], [sizes[4]]]):
        ids = random_text(model, 40 + 9 * i + len(imgs), gen, n_images=len(imgs))
        labels = ids.clone()
        labels[ids == model.media_token_id] = IGNORE_INDEX
        labels[:5] = IGNORE_INDEX
        samples.append(StreamSample(ids.tolist(), labels.tolist(), [random_tiles(model, s, gen)[0] for s in imgs],
                                    list(imgs), sample_id=f"s{i}"))
    return pack_samples(samples, model.media_token_id, model.config.perceiver.num_latents).to("cuda")


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model.forward_packed(batch)["loss"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_training_forward_matches_reference_on_cuda(dtype):
    model = _model(dtype).train()
    batch = _packed_batch(model, torch.Generator().manual_seed(1))
    batch.pixel_values = batch.pixel_values.to(dtype)
    chosen = dispatch.report()
    assert chosen["varlen_attention"] != "reference" and chosen["rms_norm"] == "triton", chosen
    loss, grads = _loss_and_grads(model, batch)
    with reference_ops():
        ref_loss, ref_grads = _loss_and_grads(model, batch)
    assert abs(loss.item() - ref_loss.item()) <= TOL[dtype] * abs(ref_loss.item())
    # a parameter may get no gradient on one side and an all-zero one on the other (e.g. the added-vocab
    # table when no added id occurs): compare with zeros filled in
    for n in grads.keys() ^ ref_grads.keys():
        other = grads.get(n, ref_grads.get(n))
        assert other.abs().max() == 0, f"{n}: a gradient on one side only"
    worst = max(((_rel(grads[n], ref_grads[n]), n) for n in grads.keys() & ref_grads.keys() if ref_grads[n].norm() > 0))
    assert worst[0] < 3 * TOL[dtype], f"largest gradient error {worst[0]:.2e} in {worst[1]}"


def test_original_api_forward_matches_reference_on_cuda():
    model = _model(torch.float32)
    gen = torch.Generator().manual_seed(2)
    size = list(sizes_for_every_grid(model.config.tile_size).values())[2]
    lang_x = torch.stack([random_text(model, 30, gen, n_images=1), random_text(model, 30, gen, n_images=1)]).cuda()
    vision_x = [random_tiles(model, size, gen).cuda(), random_tiles(model, size, gen).cuda()]
    with torch.no_grad():
        out = model(vision_x=vision_x, lang_x=lang_x, image_size=[size, size], labels=lang_x)
        with reference_ops():
            ref = model(vision_x=vision_x, lang_x=lang_x, image_size=[size, size], labels=lang_x)
    assert _rel(out.loss, ref.loss) < TOL[torch.float32]


def test_greedy_generation_on_cuda_matches_reference_ops():
    model = _model(torch.float32)
    gen = torch.Generator().manual_seed(3)
    size = list(sizes_for_every_grid(model.config.tile_size).values())[0]
    lang_x = random_text(model, 25, gen, n_images=1)[None].cuda()
    vision_x = [random_tiles(model, size, gen).cuda()]
    kw = dict(max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        out = model.generate(vision_x, lang_x, image_size=[size], **kw)
        with reference_ops():
            ref = model.generate(vision_x, lang_x, image_size=[size], **kw)
    # random tiny weights give nearly flat logits; the first tokens are robust to TF32 rounding
    assert torch.equal(out[:, :4], ref[:, :4]), (out, ref)
