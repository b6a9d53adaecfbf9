"""One SFT training step, ours vs the original pipeline on stock components, same samples, same process.

    python benchmarks/bench_sft_step.py --size released --device cuda --results-dir benchmarks/results
    python benchmarks/bench_sft_step.py --size released --samples 16 --repeats 3 --warmup 1 --out gpu.json
    python benchmarks/bench_sft_step.py --smoke          # CPU, tiny model: checks that everything runs (JSON to stdout)
    python benchmarks/bench_sft_step.py --variants ''    # ours and baseline only

Variants, all on the same samples, all from the same initial weights:
ours            packed rows (`data.max_tokens`), XGenMM.forward_packed through the ops dispatch (Triton kernels
                on GPU), text-only samples encode no image, loss on labelled rows only; torch AdamW as the
                trainer builds it (`training.engine.adamw_fused`, optim.fused=auto: the single-kernel
                AdamW on CUDA, foreach on the CPU).
baseline        the original algorithm on stock modules: transformers' SiglipVisionModel and Phi3 (SDPA
                attention), a perceiver in plain PyTorch with the key tensor concatenated and the mask
                materialised, a blank tile encoded for every text-only sample, per-sample insertion of vision
                tokens into right-padded batches, full-logit cross entropy.
baseline_liger  the baseline with Liger-Kernel applied to its stock Phi3Model: `apply_liger_kernel_to_phi3`
                on the instance (RMSNorm, SwiGLU MLP; RoPE is a module-level swap in transformers' Phi-3
                code, active only during this variant's steps), plus Liger's fused linear cross entropy
                called by this script over the decoupled head's two weights concatenated (Liger's own
                Phi3ForCausalLM patch does not reach it: the baseline's head sits outside Phi3Model and has
                the 3 added tokens). Vision encoder and perceiver unchanged. CUDA only (Liger's Triton
                kernels), and only where `liger_kernel` imports; otherwise a `skipped` row says why.
ours_zero2      ours inside a DeepSpeed engine, ZeRO stage 2 on one process (world size 1; gloo on CPU with
                DS_ACCELERATOR=cpu, nccl on GPU), the config from xgenmm_fast.training.engine's builder
                (bf16 on GPU: fp32 master weights and moments, as training runs), ours' AdamW, no
                gradient clipping (as ours); one packed row per micro-step, timed: forward + engine.backward
                + engine.step. Skipped where deepspeed does not import or WORLD_SIZE is not 1.
Shared: bf16 on GPU (fp32 on CPU), activation checkpointing on the decoder layers, AdamW (lr 1e-6) over
everything but the frozen vision encoder, the same samples per step. The baselines step torch's default
AdamW (foreach on CUDA), as the original training code constructs it; ours the trainer's (above). In the
H200 profile of 2026-11-26 the foreach AdamW took 12% of ours' step (100 of 806 ms). The samples_per_s
row's extra names each side's optimizer. A variant that raises (e.g. out of
memory) gives an `error` row; ours and the baseline always run.

Synthetic data (documented, LLaVA-665k-like): conversation text lengths lognormal with median 150 tokens
(sigma 0.8, clipped to [24, 2048]); 15% text-only samples; image sizes drawn so that every anyres grid
occurs (aspect ratios 0.4-2.5, long side 300-1500 px), i.e. (1+n)·128 image tokens with n in {2,3,4}.

FLOPs (model FLOPs, for MFU): decoder 6·P_lm·T + 12·L·d·Σ Tᵢ² / 2 (causal attention, fwd+bwd) over the
LM tokens T of the step; perceiver 6·P_perc·(chunks·L_lat) plus its attention 12·depth·inner·chunks·L_lat·(g²+L_lat);
vision encoder forward only 2·P_vis·tiles·g² + 4·layers·d·tiles·g⁴. The measured matmul peak of the same
run is the denominator.

Rows (common format, benchmarks/README.md):
- ours vs baseline: sft_step/{samples_per_s, lm_tokens_per_s, tiles_per_s, mfu} (higher is better) and
  sft_step/peak_memory (GB, lower is better): the peak allocated during one step above what was allocated
  before it (gradients, activations, temporaries; the weights and optimizer state, allocated before the
  step, excluded). ZeRO-2's resident state (fp32 master weights, moments) is in its samples_per_s row's
  extra.engine_state_gb (CUDA only); its step peak includes DeepSpeed's gradient bucket
  (reduce_bucket_size elements, default 5e8, allocated every micro-step).
- each variant V vs the plain baseline (speedup is always over the plain baseline; the `ours` side holds
  V's value, `impl` names it): sft_step/V/{samples_per_s, lm_tokens_per_s, peak_memory}; a variant that
  did not run has one sft_step/V/samples_per_s row with `skipped` or `error`.
- ours vs baseline_liger: sft_step/{samples_per_s, peak_memory}/vs_baseline_liger.
Each side's AdamW moments are freed once that side is measured, and the baselines are freed before the
ZeRO-2 engine is built, so that two copies of the released model's optimizer state are never resident.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import math
import os
import random
import socket
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import PeakMemory, add_output_args, emit, median_time  # noqa: E402  (benchmarks/_common.py)
from _common import result as make_result  # noqa: E402

from xgenmm_fast import XGenMM, XGenMMConfig  # noqa: E402
from xgenmm_fast.data.anyres import get_anyres_grid_shape  # noqa: E402
from xgenmm_fast.data.packed import StreamSample, pack_samples  # noqa: E402
from xgenmm_fast.data.planner import plan_rows  # noqa: E402
from xgenmm_fast.model.init import init_random_weights  # noqa: E402
from xgenmm_fast.training.engine import adamw_fused  # noqa: E402


# ---- synthetic samples --------------------------------------------------------------------------------
def make_samples(cfg: XGenMMConfig, n: int, seed: int, max_text: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = int(min(max_text, max(24, rng.lognormvariate(math.log(150), 0.8))))
        size = None
        if rng.random() >= 0.15:
            aspect = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
            long_side = rng.randint(300, 1500)
            size = (long_side, max(1, int(long_side / aspect))) if aspect >= 1 else (max(1, int(long_side * aspect)), long_side)
        out.append({"text": text, "size": size, "seed": seed * 100003 + i})
    return out


def materialise(cfg: XGenMMConfig, spec: dict):
    """token ids (with one <image> after BOS when the sample has an image), labels (answer half), tiles."""
    g = torch.Generator().manual_seed(spec["seed"])
    ids = torch.randint(3, cfg.text.pad_token_id, (spec["text"],), generator=g)
    labels = ids.clone()
    labels[: spec["text"] // 2] = -100
    tiles = []
    if spec["size"] is not None:
        npw, nph = get_anyres_grid_shape(spec["size"], cfg.anyres_grids, cfg.tile_size)
        ids[1] = cfg.media_token_id
        labels[1] = -100
        tiles = [torch.rand(1 + npw * nph, 3, cfg.tile_size, cfg.tile_size, generator=g) * 2 - 1]
    return ids, labels, tiles


# ---- the baseline: the original algorithm on stock modules -------------------------------------------
class OriginalPipeline(torch.nn.Module):
    def __init__(self, ours: XGenMM, attn: str = "sdpa"):
        super().__init__()
        from transformers import Phi3Config, SiglipVisionConfig
        from transformers.models.phi3.modeling_phi3 import Phi3Model
        from transformers.models.siglip.modeling_siglip import SiglipVisionModel
        c = ours.config
        v, t = c.vision, c.text
        self.cfg = c
        self.vision = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps, hidden_act="gelu_pytorch_tanh", attn_implementation=attn))
        self.lm = Phi3Model(Phi3Config(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
            max_position_embeddings=max(t.max_position_embeddings, 8192), sliding_window=t.sliding_window,
            pad_token_id=t.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
            attn_implementation=attn))
        sd = ours.state_dict()
        self.vision.load_state_dict({k[15:]: w for k, w in sd.items() if k.startswith("vision_encoder.")},
                                    strict=False)
        self.lm.load_state_dict({k[17:]: w for k, w in sd.items() if k.startswith("lang_model.model.")
                                 and "additional_embedding" not in k})
        self.perceiver = ours.vision_tokenizer.__class__(v.hidden_size, t.hidden_size, c.perceiver)
        self.perceiver.load_state_dict(ours.vision_tokenizer.state_dict())
        self.add_emb = torch.nn.Parameter(sd["lang_model.model.embed_tokens.additional_embedding.weight"].clone())
        self.head_w = torch.nn.Parameter(sd["lang_model.lm_head.weight"].clone())
        self.head_b = torch.nn.Parameter(sd["lang_model.lm_head.bias"].clone())
        self.add_w = torch.nn.Parameter(sd["lang_model.lm_head.additional_fc.weight"].clone())
        self.add_b = torch.nn.Parameter(sd["lang_model.lm_head.additional_fc.bias"].clone())
        self.vision.requires_grad_(False)

    def perceive(self, x, mask):
        """The original PerceiverAttention: keys = cat(media, latents), mask materialised per chunk
        (benchmarks/_original_perceiver.py, also the baseline of bench_perceiver.py)."""
        from _original_perceiver import original_perceive  # benchmarks/, on sys.path like _common
        return original_perceive(self.perceiver, x, mask)

    def forward(self, samples, device, dtype):
        from xgenmm_fast.data.anyres import anyres_feature_masks
        from xgenmm_fast.model.xgenmm import group_anyres_features
        c = self.cfg
        g = c.vision.grid
        s = c.tile_size
        blank = torch.zeros(1, 3, s, s)
        tiles = [(t[0] if t else blank) for _, _, t, _ in samples]  # the original's blank tile for text-only
        sizes = [size or (s, s) for _, _, _, size in samples]
        with torch.no_grad():
            feats = self.vision(torch.cat(tiles).to(device, dtype)).last_hidden_state
        chunks, masks = [], []
        for f, size in zip(feats.split([t.shape[0] for t in tiles]), sizes):
            if f.shape[0] == 1:
                chunks.append(f)
                masks.append(torch.ones(1, g * g, device=device, dtype=dtype))
            else:
                shape = get_anyres_grid_shape(size, c.anyres_grids, s)
                chunks.append(group_anyres_features(f, shape, g))
                masks.append(anyres_feature_masks(size, c.anyres_grids, s, g, device=device).to(dtype))
        toks = self.perceive(torch.cat(chunks), torch.cat(masks))
        toks = [t.flatten(0, 1) for t in toks.split([t.shape[0] for t in tiles])]
        rows_e, rows_l = [], []
        base = c.text.initial_tokenizer_len
        for (ids, labels, _, _), vt in zip(samples, toks):  # per-sample insertion, as the original
            ids, labels = ids.to(device), labels.to(device)
            emb = F.embedding(ids.clamp(max=base - 1), self.lm.embed_tokens.weight)
            emb = torch.where((ids >= base)[:, None], self.add_emb[(ids - base).clamp(0, 2)], emb)
            where = (ids == c.media_token_id).nonzero().flatten().tolist()
            if where:
                i = where[0]
                emb = torch.cat([emb[:i], vt, emb[i + 1:]])
                labels = torch.cat([labels[:i], labels.new_full((vt.shape[0],), -100), labels[i + 1:]])
            rows_e.append(emb)
            rows_l.append(labels)
        L = max(r.shape[0] for r in rows_e)
        E = torch.full((len(rows_e), L, rows_e[0].shape[-1]), float(c.text.pad_token_id), device=device, dtype=dtype)
        M = torch.zeros(len(rows_e), L, dtype=torch.long, device=device)
        Y = torch.full((len(rows_e), L), -100, dtype=torch.long, device=device)
        for i, (e, y) in enumerate(zip(rows_e, rows_l)):
            E[i, :e.shape[0]], M[i, :e.shape[0]], Y[i, :y.shape[0]] = e, 1, y
        h = self.lm(inputs_embeds=E, attention_mask=M).last_hidden_state
        return self.head_loss(h, Y), int(M.sum())

    def head_loss(self, h, Y):
        """The original's decoupled head: full (B, L, V) logits, then the shifted cross entropy."""
        base = self.cfg.text.initial_tokenizer_len
        logits = torch.cat([F.linear(h, self.head_w, self.head_b)[..., :base], F.linear(h, self.add_w, self.add_b)], -1)
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), Y[:, 1:].reshape(-1),
                               ignore_index=-100)


