"""The step runner of the benchmark and GPU scripts (scripts/lib/steps.sh) and gpu_session.sh, on the CPU: a
step past its cap is stopped with SIGINT first (Python gets a KeyboardInterrupt, so pytest would still write
its summary and junit XML), recorded as a timeout, and fails the script's status; a step with under 10 s left
before the deadline is skipped and fails it too; gpu_session.sh checks its arguments and leaves the kernel
check's results in its output folder before the end-to-end part starts; the tests a step's pytest has not
started by XGENMM_TEST_DEADLINE are skipped with that reason and fail the session. ~30 s."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = os.path.join(ROOT, "scripts", "lib", "steps.sh")


def _run_steps(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    script = f"""
set -uo pipefail
source {STEPS}
PY={sys.executable}
STEP_LOGS={tmp_path} STEP_RESERVE=0
STEP_DEADLINE=$(( $(date +%s) + 60 ))
: >{tmp_path}/steps.jsonl
{body}
echo "status=$status"
"""
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    return p, steps


def test_a_step_past_its_cap_is_interrupted_and_fails_the_status(tmp_path):
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n"
                       "    print('interrupted cleanly', flush=True)\n    raise\n")
    p, steps = _run_steps(tmp_path, f"""
step quick 10 "$PY" -c "print('ok')"
step slow 10 "$PY" {sleeper}
""")
    assert p.returncode == 0, p.stderr
    assert [s["step"] for s in steps] == ["quick", "slow"]
    assert steps[0]["rc"] == 0 and steps[1]["rc"] == 124 and steps[1]["seconds"] < 25
    assert "interrupted cleanly" in (tmp_path / "slow.log").read_text()  # SIGINT reached Python first
    assert "TIMEOUT after 10s" in p.stdout and "status=1" in p.stdout


def test_a_step_tells_its_tests_when_to_stop_starting(tmp_path):
    """XGENMM_TEST_DEADLINE: the step's limit minus a margin (a fifth of it, at most 25 s)."""
    p, steps = _run_steps(tmp_path, """
t0=$(date +%s)
step short 10 bash -c 'echo $(( XGENMM_TEST_DEADLINE - '$t0' ))'
step long 200 bash -c 'echo $(( XGENMM_TEST_DEADLINE - '$t0' ))'
""")
    assert [s["rc"] for s in steps] == [0, 0], p.stdout
    short, long = (int((tmp_path / f"{n}.log").read_text()) for n in ("short", "long"))
    # short: limit 10, margin 2; long: capped by the 60 s deadline, margin 12 (either may start a second late)
    assert short in (7, 8, 9) and long in (47, 48, 49)


