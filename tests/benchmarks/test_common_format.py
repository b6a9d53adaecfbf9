"""The benchmark results format (benchmarks/_common.py) and its report (benchmarks/report.py).

Fast and CPU-only: no benchmark runs here except bench_preprocess and bench_planner in --smoke mode, once,
end to end into a temporary folder (a few seconds)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from ._bench import BENCH, ROOT, load

common = load("_common")  # the bench scripts import it under this name too
_spec = importlib.util.spec_from_file_location("bench_report", os.path.join(BENCH, "report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _rows_a(value: float, images: int = 16) -> list[dict]:
    return [common.result("resize/threads=1", {"images": images, "threads": 1}, (value, "images/s"),
                          (10.0, "images/s"), higher_is_better=True)]


# ---- speedup direction ----------------------------------------------------------------------------------
def test_speedup_throughput_is_ours_over_baseline():
    r = common.result("x", {}, (200.0, "images/s"), (50.0, "images/s"), higher_is_better=True)
    assert r["speedup"] == 4.0
    slower = common.result("x", {}, (25.0, "tokens/s"), (50.0, "tokens/s"), higher_is_better=True)
    assert slower["speedup"] == 0.5


@pytest.mark.parametrize("unit", ["ms", "s", "GB"])
def test_speedup_time_and_memory_is_baseline_over_ours(unit):
    better = common.result("x", {}, (2.0, unit), (8.0, unit), higher_is_better=False)
    assert better["speedup"] == 4.0
    worse = common.result("x", {}, (8.0, unit), (2.0, unit), higher_is_better=False)
    assert worse["speedup"] == 0.25


def test_speedup_none_without_a_baseline_or_with_zero():
    assert common.result("x", {}, (1.0, "ms"), None, higher_is_better=False)["speedup"] is None
    assert common.speedup(0.0, 1.0, True) is None
    assert common.speedup(1.0, float("nan"), True) is None


def test_result_rejects_mixed_units_and_silent_gaps():
    with pytest.raises(ValueError, match="ms.*s"):
        common.result("x", {}, (1.0, "ms"), (1.0, "s"), higher_is_better=False)
    with pytest.raises(ValueError, match="skipped"):
        common.result("x", {}, None, higher_is_better=True)
    r = common.result("x", {}, None, higher_is_better=True, skipped="no CUDA device")
    assert r["ours"] is None and r["speedup"] is None and r["skipped"] == "no CUDA device"


def test_result_keeps_side_details_and_memory():
    ours = {"value": 1.5, "unit": "ms", "impl": "triton", "rate": {"value": 300.0, "unit": "TFLOP/s"},
            "frac_peak": 0.4}
    r = common.result("k", {"n": 1}, ours, {"value": 3.0, "unit": "ms", "impl": "reference"},
                      higher_is_better=False, peak_memory_gb={"ours": 1.0, "baseline": 4.0})
    assert r["ours"]["impl"] == "triton" and r["ours"]["rate"]["unit"] == "TFLOP/s"
    assert r["speedup"] == 2.0 and r["peak_memory_gb"] == {"ours": 1.0, "baseline": 4.0}


# ---- files: merge, atomic write, validation ---------------------------------------------------------------
def test_merge_replaces_same_name_and_config_and_keeps_the_rest(tmp_path):
    path = str(tmp_path / "r.json")
    common.write_results(_rows_a(20.0) + _rows_a(30.0, images=2), "bench_a", out=path, argv=[])
    common.write_results([common.result("plan", {"n": 5}, (1.0, "ms"), (9.0, "ms"), higher_is_better=False)],
                         "bench_b", out=path, argv=[])
    common.write_results(_rows_a(40.0), "bench_a", out=path, argv=["again"])  # re-run: images=16 only
    doc = common.load(path)
    got = [(r["benchmark"], r["name"], r["config"].get("images"), r["ours"]["value"]) for r in doc["results"]]
    assert got == [("bench_a", "resize/threads=1", 16, 40.0),  # replaced in place
                   ("bench_a", "resize/threads=1", 2, 30.0),  # other config: kept
                   ("bench_b", "plan", None, 1.0)]  # other script: kept
    assert set(doc["runs"]) == {"bench_a", "bench_b"} and doc["runs"]["bench_a"]["argv"] == ["again"]
    assert doc["results"][0]["speedup"] == 4.0


def test_same_name_in_another_script_is_another_row(tmp_path):
    path = str(tmp_path / "r.json")
    common.write_results(_rows_a(20.0), "bench_a", out=path, argv=[])
    common.write_results(_rows_a(20.0), "bench_c", out=path, argv=[])
    assert len(common.load(path)["results"]) == 2


def test_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "r.json")
    common.write_results(_rows_a(20.0), "bench_a", out=path, argv=[])
    before = open(path).read()

    def broken_dump(obj, f, **kw):
        f.write('{"half": ')
        raise RuntimeError("disk full")
    monkeypatch.setattr(common.json, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        common.write_results(_rows_a(99.0), "bench_a", out=path, argv=[])
    assert open(path).read() == before  # the old file, whole
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind


def test_default_path_is_date_and_device(tmp_path):
    meta = {"date": "2026-11-26", "device": "NVIDIA H100 80GB HBM3", "device_kind": "cuda"}
    assert common.default_results_path(str(tmp_path), meta) == str(tmp_path / "2026-11-26-nvidia-h100-80gb-hbm3.json")
    meta = {"date": "2026-11-26", "device": "AMD EPYC", "device_kind": "cpu"}
    assert os.path.basename(common.default_results_path(str(tmp_path), meta)) == "2026-11-26-cpu-amd-epyc.json"


def test_merge_refuses_another_device(tmp_path):
    path = tmp_path / "r.json"
    common.write_results(_rows_a(20.0), "bench_a", out=str(path), argv=[])
    doc = json.loads(path.read_text())
    doc["device"] = "Some Other Card"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="Some Other Card"):
        common.write_results(_rows_a(20.0), "bench_a", out=str(path), argv=[])


def test_old_format_and_wrong_speedup_are_rejected(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmark": "bench_preprocess", "results": []}))
    with pytest.raises(ValueError, match="schema"):
        common.load(str(old))
    doc = common.document(_rows_a(20.0), "bench_a", argv=[])
    doc["results"][0]["speedup"] = 9.0
    with pytest.raises(ValueError, match="speedup"):
        common.validate(doc, "doc")


# ---- report ------------------------------------------------------------------------------------------------
def _synthetic(tmp_path, name="r.json", device=None, kind=None, date=None):
    rows = _rows_a(20.0) + [
        common.result("dpo_step", {"pairs": 8}, (4.0, "pairs/s"), (1.0, "pairs/s"), higher_is_better=True,
                      peak_memory_gb={"ours": 1.0, "baseline": 4.0}),
        common.result("anyres_preprocess_cuda", {"images": 16}, None, higher_is_better=True,
                      skipped="no CUDA device"),
    ]
    doc = common.document(rows, "bench_a", argv=[])
    doc["device"], doc["device_kind"] = device or doc["device"], kind or doc["device_kind"]
    doc["date"] = date or doc["date"]
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path), doc


def test_report_writes_a_table_and_plots(tmp_path):
    path, doc = _synthetic(tmp_path)
    md, pngs = report.write_report(path, plots=True)
    text = open(md).read()
    assert md == str(tmp_path / "r.md")
    assert "| benchmark | config | ours | baseline | speedup | peak memory GB (ours / baseline) |" in text
    assert "| a · resize/threads=1 | images=16, threads=1 | 20.00 images/s | 10.00 images/s | 2.00× | – |" in text
    assert "1 / 4 (0.25×)" in text and "skipped: no CUDA device" in text
    assert doc["device"] in text
    assert pngs == [str(tmp_path / "r-a.png")] and os.path.getsize(pngs[0]) > 1000


def test_readme_markers_are_replaced(tmp_path):
    cpu_path, _ = _synthetic(tmp_path, "cpu.json", device="AMD EPYC", kind="cpu", date="2026-12-01")
    gpu_path, _ = _synthetic(tmp_path, "gpu.json", device="NVIDIA H100 80GB HBM3", kind="cuda", date="2026-11-01")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.START_MARKER}\nold table\n{report.END_MARKER}\nafter\n")
    assert report.main([cpu_path, gpu_path, "--readme", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    block = text.split(report.START_MARKER)[1].split(report.END_MARKER)[0]
    assert "**NVIDIA H100 80GB HBM3** (GPU" in block and "**AMD EPYC** (CPU" not in block  # GPU wins over newer CPU
    assert "[`gpu.json`](gpu.json)" in block and "| a · dpo_step | pairs=8 |" in block
    assert report.main([cpu_path, "--readme", str(readme), "--no-plots"]) == 0  # idempotent markers
    assert readme.read_text().count(report.START_MARKER) == 1


def test_readme_without_markers_is_a_clear_error(tmp_path, capsys):
    path, _ = _synthetic(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    assert report.main([path, "--readme", str(readme), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert str(readme) in err and report.START_MARKER in err
    assert readme.read_text() == "# no markers here\n"
    with pytest.raises(ValueError, match="before"):
        report.replace_between_markers(f"{report.END_MARKER}\n{report.START_MARKER}\n", "t")


# ---- the scripts, end to end ---------------------------------------------------------------------------
def test_preprocess_and_planner_smoke_write_the_common_format(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for script in ("bench_preprocess.py", "bench_planner.py"):
        proc = subprocess.run([sys.executable, os.path.join(BENCH, script), "--smoke", "--results-dir",
                               str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(files) == 1, files  # both scripts merged into <date>-<device>.json
    doc = common.load(str(tmp_path / files[0]))  # validates the schema
    assert files[0] == os.path.basename(common.default_results_path(str(tmp_path), doc))
    assert set(doc["runs"]) == {"bench_preprocess", "bench_planner"}
    names = {(r["benchmark"], r["name"]) for r in doc["results"]}
    assert ("bench_preprocess", "anyres_preprocess/threads=1") in names
    assert ("bench_planner", "ffd_windows/budget=4096") in names
    source = next(r for r in doc["results"] if r["name"] == "pil_source_arrays")
    assert source["ours"]["value"] > 0 and source["extra"]["zero_copy_views"] >= 0
    for r in doc["results"]:
        assert r["config"]["smoke"] is True
        if r["ours"] is not None and r["baseline"] is not None:
            assert r["speedup"] > 0
    cuda = [r for r in doc["results"] if r["name"].startswith("anyres_preprocess_cuda")]
    assert {r["name"] for r in cuda} == {"anyres_preprocess_cuda", "anyres_preprocess_cuda/vs_cpp",
                                        "anyres_preprocess_cuda/from_arrays"}
    import torch
    if not torch.cuda.is_available():
        assert all(r["ours"] is None and "CUDA" in r["skipped"] for r in cuda)
    md, _ = report.write_report(str(tmp_path / files[0]), plots=False)
    assert "ffd_windows/budget=4096" in open(md).read()