# ---- baseline + Liger-Kernel -------------------------------------------------------------------------
LIGER_OPS = "rms_norm,swiglu,rope,fused_linear_ce"


def liger_unavailable(device: str) -> str | None:
    """None when the Liger variant can run here, else why not."""
    if device != "cuda":
        return "Liger-Kernel's Triton kernels need CUDA (this run is on the CPU)"
    try:
        import liger_kernel.transformers as lt
        lt.LigerFusedLinearCrossEntropyLoss, lt.apply_liger_kernel_to_phi3  # noqa: B018  (AttributeError if absent)
    except Exception as e:  # noqa: BLE001  (absent, or broken against this torch/transformers)
        return f"liger_kernel does not import: {type(e).__name__}: {e}"
    return None


class LigerPipeline(OriginalPipeline):
    """The baseline with Liger's kernels on its stock Phi3Model (see the module docstring).

    `apply_liger_kernel_to_phi3(model=...)` rebinds the instance's RMSNorm and MLP forwards; it also replaces
    module attributes of transformers' modeling_phi3 (the RMSNorm and MLP classes, for models built later,
    and `apply_rotary_pos_emb`, which every Phi3Attention looks up when called). Those are put back at
    once, so that the plain baseline stays stock; `rope()` swaps Liger's RoPE in around this variant's
    steps only (forward and backward: activation checkpointing re-runs the forward in the backward)."""

    PATCHED = ("apply_rotary_pos_emb", "Phi3RMSNorm", "Phi3MLP")

    def __init__(self, ours: XGenMM):
        super().__init__(ours)
        import liger_kernel.transformers as lt
        from transformers.models.phi3 import modeling_phi3
        self._phi3 = modeling_phi3
        saved = {k: getattr(modeling_phi3, k) for k in self.PATCHED}
        try:
            lt.apply_liger_kernel_to_phi3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                          fused_linear_cross_entropy=False, model=self.lm)
            self._liger_rope = modeling_phi3.apply_rotary_pos_emb
        finally:
            for k, v in saved.items():
                setattr(modeling_phi3, k, v)
        if self._liger_rope is saved["apply_rotary_pos_emb"]:
            raise RuntimeError("apply_liger_kernel_to_phi3 did not replace modeling_phi3.apply_rotary_pos_emb")
        self._flce = lt.LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")

    @contextlib.contextmanager
    def rope(self):
        stock = self._phi3.apply_rotary_pos_emb
        self._phi3.apply_rotary_pos_emb = self._liger_rope
        try:
            yield
        finally:
            self._phi3.apply_rotary_pos_emb = stock

    def head_loss(self, h, Y):
        """Liger's fused linear CE over cat(lm_head rows of the base vocabulary, additional_fc): the same
        logits as the original's two linears, never materialised whole."""
        base = self.cfg.text.initial_tokenizer_len
        w = torch.cat([self.head_w[:base], self.add_w])
        b = torch.cat([self.head_b[:base], self.add_b])
        return self._flce(w, h[:, :-1].reshape(-1, h.shape[-1]), Y[:, 1:].reshape(-1), b)


