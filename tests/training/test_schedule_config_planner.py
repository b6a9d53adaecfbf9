"""Small training components: LR schedules, config loading, the packing planner."""
from __future__ import annotations

import math
import random

import pytest

from xgenmm_fast.data.planner import packing_efficiency, plan_epoch, plan_rows, plan_rows_reference
from xgenmm_fast.training.config import load_config
from xgenmm_fast.training.schedule import lr_multiplier


def test_warmup_then_cosine_linear_constant():
    kw = dict(warmup_steps=4, total_steps=14)
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, schedule="cosine", **kw) == 1.0
    assert math.isclose(lr_multiplier(9, schedule="cosine", **kw), 0.5)
    assert math.isclose(lr_multiplier(14, schedule="cosine", **kw), 0.0, abs_tol=1e-12)
    assert math.isclose(lr_multiplier(9, schedule="linear", **kw), 0.5)
    assert lr_multiplier(13, schedule="constant", **kw) == 1.0
    assert math.isclose(lr_multiplier(14, schedule="cosine", min_ratio=0.1, **kw), 0.1)


def test_config_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {data_path: x.json}\ntrain: {zero_stage: 3}\n")
    cfg = load_config(str(p), ["optim.lr=0.5", "train.grad_accum=4"])
    assert cfg.optim.lr == 0.5 and cfg.train.grad_accum == 4 and cfg.train.zero_stage == 3
    assert cfg.optim.weight_decay == 0.0 and cfg.optim.warmup_steps == 2000  # SPEC §5 defaults
    with pytest.raises(ValueError, match="optim"):
        load_config(str(p), ["optim.learning_rate=1"])  # typo'd key
    with pytest.raises(ValueError, match="data_path"):
        load_config(None, [])
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("n,budget", [(0, 64), (1, 64), (7, 64), (300, 512), (1000, 4096)])
def test_planner_properties(n, budget):
    rng = random.Random(n * 7 + budget)
    lengths = [rng.randint(1, budget + budget // 3) for _ in range(n)]  # some over the budget
    for plan in (plan_rows_reference, plan_rows):
        rows = plan(lengths, budget)
        placed = sorted(i for r in rows for i in r)
        assert placed == list(range(n))  # every sample exactly once
        for r in rows:
            assert len(r) == 1 or sum(lengths[i] for i in r) <= budget  # only a lone over-long sample exceeds
        if n:
            lower = math.ceil(sum(min(x, budget) for x in lengths) / budget)
            assert len(rows) <= max(lower * 11 // 9 + 1, lower + 1)  # FFD's worst-case bound
    assert plan_rows(lengths, budget) == plan_rows_reference(lengths, budget)


def test_epoch_plan_is_deterministic_and_dense():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(2000)]
    a = plan_epoch(range(2000), lengths, 1024, seed=1, epoch=0)
    b = plan_epoch(range(2000), lengths, 1024, seed=1, epoch=0)
    c = plan_epoch(range(2000), lengths, 1024, seed=1, epoch=1)
    assert a.rows == b.rows and a.rows != c.rows
    assert a.efficiency > 0.97 and math.isclose(a.efficiency, packing_efficiency(a.rows, lengths, 1024))


def test_deepspeed_overrides_merge_and_owned_keys(tmp_path):
    from xgenmm_fast.training.engine import deepspeed_config
    p = tmp_path / "c.yaml"
    p.write_text("data: {data_path: x.json}\ntrain: {zero_stage: 3, grad_accum: 2, deepspeed: "
                 "{zero_optimization: {stage3_param_persistence_threshold: 0, offload_optimizer: {device: cpu}}}}\n")
    ds = deepspeed_config(load_config(str(p)), "fp32")
    assert ds["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0,
                                       "offload_optimizer": {"device": "cpu"}}
    assert ds["gradient_accumulation_steps"] == 2
    p.write_text("data: {data_path: x.json}\ntrain: {deepspeed: {zero_optimization: {stage: 1}}}\n")
    with pytest.raises(ValueError, match="zero_optimization.stage"):
        deepspeed_config(load_config(str(p)), "fp32")


def test_model_ops_config_forces_and_reports_backends():
    from xgenmm_fast.ops import dispatch
    from xgenmm_fast.training.engine import apply_ops_config
    try:
        chosen = apply_ops_config({"*": "reference", "attention": "sdpa"})
        assert chosen["attention"] == "sdpa" and chosen["varlen_attention"] == "reference"
        assert chosen["rms_norm"] == "reference" and set(chosen) == set(dispatch._REGISTRY)
        with pytest.raises(ValueError, match="model.ops.varlen_attention: .*no backend 'nope'"):
            apply_ops_config({"varlen_attention": "nope"})
        with pytest.raises(ValueError, match="model.ops.no_such_op: unknown op"):
            apply_ops_config({"no_such_op": "reference"})
        with pytest.raises(ValueError, match="no op has a backend 'cuda_magic'"):
            apply_ops_config({"*": "cuda_magic"})
    finally:
        dispatch._FORCED.clear()  # the dispatch is process-wide: leave it as the other tests expect


def test_model_kernel_settings_config(tmp_path):
    """model.kernel_settings: a sweep JSON's settings applied on every rank (the environment variable does not
    reach other nodes through DeepSpeed's launcher); a malformed file is an error naming the key and the file."""
    import json

    from xgenmm_fast.ops.triton import tuning
    from xgenmm_fast.ops.triton import varlen_attention as va
    from xgenmm_fast.training.engine import apply_kernel_settings
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"rows": [], "settings": {"lm": {"atomic_dq": True}}}))
    bad.write_text(json.dumps({"settings": {"lm": {"tiles": {"dkdv": {"BLOCK_M": 7}}}}}))
    assert apply_kernel_settings(None) is None and apply_kernel_settings("") is None
    before = va.ATOMIC_DQ
    restore = apply_kernel_settings(str(good))  # (the tests run with the interpreter: Triton backends enabled)
    try:
        assert va.ATOMIC_DQ is True and tuning.describe() == "lm: atomic_dq"
        assert tuning.report() == f"lm: atomic_dq (from model.kernel_settings={good})"  # (the run log's line)
    finally:
        restore()
    assert va.ATOMIC_DQ == before
    with pytest.raises(ValueError, match=r"model.kernel_settings: kernel settings .*bad.json: lm.tiles.dkdv.BLOCK_M"):
        apply_kernel_settings(str(bad))


def test_adamw_fused_setting():
    import torch

    from xgenmm_fast.training.engine import adamw_fused
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert adamw_fused("auto", gpu) and not adamw_fused("auto", cpu)
    assert adamw_fused("True", cpu) and adamw_fused("true", cpu) and not adamw_fused("False", gpu)
    with pytest.raises(ValueError, match="optim.fused must be auto, true or false, got 'maybe'"):
        adamw_fused("maybe", cpu)
