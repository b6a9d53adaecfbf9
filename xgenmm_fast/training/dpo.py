"""The DPO trainer: preference pairs packed two sequences each, the shared loop (loop.py), DeepSpeed.

    xgenmm-fast dpo --config dpo.yaml [key=value ...]     (launch with torchrun/deepspeed for several ranks)

A micro-batch is one PackedBatch of whole pairs (data/preference.pack_pairs): prompt + chosen and
prompt + rejected back to back, the pair's images encoded once and shown to both. The policy's pass
returns each sequence's summed log-probs of its labelled (answer) tokens, computed from the selected
hidden rows only (`XGenMM.forward_packed_logprobs`, no logits). The reference log-probs come from
- `dpo.reference: online`: a frozen copy of the starting weights, run under no_grad on the same packed
  batch right after the policy; with a frozen vision encoder it reuses the policy's encoder features
  (only its own perceiver and LM run);
- `dpo.reference: precomputed`: one pass of the starting weights over every pair before training,
  kept in `<output_dir>/reference_logps.pt` (a resumed run reads it back); no second model in memory.
The online reference is a whole copy of the weights on every rank (ZeRO-3 included: it is not sharded);
where that does not fit next to the policy, use `precomputed`.

Objective of an optimizer step: the mean DPO loss over the global batch's pairs (all micro-steps, all
ranks) + `dpo.nll_weight` × the mean NLL per token of the global batch's chosen answers. As in SFT, each
micro-step backpropagates its share times world · grad_accum, which DeepSpeed's averaging turns into
that global mean. Metrics per step (metrics.jsonl, TensorBoard, progress bar): loss, dpo_loss, nll,
reward_chosen, reward_rejected, reward_margin, reward_accuracy (means over pairs; see dpo_loss.py),
logp_chosen, logp_rejected, pairs_per_s, tokens_per_s.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..data.packed import IGNORE_INDEX, PackedBatch
from . import faults
from .checkpointing import CheckpointManager
from .dpo_loss import dpo_loss, preference_sums
from .engine import (
    DataPlan,
    Run,
    all_sum_many,
    build_engine,
    empty_like,
    plan_data,
    skip_nonfinite,
    start_run,
)
from .loop import StepStats, TrainResult, resolve_resume, train_loop

log = logging.getLogger("xgenmm_fast.train")
REFERENCE_FILE = "reference_logps.pt"


@dataclass
class DPOResult(TrainResult):
    reference: str = "online"
    dpo_loss: float = float("nan")  # of the last logged step
    reward_accuracy: float = float("nan")
    reward_margin: float = float("nan")


# ---- batches of pairs -------------------------------------------------------------------------------
@dataclass
class PairBatch:
    """One micro-batch of pairs: `packed` holds 2·P sequences (2p chosen, 2p + 1 rejected);
    `indices` the pairs' dataset indices (for precomputed reference log-probs)."""
    packed: PackedBatch
    indices: list[int] = field(default_factory=list)

    @property
    def num_pairs(self) -> int:
        return len(self.indices)

    @property
    def num_truncated(self) -> int:
        return self.packed.num_truncated

    @property
    def chosen_tokens(self) -> int:
        """Labelled targets of the chosen sequences (the NLL term's normaliser)."""
        t, cu = self.packed.targets, self.packed.cu_seqlens.tolist()
        return sum(int((t[cu[s]:cu[s + 1]] != IGNORE_INDEX).sum()) for s in range(0, len(cu) - 1, 2))

    def to(self, device, dtype: torch.dtype | None = None) -> "PairBatch":
        return PairBatch(self.packed.to(device, dtype=dtype), self.indices)


def collate_pairs(samples, media_token_id: int, tokens_per_tile: int, max_tokens: int) -> PairBatch:
    from ..data.preference import pack_pairs
    return PairBatch(pack_pairs(samples, media_token_id, tokens_per_tile, max_tokens), [s.index for s in samples])


def build_preference_dataset(cfg, tokenizer, info, model_config):
    from ..data.preference import PreferenceDataset, load_preference_records
    records = load_preference_records(cfg.data.data_path, path_map=cfg.data.image_path_map or None,
                                      seed=cfg.train.seed, format=cfg.dpo.format)
    return PreferenceDataset(records, tokenizer, info, model_config, max_text_tokens=cfg.data.max_text_tokens,
                             format=cfg.dpo.format, preprocess_backend=cfg.data.preprocess_backend,
                             resize_order=cfg.data.resize_order)


