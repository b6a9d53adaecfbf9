"""The C++ packing planner (xgenmm_fast._C.plan_rows_ffd, csrc/packing) against the Python reference
xgenmm_fast.data.planner.plan_rows_reference: the same rows, in the same order, with the same indices in
the same order, on fresh random inputs every run (the seed is printed; pin it with XGENMM_TEST_SEED=<int>).
Plus input conversion (list, tuple, numpy, tensors), errors, and a timing printout (no timing asserts).
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time

import numpy as np
import pytest
import torch

from xgenmm_fast import _ext
from xgenmm_fast.data.planner import plan_rows, plan_rows_reference

pytestmark = pytest.mark.skipif(
    not (_ext.HAS_CPP_EXT and hasattr(_ext._C, "plan_rows_ffd")),
    reason="C++ extension with plan_rows_ffd not built (pip install --no-build-isolation -e .)",
)


def fresh_rng(label: str) -> random.Random:
    env = os.environ.get("XGENMM_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    print(f"random seed for {label}: {seed} (rerun with XGENMM_TEST_SEED={seed})")
    return random.Random(seed)


def random_lengths(rng: random.Random, n: int, budget: int) -> list[int]:
    """Token counts mixing zeros, small samples, samples near the budget, over-budget ones and ties."""
    hi = min(budget + budget // 2 + 1, 2**62)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.05:
            out.append(0)
        elif kind < 0.10:
            out.append(min(budget + rng.randint(0, 2**40), 2**62))  # over-long, any size
        elif kind < 0.20:
            out.append(budget // 2)  # many ties
        else:
            out.append(rng.randint(1, hi))
    return out


def cpp_plan(lengths, budget):
    return _ext.cpp_function("plan_rows_ffd")(lengths, budget)


# (n, budget): every size with small and large budgets; the O(n * rows) reference bounds the big cases
CASES = [(n, b) for n in (0, 1, 2, 3, 7, 64, 101, 999) for b in (1, 2, 7, 100, 4096, 10**12)]
CASES += [(2_001, 64), (5_000, 1_000), (10_000, 4096), (10_000, 10**9)]


@pytest.mark.parametrize("n,budget", CASES)
def test_matches_reference(n, budget):
    rng = fresh_rng(f"n={n} budget={budget}")
    for _ in range(3 if n < 1000 else 1):
        lengths = random_lengths(rng, n, budget)
        ref = plan_rows_reference(lengths, budget)
        assert cpp_plan(lengths, budget) == ref
        assert cpp_plan(torch.tensor(lengths, dtype=torch.int64), budget) == ref


def test_matches_reference_on_realistic_lengths():
    """Text-like lognormal lengths, some with 128-token image tiles, rows of 4096 (the training case)."""
    rng = fresh_rng("realistic")
    lengths = [
        int(rng.lognormvariate(5.0, 0.8)) + (128 * rng.choice((3, 4, 5)) if rng.random() < 0.85 else 0)
        for _ in range(10_000)
    ]
    assert cpp_plan(lengths, 4096) == plan_rows_reference(lengths, 4096)


def test_hand_checked():
    assert cpp_plan([], 10) == []
    assert cpp_plan([5, 7, 3, 6, 2], 10) == [[1, 2], [3, 4], [0]]
    assert cpp_plan([4, 2, 4], 10) == [[0, 2, 1]]  # ties by index
    assert cpp_plan([3, 12, 11, 7], 10) == [[1], [2], [3, 0]]  # over-long samples: a row each
    assert cpp_plan([0, 10, 0], 10) == [[1, 0, 2]]  # zero-length samples fit anywhere, even a full row
    assert cpp_plan([7, 4, 4, 2], 10) == [[0, 3], [1, 2]]  # first fit, not best fit


def test_input_types_agree():
    lengths = [5, 7, 3, 6, 2, 9, 0, 11]
    want = plan_rows_reference(lengths, 10)
    for x in (
        lengths,
        tuple(lengths),
        torch.tensor(lengths),
        torch.tensor(lengths, dtype=torch.int32),
        torch.tensor(lengths, dtype=torch.uint8),
        torch.tensor([0] + lengths)[1:],  # a view with an offset
        torch.tensor(lengths).repeat_interleave(2)[::2],  # non-contiguous
        np.array(lengths),
        [np.int32(v) for v in lengths],
    ):
        assert cpp_plan(x, 10) == want, type(x)
    assert cpp_plan(torch.empty(0, dtype=torch.int64), 10) == []
    assert cpp_plan([2**62, 1], 2**62) == [[0], [1]]  # int64 extremes


def test_public_plan_rows_uses_cpp_and_agrees():
    rng = fresh_rng("plan_rows")
    lengths = random_lengths(rng, 500, 300)
    assert plan_rows(lengths, 300) == plan_rows_reference(lengths, 300)


@pytest.mark.parametrize("budget", [0, -1, -(2**40)])
def test_bad_budget_raises_value_error(budget):
    with pytest.raises(ValueError, match="budget must be positive"):
        cpp_plan([1, 2, 3], budget)
    with pytest.raises(ValueError, match="budget must be positive"):
        cpp_plan([], budget)


def test_bad_lengths():
    with pytest.raises(ValueError, match=r"lengths\[1\] = -3 is negative"):
        cpp_plan([4, -3, 2], 10)
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 is negative"):
        cpp_plan(torch.tensor([-1, 5]), 10)
    with pytest.raises(TypeError, match=r"lengths\[1\] is a 'float'"):
        cpp_plan([1, 2.5], 10)
    with pytest.raises(TypeError, match="1-D"):
        cpp_plan(torch.ones(2, 3, dtype=torch.int64), 10)
    with pytest.raises(TypeError, match="integer dtype"):
        cpp_plan(torch.ones(3), 10)
    with pytest.raises(TypeError, match="sequence"):
        cpp_plan(5, 10)
    with pytest.raises(OverflowError):
        cpp_plan([2**63], 10)


def test_garbage_collector_state_is_kept():
    lengths = list(range(1, 3000))
    assert gc.isenabled()
    cpp_plan(lengths, 100)
    assert gc.isenabled()
    gc.disable()
    try:
        cpp_plan(lengths, 100)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_calls_agree():
    """Planning runs without the GIL: threads planning at once must not disturb each other."""
    rng = fresh_rng("threads")
    inputs = [random_lengths(rng, 20_000, 4096) for _ in range(4)]
    want = [cpp_plan(x, 4096) for x in inputs]
    got: list = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            got[i] = cpp_plan(torch.tensor(inputs[i]), 4096)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_speed_sanity():
    """Prints timings (run with -s); asserts only that the big plan is valid."""
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(6.5, 0.6)) for _ in range(200_000)]
    t0 = time.perf_counter()
    rows = cpp_plan(lengths, 4096)
    t_cpp = time.perf_counter() - t0
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(len(r) == 1 or sum(lengths[i] for i in r) <= 4096 for r in rows)
    small = lengths[:5_000]
    t0 = time.perf_counter()
    plan_rows_reference(small, 4096)
    t_ref = time.perf_counter() - t0
    print(f"C++ plan_rows_ffd: 200k samples {t_cpp * 1e3:.1f} ms; Python reference: 5k samples {t_ref * 1e3:.1f} ms")
