"""Set before any test imports xgenmm_fast: without a GPU, Triton kernels run under the interpreter
(read when kernels are defined, so it must precede the first import of xgenmm_fast.ops.triton). The
Triton backends are then registered but not preferred on the CPU: every other test keeps the defaults.

Tests marked `gpu` (bf16, torch.compile, CUDA kernels, the model on CUDA) are skipped — visibly — when
no CUDA device exists; scripts/gpu_check.sh runs them on a GPU machine. Any other skip there fails the run
(exit 1, the tests and reasons listed): on the CPU every test that is not `gpu` must run, so a missing
dependency or an unbuilt extension cannot pass CI as a row of skips.
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
_unexpected_skips = []  # (nodeid, reason) of skips on a machine without CUDA of tests not marked gpu


def pytest_runtest_setup(item):
    if _DEADLINE and time.time() > _DEADLINE:
        pytest.skip(DEADLINE_REASON)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


def pytest_runtest_logreport(report):  # in the xdist controller too: it replays its workers' reports
    if not report.skipped:
        return
    reason = _skip_reason(report)
    if DEADLINE_REASON in reason:
        _not_run.append(report.nodeid)
    elif not HAS_CUDA and "gpu" not in report.keywords:
        _unexpected_skips.append((report.nodeid, reason))


def pytest_collectreport(report):
    # a whole module skipped at collection (pytest.importorskip or pytest.skip(allow_module_level=True))
    if report.skipped and not HAS_CUDA:
        _unexpected_skips.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus):
    # (not in an xdist worker: the controller counts the workers' skips too, and xdist reads a worker's exit 2 as
    # a keyboard interrupt)
    if exitstatus != pytest.ExitCode.OK or hasattr(session.config, "workerinput"):
        return
    if _unexpected_skips:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif _not_run:
        session.exitstatus = pytest.ExitCode.INTERRUPTED


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.write_line(f"{len(_unexpected_skips)} tests skipped that are not marked gpu: on a machine "
                                    "without CUDA every other test must run (tests/conftest.py); failing", red=True)
        for nodeid, reason in _unexpected_skips:
            terminalreporter.write_line(f"  {nodeid}: {reason}", red=True)
    if _not_run:
        terminalreporter.write_line(f"{len(_not_run)} tests not run: the step's time ran out "
                                    "(XGENMM_TEST_DEADLINE); they are the skips with that reason", red=True)