# ---- reference log-probs ----------------------------------------------------------------------------
def frozen_copy(model, device, dtype: torch.dtype):
    """The reference model: the starting weights, frozen, in eval mode (no activation checkpointing)."""
    ref = copy.deepcopy(model).to(device=device, dtype=dtype)
    ref.requires_grad_(False).eval()
    ref.set_gradient_checkpointing(False)
    return ref


class OnlineReference:
    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, batch: PairBatch, vision_features=None) -> torch.Tensor:
        """(2·P,) summed log-probs of every sequence of the batch, policy's encoder features reused."""
        return self.model.forward_packed_logprobs(batch.packed, vision_features=vision_features)["logps"]


class PrecomputedReference:
    def __init__(self, chosen: torch.Tensor, rejected: torch.Tensor):
        self.chosen, self.rejected = chosen, rejected  # (num_records,) fp32, NaN where not computed

    def __call__(self, batch: PairBatch, vision_features=None) -> torch.Tensor:
        idx = torch.tensor(batch.indices, dtype=torch.long)
        out = torch.stack([self.chosen[idx], self.rejected[idx]], dim=1).flatten()  # interleaved like the batch
        if not torch.isfinite(out).all():
            raise RuntimeError(f"no precomputed reference log-probs for pairs {batch.indices} in {REFERENCE_FILE}")
        return out.to(batch.packed.input_ids.device)


class _RowsDataset(torch.utils.data.Dataset):
    def __init__(self, dataset, rows, collate):
        self.dataset, self.rows, self.collate = dataset, rows, collate

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        from ..data.sft_dataset import BadSample
        return self.collate([s for s in (self.dataset[i] for i in self.rows[k]) if not isinstance(s, BadSample)])


def _reference_meta(cfg, n: int) -> dict:
    return {"records": n, "data_path": str(cfg.data.data_path), "model_init": str(cfg.model.init),
            "max_text_tokens": int(cfg.data.max_text_tokens), "max_tokens": int(cfg.data.max_tokens),
            "seed": int(cfg.train.seed), "format": str(cfg.dpo.format)}


def precompute_reference(run: Run, data: DataPlan, collate, path: str) -> PrecomputedReference:
    """Every good pair's reference log-probs from the starting weights (before DeepSpeed wraps the model):
    rank r computes rows r, r + world, ... of the first epoch's plan; results are gathered, and rank 0
    writes `path` atomically."""
    ref = frozen_copy(run.model, run.device, run.pixel_dtype)
    rows = data.plan0.rows[run.rank::run.world]
    loader = torch.utils.data.DataLoader(_RowsDataset(data.dataset, rows, collate), batch_size=None,
                                         num_workers=run.cfg.data.num_workers, collate_fn=lambda x: x)
    found: dict[int, tuple[float, float]] = {}
    with torch.no_grad():
        for batch in loader:
            if batch.num_pairs == 0:
                continue
            logps = OnlineReference(ref)(batch.to(run.device, dtype=run.pixel_dtype)).float().cpu()
            for k, idx in enumerate(batch.indices):
                found[idx] = (logps[2 * k].item(), logps[2 * k + 1].item())
    del ref
    if dist.is_initialized() and run.world > 1:
        parts = [None] * run.world
        dist.all_gather_object(parts, found)
        for p in parts:
            found.update(p)
    n = len(data.dataset)
    chosen = torch.full((n,), float("nan"))
    rejected = torch.full((n,), float("nan"))
    for idx, (c, r) in found.items():
        chosen[idx], rejected[idx] = c, r
    if run.rank == 0:
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save({"meta": _reference_meta(run.cfg, n), "chosen": chosen, "rejected": rejected}, tmp)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()
    log.info("reference log-probs of %d pairs precomputed -> %s", len(found), path)
    return PrecomputedReference(chosen, rejected)


def load_reference(cfg, path: str, n: int) -> PrecomputedReference:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the precomputed reference log-probs of this run are missing; a resumed "
                                "run needs them (they were computed from the starting weights)")
    saved = torch.load(path, weights_only=True)
    want = _reference_meta(cfg, n)
    if saved["meta"] != want:
        raise ValueError(f"{path} was computed for {saved['meta']}, this run has {want}: start a new output_dir")
    return PrecomputedReference(saved["chosen"], saved["rejected"])


