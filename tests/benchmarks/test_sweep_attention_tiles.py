"""sweep_attention_tiles (GPU tile exploration): its --smoke run under the interpreter measures every row
kind, compares each candidate's outputs with the default tiles', restores the patched module state, and
writes its JSON. CPU, seconds."""
from __future__ import annotations

import json
import os

import pytest

from ._bench import load

sweep = load("sweep_attention_tiles")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU smoke run needs the interpreter")
def test_smoke_rows_and_restored_module(tmp_path):
    import xgenmm_fast.ops.triton.perceiver_attention as pa
    import xgenmm_fast.ops.triton.perceiver_varlen as pv
    import xgenmm_fast.ops.triton.varlen_attention as va
    def state():
        return (va._cfg, va.HEAVY_FIRST, va.SPLIT_HEAD_DIM, va.DKDV_KEYS_MAJOR, pa._cfg, pv._cfg, pa.SPLIT_HEAD_DIM,
                pa.DKDV_KEYS_MAJOR, pa.ATOMIC_DQ)
    before = state() + (va.ATOMIC_DQ,)
    out = tmp_path / "sweep.json"
    assert sweep.main(["--smoke", "--out", str(out)]) == 0
    assert state() + (va.ATOMIC_DQ,) == before
    doc = json.loads(out.read_text())
    assert doc["script"] == "sweep_attention_tiles" and doc["device"] and doc["date"]
    rows = doc["rows"]
    assert {r["kernel"] for r in rows} == {"fwd", "fwd_bwd", "dkdv", "dq", "dkdv_atomic_dq"}
    assert {(r["split_head_dim"], r["atomic_dq"]) for r in rows if r["kernel"] in ("fwd_bwd", "dkdv_atomic_dq")
            and r.get("family") is None} >= {(False, True), (True, True)}
    assert {r["heavy_first"] for r in rows if r["tiles"] == "default"} == {True, False}
    assert {r["split_head_dim"] for r in rows if r["kernel"] in ("dkdv", "dq")} == {True, False}
    assert {(r["split_head_dim"], r["dkdv_keys_major"]) for r in rows if r["kernel"] == "fwd_bwd"
            and r.get("family") is None} == {(False, False), (True, False), (False, True), (True, True)}
    perceiver = [r for r in rows if r.get("family") == "perceiver"]
    assert {r["kernel"] for r in perceiver} == {"fwd_bwd", "dkdv", "dq", "fwd", "dkdv_atomic_dq"}
    assert {r["split_head_dim"] for r in perceiver} == {True, False}
    assert {r["dkdv_keys_major"] for r in perceiver} == {True, False}
    assert {(r["split_head_dim"], r["dkdv_keys_major"]) for r in perceiver if r["kernel"] == "fwd_bwd"
            and r["atomic_dq"]} == {(False, False), (True, False), (False, True), (True, True)}
    assert all(r["atomic_dq"] for r in perceiver if r["kernel"] == "dkdv_atomic_dq")
    sdpa = [r for r in rows if r.get("family") == "sdpa"]
    assert sorted(r["kernel"] for r in sdpa) == ["fwd", "fwd_bwd"] and all(r["ms"] > 0 for r in sdpa), sdpa
    combined = [(r.get("family", "lm"), r["kernel"]) for r in rows if r.get("combined")]
    assert sorted(combined) == [("lm", "fwd"), ("lm", "fwd_bwd"), ("perceiver", "fwd_bwd")], combined
    # the settings: what tuning.load reads back (under the interpreter the timings are noise: any setting goes)
    from xgenmm_fast.ops.triton import tuning
    assert set(doc["settings"]) == {"lm", "perceiver"} and tuning.load(str(out)) == doc["settings"]
    for r in rows:
        if r.get("family") == "sdpa":
            continue
        assert "error" not in r, r
        assert r["ms"] > 0 and r["max_abs_diff"] < 1e-4, r  # fp32: candidates agree with the default tiles
        assert r["agrees"] and r["max_abs_err_fp32"] < 1e-4, r  # ... and with the fp32 reference
    assert any(line.startswith("lm fwd_bwd: fastest agreeing") for line in doc["recommendations"])
    assert not any(line.startswith("DISAGREES") for line in doc["recommendations"])
    versus = [line for line in doc["recommendations"] if " vs SDPA flash " in line]
    assert len(versus) == 2 and all("defaults" in line and "combined" in line for line in versus), versus


