"""The step loop every trainer runs (one readable function, `train_loop`), around an objective.

Per optimizer step: take this rank's `grad_accum` micro-batches, report the records that turned out
bad while loading (skip and count, or stop with train.fail_fast), let the objective run the forwards and
backwards of the micro-batches (`objective.step`: it calls engine.backward / engine.step per micro-batch
and returns the step's global numbers), then log metrics (JSONL, TensorBoard, progress-bar postfix),
honour SIGTERM (checkpoint at the end of the step, then exit), save checkpoints (`save_every`, the last
step; the last `keep_last` kept, `latest.json` replaced atomically) and fire injected faults. A run resumes
from the latest checkpoint (`train.resume=auto`) with the same batches, counters and RNG. At the end the
weights are exported in the HF format and `result.json` is written.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch.distributed as dist

from . import batches as batching
from . import faults
from .checkpointing import CheckpointManager, write_json_atomic
from .engine import DataPlan, Interrupt, Run, all_sum, export_live, union_across_ranks
from .metrics import MetricsWriter, plot_loss_curve

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


@dataclass
class StepStats:
    """What one optimizer step reports, already summed over ranks."""
    loss: float
    values: dict[str, Any]  # objective-specific metrics, logged after the throughput numbers
    tokens: float
    samples: float
    postfix: dict[str, str] = field(default_factory=dict)  # progress-bar fields shown after the loss


class Objective(Protocol):
    desc: str  # progress-bar label
    samples_key: str  # throughput unit in the metrics: "<samples_key>_per_s"

    def step(self, engine, micro: list[batching.MicroBatch], step: int, counters: dict) -> StepStats:
        ...


def resolve_resume(cfg, ckpt: CheckpointManager) -> str | None:
    """The checkpoint tag to resume from: train.resume=auto -> the latest one if any; never; or a tag."""
    if cfg.train.resume == "auto":
        latest = ckpt.latest()
        return latest[0] if latest else None
    if cfg.train.resume not in ("never", "", None):
        return cfg.train.resume
    return None


def train_loop(run: Run, data: DataPlan, engine, scheduler, objective: Objective, *,
               collate: Callable | None = None, result_cls=TrainResult,
               result_extra: Callable[[dict], dict] | None = None) -> TrainResult:
    """Resume, loop to `data.total_steps` (or SIGTERM), export; returns (and writes) the result.
    `collate`: turns a micro-batch's samples into its batch (default: pack_samples);
    `result_extra(last_logged_row)`: extra fields of `result_cls`."""
    cfg, rank, device = run.cfg, run.rank, run.device
    out_dir, mcfg = run.out_dir, run.model.config
    ckpt = CheckpointManager(os.path.join(out_dir, "checkpoints"), cfg.train.keep_last)
    start_step, counters = 0, {"nonfinite_skips": 0, "truncated": 0, "skipped_at_load": []}
    resume_from = resolve_resume(cfg, ckpt)
    if resume_from:
        client = ckpt.load(engine, resume_from)
        start_step = int(client.get("step", 0))
        counters.update(client.get("counters", {}))
        log.info("resumed from %s at step %d", resume_from, start_step)
    # records skipped: found bad by the scan before training, or failing to load during it (each once)
    skipped_at_load = set(counters["skipped_at_load"])
    skipped_total = lambda: len(data.bad) + len(skipped_at_load)  # noqa: E731

    metrics = MetricsWriter(out_dir, enabled=rank == 0, tensorboard=cfg.train.tensorboard,
                            resume=resume_from is not None)
    interrupt = Interrupt()
    stream = batching.iterate_micro_batches(
        data.dataset, data.good, data.lengths, data.geo, start_step=start_step, total_steps=data.total_steps,
        seed=cfg.train.seed, budget=cfg.data.max_tokens, window=cfg.data.pack_window,
        media_token_id=mcfg.media_token_id, tokens_per_tile=mcfg.perceiver.num_latents,
        num_workers=cfg.data.num_workers, collate=collate)
    bar = None
    if rank == 0 and cfg.train.progress:
        from tqdm import tqdm
        bar = tqdm(total=data.total_steps, initial=start_step, desc=objective.desc, dynamic_ncols=True,
                   file=sys.stderr)

    step, last_loss, interrupted, last_row = start_step, float("nan"), False, {}
    t_last = time.perf_counter()
    engine.train()
    while step < data.total_steps:
        micro = [next(stream) for _ in range(cfg.train.grad_accum)]
        for mb in micro:
            for idx, sid, src, reason in mb.skipped:
                if cfg.train.fail_fast:
                    raise ValueError(f"bad record #{idx} id={sid!r} ({src}) (fail_fast): {reason}")
                log.warning("step %d: skipping record %s id=%r: %s", step + 1, src, sid, reason)
                skipped_at_load.add(idx)
            counters["truncated"] += mb.batch.num_truncated
        stats = objective.step(engine, micro, step, counters)
        step += 1
        last_loss = stats.loss
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if step % cfg.train.log_every == 0 or step == data.total_steps:
            lr = scheduler.get_last_lr()[0]
            row = {"loss": stats.loss, "lr": lr, "tokens_per_s": stats.tokens / dt,
                   f"{objective.samples_key}_per_s": stats.samples / dt, **stats.values,
                   "skipped_records": skipped_total(), "nonfinite_skips": counters["nonfinite_skips"],
                   "truncated_samples": counters["truncated"]}
            metrics.log(step, row)
            last_row = row
            if bar is not None:
                bar.set_postfix(loss=f"{stats.loss:.4f}", **stats.postfix, lr=f"{lr:.2e}",
                                tok_s=f"{stats.tokens / dt:.0f}",
                                **{f"{objective.samples_key}_s": f"{stats.samples / dt:.1f}"})
        if bar is not None:
            bar.update(1)
        stop = all_sum(1 if interrupt.requested else 0, device) > 0
        if stop or (cfg.train.save_every and step % cfg.train.save_every == 0) or step == data.total_steps:
            skipped_at_load = union_across_ranks(skipped_at_load)
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

    skipped_at_load = union_across_ranks(skipped_at_load)
    hf_dir = None
    if not interrupted and cfg.train.export_hf:
        hf_dir = os.path.join(out_dir, "hf")
        export_live(engine, hf_dir, cfg.train.zero_stage, rank)
        if rank == 0:
            run.tokenizer.save_pretrained(os.path.join(hf_dir))
    extra = result_extra(last_row) if result_extra is not None else {}
    result = result_cls(out_dir, step, last_loss, skipped_total(), counters["nonfinite_skips"],
                        counters["truncated"], data.plan0.efficiency, hf_dir, interrupted, **extra)
    if rank == 0:
        plot_loss_curve(os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, "loss_curve.png"))
        write_json_atomic(os.path.join(out_dir, "result.json"), result.__dict__)
    if dist.is_initialized():
        dist.barrier()
    return result