def test_tests_past_the_deadline_are_skipped_by_name_and_fail_the_session(tmp_path):
    env = {**os.environ, "XGENMM_TEST_DEADLINE": "1"}  # long past
    p = subprocess.run([sys.executable, "-m", "pytest", os.path.join(ROOT, "tests", "kernels", "test_dispatch.py"),
                        "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'j.xml'}"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert p.returncode == 2, p.stdout[-2000:]  # interrupted, not passed
    assert "tests not run: the step's time ran out" in p.stdout
    assert "passed" not in p.stdout.splitlines()[-1]
    junit = (tmp_path / "j.xml").read_text()
    assert junit.count("the step's time ran out") >= 1 and 'failures="0"' in junit


def test_a_step_without_time_left_is_skipped_and_fails_the_status(tmp_path):
    p, steps = _run_steps(tmp_path, """
STEP_DEADLINE=$(( $(date +%s) + 3 ))
step late 30 "$PY" -c "print('never')"
""")
    assert steps == [{"step": "late", "rc": None, "skipped": "no time left before the deadline"}]
    assert "SKIPPED" in p.stdout and "status=1" in p.stdout
    assert not (tmp_path / "late.log").exists()


def test_gpu_session_rejects_unknown_parts(tmp_path):
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_session.sh"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, GPU_SESSION_PARTS="kernels"))
    assert p.returncode == 2 and "GPU_SESSION_PARTS: check, bench or check,bench; got kernels" in p.stdout


def test_gpu_session_leaves_the_check_results_before_the_bench_part(tmp_path):
    """What comes back from a device call is what lies in OUTDIR when the call ends, also when the device tool
    stops it: gpu_session.sh collects the kernel check's steps and logs as soon as that part is done. A fake
    python (every step succeeds at once, the first end-to-end benchmark hangs) and a kill mid-bench."""
    import signal
    import tarfile
    fake = tmp_path / "fake_python"
    fake.write_text("#!/usr/bin/env bash\n"
                    'case "$*" in\n'
                    '  *"_common.py path"*) echo "$3/fake.json" ;;\n'
                    '  *"import xdist"*) exit 1 ;;\n'
                    "  *bench_preprocess*) sleep 60 ;;\n"
                    '  *) echo "fake: $*" ;;\n'
                    "esac\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    p = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "gpu_session.sh"), str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         env=dict(os.environ, PYTHON=str(fake), GPU_SESSION_BUDGET_S="200"))
    try:
        p.communicate(timeout=20)
        raise AssertionError("the session should still be in its hanging bench step")
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # as the device tool's limit would
        p.communicate()
    steps = [json.loads(line)["step"] for line in (out / "steps.txt").read_text().splitlines()]
    assert {"pytest_kernels", "pytest_model", "pytest_kernel_variants", "bench_kernels"} <= set(steps), steps
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
        variants = tar.extractfile(next(n for n in names if n.endswith("check/pytest_kernel_variants.log")))
        args = variants.read().decode().split()
    assert any(n.endswith("check/pytest_kernels.log") for n in names), names
    # the variant tests: the LM attention's file first, then every other kernel test file once
    files = [a for a in args if a.startswith("tests/")]
    assert files[0] == "tests/kernels/test_varlen_attention.py" and len(files) == len(set(files)), files
    assert "tests/kernels/test_perceiver_varlen.py" in files and args[args.index("-m", 3) + 1] == "variant"


def _fake_python(tmp_path):
    """Every benchmark and test step succeeds at once and logs its arguments and XGENMM_KERNEL_SETTINGS; `-c`
    snippets run on the real interpreter."""
    fake = tmp_path / "fake_python"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'if [[ "$1" == "-c" ]]; then exec {sys.executable} "$@"; fi\n'
                    'echo "fake: $* settings=${XGENMM_KERNEL_SETTINGS:-none}"\n')
    fake.chmod(0o755)
    return fake


def test_gpu_check_reruns_the_target_rows_with_the_sweeps_settings(tmp_path):
    for settings, tuned in (({"lm": {"atomic_dq": True}, "perceiver": {}}, True), ({"lm": {}, "perceiver": {}}, False)):
        results = tmp_path / ("tuned" if tuned else "defaults")
        results.mkdir()
        (results / "sweep_attention_tiles.json").write_text(json.dumps({"rows": [], "settings": settings}))
        p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(results)], capture_output=True,
                           text=True, timeout=120, cwd=ROOT,
                           env=dict(os.environ, PYTHON=str(_fake_python(tmp_path)), XGENMM_SKIP_BUILD="1",
                                    GPU_CHECK_SWEEP="1", GPU_CHECK_BUDGET_S="200"))
        steps = [json.loads(line)["step"] for line in (results / "steps.jsonl").read_text().splitlines()]
        assert "sweep_attention_tiles" in steps, p.stdout[-2000:]
        assert ("bench_kernels_tuned" in steps and "bench_perceiver_tuned" in steps) == tuned, steps
        if tuned:
            log = (results / "bench_kernels_tuned.log").read_text()
            assert f"settings={results / 'sweep_attention_tiles.json'}" in log and "varlen_attn_fwd/4k" in log
            assert "settings=none" in (results / "bench_kernels.log").read_text()  # the defaults' rows first
