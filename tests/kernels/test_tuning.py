"""Kernel settings from a sweep (ops/triton/tuning.py): checked on load with errors naming the file and entry,
applied over the defaults (switches and the listed kernels' tiles only), undone exactly, and applied for a whole
process by XGENMM_KERNEL_SETTINGS. The settings change launches, not results: the op still matches its reference
with them (interpreter, fp32)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from xgenmm_fast.ops.triton import perceiver_attention as pa
from xgenmm_fast.ops.triton import perceiver_varlen as pv
from xgenmm_fast.ops.triton import tuning
from xgenmm_fast.ops.triton import varlen_attention as va

from ._util import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TILES = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 8, "num_stages": 2}
SETTINGS = {"lm": {"split_head_dim": True, "atomic_dq": True, "tiles": {"dkdv_atomic_dq": TILES}},
            "perceiver": {"dkdv_keys_major": True, "tiles": {"fwd": {"BLOCK_M": 16, "BLOCK_N": 32}}}}


def _state():
    return (va.SPLIT_HEAD_DIM, va.DKDV_KEYS_MAJOR, va.ATOMIC_DQ, va._cfg, pa.SPLIT_HEAD_DIM, pa.DKDV_KEYS_MAJOR,
            pa.ATOMIC_DQ, pa._cfg, pv._cfg)


def test_apply_sets_switches_and_the_listed_tiles_and_restores():
    before = _state()
    default_dq, default_fwd = va._cfg(96, "dq"), va._cfg(96, "fwd")
    restore = tuning.apply(SETTINGS)
    try:
        assert va.SPLIT_HEAD_DIM and va.ATOMIC_DQ and not va.DKDV_KEYS_MAJOR  # (not listed: unchanged)
        c = va._cfg(96, "dkdv_atomic_dq")
        assert {k: c[k] for k in TILES} == TILES and (c["BLOCK_DA"], c["BLOCK_DB"]) == (64, 32)  # split head dim
        assert {k: va._cfg(96, "dq")[k] for k in TILES} == {k: default_dq[k] for k in TILES}  # not listed
        assert va._cfg(96, "fwd")["BLOCK_DB"] == 32 != default_fwd["BLOCK_DB"]  # the split applies to every kernel
        assert pa.DKDV_KEYS_MAJOR and pa._cfg is pv._cfg  # perceiver_varlen imported _cfg by name: both wrapped
        assert (pa._cfg(96, "fwd")["BLOCK_M"], pa._cfg(96, "fwd")["BLOCK_N"]) == (16, 32)
        assert tuning.describe() == ("lm: split_head_dim, atomic_dq, dkdv_atomic_dq=32x16/8w/2s; "
                                     "perceiver: dkdv_keys_major, fwd=16x32/-w/-s")
        again = tuning.apply({"lm": {"tiles": {"dq": {"BLOCK_M": 16}}}})  # on top: both tile sets hold, and say so
        assert va._cfg(96, "dq")["BLOCK_M"] == 16 and va._cfg(96, "dkdv_atomic_dq")["BLOCK_M"] == 32
        assert tuning.describe().startswith("lm: split_head_dim, atomic_dq, dkdv_atomic_dq=32x16/8w/2s, dq=16x-/-w/-s")
        again()
        assert ", dq=" not in tuning.describe()
    finally:
        restore()
    assert _state() == before and tuning.describe() == "defaults"


@pytest.mark.parametrize("bad,message", [
    ({"vision": {}}, "unknown family 'vision'"),
    ({"lm": {"atomic_dq": "yes"}}, "lm.atomic_dq: expected true or false"),
    ({"lm": {"heavy_first": True}}, "unknown keys ['heavy_first']"),
    ({"lm": {"tiles": {"dkdv": {"BLOCK_M": 48}}}}, "lm.tiles.dkdv.BLOCK_M: expected a power of two >= 16"),
    ({"lm": {"tiles": {"dkdv": {"num_warps": 3}}}}, "lm.tiles.dkdv.num_warps"),
    ({"lm": {"tiles": {"dkdv": {"BLOCK_K": 16}}}}, "lm.tiles.dkdv: expected an object with some of"),
    ({"perceiver": {"tiles": {"fwd_window": {"BLOCK_M": 16}}}}, "unknown kernel 'fwd_window'"),
])
def test_bad_settings_name_the_file_and_the_entry(tmp_path, bad, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"settings": bad}))
    with pytest.raises(ValueError) as e:
        tuning.load(str(path))
    assert str(path) in str(e.value) and message in str(e.value)


def test_load_reads_a_sweep_document_or_bare_settings(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": [], "settings": SETTINGS}))
    (tmp_path / "bare.json").write_text(json.dumps(SETTINGS))
    assert tuning.load(str(tmp_path / "sweep.json")) == tuning.load(str(tmp_path / "bare.json")) == SETTINGS
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}))  # a sweep from before settings existed
    with pytest.raises(ValueError, match="without `settings`"):
        tuning.load(str(tmp_path / "old.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: JSONDecodeError"):
        tuning.load(str(tmp_path / "broken.json"))


def test_settings_change_launches_not_results(seed):
    """The LM attention under the settings (split head dim, dQ by atomics with its own tiles) against its fp64
    reference, forward and backward."""
    if DEVICE == "cuda":
        pytest.skip("interpreter tiles (the GPU's are the settings' own: the variant tests cover the switches)")
    from xgenmm_fast.ops.attention import varlen_attention_reference
    from xgenmm_fast.ops.triton.varlen_attention import varlen_attention_triton

    from ._util import TOL_ATTN_BWD, as64, check, leaf
    cu = torch.tensor([0, 37, 40, 90], dtype=torch.int32)
    q, k, v = (leaf(torch.randn(90, 2, 24), torch.float32) for _ in range(3))
    restore = tuning.apply({"lm": {"split_head_dim": True, "atomic_dq": True,
                                   "tiles": {"dkdv_atomic_dq": {"BLOCK_M": 32, "BLOCK_N": 16}}}})
    try:
        out = varlen_attention_triton(q, k, v, cu)
    finally:
        restore()
    do = torch.randn(out.shape)
    out.backward(do)
    ins = as64(q, k, v)
    ref = varlen_attention_reference(*ins, cu)
    ref.backward(do.double())
    check("tuned_fwd_bwd", [out, q.grad, k.grad, v.grad], [ref] + [t.grad for t in ins], TOL_ATTN_BWD[torch.float32])


def test_environment_applies_a_file_for_the_process_and_rejects_a_bad_one(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(SETTINGS))
    bad.write_text(json.dumps({"lm": {"atomic_dq": 1}}))
    code = ("import xgenmm_fast.ops as ops; from xgenmm_fast.ops.triton import varlen_attention as va; "
            "print(va.ATOMIC_DQ, va.SPLIT_HEAD_DIM); print(ops.kernel_settings())")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", code], env={**env, tuning.ENV: str(good)}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    first, second = p.stdout.strip().splitlines()
    assert first == "True True" and second.startswith("lm: split_head_dim, atomic_dq") and str(good) in second
    p = subprocess.run([sys.executable, "-c", code], env={**env, tuning.ENV: str(bad)}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and f"{tuning.ENV}: kernel settings {bad}: lm.atomic_dq" in p.stderr
