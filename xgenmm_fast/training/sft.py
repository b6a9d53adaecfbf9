"""The SFT trainer: packed batches, DeepSpeed engine, the shared loop (loop.py) around the SFT objective.

Loss: the mean next-token cross entropy over every labelled token of the *global* batch (all
accumulation micro-steps on all ranks). Each rank prefetches its micro-batches of a step, the labelled
token counts are summed across ranks, and every micro-step backpropagates
`loss_sum · world · grad_accum / labelled_tokens_global`, which DeepSpeed's 1/grad_accum loss scaling and
rank averaging turn into exactly that mean. Samples are therefore weighted by their number of answer
tokens, as in the original padded loss over a batch (not averaged per sample first).
"""
from __future__ import annotations

import logging

from . import faults
from .engine import (  # noqa: F401 (re-exported: the SFT trainer's building blocks live in engine.py)
    Interrupt as _Interrupt,
    Run,
    all_sum as _all_sum,
    build_engine,
    build_model,
    deepspeed_config,
    empty_like as _empty_like,
    export_live,
    plan_data,
    resolve_precision as _resolve_precision,
    setup_tokenizer,
    skip_nonfinite,
    start_run,
    union_across_ranks as _union_across_ranks,
)
from .loop import StepStats, TrainResult, train_loop

log = logging.getLogger("xgenmm_fast.train")


def build_dataset(cfg, tokenizer, info, model_config):
    from ..data.sft_dataset import SFTDataset
    from ..data.sources import load_path_map, load_records
    path_map = load_path_map(cfg.data.image_path_map) if cfg.data.image_path_map else None
    records = load_records(cfg.data.data_path, path_map=path_map, seed=cfg.train.seed)
    return SFTDataset(records, tokenizer, info, model_config, max_text_tokens=cfg.data.max_text_tokens,
                      preprocess_backend=cfg.data.preprocess_backend, resize_order=cfg.data.resize_order)


class SFTObjective:
    """Mean next-token CE over the global batch's labelled tokens (module docstring)."""
    desc = "train"
    samples_key = "samples"

    def __init__(self, run: Run):
        self.run = run

    def step(self, engine, micro, step: int, counters: dict) -> StepStats:
        run = self.run
        device, world, accum = run.device, run.world, run.cfg.train.grad_accum
        n_global = _all_sum(sum(mb.batch.num_target_tokens for mb in micro), device)
        loss_sum_local, tokens_local, samples_local = 0.0, 0, 0
        for mb in micro:
            batch = mb.batch.to(device, dtype=run.pixel_dtype)
            loss_sum = engine(packed=batch)["loss_sum"]
            if faults.nan_now(step + 1, mb.micro):
                loss_sum = loss_sum * float("nan")
            loss = skip_nonfinite(engine, loss_sum, batch, step, mb.micro, counters, device)
            if loss is None:  # finite everywhere: this micro-batch's share of the global mean
                loss = loss_sum * (world * accum / max(n_global, 1.0))
                loss_sum_local += loss_sum.item()
            engine.backward(loss)
            engine.step()
            tokens_local += batch.num_tokens
            samples_local += batch.num_samples
        return StepStats(loss=_all_sum(loss_sum_local, device) / max(n_global, 1.0),
                         values={"labelled_tokens": n_global},
                         tokens=_all_sum(tokens_local, device), samples=_all_sum(samples_local, device))


def train(cfg) -> TrainResult:
    run = start_run(cfg)
    data = plan_data(run, build_dataset(cfg, run.tokenizer, run.info, run.model.config))
    engine, _, scheduler = build_engine(run, data.total_steps)
    return train_loop(run, data, engine, scheduler, SFTObjective(run))