def test_agreement_flags_a_row_far_from_the_reference():
    assert sweep.agreement(0.031, 0.0156)["agrees"]  # an ulp or so of bf16 further than the default tiles
    row = sweep.agreement(0.7, 0.0156)  # the H200 sweep's wrong dK/dV candidates
    assert not row["agrees"] and row["err_vs_default"] == pytest.approx(44.9, rel=1e-2)
    assert sweep.agreement(3e-7, 0.0)["agrees"] and not sweep.agreement(1e-3, 0.0)["agrees"]


def _row(kernel, ms, tiles="default", split=False, keys_major=False, agrees=True, family=None, atomic=None):
    r = {"kernel": kernel, "tiles": tiles, "heavy_first": True, "split_head_dim": split,
         "dkdv_keys_major": keys_major, "ms": ms, "agrees": agrees, "max_abs_err_fp32": 0.01 if agrees else 0.7,
         "err_vs_default": 1.0 if agrees else 45.0}
    if atomic is not None:
        r["atomic_dq"] = atomic
    return r if family is None else {"family": family, **r}


def test_recommendations_skip_disagreeing_rows_and_compare_with_the_current_defaults():
    t = {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    u = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    rows = [_row("fwd_bwd", 6.0), _row("fwd_bwd", 5.0, split=True), _row("fwd", 1.4), _row("fwd", 1.2, split=True),
            _row("dkdv", 4.0, tiles=t, agrees=False), _row("dkdv", 5.5, tiles=u),
            _row("fwd_bwd", 2.0, family="perceiver")]
    off = {"split_head_dim": False, "dkdv_keys_major": False}
    lines = sweep.recommendations(rows, {"lm": {**off, "atomic_dq": False}, "perceiver": off})
    text = "\n".join(lines)
    assert "lm fwd_bwd: fastest agreeing default tiles, split_head_dim=True" in text and "(1.20x)" in text
    assert "lm fwd: fastest agreeing default tiles, split_head_dim=True, dkdv_keys_major=False, atomic_dq=False: 1.2 ms" in text
    # the disagreeing 4.0 ms candidate is not the dK/dV pick; the split default rows (5.0 ms) are faster
    assert "lm dkdv: fastest agreeing default tiles, split_head_dim=True" in text
    assert "DISAGREES lm dkdv BLOCK_M=32 BLOCK_N=64 num_warps=4 num_stages=2" in text
    assert "perceiver fwd_bwd: fastest agreeing default tiles" in text and "lm dq" not in text
    # an ATOMIC_DQ row: faster, it is the fwd_bwd pick; its dK/dV tile candidate that disagrees is not
    rows += [_row("fwd_bwd", 4.5, atomic=True), _row("dkdv_atomic_dq", 4.0, tiles=u, atomic=True, agrees=False)]
    lines = sweep.recommendations(rows, {"lm": {**off, "atomic_dq": False}, "perceiver": off})
    text = "\n".join(lines)
    assert "lm fwd_bwd: fastest agreeing default tiles, split_head_dim=False, dkdv_keys_major=False, atomic_dq=True: " \
           "4.5 ms vs the defaults' 6.0 ms (1.33x)" in text
    assert "lm dkdv_atomic_dq: fastest agreeing default tiles" in text and "DISAGREES lm dkdv_atomic_dq" in text
    # the defaults' own row is the baseline: with split on as the default, the split row (5.0 ms)
    lines = sweep.recommendations(rows, {"lm": {**off, "split_head_dim": True, "atomic_dq": False}, "perceiver": off})
    assert any(ln.startswith("lm fwd_bwd") and ln.endswith("4.5 ms vs the defaults' 5.0 ms (1.11x)") for ln in lines)


def test_combined_choice_takes_the_fastest_agreeing_setting_and_its_own_tiles():
    t1, t2, t3 = ({"BLOCK_M": m, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2} for m in (16, 32, 64))
    rows = [_row("fwd_bwd", 6.0, atomic=False), _row("fwd_bwd", 5.0, split=True, atomic=False),
            _row("fwd_bwd", 4.5, atomic=True),
            _row("fwd_bwd", 4.0, split=True, atomic=True, agrees=False),  # faster, but wrong: never chosen
            _row("dkdv_atomic_dq", 4.2, tiles=t1, atomic=True),
            _row("dkdv_atomic_dq", 3.9, tiles=t2, atomic=True, agrees=False),
            _row("dkdv_atomic_dq", 4.4, tiles=t3, split=True, atomic=True),  # another setting: not this one's
            _row("dkdv", 3.0, tiles=t3, atomic=False),  # the dQ-kernel backward's tiles: another setting
            _row("fwd", 1.4), _row("fwd", 1.2, tiles=t1), _row("fwd", 1.1, tiles=t2, split=True),
            _row("fwd_bwd", 4.2, atomic=True, family="perceiver")]
    switches, backward, forward = sweep.combined_choice(rows)
    assert switches == {"split_head_dim": False, "dkdv_keys_major": False, "atomic_dq": True}
    assert backward == {"dkdv_atomic_dq": t1} and forward == {"fwd": t1}
    # no tile row beats the setting's default tiles: none is taken
    slow = [r for r in rows if r["kernel"] != "dkdv_atomic_dq"] + [_row("dkdv_atomic_dq", 4.6, tiles=t1, atomic=True)]
    assert sweep.combined_choice(slow)[1] == {}
    assert sweep.combined_choice([_row("fwd", 1.4)]) is None  # no fwd+bwd setting measured


def test_versus_sdpa_puts_the_defaults_and_the_combined_row_against_sdpa():
    t = {"dkdv_atomic_dq": {"BLOCK_M": 32}}
    rows = [_row("fwd_bwd", 6.0, atomic=False), {**_row("fwd_bwd", 4.0, tiles=t, atomic=True), "combined": True},
            {"family": "sdpa", "kernel": "fwd_bwd", "tiles": "sdpa_flash", "ms": 3.0, "tflops": 200.0}]
    for r in rows[:2]:
        r["tflops"] = 100.0
    off = {"lm": {"split_head_dim": False, "dkdv_keys_major": False, "atomic_dq": False}}
    (line,) = sweep.versus_sdpa(rows, off)
    assert line.startswith("lm fwd_bwd vs SDPA flash (3.0 ms, 200.0 TFLOP/s) (target >= 0.9x)")
    assert "defaults 6.0 ms, 100.0 TFLOP/s = 0.50x SDPA's speed" in line
    assert "atomic_dq=True" in line and "4.0 ms, 100.0 TFLOP/s = 0.75x SDPA's speed" in line
    assert sweep.versus_sdpa(rows[:2], off) == []  # no SDPA row: nothing to compare with
    # the defaults are the switches in force: were ATOMIC_DQ on by default, its row would be "defaults"
    on = {"lm": {**off["lm"], "atomic_dq": True}}
    rows[1] = {k: v for k, v in rows[1].items() if k != "combined"}
    rows[1]["tiles"] = "default"
    (line,) = sweep.versus_sdpa(rows, on)
    assert "defaults 4.0 ms" in line


def test_settings_take_a_combined_row_only_where_it_agrees_and_beats_the_defaults():
    t = {"dkdv_atomic_dq": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}}
    off = {"split_head_dim": False, "dkdv_keys_major": False}
    defaults = {"lm": {**off, "atomic_dq": False}, "perceiver": {**off, "atomic_dq": False}}
    rows = [_row("fwd_bwd", 6.0, atomic=False), {**_row("fwd_bwd", 4.0, tiles=t, atomic=True), "combined": True},
            _row("fwd_bwd", 2.0, family="perceiver", atomic=False),
            {**_row("fwd_bwd", 2.5, family="perceiver", keys_major=True, atomic=False), "combined": True}]
    settings = sweep.settings_from(rows, defaults)
    assert settings == {"lm": {"split_head_dim": False, "dkdv_keys_major": False, "atomic_dq": True, "tiles": t},
                        "perceiver": {}}  # the perceiver's combined row is slower than its defaults
    rows[1]["agrees"] = False  # a combined row that disagrees is never taken
    assert sweep.settings_from(rows, defaults)["lm"] == {}


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU smoke run needs the interpreter")
def test_the_steps_deadline_stops_the_candidates(tmp_path, monkeypatch):
    """Under gpu_check.sh the step's deadline (XGENMM_TEST_DEADLINE) ends the candidates COMBINED_RESERVE_S
    early: here it is that close already, so nothing starts, and the JSON says so (no rows, default settings)."""
    import time
    monkeypatch.setenv("XGENMM_TEST_DEADLINE", str(time.time() + sweep.COMBINED_RESERVE_S / 2))
    out = tmp_path / "sweep.json"
    assert sweep.main(["--smoke", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rows"] == [] and doc["settings"] == {"lm": {}, "perceiver": {}}


def test_refuses_to_run_with_settings_applied(tmp_path, capsys):
    """Its rows and settings are relative to the built-in defaults: with XGENMM_KERNEL_SETTINGS applied it says
    so and stops."""
    from xgenmm_fast.ops.triton import tuning
    restore = tuning.apply({"lm": {"atomic_dq": True}}, source="a test")
    try:
        assert sweep.main(["--smoke", "--out", str(tmp_path / "s.json")]) == 2
    finally:
        restore()
    assert "kernel settings are applied (lm: atomic_dq (from a test))" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
