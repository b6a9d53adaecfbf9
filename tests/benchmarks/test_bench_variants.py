"""bench_sft_step's extra variants (baseline + Liger, ours under DeepSpeed ZeRO-2) and bench_kernels' choice
of the attention library row. CPU only and quick: the rows are built from made-up timings; the Liger
pipeline is built (not run: Liger's RMSNorm/SwiGLU kernels fail under the Triton interpreter; liger-kernel is
a test dependency, setup.py's `test` extra) and its fused linear CE checked; the ZeRO-2 step runs once, end to
end, in a subprocess (about 10 s; DeepSpeed's CPU accelerator JIT-builds its shared-memory comm op on its
first use on a machine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ._bench import BENCH, ROOT, load

common = load("_common")
sft = load("bench_sft_step")
kernels = load("bench_kernels")

CONFIG = {"size": "tiny", "device": "cpu", "samples_per_step": 8}


def _doc(rows):
    doc = common.document(rows, "bench_sft_step", argv=[])
    common.validate(doc)  # speedups follow from the sides, skipped rows carry their reason
    return {r["name"]: r for r in doc["results"]}


def test_variant_rows_compare_with_the_plain_baseline():
    times = {"ours": 1.0, "baseline": 4.0}
    peaks = {"ours": 1.0, "baseline": 8.0}
    status = {"baseline_liger": {"time": 2.0, "peak_gb": 4.0, "extra": {"liger_kernel": "0.8.5"}},
              "ours_zero2": {"time": 1.25, "peak_gb": 2.0, "extra": {"deepspeed": "0.19.8"}}}
    rows = _doc(sft.variant_rows(CONFIG, 8, 800, times, peaks, "how", status))
    liger = rows["sft_step/baseline_liger/samples_per_s"]
    assert liger["ours"] == {"value": 4.0, "unit": "samples/s", "impl": "baseline_liger"}
    assert liger["baseline"]["impl"] == "baseline" and liger["speedup"] == 2.0  # vs the plain baseline
    assert liger["config"]["liger_ops"] == sft.LIGER_OPS and liger["extra"]["liger_kernel"] == "0.8.5"
    assert rows["sft_step/ours_zero2/lm_tokens_per_s"]["speedup"] == 3.2
    assert rows["sft_step/ours_zero2/peak_memory"]["speedup"] == 4.0  # 8 GB / 2 GB, lower is better
    assert rows["sft_step/ours_zero2/samples_per_s"]["config"]["zero_stage"] == 2
    vs = rows["sft_step/samples_per_s/vs_baseline_liger"]  # ours vs the Liger baseline
    assert (vs["ours"]["impl"], vs["baseline"]["impl"], vs["speedup"]) == ("ours", "baseline_liger", 2.0)
    assert rows["sft_step/peak_memory/vs_baseline_liger"]["speedup"] == 4.0
    assert len(rows) == 8


def test_variant_rows_say_why_a_variant_did_not_run():
    status = {"baseline_liger": {"skipped": "needs CUDA"}, "ours_zero2": {"error": "OutOfMemoryError: ..."}}
    rows = _doc(sft.variant_rows(CONFIG, 8, 800, {"ours": 1.0, "baseline": 2.0}, {"ours": 1.0, "baseline": 2.0},
                                 "how", status))
    assert set(rows) == {"sft_step/baseline_liger/samples_per_s", "sft_step/ours_zero2/samples_per_s"}
    assert rows["sft_step/baseline_liger/samples_per_s"]["skipped"] == "needs CUDA"
    assert rows["sft_step/ours_zero2/samples_per_s"]["error"].startswith("OutOfMemoryError")
    assert not sft.variant_rows(CONFIG, 8, 800, {}, {}, "how", {})  # none asked for: no rows


def test_liger_variant_is_skipped_without_cuda():
    assert "CUDA" in sft.liger_unavailable("cpu")


def test_liger_pipeline_patches_its_own_copy_only():
    from transformers.models.phi3 import modeling_phi3

    from xgenmm_fast import XGenMM, XGenMMConfig
    from xgenmm_fast.model.init import init_random_weights
    cfg = XGenMMConfig.resolve("tiny_wide")
    torch.manual_seed(0)
    ours = init_random_weights(XGenMM(cfg))
    stock = {k: getattr(modeling_phi3, k) for k in sft.LigerPipeline.PATCHED}
    base, liger = sft.OriginalPipeline(ours), sft.LigerPipeline(ours)
    assert all(getattr(modeling_phi3, k) is v for k, v in stock.items())  # module attributes put back
    assert "forward" in liger.lm.norm.__dict__ and "forward" in liger.lm.layers[0].mlp.__dict__
    assert "forward" not in base.lm.norm.__dict__ and "forward" not in base.lm.layers[0].mlp.__dict__
    with liger.rope():
        assert modeling_phi3.apply_rotary_pos_emb is not stock["apply_rotary_pos_emb"]
    assert modeling_phi3.apply_rotary_pos_emb is stock["apply_rotary_pos_emb"]
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), liger.parameters()))
    # Liger's fused linear CE over the concatenated decoupled head = the original's full-logit CE
    # (fp32; on the CPU through the Triton interpreter that conftest.py turns on)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    base, liger = base.to(dev), liger.to(dev)
    h = torch.randn(2, 9, cfg.text.hidden_size, device=dev, requires_grad=True)
    y = torch.randint(0, cfg.text.initial_tokenizer_len + 3, (2, 9), device=dev)
    y[0, :3] = -100
    y[1, -2] = cfg.text.initial_tokenizer_len + 1  # one of the added tokens (the additional_fc rows)
    want, got = base.head_loss(h, y), liger.head_loss(h, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, h)[0], torch.autograd.grad(want, h)[0],
                               rtol=1e-4, atol=1e-6)


def test_zero2_variant_runs_on_cpu():
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, os.path.join(BENCH, "bench_sft_step.py"), "--smoke", "--variants",
                          "ours_zero2"], check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)  # DeepSpeed's logging must not reach stdout
    common.validate(doc)
    rows = {r["name"]: r for r in doc["results"]}
    z = rows["sft_step/ours_zero2/samples_per_s"]
    assert z["ours"]["value"] > 0 and z["extra"]["accelerator"] == "cpu", z
    assert z["extra"]["ds_config"]["zero_optimization"]["stage"] == 2
    assert "sft_step/baseline_liger/samples_per_s" not in rows  # not asked for
    assert doc["runs"]["bench_sft_step"]["variants"] == {"ours_zero2": "measured"}
    # on the CPU the trainer's AdamW (optim.fused=auto) is not fused: both sides step the for-loop AdamW
    assert rows["sft_step/samples_per_s"]["extra"]["optimizer"] == {"ours": "AdamW (for-loop)",
                                                                   "baseline": "AdamW (for-loop)"}


def test_optimizer_text_names_what_torch_steps(monkeypatch):
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert sft.optimizer_text(torch.optim.AdamW(p, fused=True)) == "AdamW (fused)"
    assert sft.optimizer_text(torch.optim.AdamW(p, foreach=True)) == "AdamW (foreach)"
    assert sft.optimizer_text(torch.optim.AdamW(p)) == "AdamW (for-loop)"  # foreach=None on CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert sft.optimizer_text(torch.optim.AdamW(p)) == "AdamW (foreach)"  # ... and on CUDA tensors
    assert sft.optimizer_text(torch.optim.AdamW(p, foreach=False)) == "AdamW (for-loop)"


def test_attention_library_row_preference(monkeypatch):
    from xgenmm_fast.ops import library_attention as lib
    q = k = v = torch.zeros(4, 1, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    assert kernels.varlen_library(q, k, v, cu, 4, 3, "cpu", torch.bfloat16) is None  # no CUDA, no row
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # flash-attn absent (import raises ImportError)
    monkeypatch.setattr(lib, "torch_varlen_available", lambda: True)
    assert kernels.varlen_library(q, k, v, cu, 4, 3, "cuda", torch.bfloat16)[0] == "torch_varlen_attn"
    # fp32 (torch's varlen_attn takes fp16/bf16 only) or no varlen_attn: per-sequence SDPA, named causal-only
    assert kernels.varlen_library(q, k, v, cu, 4, 3, "cuda", torch.float32)[0] == \
        "sdpa_flash_per_seq_causal_no_window"
    monkeypatch.setattr(lib, "torch_varlen_available", lambda: False)
    assert kernels.varlen_library(q, k, v, cu, 4, 3, "cuda", torch.bfloat16)[0].endswith("causal_no_window")


def test_sub_millisecond_rows_are_timed_from_a_cuda_graph(monkeypatch):
    """GRAPH_TIMED rows headline the CUDA-graph time (device time) and keep the eager one; other rows and the
    CPU stay eager; a capture failure falls back to the eager time and says why. The two timers are fakes."""
    import types
    args = types.SimpleNamespace(rep_ms=10.0, smoke=False)
    peak = {"matmul_tflops": 100.0, "copy_gbps": 1000.0}
    monkeypatch.setattr(kernels, "timer", lambda fn, device, rep_ms, smoke: 0.8)  # host-bound eager time
    monkeypatch.setattr(kernels, "cuda_graph_ms", lambda fn, rep_ms: 0.2)
    assert "rms_norm_fwd_bwd" in kernels.GRAPH_TIMED and "varlen_attn_fwd_bwd" not in kernels.GRAPH_TIMED
    side = kernels.measure("rms_norm_fwd_bwd", "triton", None, "cuda", args, None, 2e8, peak)
    assert side["value"] == 0.2 and side["eager_ms"] == 0.8 and side["timer"] == "cuda_graph"
    assert side["rate"]["value"] == 1000.0 and side["frac_peak"] == 1.0  # the rate follows the graph time
    side = kernels.measure("varlen_attn_fwd_bwd", "triton", None, "cuda", args, 1e12, None, peak)
    assert side["value"] == 0.8 and "timer" not in side and "eager_ms" not in side
    assert kernels.measure("rms_norm_fwd_bwd", "triton", None, "cpu", args, None, 2e8, peak)["value"] == 0.8

    def capture_fails(fn, rep_ms):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(kernels, "cuda_graph_ms", capture_fails)
    side = kernels.measure("rope_fwd", "triton", None, "cuda", args, None, 2e8, peak)
    assert side["value"] == 0.8 and side["timer"] == "do_bench" and "not permitted" in side["graph_error"]


def test_report_says_which_sides_are_graph_timed():
    report = load("report")
    graph = {"value": 0.2, "unit": "ms", "impl": "triton", "timer": "cuda_graph", "eager_ms": 0.85}
    assert report.fmt_measure(graph).endswith("(triton) · CUDA graph; 0.85 ms eager")
    failed = {"value": 0.8, "unit": "ms", "timer": "do_bench", "graph_error": "RuntimeError: x"}
    assert report.fmt_measure(failed).endswith("eager (graph capture failed)")
    assert "graph" not in report.fmt_measure({"value": 1.0, "unit": "ms"})


def test_kernel_rows_name_the_settings_they_ran_with(tmp_path):
    """With XGENMM_KERNEL_SETTINGS (here tuning.apply) a row's config names the settings, so the tuned and the
    default rows of one results file are two rows, not one replacing the other."""
    from xgenmm_fast.ops.triton import tuning
    out, only = tmp_path / "k.json", "varlen_attn_fwd_bwd/equal_length"
    restore = tuning.apply({"lm": {"atomic_dq": True}})
    try:
        assert kernels.main(["--smoke", "--only", only, "--out", str(out)]) == 0
    finally:
        restore()
    assert kernels.main(["--smoke", "--only", only, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert sorted(str(r["config"].get("kernel_settings")) for r in rows) == ["None", "lm: atomic_dq"]
