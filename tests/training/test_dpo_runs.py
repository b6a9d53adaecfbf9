"""Real DPO runs (subprocesses, CPU): bad pairs skipped and counted, non-finite loss skipped, precomputed
reference equal to the online one, 2-rank ZeRO-2 kill and resume equal to an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from xgenmm_fast.demo.shapes import make_preference_dataset

from ._runs import REPO, TINY_MODEL, _port, losses, result, weights


def make_pref_data(root: str, n_pictures: int) -> str:
    return make_preference_dataset(os.path.join(root, "data"), n_train=n_pictures, n_heldout=1, seed=3)["train"]


def write_dpo_config(path: str, data_path: str, out_dir: str, tokenizer_dir: str | None = None,
                     dpo: dict | None = None, max_tokens: int = 256, **train) -> str:
    cfg = {
        "model": TINY_MODEL,
        "data": {"data_path": data_path, "max_tokens": max_tokens, "num_workers": 0,
                 **({"tokenizer": tokenizer_dir} if tokenizer_dir else {})},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        "train": {"output_dir": out_dir, "progress": False, "tensorboard": False, "keep_last": 3, **train},
        "dpo": {"beta": 0.1, **(dpo or {})},
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def run_dpo(config: str, nproc: int = 1, env_extra=None, check: bool = True, timeout: int = 600):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("RANK", None)
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_port", str(_port())]
    cmd = [sys.executable, *launcher, "-m", "xgenmm_fast.cli", "dpo", "--config", config]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"DPO run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def metrics(out_dir: str) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _planted(tmp_path, train_json) -> tuple[str, int]:
    """The generated pairs plus 6 bad ones of different kinds; returns (json path, bad count)."""
    base = os.path.dirname(train_json)
    records = json.load(open(train_json))
    good = records[0]
    (tmp_path / "empty.png").write_bytes(b"")
    png = open(os.path.join(base, good["image"]), "rb").read()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])  # header fine, pixels missing
    prompt = [{"from": "human", "value": "<image>\nWhat colour are the shapes?"}]
    bad = [
        {"id": "bad-missing", "image": "images/does-not-exist.png", "conversations": prompt,
         "chosen": "red", "rejected": "blue"},
        {"id": "bad-empty", "image": str(tmp_path / "empty.png"), "conversations": prompt,
         "chosen": "red", "rejected": "blue"},
        {"id": "bad-truncated", "image": str(tmp_path / "truncated.png"), "conversations": prompt,
         "chosen": "red", "rejected": "blue"},
        {"id": "bad-same-answers", "image": good["image"], "conversations": prompt, "chosen": "red",
         "rejected": "red"},
        {"id": "bad-ends-with-gpt", "conversations": [{"from": "human", "value": "hi"},
                                                       {"from": "gpt", "value": "hello"}],
         "chosen": "a", "rejected": "b"},
        {"id": "bad-unknown-format", "question_text": "?", "answer": "x"},
    ]
    path = os.path.join(base, "planted.json")
    json.dump(records[:8] + bad, open(path, "w"))
    return path, len(bad)


def test_bad_pairs_nonfinite_loss_and_precomputed_reference(tmp_path):
    data, n_bad = _planted(tmp_path, make_pref_data(str(tmp_path), n_pictures=12))
    tok = str(tmp_path / "tok")
    from xgenmm_fast.data.tokenizer import build_tiny_tokenizer
    build_tiny_tokenizer(tok)
    faults = {"XGENMM_FAULTS": "nan_at_step=2"}
    online = str(tmp_path / "online")
    # 8 good pairs in rows of 512 tokens: 6 steps see every pair, the truncated image's included
    p = run_dpo(write_dpo_config(str(tmp_path / "a.yaml"), data, online, tok, max_steps=6, max_tokens=512,
                                 dpo={"nll_weight": 0.5}), env_extra=faults)
    r = result(online)
    assert r["steps"] == 6 and not r["interrupted"] and r["reference"] == "online"
    assert r["skipped_records"] == n_bad, p.stderr[-3000:]
    assert r["nonfinite_skips"] == 1 and "non-finite loss" in p.stderr
    for rid in ("bad-missing", "bad-empty", "bad-truncated", "bad-same-answers", "bad-ends-with-gpt",
                "bad-unknown-format"):
        assert rid in p.stderr, rid  # each skip names its record
    rows = metrics(online)
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["dpo_loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # policy == reference at step 1
    assert rows[0]["reward_margin"] == 0.0
    for m in rows:
        assert m["loss"] == pytest.approx(m["dpo_loss"] + 0.5 * m["nll"], rel=1e-5)
    assert os.path.isfile(os.path.join(online, "hf", "model.safetensors"))

    precomputed = str(tmp_path / "precomputed")
    run_dpo(write_dpo_config(str(tmp_path / "b.yaml"), data, precomputed, tok, max_steps=6, max_tokens=512,
                             dpo={"nll_weight": 0.5, "reference": "precomputed"}), env_extra=faults)
    assert os.path.isfile(os.path.join(precomputed, "reference_logps.pt"))
    assert result(precomputed)["skipped_records"] == n_bad
    la, lb = losses(online), losses(precomputed)
    for s in la:
        assert lb[s] == pytest.approx(la[s], rel=1e-6), (s, la, lb)


def test_two_rank_zero2_dpo_kill_and_resume_matches_uninterrupted(tmp_path):
    data = make_pref_data(str(tmp_path), n_pictures=20)
    common = dict(max_steps=6, save_every=3, zero_stage=2, grad_accum=2)
    tok = str(tmp_path / "tok")
    from xgenmm_fast.data.tokenizer import build_tiny_tokenizer
    build_tiny_tokenizer(tok)
    a = str(tmp_path / "uninterrupted")
    run_dpo(write_dpo_config(str(tmp_path / "a.yaml"), data, a, tok, **common), nproc=2)
    b = str(tmp_path / "killed")
    cfg_b = write_dpo_config(str(tmp_path / "b.yaml"), data, b, tok, **common)
    p = run_dpo(cfg_b, nproc=2, env_extra={"XGENMM_FAULTS": "kill_at_step=5"}, check=False)
    assert p.returncode != 0  # rank 0 died by SIGKILL after step 5; its checkpoint is from step 3
    assert json.load(open(os.path.join(b, "checkpoints", "latest.json")))["step"] == 3
    run_dpo(cfg_b, nproc=2)
    ma, mb = {m["step"]: m for m in metrics(a)}, {m["step"]: m for m in metrics(b)}
    assert set(ma) == set(range(1, 7)) and {4, 5, 6} <= set(mb)
    for s in (4, 5, 6):
        for k in ("loss", "reward_margin", "reward_accuracy", "logp_chosen", "pairs"):
            assert mb[s][k] == pytest.approx(ma[s][k], rel=1e-6, abs=1e-9), (s, k, ma[s], mb[s])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7, msg=k)
