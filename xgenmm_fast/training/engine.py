"""What every trainer (SFT, DPO) sets up the same way: process group, tokenizer, model, data plan,
DeepSpeed engine, collective helpers and the HF export of the live weights.

    run = start_run(cfg)                       # ranks, device, precision, output dir, tokenizer, model
    data = plan_data(run, dataset)             # lengths, bad records (logged / fail_fast), epoch plan, steps
    engine, optimizer, scheduler = build_engine(run, data.total_steps)
    ... loop.train_loop(run, data, engine, scheduler, objective) ...

The loop skeleton (resume, checkpoints, metrics, progress, SIGTERM, export) is in loop.py; what a
trainer computes per micro-batch is its objective (sft.py, dpo.py).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .. import XGenMM, XGenMMConfig
from ..data.tokenizer import build_tiny_tokenizer, load_tokenizer
from . import batches as batching
from .checkpointing import write_json_atomic
from .distributed import init_distributed
from .schedule import lr_multiplier

log = logging.getLogger("xgenmm_fast.train")


# ---- building blocks --------------------------------------------------------------------------------
def setup_tokenizer(cfg, out_dir: str, rank: int):
    path = cfg.data.tokenizer
    if not path:  # the bundled tiny tokenizer, built offline and deterministically
        path = os.path.join(out_dir, "tokenizer")
        if rank == 0 and not os.path.isfile(os.path.join(path, "tokenizer.json")):
            build_tiny_tokenizer(path)
        if dist.is_initialized():
            dist.barrier()
    return load_tokenizer(path) + (path,)


def build_model(cfg, info) -> XGenMM:
    """Random init from a preset (sized to the tokenizer) or load an HF dir / training .pt."""
    init = cfg.model.init
    if os.path.exists(init):
        model = XGenMM.from_pretrained(init, config=cfg.model.config)
        t = model.config.text
        if (t.initial_tokenizer_len, t.pad_token_id) != (info.initial_tokenizer_len, info.pad_token_id):
            raise ValueError(f"model {init} expects a tokenizer with {t.initial_tokenizer_len} base ids and pad id "
                             f"{t.pad_token_id}; the tokenizer has {info.initial_tokenizer_len} and {info.pad_token_id}")
        return model
    mc = XGenMMConfig.resolve(cfg.model.config or init)
    for section, values in OmegaConf.to_container(cfg.model.overrides, resolve=True).items():
        target = mc if section == "top" else getattr(mc, section)
        for k, v in values.items():
            if not hasattr(target, k):
                raise ValueError(f"model.overrides.{section}.{k}: no such config field")
            setattr(target, k, type(getattr(target, k))(v) if getattr(target, k) is not None else v)
    mc.text.initial_tokenizer_len = info.initial_tokenizer_len
    mc.text.pad_token_id = info.pad_token_id
    mc.text.bos_token_id = info.bos_token_id if info.bos_token_id is not None else mc.text.bos_token_id
    mc.text.eos_token_id = info.end_token_id if info.end_token_id is not None else info.eos_token_id
    mc.text.vocab_size = max(mc.text.vocab_size, info.initial_tokenizer_len)
    torch.manual_seed(cfg.model.seed)  # a fresh model: the modules' own (original-like) initialisation
    return XGenMM(mc)


# set from train.* / optim.*; `train.deepspeed` may not change them behind the trainer's back
_OWNED_DS_KEYS = {("train_micro_batch_size_per_gpu",), ("gradient_accumulation_steps",), ("gradient_clipping",),
                  ("zero_optimization", "stage"), ("bf16",), ("fp16",), ("train_batch_size",)}


def _merge_ds(base: dict, extra: dict, path: tuple = ()) -> dict:
    out = dict(base)
    for k, v in extra.items():
        key = path + (k,)
        if key in _OWNED_DS_KEYS:
            raise ValueError(f"train.deepspeed.{'.'.join(key)}: set by the trainer (use train.* / optim.* instead)")
        out[k] = _merge_ds(out[k], v, key) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(cfg, precision: str) -> dict[str, Any]:
    generated = {
        "train_micro_batch_size_per_gpu": 1,  # one PackedBatch (rows_per_step packed rows) per micro-step
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    extra = cfg.train.get("deepspeed") if hasattr(cfg.train, "get") else getattr(cfg.train, "deepspeed", None)
    if extra:
        from omegaconf import OmegaConf
        extra = OmegaConf.to_container(extra, resolve=True) if OmegaConf.is_config(extra) else dict(extra)
        generated = _merge_ds(generated, extra)
    return generated


def resolve_precision(p: str) -> str:
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if p not in ("bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {p!r}")
    return p


class Interrupt:
    """SIGTERM sets a flag; the loop saves a checkpoint at the end of the current step and exits."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def all_sum(x: float | int, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.item()