# ---- ours inside a DeepSpeed ZeRO-2 engine, one process ---------------------------------------------
def zero2_unavailable() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (scripts/gpu_wheels.sh builds a wheel, scripts/gpu_env.sh installs it)"
    if os.environ.get("WORLD_SIZE", "1") != "1":
        return f"one process only (WORLD_SIZE={os.environ['WORLD_SIZE']}): run this script with plain python"
    return None


def import_deepspeed(device: str):
    """DeepSpeed picks its accelerator at import (DS_ACCELERATOR=cpu for a CPU run) and logs to stdout,
    where this script may be writing its JSON: its handlers are created while stdout points to stderr."""
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def single_process_group(deepspeed, device: str) -> bool:
    """torch.distributed with world size 1 (gloo on CPU, nccl on GPU); True when this call created it."""
    import torch.distributed as dist
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError(f"a process group of {dist.get_world_size()} ranks exists; ours_zero2 needs 1")
        return False
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", str(port))):
        os.environ.setdefault(k, v)
    with contextlib.redirect_stdout(sys.stderr):
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False)
    return True


def zero2_config(micro_steps: int, dtype: torch.dtype) -> tuple[dict, str]:
    """The trainer's DeepSpeed config (engine.deepspeed_config) for ZeRO stage 2, `micro_steps` micro-steps
    of one packed row each, no clipping; a minimal equivalent where the builder cannot be used."""
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    try:
        from omegaconf import OmegaConf

        from xgenmm_fast.training.engine import deepspeed_config
        cfg = OmegaConf.create({"train": {"grad_accum": micro_steps, "zero_stage": 2},
                                "optim": {"grad_clip": 0.0}})
        return deepspeed_config(cfg, precision), "xgenmm_fast.training.engine.deepspeed_config"
    except Exception as e:  # noqa: BLE001  (the builder's imports, e.g. omegaconf, may be missing)
        return ({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": micro_steps,
                 "gradient_clipping": 0.0, "zero_optimization": {"stage": 2},
                 "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 10 ** 9,
                 "zero_allow_untested_optimizer": True},
                f"minimal config in bench_sft_step.py (builder unusable: {type(e).__name__}: {e})")


