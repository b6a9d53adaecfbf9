"""What a GPU run's tests say, from the logs it brought back: per pytest step of scripts/gpu_check.sh (the default
kernels, the model, the kernel variants) the passed / failed / skipped counts from its junit XML, the tests not
run because the step's time ran out (tests/conftest.py's deadline skips), every failure with the first line of its
message, and the steps' exit codes and times (steps.txt / steps.jsonl). Ends with the Markdown row for
benchmarks/results/<date>-<device>-gpu-tests.md.

    python scripts/gpu_run_summary.py OUT/logs.tar.gz [--run 5 --commit abc1234]
    python scripts/gpu_run_summary.py RESULTS_DIR            # gpu_check.sh's folder (*.xml, steps.jsonl)

Exit 0 when every test step ran all its tests and none failed (what issue #4 asks of a GPU run), 1 otherwise,
2 when there is no junit XML at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

TEST_STEPS = (("pytest_kernels", "tests/kernels on CUDA"), ("pytest_model", "tests/model -m gpu"),
              ("pytest_kernel_variants", "tests/kernels -m variant"))
DEADLINE_REASON = "the step's time ran out"  # tests/conftest.py DEADLINE_REASON


def _find(root: str, name: str) -> str | None:
    for folder, _dirs, files in os.walk(root):
        if name in files:
            return os.path.join(folder, name)
    return None


def junit_counts(path: str) -> dict:
    """{"tests", "passed", "failed", "skipped", "not_run", "failures": [(test, first line)], "skip_reasons"}."""
    root = ET.parse(path).getroot()
    out = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "not_run": 0, "failures": [], "skip_reasons": {}}
    for case in root.iter("testcase"):
        out["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"] += 1
            text = (bad.get("message") or bad.text or "").strip().splitlines()
            out["failures"].append((name, text[0][:200] if text else ""))
        elif skip is not None:
            reason = (skip.get("message") or "").strip()
            if DEADLINE_REASON in reason:
                out["not_run"] += 1
            else:
                out["skipped"] += 1
                out["skip_reasons"][reason[:120]] = out["skip_reasons"].get(reason[:120], 0) + 1
        else:
            out["passed"] += 1
    return out


def steps(root: str) -> list[dict]:
    path = _find(root, "steps.txt") or _find(root, "steps.jsonl")
    if path is None:
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def summarize(root: str) -> tuple[dict, list[dict]]:
    found = {}
    for step, _title in TEST_STEPS:
        path = _find(root, f"{step}.xml")
        if path is not None:
            found[step] = junit_counts(path)
    return found, steps(root)


def cell(c: dict | None) -> str:
    if c is None:
        return "no junit XML (the step did not run or was killed)"
    text = f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
    return text + (f", {c['not_run']} not run (time ran out)" if c["not_run"] else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", help="logs.tar.gz from gpu_session.sh, or a folder with the junit XML")
    p.add_argument("--run", default="?", help="run number for the Markdown row")
    p.add_argument("--commit", default="?", help="commit for the Markdown row")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.logs
        if os.path.isfile(root):
            with tarfile.open(root) as tar:
                tar.extractall(tmp, filter="data")
            root = tmp
        found, step_rows = summarize(root)
    if not found:
        print(f"{args.logs}: no junit XML of {', '.join(s for s, _ in TEST_STEPS)}", file=sys.stderr)
        return 2
    for s in step_rows:
        what = s.get("skipped") or ("TIMEOUT" if s.get("rc") in (124, 137) else f"rc={s.get('rc')}")
        print(f"step {s.get('step', '?'):26s} {what:10s} {s.get('seconds', '-')} s (limit {s.get('limit_s', '-')})")
    failures = []
    for step, title in TEST_STEPS:
        c = found.get(step)
        print(f"{title:28s} {cell(c)}")
        for reason, n in sorted((c or {}).get("skip_reasons", {}).items(), key=lambda x: -x[1])[:4]:
            print(f"    skipped {n:4d}: {reason}")
        for name, message in (c or {}).get("failures", []):
            failures.append(f"{name}: {message}")
            print(f"    FAILED {name}: {message}")
    complete = all(s in found and found[s]["failed"] == 0 and found[s]["not_run"] == 0 for s, _ in TEST_STEPS)
    print("all GPU tests ran and passed" if complete else "NOT all GPU tests ran and passed")
    brief = "; ".join(failures[:6]) + (f"; +{len(failures) - 6} more" if len(failures) > 6 else "")
    print(f"| {args.run} | {args.commit} | {cell(found.get('pytest_kernels'))} | "
          f"{cell(found.get('pytest_model'))} | {cell(found.get('pytest_kernel_variants'))} | {brief or 'none'} |")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
