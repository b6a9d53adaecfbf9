"""The Triton backends' eager path (`ops/triton/_utils.TritonOp`): in eager mode on plain tensors they run
their custom ops' Python bodies directly, through a plain autograd.Function with the ops' own setup_context
and backward. The whole tiny model's packed training step, every op on its Triton backend (interpreter on the
CPU), gives bit for bit the loss and gradients of the custom-op path, while dispatching no custom op."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xgenmm_fast.ops import dispatch
from xgenmm_fast.ops.triton import _utils

from .test_packed_fused import _batch
from ._tiny import tiny_model

TRITON_OPS = ("rms_norm", "rope", "swiglu", "linear_cross_entropy", "varlen_attention", "perceiver_attention_varlen",
              "merge_vision_tokens")


class CustomOpCalls(TorchDispatchMode):
    """Names of the xgenmm_triton custom ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "xgenmm_triton":
            self.names.append(func.__name__.split(".")[0])  # "rms_norm_fwd.default" -> "rms_norm_fwd"
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny_wide", seed=31)


def _step(model, batch):
    """loss_sum and every parameter gradient of one packed forward + backward, and the custom ops called."""
    model.zero_grad(set_to_none=True)
    calls = CustomOpCalls()
    with calls:
        loss = model.forward_packed(batch)["loss_sum"]
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, calls.names


def test_eager_path_equals_the_custom_ops_and_skips_them(model, monkeypatch):
    available = [op for op in TRITON_OPS if "triton" in dispatch.available_backends(op)]
    if len(available) != len(TRITON_OPS):
        pytest.skip("Triton backends not registered here")
    batch = _batch(model, torch.Generator().manual_seed(4), shared=False)
    for op in TRITON_OPS:
        dispatch.set_backend(op, "triton")
    try:
        loss, grads, eager_calls = _step(model, batch)
        monkeypatch.setattr(_utils, "eager", lambda *tensors: False)  # every call through the custom op
        op_loss, op_grads, op_calls = _step(model, batch)
    finally:
        for op in TRITON_OPS:
            dispatch.set_backend(op, None)
    assert eager_calls == [], eager_calls
    # the custom-op run went through the forward and backward op of every fused op the step uses
    assert {"rms_norm_fwd", "rms_norm_bwd", "swiglu_fwd", "swiglu_bwd", "rope_fwd", "rope_bwd", "varlen_attn_fwd",
            "varlen_attn_bwd"} <= set(op_calls), sorted(set(op_calls))
    assert torch.equal(loss, op_loss)
    assert grads.keys() == op_grads.keys() and len(grads) > 10
    for name, g in grads.items():
        assert torch.equal(g, op_grads[name]), name


def test_no_grad_calls_run_the_body_without_a_graph():
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_triton
    x, w = torch.randn(5, 24, requires_grad=True), torch.randn(24, requires_grad=True)
    with torch.no_grad(), CustomOpCalls() as calls:
        y = rms_norm_triton(x, w, 1e-5)
    assert calls.names == [] and not y.requires_grad and y.grad_fn is None
    y = rms_norm_triton(x, w, 1e-5)
    assert type(y.grad_fn).__name__.startswith("rms_norm_fwd")  # the eager autograd.Function


def test_tensor_subclasses_and_compiling_take_the_custom_op(monkeypatch):
    """FakeTensors (torch.compile's tracing makes them), and anything while torch.compile traces, go through
    the custom op; plain tensors and parameters take the eager path."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, w = torch.empty(7, 40), torch.nn.Parameter(torch.empty(40))
    assert _utils.eager(x, w, None)
    with FakeTensorMode():
        assert not _utils.eager(torch.empty(7, 40), torch.empty(40))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not _utils.eager(x, w)


@pytest.mark.gpu
def test_fake_tensors_get_shapes_from_the_custom_op():
    """On the GPU (the interpreter cannot run on FakeTensors): the op's fake implementation, no kernel run."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from xgenmm_fast.ops.triton.rms_norm import rms_norm_fwd
    with FakeTensorMode():
        x, w = torch.empty(7, 40, device="cuda"), torch.empty(40, device="cuda")
        y, rstd = rms_norm_fwd(x, w, 1e-5)
    assert y.shape == (7, 40) and rstd.shape == (7,)