# ---- measurement ------------------------------------------------------------------------------------
def matmul_peak(device, dtype, smoke):
    """FLOP/s of a large matmul: 8192^3 on a GPU; 2048^3 on a CPU (enough to reach its peak; 8192^3 takes
    about 15 s per product there)."""
    n = 512 if smoke else (8192 if device == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: a @ b, 20 if device == "cuda" and not smoke else 3, 5 if device == "cuda" else 1, device)
    return 2 * n ** 3 / t


def model_flops(cfg: XGenMMConfig, lm_seq_lens: list[int], chunks: int, tiles: int) -> float:
    t, v, p = cfg.text, cfg.vision, cfg.perceiver
    d, L = t.hidden_size, t.num_hidden_layers
    p_lm = L * (d * (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim + d * d
                + 3 * d * t.intermediate_size) + d * t.num_logits
    tokens = sum(lm_seq_lens)
    lm = 6 * p_lm * tokens + 12 * L * d * sum(n * n for n in lm_seq_lens) / 2
    D, inner = v.hidden_size, p.heads * p.dim_head
    p_perc = p.depth * (D * inner * 4 + 2 * D * D * p.ff_mult) + D * t.hidden_size
    g2 = v.num_patches
    perc = 6 * p_perc * chunks * p.num_latents + 12 * p.depth * inner * chunks * p.num_latents * (g2 + p.num_latents) \
        + 4 * p.depth * 2 * D * inner * chunks * g2  # to_kv over the (frozen) media: forward + weight grad
    p_vis = v.num_hidden_layers * (4 * D * D + 2 * D * v.intermediate_size)
    vis = 2 * p_vis * tiles * g2 + 4 * v.num_hidden_layers * D * tiles * g2 * g2
    return lm + perc + vis


VARIANTS = ("baseline_liger", "ours_zero2")
# what identifies each variant's measurement beyond the shared config (part of its rows' config)
VARIANT_CONFIG = {"baseline_liger": {"liger_ops": LIGER_OPS},
                  "ours_zero2": {"zero_stage": 2, "world_size": 1, "gradient_clipping": 0.0}}
LIGER_NOTES = {
    "patched": "Phi3Model instance: RMSNorm and SwiGLU MLP via apply_liger_kernel_to_phi3(model=...); RoPE via "
               "its module-level apply_rotary_pos_emb swap, active only during this variant's steps",
    "fused_linear_ce": "LigerFusedLinearCrossEntropyLoss called by this script over cat(lm_head[:base vocab], "
                       "additional_fc) weights and biases; Liger's Phi3ForCausalLM patch does not apply (the "
                       "decoupled head is outside Phi3Model)",
    "not_patched": "SigLIP vision encoder (frozen, forward only), perceiver (plain PyTorch), embeddings",
}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(fn, args, device) -> tuple[float, float, str]:
    """(median seconds of a step, peak GB of one more step, untimed, how the peak was read): the CPU
    sampler would perturb timings."""
    t = median_time(fn, args.repeats, args.warmup, device)
    with PeakMemory(device) as mem:
        fn()
    return t, mem.gb, mem.how


def run_zero2(ours: XGenMM, packed: list, args, device: str, dtype: torch.dtype) -> dict:
    """ours_zero2: {"time", "peak_gb", "extra"}, or {"error"}. Tears the engine down again (the process
    group stays: DeepSpeed keeps its own handle on it; main() ends it); `ours` is not used for
    measurements afterwards."""
    engine = None
    try:
        deepspeed = import_deepspeed(device)
        single_process_group(deepspeed, device)
        ds_cfg, source = zero2_config(len(packed), dtype)
        before = torch.cuda.memory_allocated() if device == "cuda" else None
        trainable = [p for p in ours.parameters() if p.requires_grad]
        with contextlib.redirect_stdout(sys.stderr):
            optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=adamw_fused("auto", torch.device(device)))
            engine, *_ = deepspeed.initialize(model=ours, optimizer=optimizer, model_parameters=trainable,
                                              config=ds_cfg)
        resident = None if before is None else (torch.cuda.memory_allocated() - before) / 2 ** 30

        def step():
            for b in packed:  # one packed row per micro-step; DeepSpeed steps AdamW on the last one
                engine.backward(engine(packed=b)["loss_sum"])
                engine.step()
        with contextlib.redirect_stdout(sys.stderr):
            t, gb, _ = measure(step, args, device)
        from deepspeed.accelerator import get_accelerator
        extra = {"deepspeed": deepspeed.__version__, "accelerator": get_accelerator().device_name(),
                 "ds_config": ds_cfg, "ds_config_from": source,
                 "engine_state_gb": None if resident is None else round(resident, 4),
                 "engine_state_how": "cuda memory_allocated after deepspeed.initialize minus before (fp32 master "
                                     "weights, moments, flat buffers); not measured on CPU"}
        return {"time": t, "peak_gb": gb, "extra": extra}
    except Exception as e:  # noqa: BLE001  (e.g. out of memory at the released size: an error row)
        return {"error": _error(e)}
    finally:
        if engine is not None and hasattr(engine, "destroy"):
            with contextlib.suppress(Exception):
                engine.destroy()
        engine = None
        free_memory(device)


