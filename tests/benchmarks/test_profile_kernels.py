"""profile_kernels (per-kernel times of bench_kernels rows): its --smoke run profiles the named rows, lists
their operators with per-call times, writes its JSON, and fails on a row name bench_kernels does not have."""
from __future__ import annotations

import json
import os

import pytest

from ._bench import load

prof = load("profile_kernels")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU smoke run needs the interpreter")
def test_smoke_rows_and_unknown_name(tmp_path):
    out = tmp_path / "p.json"
    assert prof.main(["--smoke", "--only", "rms_norm_fwd_bwd,swiglu_fwd", "--calls", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["script"] == "profile_kernels" and set(doc["rows"]) == {"rms_norm_fwd_bwd", "swiglu_fwd"}
    for row in doc["rows"].values():
        assert row["wall_us_per_call"] > 0 and row["cpu_us_per_call"] > 0
        assert row["kernels"] and all(k["us_per_call"] > 0 for k in row["kernels"])
    assert any("rms_norm" in k["kernel"] for k in doc["rows"]["rms_norm_fwd_bwd"]["kernels"])
    assert prof.main(["--smoke", "--only", "no_such_row", "--calls", "1"]) == 1
