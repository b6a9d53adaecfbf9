"""The Triton backends in the ops dispatch: registration, default choice, forcing, fallbacks, compile."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from xgenmm_fast.ops import dispatch, norms
from xgenmm_fast.ops.triton import register_backends

from ._util import DEVICE, TOL, check

OPS = ["rms_norm", "rope", "swiglu", "linear_cross_entropy", "linear_token_logprobs", "varlen_attention",
       "decode_attention", "perceiver_attention", "perceiver_attention_varlen", "merge_vision_tokens"]


def test_backends_registered_and_available():
    assert {op for op, _ in register_backends()} == set(OPS)
    for op in OPS:
        assert "triton" in dispatch.available_backends(op), op


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU default choice")
def test_cpu_default_choice_is_unchanged():
    register_backends()
    chosen = dispatch.report()
    for op in OPS:
        assert chosen[op] != "triton", f"{op}: the Triton backend must not be the CPU default"
    assert chosen["varlen_attention"] == "sdpa" and chosen["rms_norm"] == "reference"


@pytest.mark.gpu
def test_cuda_prefers_triton():
    register_backends()
    chosen = dispatch.report()
    for op in OPS:
        assert chosen[op] == "triton", op


def test_forced_backend_runs_the_kernel(seed):
    register_backends()
    x, w = torch.randn(4, 33, device=DEVICE), torch.randn(33, device=DEVICE)
    dispatch.set_backend("rms_norm", "triton")
    try:
        assert dispatch.choose("rms_norm").name == "triton"
        y = norms.rms_norm(x, w, 1e-5)
    finally:
        dispatch.set_backend("rms_norm", None)
    check("forced", [y], [norms.rms_norm_reference(x, w, 1e-5)], TOL[torch.float32])


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only fallback")
def test_bf16_under_interpreter_falls_back_to_reference():
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    x, w = torch.randn(3, 16, dtype=torch.bfloat16), torch.randn(16, dtype=torch.bfloat16)
    assert torch.equal(rms_norm_triton(x, w, 1e-5), norms.rms_norm_reference(x, w, 1e-5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU import path")
def test_import_without_gpu_or_interpreter_registers_nothing():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import xgenmm_fast, xgenmm_fast.ops as o, xgenmm_fast.ops.triton as t; "
            "assert t.REGISTERED == [], t.REGISTERED; assert 'triton' not in o.available_backends('rms_norm')")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.gpu
def test_torch_compile_over_triton_ops(seed):
    """torch.compile traces through the triton_op custom ops (fails under the interpreter: GPU only)."""
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    from xgenmm_fast.ops.triton.swiglu import swiglu_triton
    from xgenmm_fast.ops.triton.varlen_attention import varlen_attention_triton

    def f(x, w, gu, q, k, v, cu):
        return rms_norm_triton(x, w, 1e-5).sum() + swiglu_triton(gu).sum() + \
            varlen_attention_triton(q, k, v, cu, max_seqlen=64).float().sum()

    args = [torch.randn(8, 96, device="cuda", requires_grad=True), torch.randn(96, device="cuda", requires_grad=True),
            torch.randn(8, 64, device="cuda", requires_grad=True)]
    args += [torch.randn(100, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    args.append(torch.tensor([0, 64, 100], dtype=torch.int32, device="cuda"))
    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True)(*args)
    compiled.backward()
    assert abs(eager.item() - compiled.item()) <= 1e-3 * abs(eager.item()) + 1e-2