def all_sum_many(values: list[float], device) -> list[float]:
    """Elementwise sum over ranks of a list of numbers, in one collective."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def union_across_ranks(items: set) -> set:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return set(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sorted(items))
    return set().union(*map(set, parts))


def empty_like(batch):
    """A one-token text-only batch: a finite stand-in forward whose zeroed loss still runs every
    DeepSpeed hook, so all ranks stay in step when a micro-batch must be skipped."""
    from ..data.packed import PackedBatch
    dev = batch.input_ids.device
    return PackedBatch(input_ids=torch.ones(1, dtype=torch.long, device=dev),
                       media_index=torch.zeros(0, dtype=torch.long, device=dev),
                       cu_seqlens=torch.tensor([0, 1], dtype=torch.int32, device=dev),
                       positions=torch.zeros(1, dtype=torch.long, device=dev),
                       targets=torch.ones(1, dtype=torch.long, device=dev),
                       pixel_values=None, tiles_per_image=[], image_sizes=[])


def skip_nonfinite(engine, value: torch.Tensor, batch, step: int, micro: int, counters: dict,
                   device) -> torch.Tensor | None:
    """Collective check of a micro-batch's loss: None when it is finite on every rank; otherwise every
    rank counts and logs the skip and gets a zero loss from a stand-in forward to backpropagate
    instead (ZeRO-3 needs every rank to run the same forwards and backwards)."""
    nonfinite = all_sum(0 if torch.isfinite(value).all() else 1, device) > 0
    if not nonfinite:
        return None
    counters["nonfinite_skips"] += 1
    log.warning("step %d: non-finite loss on micro-batch %d (samples %s on some rank): skipped",
                step + 1, micro, batch.sample_ids[:8])
    return engine(packed=empty_like(batch))["loss_sum"] * 0.0


# ---- a run ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training process: its place in the group, its config, tokenizer and (not yet wrapped) model."""
    cfg: Any
    deepspeed: Any
    rank: int
    world: int
    device: torch.device
    precision: str
    out_dir: str
    tokenizer: Any
    info: Any
    tokenizer_path: str
    model: XGenMM

    @property
    def pixel_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


def apply_ops_config(ops_cfg) -> dict[str, str]:
    """Force the backends `model.ops` names (op -> backend; "*" -> backend for every op that has it) and
    return what every op now runs on. Unknown ops or backends, or unavailable ones, fail here, naming them."""
    from .. import ops as ops_mod
    from ..ops import dispatch
    wanted = dict(ops_cfg or {})
    everywhere = wanted.pop("*", None)
    if everywhere is not None:
        matched = [op for op in dispatch._REGISTRY if everywhere in dispatch._REGISTRY[op]]
        if not matched:
            raise ValueError(f"model.ops: no op has a backend {everywhere!r}")
        for op in matched:
            dispatch.set_backend(op, everywhere)
    for op, backend in wanted.items():
        try:
            dispatch.set_backend(str(op), str(backend))
        except KeyError as e:
            raise ValueError(f"model.ops.{op}: {e.args[0]}") from None
    try:
        return ops_mod.report()
    except RuntimeError as e:  # a forced backend that cannot run here
        raise ValueError(f"model.ops: {e}") from None


def apply_kernel_settings(path):
    """model.kernel_settings: a sweep JSON whose `settings` the attention kernels take (ops/triton/tuning.py);
    returns tuning.apply's undo, or None. Without Triton backends here (no GPU, no interpreter) there is
    nothing to tune: a warning, not an error; a malformed file is an error."""
    if not path:
        return None
    from ..ops import triton as triton_ops
    from ..ops.triton import tuning
    if not triton_ops.enabled():
        tuning.load_from(str(path), "model.kernel_settings")  # a malformed file fails here too
        logging.warning("model.kernel_settings=%s not applied: the Triton backends are not enabled here", path)
        return None
    return tuning.apply_file(str(path), "model.kernel_settings")


