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
                pa.DKDV_KEYS_MAJOR)
    before = state()
    out = tmp_path / "sweep.json"
    assert sweep.main(["--smoke", "--out", str(out)]) == 0
    assert state() == before
    doc = json.loads(out.read_text())
    assert doc["script"] == "sweep_attention_tiles" and doc["device"] and doc["date"]
    rows = doc["rows"]
    assert {r["kernel"] for r in rows} == {"fwd", "fwd_bwd", "dkdv", "dq"}
    assert {r["heavy_first"] for r in rows if r["tiles"] == "default"} == {True, False}
    assert {r["split_head_dim"] for r in rows if r["kernel"] in ("dkdv", "dq")} == {True, False}
    assert {(r["split_head_dim"], r["dkdv_keys_major"]) for r in rows if r["kernel"] == "fwd_bwd"
            and r.get("family") is None} == {(False, False), (True, False), (False, True), (True, True)}
    assert {r["kernel"] for r in rows if r.get("family") == "perceiver"} == {"fwd_bwd", "dkdv", "dq", "fwd"}
    assert {r["split_head_dim"] for r in rows if r.get("family") == "perceiver"} == {True, False}
    assert {r["dkdv_keys_major"] for r in rows if r.get("family") == "perceiver"} == {True, False}
    for r in rows:
        assert "error" not in r, r
        assert r["ms"] > 0 and r["max_abs_diff"] < 1e-4, r  # fp32: candidates agree with the default tiles
