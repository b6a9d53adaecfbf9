"""profile_sft_step (where ours' SFT step spends its GPU time): its --smoke run on the CPU profiles one step of
the tiny model, with the optimizer the trainer builds, and groups the kernel time. CPU, seconds."""
from __future__ import annotations

import json

import pytest

from ._bench import load

prof = load("profile_sft_step")


def test_smoke_profile_groups_one_step(tmp_path):
    out = tmp_path / "profile.json"
    assert prof.main(["--smoke", "--warmup", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["packed_rows"] >= 1 and doc["lm_tokens"] > 0
    groups = doc["groups"]
    assert sum(g["share"] for g in groups.values()) == pytest.approx(1.0)
    assert sum(g["ms"] for g in groups.values()) == pytest.approx(doc["device_time_ms"])
    # the step ran the optimizer and the packed attention (both named in their own groups)
    assert groups["optimizer (AdamW)"]["ms"] > 0 and groups["attention (varlen, LM)"]["ms"] > 0
    assert all(k["group"] == prof.group_of(k["name"]) for k in doc["top_kernels"])


@pytest.mark.parametrize("name,group", [("_attn_bwd_dkdv_kernel", "attention (varlen, LM)"),
                                        ("void at::native::_fused_adamw_kernel<float>", "optimizer (AdamW)"),
                                        ("nvjet_sm90_tst_256x160_64x4_2x1_v_bz_coopA_TNT", "matmul (cuBLAS/cutlass)"),
                                        ("something_new", "other")])
def test_kernel_names_fall_in_their_group(name, group):
    assert prof.group_of(name) == group
