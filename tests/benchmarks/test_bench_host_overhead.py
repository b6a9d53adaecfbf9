"""bench_host_overhead (host µs per call of the Triton ops, eager path vs custom op, launches stubbed out): its
--smoke run writes the common format with both paths per case, restores the kernel launchers and the eager
switch, and the stub really launches nothing. CPU under the interpreter, seconds."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ._bench import load

host = load("bench_host_overhead")
common = load("_common")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU smoke run needs the interpreter")
def test_smoke_rows_both_paths_and_restored_state(tmp_path):
    from triton.runtime.interpreter import InterpretedFunction

    from xgenmm_fast.ops.triton import _utils
    getitem, eager = InterpretedFunction.__dict__.get("__getitem__"), _utils.eager
    out = tmp_path / "host.json"
    assert host.main(["--smoke", "--only", "rms_norm_fwd_bwd,decode_attn_fwd", "--out", str(out)]) == 0
    assert InterpretedFunction.__dict__.get("__getitem__") is getitem and _utils.eager is eager
    doc = json.loads(out.read_text())
    common.validate(doc)
    rows = {r["name"]: r for r in doc["results"]}
    assert set(rows) == {"host_overhead/rms_norm_fwd_bwd", "host_overhead/decode_attn_fwd"}
    for r in rows.values():
        assert r["ours"]["impl"] == "eager path" and r["baseline"]["impl"] == "custom op"
        assert r["ours"]["value"] > 0 and r["baseline"]["value"] > 0 and r["ours"]["unit"] == "us"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU: interpreted kernels")
def test_no_kernel_runs_under_the_stub_on_either_path(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    runs = []
    real_run = InterpretedFunction.run
    monkeypatch.setattr(InterpretedFunction, "run", lambda self, *a, **k: runs.append(1) or real_run(self, *a, **k))
    x, w = torch.randn(3, 16, requires_grad=True), torch.randn(16)
    with host.no_kernel_launches():
        rms_norm_triton(x, w, 1e-5).sum().backward()
        with host.custom_op_path():
            rms_norm_triton(x, w, 1e-5).sum().backward()
    assert runs == []
    rms_norm_triton(x, w, 1e-5).sum().backward()  # launchers restored: forward and backward kernels run
    assert len(runs) == 2
