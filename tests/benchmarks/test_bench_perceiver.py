"""bench_perceiver (the whole resampler, ours vs the original algorithm): its --smoke run writes the common
format, and its baseline (benchmarks/_original_perceiver.py) computes the same function as our
PerceiverResampler, forward and gradients, so that its speedups compare like with like. CPU, seconds."""
from __future__ import annotations


import pytest
import torch

from ._bench import load

common = load("_common")
bench = load("bench_perceiver")
original = load("_original_perceiver")

ROWS = ("perceiver_module_fwd_bwd/frozen_vision", "perceiver_module_fwd_bwd/vision_grad", "perceiver_module_fwd")


def test_smoke_writes_the_rows_in_the_common_format(tmp_path):
    from xgenmm_fast.ops import dispatch
    before = {op: dispatch.choose(op).name for op in dispatch.report()}
    out = tmp_path / "perc.json"
    assert bench.main(["--smoke", "--profile", "--out", str(out)]) == 0
    assert {op: dispatch.choose(op).name for op in dispatch.report()} == before  # forcing undone
    doc = common.load(str(out))  # validates the schema and every speedup against its sides
    assert set(doc["runs"]) == {"bench_perceiver"}
    prof = doc["runs"]["bench_perceiver"]["profile_ours_fwd_bwd_frozen_vision"]
    assert prof["ms_per_call"] > 0 and prof["top"] and "matmul" in prof["groups"]
    assert abs(sum(g["frac"] for g in prof["groups"].values()) - 1) < 0.01
    rows = {r["name"]: r for r in doc["results"]}
    assert set(rows) == set(ROWS)
    for r in rows.values():
        assert r["benchmark"] == "bench_perceiver" and "error" not in r
        assert r["higher_is_better"] is False
        for side in ("ours", "baseline"):
            m = r[side]
            assert m["unit"] == "ms" and m["value"] > 0 and m["impl"]
            assert m["rate"]["unit"] == "tiles/s" and m["rate"]["value"] > 0
        assert r["speedup"] > 0
        assert r["peak_memory_gb"]["how"] and r["peak_memory_gb"]["ours"] is not None
        c = r["config"]
        assert (c["size"], c["device"], c["dtype"], c["smoke"]) == ("tiny", "cpu", "float32", True)
        assert c["tiles"] == c["images"] * 5 and 0 < float(c["masked"]) < 1
        assert c["ops"] == "reference (forced on CPU)"  # never the Triton interpreter (TRITON_INTERPRET=1 here)
        assert c["ops_backends"] and set(c["ops_backends"].values()) == {"reference"}
        assert "perceiver_attention_varlen" in c["ops_backends"]
        assert r["extra"]["max_rel_diff_fwd"] < 1e-4
        assert r["extra"]["fwd_gflop"]["ours"] < r["extra"]["fwd_gflop"]["baseline"]  # masked tokens skipped
    assert rows["perceiver_module_fwd_bwd/vision_grad"]["extra"]["media_requires_grad"] is True
    assert rows["perceiver_module_fwd_bwd/frozen_vision"]["extra"]["media_requires_grad"] is False


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("media_grad", [False, True], ids=["frozen_vision", "vision_grad"])
def test_original_perceive_equals_our_resampler(media_grad):
    """Same function: the forward and every perceiver parameter's gradient (and the media's) to ~1e-4."""
    resampler = bench.build_resampler("tiny", "cpu", torch.float32, seed=3)
    media, mask, cot = bench.make_inputs("tiny", 2, "cpu", torch.float32, seed=4)
    g = torch.Generator().manual_seed(5)
    mask = mask * (torch.rand(mask.shape, generator=g) > 0.2)  # a few more masked tokens, anywhere
    assert 0 < mask.sum() < mask.numel()
    with torch.no_grad():  # masked tokens must not matter: make them large and different
        media[mask == 0] = 50 * torch.randn(int((mask == 0).sum()), media.shape[-1], generator=g)
    media.requires_grad_(media_grad)
    params = dict(resampler.named_parameters())
    grads = {}
    with bench.reference_backends(True):
        for side, fn in (("ours", lambda: resampler(media, mask)),
                         ("baseline", lambda: original.original_perceive(resampler, media, mask))):
            for p in params.values():
                p.grad = None
            media.grad = None
            out = fn()
            out.backward(cot)
            grads[side] = {"out": out.detach().clone(), **{k: p.grad.clone() for k, p in params.items()}}
            if media_grad:
                grads[side]["media"] = media.grad.clone()
    ours, base = grads["ours"], grads["baseline"]
    assert set(ours) == set(base) and len(ours) == len(params) + 1 + media_grad
    errs = {k: _rel(ours[k], base[k]) for k in base}
    assert max(errs.values()) < 1e-4, {k: e for k, e in errs.items() if e >= 1e-4}
    if media_grad:
        assert (base["media"][mask == 0] == 0).all() and (ours["media"][mask == 0] == 0).all()


def test_original_perceive_without_mask_is_all_visible():
    resampler = bench.build_resampler("tiny", "cpu", torch.float32)
    media, _, _ = bench.make_inputs("tiny", 1, "cpu", torch.float32)
    with torch.no_grad(), bench.reference_backends(True):
        a = original.original_perceive(resampler, media, None)
        b = original.original_perceive(resampler, media, torch.ones(media.shape[:2]))
        c = resampler(media, None)
    assert torch.equal(a, b) and _rel(c, a) < 1e-4


def test_anyres_mask_and_gflop():
    mask = bench.anyres_mask(10, 729, "cpu")
    assert mask[0].all() and mask[5].all()  # base tiles
    assert (mask[1:5].sum(1) == 729 - 2 * 109).all() and (mask[6:].sum(1) == 729 - 2 * 109).all()
    assert f"{1 - mask.float().mean():.2f}" == "0.24"
    cfg = bench.sizes("released")["perceiver"]
    full = bench.forward_gflop(cfg, 1152, 3072, [729] * 5)
    assert bench.forward_gflop(cfg, 1152, 3072, mask[:5].sum(1).tolist()) < full
