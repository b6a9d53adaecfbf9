"""Set before any test imports xgenmm_fast: without a GPU, Triton kernels run under the interpreter
(read when kernels are defined, so it must precede the first import of xgenmm_fast.ops.triton). The
Triton backends are then registered but not preferred on the CPU: every other test keeps the defaults.

Tests marked `gpu` (bf16, torch.compile, CUDA kernels, the model on CUDA) are skipped — visibly — when
no CUDA device exists; scripts/gpu_check.sh runs them on a GPU machine.
"""
import os
import time

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (bf16, torch.compile, CUDA kernels); skipped without one")
    config.addinivalue_line("markers", "variant: an off-by-default kernel variant (a GPU sweep candidate); "
                                       "scripts/gpu_check.sh runs these after the default paths' tests")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run by scripts/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# XGENMM_TEST_DEADLINE (epoch seconds; scripts/lib/steps.sh sets it a margin before each step's time limit): a
# test that has not started by then is skipped with DEADLINE_REASON, and the session fails (exit 2) and says how
# many did not run. A step that runs out of time then still ends with its summary and junit XML, which name
# every test that passed, failed or never ran; a pytest killed by the step's timeout names none.
DEADLINE_REASON = "not run: the step's time ran out (XGENMM_TEST_DEADLINE)"
_DEADLINE = float(os.environ.get("XGENMM_TEST_DEADLINE") or 0)
_not_run = []


def pytest_runtest_setup(item):
    if _DEADLINE and time.time() > _DEADLINE:
        pytest.skip(DEADLINE_REASON)


def pytest_runtest_logreport(report):  # in the xdist controller too: it replays its workers' reports
    if report.skipped and DEADLINE_REASON in str(report.longrepr):
        _not_run.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # (not in an xdist worker: the controller counts the workers' skips too, and xdist reads a worker's exit 2 as
    # a keyboard interrupt)
    if _not_run and exitstatus == pytest.ExitCode.OK and not hasattr(session.config, "workerinput"):
        session.exitstatus = pytest.ExitCode.INTERRUPTED


def pytest_terminal_summary(terminalreporter):
    if _not_run:
        terminalreporter.write_line(f"{len(_not_run)} tests not run: the step's time ran out "
                                    "(XGENMM_TEST_DEADLINE); they are the skips with that reason", red=True)
