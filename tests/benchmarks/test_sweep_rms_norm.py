"""sweep_rms_norm (GPU launch-option sweep of the RMSNorm backward): its --smoke run under the interpreter
measures the defaults and candidates, checks each against the defaults' gradients, restores BWD_TUNING and
writes its JSON. CPU, seconds."""
from __future__ import annotations

import json
import os

import pytest

from ._bench import load

sweep = load("sweep_rms_norm")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU smoke run needs the interpreter")
def test_smoke_rows_and_restored_options(tmp_path):
    import xgenmm_fast.ops.triton.rms_norm as rn
    before = dict(rn.BWD_TUNING)
    out = tmp_path / "rms.json"
    assert sweep.main(["--smoke", "--out", str(out)]) == 0
    assert rn.BWD_TUNING == before
    doc = json.loads(out.read_text())
    assert doc["script"] == "sweep_rms_norm" and doc["device"] and doc["shape"] == [37, 200]
    rows = doc["rows"]
    assert rows[0]["default"] and len(rows) == 6
    assert rows[1]["options"]["max_registers"] == 64
    assert {(r["options"]["rows_per_step"], r["options"].get("prefetch", False)) for r in rows} == {
        (1, False), (1, True), (2, False), (4, False)}
    for r in rows:
        assert "error" not in r, r
        assert r["ms"] > 0 and r["max_abs_diff"] < 1e-4, r
        assert r["agrees"] and r["max_abs_err_fp32"] < 1e-4, r  # fp32: against the reference too
        assert r["eager_ms"] > 0 and r["timer"] == "one call (smoke)", r  # on a GPU: "cuda_graph"