def variant_rows(config: dict, n_samples: int, n_tokens: int, times: dict, peaks: dict, how: str,
                 status: dict) -> list[dict]:
    """Rows of the extra variants: each vs the plain baseline (measured, or one skipped / error row), and
    ours vs baseline_liger. times / peaks: step seconds and peak GB of "ours", "baseline" and the measured
    variants; status: variant -> {"time", "peak_gb", "extra"} | {"skipped": why} | {"error": what}."""
    rows = []

    def side(value, unit, impl):
        return {"value": value, "unit": unit, "impl": impl}

    for v in VARIANTS:
        st = status.get(v)
        if st is None:  # not asked for (--variants)
            continue
        vcfg = {**config, **VARIANT_CONFIG[v]}
        if "time" not in st:
            rows.append(make_result(f"sft_step/{v}/samples_per_s", vcfg, None, None, higher_is_better=True,
                                    skipped=st.get("skipped"), error=st.get("error")))
            continue
        mem = {"ours": st["peak_gb"], "baseline": peaks["baseline"], "how": how}
        t, tb = st["time"], times["baseline"]
        rows += [
            make_result(f"sft_step/{v}/samples_per_s", vcfg, side(n_samples / t, "samples/s", v),
                        side(n_samples / tb, "samples/s", "baseline"), higher_is_better=True, peak_memory_gb=mem,
                        extra=st.get("extra")),
            make_result(f"sft_step/{v}/lm_tokens_per_s", vcfg, side(n_tokens / t, "tokens/s", v),
                        side(n_tokens / tb, "tokens/s", "baseline"), higher_is_better=True),
            make_result(f"sft_step/{v}/peak_memory", vcfg, side(st["peak_gb"], "GB", v),
                        side(peaks["baseline"], "GB", "baseline"), higher_is_better=False, extra={"how": how}),
        ]
    liger = status.get("baseline_liger")
    if liger and "time" in liger:
        lcfg = {**config, **VARIANT_CONFIG["baseline_liger"]}
        rows += [
            make_result("sft_step/samples_per_s/vs_baseline_liger", lcfg,
                        side(n_samples / times["ours"], "samples/s", "ours"),
                        side(n_samples / liger["time"], "samples/s", "baseline_liger"), higher_is_better=True,
                        peak_memory_gb={"ours": peaks["ours"], "baseline": liger["peak_gb"], "how": how}),
            make_result("sft_step/peak_memory/vs_baseline_liger", lcfg, side(peaks["ours"], "GB", "ours"),
                        side(liger["peak_gb"], "GB", "baseline_liger"), higher_is_better=False, extra={"how": how}),
        ]
    return rows


