"""The SFT loop: packed batches, DeepSpeed engine, one readable function (`train`).

Loss: the mean next-token cross entropy over every labelled token of the *global* batch (all
accumulation micro-steps on all ranks). Each rank prefetches its micro-batches of a step, the labelled
token counts are summed across ranks, and every micro-step backpropagates
`loss_sum · world · grad_accum / labelled_tokens_global`, which DeepSpeed's 1/grad_accum loss scaling and
rank averaging turn into exactly that mean. Samples are therefore weighted by their number of answer
tokens, as in the original padded loss over a batch (not averaged per sample first).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .. import XGenMM, XGenMMConfig
from ..data.tokenizer import build_tiny_tokenizer, load_tokenizer
from . import batches as batching
from . import faults
from .checkpointing import CheckpointManager, write_json_atomic
from .distributed import init_distributed
from .metrics import MetricsWriter, plot_loss_curve
from .schedule import lr_multiplier

log = logging.getLogger("xgenmm_fast.train")


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    final_loss: float
    skipped_records: int
    nonfinite_skips: int
    truncated_samples: int
    packing_efficiency: float
    hf_export: str | None
    interrupted: bool


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


def build_dataset(cfg, tokenizer, info, model_config):
    from ..data.sft_dataset import SFTDataset
    from ..data.sources import load_path_map, load_records
    path_map = load_path_map(cfg.data.image_path_map) if cfg.data.image_path_map else None
    records = load_records(cfg.data.data_path, path_map=path_map, seed=cfg.train.seed)
    return SFTDataset(records, tokenizer, info, model_config, max_text_tokens=cfg.data.max_text_tokens,
                      preprocess_backend=cfg.data.preprocess_backend, resize_order=cfg.data.resize_order)


def deepspeed_config(cfg, precision: str) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,  # one PackedBatch (rows_per_step packed rows) per micro-step
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def _resolve_precision(p: str) -> str:
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if p not in ("bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {p!r}")
    return p


class _Interrupt:
    """SIGTERM sets a flag; the loop saves a checkpoint at the end of the current step and exits."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def _all_sum(x: float | int, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.item()