# ---- the objective ----------------------------------------------------------------------------------
class DPOObjective:
    """Global-batch mean DPO loss (+ NLL on the chosen answers), module docstring."""
    desc = "dpo"
    samples_key = "pairs"

    def __init__(self, run: Run, reference):
        self.run, self.reference = run, reference
        self.opts = run.cfg.dpo

    def step(self, engine, micro, step: int, counters: dict) -> StepStats:
        run, d = self.run, self.opts
        device, scale = run.device, run.world * run.cfg.train.grad_accum
        n_pairs, n_chosen = all_sum_many([sum(mb.batch.num_pairs for mb in micro),
                                          sum(mb.batch.chosen_tokens for mb in micro)], device)
        names = ["loss", "dpo_loss", "nll", "reward_chosen", "reward_rejected", "reward_margin",
                 "reward_accuracy", "logp_chosen", "logp_rejected", "tokens", "pairs"]
        sums = dict.fromkeys(names, 0.0)
        for mb in micro:
            batch = mb.batch.to(device, dtype=run.pixel_dtype)
            if batch.num_pairs == 0:  # every pair of it failed to load on this rank: a zero stand-in
                engine.backward(engine(packed=empty_like(batch.packed))["loss_sum"] * 0.0)
                engine.step()
                continue
            out = engine(packed=batch.packed, packed_logprobs=True)
            logps, counts = out["logps"], out["num_targets"]
            pc, pr = logps[0::2], logps[1::2]
            ref = self.reference(batch, out["vision_features"])
            res = dpo_loss(pc, pr, ref[0::2], ref[1::2], beta=d.beta, loss=d.loss, label_smoothing=d.label_smoothing,
                           chosen_tokens=counts[0::2], rejected_tokens=counts[1::2])
            dpo_sum, nll_sum = res.losses.sum(), -pc.sum()
            share = dpo_sum / max(n_pairs, 1.0)  # this micro-batch's part of the step's objective
            if d.nll_weight:
                share = share + d.nll_weight * nll_sum / max(n_chosen, 1.0)
            if faults.nan_now(step + 1, mb.micro):
                share = share * float("nan")
            loss = skip_nonfinite(engine, share, batch.packed, step, mb.micro, counters, device)
            if loss is None:
                loss = share * scale
                sums["loss"] += share.item()
                sums["dpo_loss"] += dpo_sum.item()
                sums["nll"] += nll_sum.item()
                for k, v in preference_sums(res, pc, pr).items():
                    sums[k] += v
                sums["pairs"] += batch.num_pairs
            engine.backward(loss)
            engine.step()
            sums["tokens"] += batch.packed.num_tokens
        g = dict(zip(names, all_sum_many([sums[k] for k in names], device)))
        per_pair = lambda k: g[k] / max(g["pairs"], 1.0)  # noqa: E731 (means over the pairs trained on)
        values = {"dpo_loss": per_pair("dpo_loss"), "nll": g["nll"] / max(n_chosen, 1.0),
                  **{k: per_pair(k) for k in names[3:9]}, "pairs": n_pairs}
        return StepStats(loss=g["loss"], values=values, tokens=g["tokens"], samples=n_pairs,
                         postfix={"acc": f"{values['reward_accuracy']:.2f}",
                                  "margin": f"{values['reward_margin']:.3f}"})


# ---- the trainer ------------------------------------------------------------------------------------
def train_dpo(cfg) -> DPOResult:
    run = start_run(cfg)
    data = plan_data(run, build_preference_dataset(cfg, run.tokenizer, run.info, run.model.config), unit="pairs")
    mcfg = run.model.config
    collate = functools.partial(collate_pairs, media_token_id=mcfg.media_token_id,
                                tokens_per_tile=mcfg.perceiver.num_latents, max_tokens=cfg.data.max_tokens)
    if cfg.dpo.reference == "precomputed":
        path = os.path.join(run.out_dir, REFERENCE_FILE)
        resuming = resolve_resume(cfg, CheckpointManager(os.path.join(run.out_dir, "checkpoints"))) is not None
        reference = (load_reference(cfg, path, len(data.dataset)) if resuming
                     else precompute_reference(run, data, collate, path))
    else:  # taken before DeepSpeed wraps (and, on resume, loads into) the policy
        reference = OnlineReference(frozen_copy(run.model, run.device, run.pixel_dtype))
    engine, _, scheduler = build_engine(run, data.total_steps)

    def extra(row: dict) -> dict:
        return {"reference": cfg.dpo.reference, "dpo_loss": row.get("dpo_loss", float("nan")),
                "reward_accuracy": row.get("reward_accuracy", float("nan")),
                "reward_margin": row.get("reward_margin", float("nan"))}

    result = train_loop(run, data, engine, scheduler, DPOObjective(run, reference), collate=collate,
                        result_cls=DPOResult, result_extra=extra)
    if run.rank == 0:
        from .metrics import plot_loss_curve
        plot_loss_curve(os.path.join(run.out_dir, "metrics.jsonl"), os.path.join(run.out_dir, "reward_margin.png"),
                        key="reward_margin")
    return result