def run(args):
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = XGenMMConfig.resolve("tiny_wide" if args.smoke else ("xgenmm_phi3_mini" if args.size == "released" else "tiny"))
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    status: dict[str, dict] = {}  # variant -> {"time", "peak_gb", "extra"} | {"skipped"} | {"error"}
    torch.manual_seed(0)
    with torch.device(device):  # build (and initialise) on the device: released-size models in seconds
        ours = init_random_weights(XGenMM(cfg)).to(device, dtype)
        ours.set_gradient_checkpointing(True)
        ours.train()
        base = OriginalPipeline(ours).to(device, dtype)
    getattr(base.lm, "activation_checkpointing_enable", base.lm.gradient_checkpointing_enable)()
    base.train()
    liger = None
    if "baseline_liger" in variants:  # built now, from the same initial weights as the others
        why = liger_unavailable(device)
        if why:
            status["baseline_liger"] = {"skipped": why}
        else:
            try:
                with torch.device(device):
                    liger = LigerPipeline(ours).to(device, dtype)
                getattr(liger.lm, "activation_checkpointing_enable", liger.lm.gradient_checkpointing_enable)()
                liger.train()
            except Exception as e:  # noqa: BLE001  (a Liger that does not fit this transformers: a row)
                status["baseline_liger"] = {"error": _error(e)}
                liger = None
    specs = make_samples(cfg, args.samples, seed=1, max_text=512 if args.smoke else 2048)
    samples = [(*materialise(cfg, s), s["size"]) for s in specs]  # (ids, labels, tiles, (w, h) or None)

    L = cfg.perceiver.num_latents
    stream = [StreamSample(ids.tolist(), lab.tolist(), tiles, [s["size"]] if tiles else [])
              for (ids, lab, tiles, _), s in zip(samples, specs)]
    lengths = [len(x.input_ids) - len(x.tiles) + L * sum(t.shape[0] for t in x.tiles) for x in stream]
    budget = args.max_tokens
    rows = plan_rows(lengths, budget)
    packed = [pack_samples([stream[i] for i in r], cfg.media_token_id, L, budget).to(device, dtype) for r in rows]

    # ours steps AdamW as the trainer builds it (fused on CUDA); the baselines torch's default (foreach on CUDA)
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-6,
                                 fused=adamw_fused("auto", torch.device(device)))
    opt_base = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-6)
    optimizers = {"ours": optimizer_text(opt_ours), "baseline": optimizer_text(opt_base)}
    opt_liger = None if liger is None else torch.optim.AdamW([p for p in liger.parameters() if p.requires_grad],
                                                             lr=1e-6)

    def step_ours():
        for b in packed:
            out = ours.forward_packed(b)
            out["loss_sum"].backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_pipeline(model, opt):
        for i in range(0, len(samples), args.micro_batch):
            loss, _ = model(samples[i:i + args.micro_batch], device, dtype)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_base():
        step_pipeline(base, opt_base)

    def step_liger():
        with liger.rope():  # forward and backward (checkpointed layers re-run their forward there)
            step_pipeline(liger, opt_liger)

    peak_mem, times, how = {}, {}, None
    for name, fn, opt in (("ours", step_ours, opt_ours), ("baseline", step_base, opt_base)):
        times[name], peak_mem[name], how = measure(fn, args, device)
        opt.state.clear()  # free this side's AdamW moments before the other side runs
        free_memory(device)
    if liger is not None:
        try:
            t, gb, _ = measure(step_liger, args, device)
            status["baseline_liger"] = {"time": t, "peak_gb": gb, "extra": {
                "liger_kernel": _version("liger_kernel"), **LIGER_NOTES}}
        except Exception as e:  # noqa: BLE001
            status["baseline_liger"] = {"error": _error(e)}
        opt_liger.state.clear()
    base = liger = opt_base = opt_liger = None  # the baselines are done: free them before ZeRO-2 (released size)
    free_memory(device)

    # step-time breakdown of ours (each piece timed on its own over the same step)
    def vision_only():
        with torch.no_grad():
            for b in packed:
                if b.pixel_values is not None:
                    ours.vision_encoder(b.pixel_values)
    breakdown = {"vision_encoder_s": median_time(vision_only, args.repeats, 1, device)}
    breakdown["data_packing_s"] = median_time(
        lambda: [pack_samples([stream[i] for i in r], cfg.media_token_id, L, budget) for r in rows],
        args.repeats, 0, "cpu")
    with torch.no_grad():  # the frozen encoder's features, so the perceiver can be timed alone
        feats = [None if b.pixel_values is None or not b.media_index.numel() else ours.encode_vision_features(
            b.pixel_values) for b in packed]

    def perceiver_only():  # perceiver forward + backward (a unit upstream gradient)
        for b, f in zip(packed, feats):
            if f is not None:
                toks = ours.encode_images(b.pixel_values, b.tiles_per_image, b.image_sizes, features=f)
                torch.cat(toks).float().sum().backward()

    def forward_backward():
        for b in packed:
            ours.forward_packed(b)["loss_sum"].backward()

    breakdown["perceiver_fwd_bwd_s"] = median_time(perceiver_only, args.repeats, 1, device)
    whole = median_time(forward_backward, args.repeats, 1, device)
    breakdown["optimizer_s"] = median_time(opt_ours.step, args.repeats, 1, device)  # grads of the last pass
    opt_ours.zero_grad(set_to_none=True)
    opt_ours.state.clear()
    # LM forward + backward (with the vision-token merge and the fused loss): the rest of the packed pass
    breakdown["lm_fwd_bwd_s"] = max(0.0, whole - breakdown["vision_encoder_s"] - breakdown["perceiver_fwd_bwd_s"])
    breakdown["forward_backward_s"] = whole

    if "ours_zero2" in variants:  # last: the engine takes `ours` over (flat buffers, hooks)
        why = zero2_unavailable()
        status["ours_zero2"] = {"skipped": why} if why else run_zero2(ours, packed, args, device, dtype)
    for v, st in status.items():
        if "time" in st:
            times[v], peak_mem[v] = st["time"], st["peak_gb"]

    n_samples = len(samples)
    lm_lens = [int(b.cu_seqlens[i + 1] - b.cu_seqlens[i]) for b in packed for i in range(b.num_samples)]
    tiles = sum(sum(t.shape[0] for t in x.tiles) for x in stream)
    chunks = tiles
    flops = model_flops(cfg, lm_lens, chunks, tiles)
    peak = matmul_peak(device, dtype, args.smoke)
    config = {"size": "smoke" if args.smoke else args.size, "device": device, "samples_per_step": n_samples,
              "max_tokens": budget, "micro_batch_baseline": args.micro_batch,
              "dtype": str(dtype).replace("torch.", ""), "activation_checkpointing": True, "smoke": args.smoke}
    memory = {"ours": peak_mem["ours"], "baseline": peak_mem["baseline"], "how": how}
    extra = {"packed_rows": len(rows), "lm_tokens": sum(lm_lens), "tiles": tiles,
             "optimizer": optimizers}
    results = []
    for metric, unit, ours_v, base_v in (
        ("samples_per_s", "samples/s", n_samples / times["ours"], n_samples / times["baseline"]),
        ("lm_tokens_per_s", "tokens/s", sum(lm_lens) / times["ours"], sum(lm_lens) / times["baseline"]),
        ("tiles_per_s", "tiles/s", tiles / times["ours"], tiles / times["baseline"]),
        ("mfu", "fraction of measured matmul peak", flops / times["ours"] / peak, flops / times["baseline"] / peak),
    ):
        results.append(make_result(f"sft_step/{metric}", config, (ours_v, unit), (base_v, unit),
                                   higher_is_better=True, peak_memory_gb=memory if metric == "samples_per_s" else None,
                                   extra=extra if metric == "samples_per_s" else None))
    results.append(make_result("sft_step/peak_memory", config, (peak_mem["ours"], "GB"),
                               (peak_mem["baseline"], "GB"), higher_is_better=False, extra={"how": how}))
    results += variant_rows(config, n_samples, sum(lm_lens), times, peak_mem, how, status)
    run_info = {"matmul_peak_tflops": peak / 1e12, "step_time_s": times, "peak_memory_gb": peak_mem,
                "breakdown_ours": breakdown, "model_flops_per_step": flops,
                "variants": {v: ("measured" if "time" in st else {k: st[k] for k in ("skipped", "error") if k in st})
                             for v, st in status.items()},
                "note": f"measured {str(dtype).replace('torch.', '')} matmul peak {peak / 1e12:.3g} TFLOP/s (MFU "
                        "denominator)"}
    return results, run_info