# ---- the loop ---------------------------------------------------------------------------------------
def train(cfg) -> TrainResult:
    deepspeed, rank, world, device = init_distributed()
    precision = _resolve_precision(cfg.train.precision)
    out_dir = cfg.train.output_dir
    os.makedirs(out_dir, exist_ok=True)
    if rank == 0:
        OmegaConf.save(cfg, os.path.join(out_dir, "config.yaml"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

    tokenizer, info, tokenizer_path = setup_tokenizer(cfg, out_dir, rank)
    model = build_model(cfg, info)
    model.vision_encoder.requires_grad_(not cfg.model.freeze_vision)
    model.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
    mcfg = model.config
    if rank == 0:  # lets `xgenmm-fast export` rebuild the model from any checkpoint of this run
        write_json_atomic(os.path.join(out_dir, "model_config.json"), mcfg.to_hf_dict())

    dataset = build_dataset(cfg, tokenizer, info, mcfg)
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

    geo = batching.StepGeometry(world, rank, cfg.train.grad_accum, cfg.train.rows_per_step)
    plan0 = batching.plan_epoch(good, lengths, cfg.data.max_tokens, cfg.train.seed, 0, cfg.data.pack_window)
    steps_per_epoch = batching.epoch_steps(plan0, geo)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    log.info("data: %d records (%d bad), %d rows of %d tokens per epoch, packing efficiency %.1f%%, "
             "%d steps per epoch, training %d steps on %d rank(s), %s",
             len(lengths), len(bad), len(plan0.rows), cfg.data.max_tokens, 100 * plan0.efficiency,
             steps_per_epoch, total_steps, world, precision)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, schedule=cfg.optim.schedule, warmup_steps=cfg.optim.warmup_steps, total_steps=total_steps,
        min_ratio=cfg.optim.min_lr_ratio))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=trainable,
        config=deepspeed_config(cfg, precision))
    pixel_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    ckpt = CheckpointManager(os.path.join(out_dir, "checkpoints"), cfg.train.keep_last)
    start_step, counters = 0, {"nonfinite_skips": 0, "truncated": 0, "skipped_at_load": []}
    resume_from = None
    if cfg.train.resume == "auto":
        latest = ckpt.latest()
        resume_from = latest[0] if latest else None
    elif cfg.train.resume not in ("never", "", None):
        resume_from = cfg.train.resume
    if resume_from:
        client = ckpt.load(engine, resume_from)
        start_step = int(client.get("step", 0))
        counters.update(client.get("counters", {}))
        log.info("resumed from %s at step %d", resume_from, start_step)
    # records skipped: found bad by the scan before training, or failing to load during it (each once)
    skipped_at_load = set(counters["skipped_at_load"])
    skipped_total = lambda: len(bad) + len(skipped_at_load)  # noqa: E731

    metrics = MetricsWriter(out_dir, enabled=rank == 0, tensorboard=cfg.train.tensorboard,
                            resume=resume_from is not None)
    interrupt = _Interrupt()
    stream = batching.iterate_micro_batches(
        dataset, good, lengths, geo, start_step=start_step, total_steps=total_steps, seed=cfg.train.seed,
        budget=cfg.data.max_tokens, window=cfg.data.pack_window, media_token_id=mcfg.media_token_id,
        tokens_per_tile=mcfg.perceiver.num_latents, num_workers=cfg.data.num_workers)
    bar = None
    if rank == 0 and cfg.train.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stderr)

    step, last_loss, interrupted, efficiency = start_step, float("nan"), False, plan0.efficiency
    t_last = time.perf_counter()
    engine.train()
    while step < total_steps:
        micro = [next(stream) for _ in range(cfg.train.grad_accum)]
        for mb in micro:
            for idx, sid, src, reason in mb.skipped:
                if cfg.train.fail_fast:
                    raise ValueError(f"bad record #{idx} id={sid!r} ({src}) (fail_fast): {reason}")
                log.warning("step %d: skipping record %s id=%r: %s", step + 1, src, sid, reason)
                skipped_at_load.add(idx)
            counters["truncated"] += mb.batch.num_truncated
        n_global = _all_sum(sum(mb.batch.num_target_tokens for mb in micro), device)
        loss_sum_local, tokens_local, samples_local = 0.0, 0, 0
        for mb in micro:
            batch = mb.batch.to(device, dtype=pixel_dtype)
            out = engine(packed=batch)
            loss_sum = out["loss_sum"]
            if faults.nan_now(step + 1, mb.micro):
                loss_sum = loss_sum * float("nan")
            # all ranks skip together (ZeRO-3 needs every rank to run the same forwards and backwards)
            nonfinite = _all_sum(0 if torch.isfinite(loss_sum) else 1, device) > 0
            if nonfinite:  # this micro-batch contributes nothing (see module doc)
                counters["nonfinite_skips"] += 1
                log.warning("step %d: non-finite loss on micro-batch %d (samples %s on some rank): skipped",
                            step + 1, mb.micro, mb.batch.sample_ids[:8])
                loss = engine(packed=_empty_like(batch))["loss_sum"] * 0.0
            else:
                loss = loss_sum * (world * cfg.train.grad_accum / max(n_global, 1.0))
                loss_sum_local += loss_sum.item()
            engine.backward(loss)
            engine.step()
            tokens_local += batch.num_tokens
            samples_local += batch.num_samples
        step += 1
        loss_global = _all_sum(loss_sum_local, device) / max(n_global, 1.0)
        last_loss = loss_global
        tokens_global, samples_global = _all_sum(tokens_local, device), _all_sum(samples_local, device)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if step % cfg.train.log_every == 0 or step == total_steps:
            lr = scheduler.get_last_lr()[0]
            row = {"loss": loss_global, "lr": lr, "tokens_per_s": tokens_global / dt,
                   "samples_per_s": samples_global / dt, "labelled_tokens": n_global,
                   "skipped_records": skipped_total(), "nonfinite_skips": counters["nonfinite_skips"],
                   "truncated_samples": counters["truncated"]}
            metrics.log(step, row)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_global:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_global / dt:.0f}",
                                samples_s=f"{samples_global / dt:.1f}")
        if bar is not None:
            bar.update(1)
        stop = _all_sum(1 if interrupt.requested else 0, device) > 0
        if stop or (cfg.train.save_every and step % cfg.train.save_every == 0) or step == total_steps:
            skipped_at_load = _union_across_ranks(skipped_at_load)
            counters["skipped_at_load"] = sorted(skipped_at_load)
            ckpt.save(engine, step, {"step": step, "counters": counters})
        faults.maybe_kill(step)
        if stop:
            interrupted = True
            log.warning("SIGTERM: saved checkpoint at step %d, exiting", step)
            break
    if bar is not None:
        bar.close()
    interrupt.restore()
    metrics.close()

    skipped_at_load = _union_across_ranks(skipped_at_load)
    hf_dir = None
    if not interrupted and cfg.train.export_hf:
        hf_dir = os.path.join(out_dir, "hf")
        export_live(engine, hf_dir, cfg.train.zero_stage, rank)
        if rank == 0:
            tokenizer.save_pretrained(os.path.join(hf_dir))
    if rank == 0:
        plot_loss_curve(os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, "loss_curve.png"))
        result = TrainResult(out_dir, step, last_loss, skipped_total(), counters["nonfinite_skips"],
                             counters["truncated"], efficiency, hf_dir, interrupted)
        write_json_atomic(os.path.join(out_dir, "result.json"), result.__dict__)
    else:
        result = TrainResult(out_dir, step, last_loss, skipped_total(), counters["nonfinite_skips"],
                             counters["truncated"], efficiency, hf_dir, interrupted)
    if dist.is_initialized():
        dist.barrier()
    return result


def _union_across_ranks(items: set) -> set:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return set(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sorted(items))
    return set().union(*map(set, parts))


def _empty_like(batch):
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