def start_run(cfg) -> Run:
    """Process group, precision, output dir (config.yaml, model_config.json), logging, tokenizer, model
    (vision encoder frozen or not, activation checkpointing)."""
    deepspeed, rank, world, device = init_distributed()
    precision = resolve_precision(cfg.train.precision)
    out_dir = cfg.train.output_dir
    os.makedirs(out_dir, exist_ok=True)
    if rank == 0:
        OmegaConf.save(cfg, os.path.join(out_dir, "config.yaml"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

    chosen = apply_ops_config(cfg.model.get("ops") if hasattr(cfg.model, "get") else cfg.model.ops)
    apply_kernel_settings(cfg.model.get("kernel_settings") if hasattr(cfg.model, "get") else cfg.model.kernel_settings)
    if rank == 0:
        logging.info("ops: %s", ", ".join(f"{op}={b}" for op, b in chosen.items()))
        from ..ops import kernel_settings
        logging.info("attention kernel settings: %s", kernel_settings())
        write_json_atomic(os.path.join(out_dir, "ops.json"), chosen)
    tokenizer, info, tokenizer_path = setup_tokenizer(cfg, out_dir, rank)
    model = build_model(cfg, info)
    model.vision_encoder.requires_grad_(not cfg.model.freeze_vision)
    model.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
    if rank == 0:  # lets `xgenmm-fast export` rebuild the model from any checkpoint of this run
        write_json_atomic(os.path.join(out_dir, "model_config.json"), model.config.to_hf_dict())
    return Run(cfg, deepspeed, rank, world, device, precision, out_dir, tokenizer, info, tokenizer_path, model)


@dataclass
class DataPlan:
    dataset: Any
    lengths: list[int]
    bad: dict[int, str]  # found by the scan before training: dataset index -> reason
    good: list[int]
    geo: batching.StepGeometry
    plan0: batching.EpochPlan
    steps_per_epoch: int
    total_steps: int


def plan_data(run: Run, dataset, unit: str = "records") -> DataPlan:
    """Scan the dataset (lengths, bad records: logged, or an error with train.fail_fast), plan epoch 0
    and derive the number of steps."""
    cfg = run.cfg
    lengths = dataset.estimate_lengths()
    bad = dict(dataset.bad_records)
    if bad and cfg.train.fail_fast:
        first = dataset.bad_sample(*next(iter(bad.items())))
        raise ValueError(f"{len(bad)} bad records (fail_fast): first is {first}")
    for idx, reason in list(bad.items())[:50]:
        log.warning("skipping record %s", dataset.bad_sample(idx, reason))
    if len(bad) > 50:
        log.warning("... and %d more bad records (run `xgenmm-fast validate` for the full list)", len(bad) - 50)
    good = [i for i in range(len(lengths)) if i not in bad]
    if not good:
        raise ValueError(f"no usable records in {cfg.data.data_path} ({len(bad)} bad)")

    geo = batching.StepGeometry(run.world, run.rank, cfg.train.grad_accum, cfg.train.rows_per_step)
    plan0 = batching.plan_epoch(good, lengths, cfg.data.max_tokens, cfg.train.seed, 0, cfg.data.pack_window)
    steps_per_epoch = batching.epoch_steps(plan0, geo)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    log.info("data: %d %s (%d bad), %d rows of %d tokens per epoch, packing efficiency %.1f%%, "
             "%d steps per epoch, training %d steps on %d rank(s), %s",
             len(lengths), unit, len(bad), len(plan0.rows), cfg.data.max_tokens, 100 * plan0.efficiency,
             steps_per_epoch, total_steps, run.world, run.precision)
    return DataPlan(dataset, lengths, bad, good, geo, plan0, steps_per_epoch, total_steps)


def adamw_fused(setting, device: torch.device) -> bool:
    """optim.fused: auto (fused on CUDA), true or false. (YAML reads on/off/yes/no as booleans, which reach
    the str field as "True"/"False".)"""
    fused = {"auto": device.type == "cuda", "true": True, "on": True, "false": False, "off": False}.get(
        str(setting).lower())
    if fused is None:
        raise ValueError(f"optim.fused must be auto, true or false, got {setting!r}")
    return fused


def build_engine(run: Run, total_steps: int):
    """AdamW over the trainable parameters, the lr schedule, and DeepSpeed around `run.model`."""
    cfg = run.cfg
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    fused = adamw_fused(cfg.optim.fused, run.device)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, schedule=cfg.optim.schedule, warmup_steps=cfg.optim.warmup_steps, total_steps=total_steps,
        min_ratio=cfg.optim.min_lr_ratio))
    engine, optimizer, _, scheduler = run.deepspeed.initialize(
        model=run.model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=trainable,
        config=deepspeed_config(cfg, run.precision))
    return engine, optimizer, scheduler


# ---- export -----------------------------------------------------------------------------------------
def export_live(engine, out_dir: str, zero_stage: int, rank: int) -> None:
    """HF-format weights from the live engine; ZeRO-3 partitions are gathered first."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                _save_full(module, out_dir)
    elif rank == 0:
        _save_full(module, out_dir)
    if dist.is_initialized():
        dist.barrier()


def _save_full(module, out_dir):
    from ..model.checkpoint import save_state_dict_hf
    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    save_state_dict_hf(module.config, state, out_dir)