def optimizer_text(opt: torch.optim.Optimizer) -> str:
    """"AdamW (fused)", "AdamW (foreach)" or "AdamW (for-loop)": the implementation torch steps (foreach=None
    means foreach when every parameter is on CUDA, the for-loop otherwise)."""
    d = opt.defaults
    on_cuda = all(p.is_cuda for g in opt.param_groups for p in g["params"])
    if d.get("fused"):
        how = "fused"
    elif d.get("foreach") or (d.get("foreach") is None and on_cuda):
        how = "foreach"
    else:
        how = "for-loop"
    return f"{type(opt).__name__} ({how})"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module.replace("_", "-"))
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "released"], default="released")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--samples", type=int, default=64, help="samples per optimizer step (same for all)")
    p.add_argument("--micro-batch", type=int, default=8, help="baseline: samples per padded forward (original: 8)")
    p.add_argument("--max-tokens", type=int, default=8192, help="ours: packed row budget")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated extra variants beside ours and baseline (default all: {','.join(VARIANTS)}; "
                        "'' for none)")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, few samples: does it all run")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.samples, args.micro_batch, args.max_tokens, args.repeats, args.warmup = "cpu", 8, 4, 512, 1, 0
    results, run_info = run(args)
    for r in results:
        if r["ours"] is None:
            why = r.get("skipped") or r.get("error")
            print(f"{r['name']:40s} {'skipped' if r.get('skipped') else 'ERROR'}: {why}", file=sys.stderr)
            continue
        print(f"{r['name']:40s} {r['ours'].get('impl', 'ours')} {r['ours']['value']:.4g}  "
              f"{r['baseline'].get('impl', 'baseline')} {r['baseline']['value']:.4g} {r['ours']['unit']}  "
              f"speedup {r['speedup']:.2f}x", file=sys.stderr)
    emit(args, results, "bench_sft_step", run_info)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # made by ours_zero2
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
