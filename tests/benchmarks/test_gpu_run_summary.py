"""scripts/gpu_run_summary.py: reads a GPU run's logs.tar.gz (junit XML per pytest step, steps.txt), counts
passed / failed / skipped and the tests the deadline left unrun, lists failures, and exits 0 only when every
test step ran all its tests and none failed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_run_summary.py")


def _junit(cases: list[str]) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">' + "".join(cases)
            + "</testsuite></testsuites>")


PASS = '<testcase classname="tests.kernels.test_a" name="test_ok[{i}]" time="0.1" />'
SKIP = ('<testcase classname="tests.kernels.test_a" name="test_cpu_only[{i}]"><skipped type="pytest.skip" '
        'message="interpreter tile sizes only">skip</skipped></testcase>')
LATE = ('<testcase classname="tests.kernels.test_b" name="test_late[{i}]"><skipped type="pytest.skip" '
        'message="not run: the step\'s time ran out (XGENMM_TEST_DEADLINE)">skip</skipped></testcase>')
FAIL = ('<testcase classname="tests.kernels.test_c" name="test_bad"><failure message="AssertionError: rel err 0.3 '
        '&gt; 0.02&#10;second line">trace</failure></testcase>')


def _run(tmp_path, files: dict[str, str]):
    folder = tmp_path / "check"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    logs = tmp_path / "logs.tar.gz"
    with tarfile.open(logs, "w:gz") as tar:
        tar.add(folder, arcname="./check")
    return subprocess.run([sys.executable, SCRIPT, str(logs), "--run", "5", "--commit", "abc1234"],
                          capture_output=True, text=True, timeout=60)


def test_a_complete_passing_run_exits_0(tmp_path):
    ok = _junit([PASS.format(i=i) for i in range(3)] + [SKIP.format(i=0)])
    steps = "\n".join(json.dumps({"step": s, "rc": 0, "seconds": 9, "limit_s": 100})
                      for s in ("pytest_kernels", "pytest_model", "pytest_kernel_variants"))
    p = _run(tmp_path, {"pytest_kernels.xml": ok, "pytest_model.xml": ok, "pytest_kernel_variants.xml": ok,
                        "steps.jsonl": steps})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all GPU tests ran and passed" in p.stdout and "NOT" not in p.stdout
    assert p.stdout.strip().splitlines()[-1] == ("| 5 | abc1234 | 3 passed, 0 failed, 1 skipped | 3 passed, 0 failed, "
                                                 "1 skipped | 3 passed, 0 failed, 1 skipped | none |")
    assert "interpreter tile sizes only" in p.stdout  # the skips' reasons, counted


def test_failures_unrun_tests_and_missing_steps_exit_1(tmp_path):
    p = _run(tmp_path, {"pytest_kernels.xml": _junit([PASS.format(i=0), FAIL]),
                        "pytest_kernel_variants.xml": _junit([PASS.format(i=0)] + [LATE.format(i=i) for i in range(4)]),
                        "steps.jsonl": json.dumps({"step": "pytest_model", "rc": 124, "seconds": 75, "limit_s": 75})})
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert "FAILED tests.kernels.test_c::test_bad: AssertionError: rel err 0.3 > 0.02" in out
    assert "second line" not in out  # one line per failure
    assert "1 passed, 0 failed, 0 skipped, 4 not run (time ran out)" in out
    assert "no junit XML" in out and "TIMEOUT" in out and "NOT all GPU tests ran and passed" in out


def test_no_junit_at_all_exits_2(tmp_path):
    p = _run(tmp_path, {"steps.jsonl": ""})
    assert p.returncode == 2 and "no junit XML" in p.stderr
