"""tests/conftest.py's rules, run on a throwaway test folder in a subprocess without CUDA: a skip of a test that is
not marked gpu fails the run and is named; gpu-marked tests skip quietly; XGENMM_TEST_DEADLINE skips the tests not
started by then and exits 2."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

CONFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")


def _run(tmp_path, files: dict[str, str], **env) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    if "XGENMM_TEST_DEADLINE" not in env:
        full_env.pop("XGENMM_TEST_DEADLINE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=120)


GPU_TEST = textwrap.dedent("""
    import pytest

    @pytest.mark.gpu
    def test_on_gpu():
        assert False, "must not run without CUDA"
""")


def test_gpu_marked_skips_pass(tmp_path):
    r = _run(tmp_path, {"test_a.py": GPU_TEST + "\ndef test_plain():\n    assert 1 + 1 == 2\n"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout


def test_other_skips_fail_and_are_named(tmp_path):
    r = _run(tmp_path, {"test_a.py": GPU_TEST + textwrap.dedent("""
        def test_skips():
            pytest.skip("some optional thing is missing")

        @pytest.mark.skipif(True, reason="a condition")
        def test_skipif():
            pass
    """)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 tests skipped that are not marked gpu" in r.stdout
    assert "test_a.py::test_skips: Skipped: some optional thing is missing" in r.stdout
    assert "test_a.py::test_skipif: Skipped: a condition" in r.stdout
    assert "test_on_gpu" not in r.stdout.split("not marked gpu")[1]


def test_a_module_skipped_at_collection_fails(tmp_path):
    r = _run(tmp_path, {"test_a.py": "def test_plain():\n    pass\n",
                        "test_b.py": "import pytest\npytest.importorskip('no_such_module_here')\n"
                                     "def test_never():\n    pass\n"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "test_b.py" in r.stdout and "no_such_module_here" in r.stdout


def test_deadline_skips_exit_2(tmp_path):
    r = _run(tmp_path, {"test_a.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n"},
             XGENMM_TEST_DEADLINE=str(time.time() - 1))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "2 tests not run: the step's time ran out" in r.stdout
    assert "not marked gpu" not in r.stdout
