"""What every benchmark script shares: run metadata, the result entry, timing, peak memory, and the writer.

The results format (benchmarks/README.md has the full description), one file per machine and day,
`benchmarks/results/<date>-<device-slug>.json`:

    {"schema": "xgenmm_fast.bench/1", "device": "NVIDIA H100 80GB HBM3", "device_kind": "cuda",
     "date": "2026-11-26", "updated": "<ISO time of the last write>", "commit": "<sha>[+dirty]",
     "torch": "2.11.0+cu130", "triton": "3.6.0", "python": "3.12.3",
     "host": {"cpu": "...", "logical_cores": 16},
     "runs": {"<script>": {"measured_at", "commit", "argv", ...what that script records about its run}},
     "results": [{"benchmark": "<script>", "name", "config", "ours": {"value", "unit"},
                  "baseline": {"value", "unit"} | null, "higher_is_better", "speedup",
                  "peak_memory_gb"?, "extra"?, "skipped"? | "error"?, "measured_at", "commit"}]}

`speedup` is always "ours over baseline, higher is better": ours/baseline for throughputs,
baseline/ours for times and memory. Entries are keyed by (benchmark, name, config): re-running a
script replaces its rows and leaves the other scripts' rows alone. `config` holds the inputs of a
measurement only; measured side values go to `extra`, or re-runs would add rows instead of replacing.

This module needs only the standard library at import time (report.py uses it on machines without
torch); torch is imported inside the functions that time or name devices.

    python benchmarks/_common.py path [RESULTS_DIR]   # prints this machine's results file for today
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
SCHEMA = "xgenmm_fast.bench/1"
TOP_LEVEL_KEYS = ("schema", "device", "device_kind", "date", "updated", "commit", "torch", "triton", "python",
                  "host", "runs", "results")
VALUE_DIGITS = 6  # significant digits kept for measured values
SPEEDUP_DIGITS = 4  # significant digits of speedup


# ---- the machine and the code ------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD's sha, with "+dirty" when the working tree has changes; None outside a checkout.
    XGENMM_BENCH_COMMIT overrides it (a copy of the tree without .git, e.g. on the GPU machine)."""
    if os.environ.get("XGENMM_BENCH_COMMIT"):
        return os.environ["XGENMM_BENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                             check=False)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10, check=False)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _module_version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except Exception:  # absent, or broken in a way that is not ours to report here
        return None


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def device_name() -> tuple[str, str]:
    """(name, kind) of the machine's accelerator: the GPU's name and "cuda", else the CPU model and "cpu"."""
    if has_cuda():
        import torch
        return torch.cuda.get_device_name(), "cuda"
    return cpu_model(), "cpu"


def slug(text: str) -> str:
    """File-name form of a device name: lower case, runs of other characters -> '-'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "unknown"


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def run_metadata() -> dict:
    """The top-level fields of a results file for a run on this machine, now."""
    name, kind = device_name()
    now = utc_now()
    return {
        "schema": SCHEMA,
        "device": name,
        "device_kind": kind,
        "date": now.date().isoformat(),
        "updated": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "torch": _module_version("torch"),
        "triton": _module_version("triton"),
        "python": platform.python_version(),
        "host": {"cpu": cpu_model(), "logical_cores": os.cpu_count()},
    }


def default_results_path(results_dir: str = RESULTS_DIR, meta: dict | None = None) -> str:
    """<results_dir>/<date>-<device-slug>.json; a CPU-only machine's slug starts with "cpu-"."""
    meta = meta or run_metadata()
    device = slug(meta["device"])
    if meta["device_kind"] == "cpu" and not device.startswith("cpu"):
        device = f"cpu-{device}"
    return os.path.join(results_dir, f"{meta['date']}-{device}.json")


# ---- one result -------------------------------------------------------------------------------------
def round_sig(x: float, digits: int = VALUE_DIGITS) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _measure(m, side: str, name: str) -> dict | None:
    """(value, unit) or {"value", "unit", ...} -> {"value", "unit", ...}; None stays None."""
    if m is None:
        return None
    if isinstance(m, dict):
        out = dict(m)
    elif isinstance(m, (tuple, list)) and len(m) == 2:
        out = {"value": m[0], "unit": m[1]}
    else:
        raise TypeError(f"result {name!r}: {side} must be (value, unit) or a dict with value and unit, got {m!r}")
    if "value" not in out or "unit" not in out or not isinstance(out["unit"], str):
        raise ValueError(f"result {name!r}: {side} needs 'value' and a string 'unit', got {out!r}")
    if out["value"] is not None:
        out["value"] = round_sig(float(out["value"]))
    return out


def speedup(ours: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """Ours over baseline, > 1 when ours is better: ours/baseline for throughputs, baseline/ours for
    times and memory. None when either side is missing, zero or not finite."""
    if ours is None or baseline is None:
        return None
    if not (math.isfinite(ours) and math.isfinite(baseline)) or ours <= 0 or baseline <= 0:
        return None
    return round_sig(ours / baseline if higher_is_better else baseline / ours, SPEEDUP_DIGITS)


def result(name: str, config: dict, ours=None, baseline=None, *, higher_is_better: bool,
           peak_memory_gb=None, extra: dict | None = None, skipped: str | None = None,
           error: str | None = None) -> dict:
    """One row of a results file.

    ours / baseline: (value, unit), or a dict with "value" and "unit" plus anything that belongs to that
    side (e.g. "impl", "rate": {"value", "unit"}, "frac_peak"); baseline None when there is none.
    higher_is_better: True for throughputs (images/s, tokens/s, TFLOP/s), False for times and memory.
    peak_memory_gb: a number (ours) or {"ours": GB, "baseline": GB, "how": "..."}.
    skipped / error: why the row has no measurement (ours may then be None).
    """
    if not isinstance(config, dict):
        raise TypeError(f"result {name!r}: config must be a dict, got {type(config).__name__}")
    o, b = _measure(ours, "ours", name), _measure(baseline, "baseline", name)
    if o is None and not (skipped or error):
        raise ValueError(f"result {name!r}: no 'ours' measurement; pass skipped= or error= to say why")
    if o is not None and b is not None and o["unit"] != b["unit"]:
        raise ValueError(f"result {name!r}: ours is in {o['unit']!r} but the baseline in {b['unit']!r}")
    row = {
        "name": name,
        "config": config,
        "ours": o,
        "baseline": b,
        "higher_is_better": bool(higher_is_better),
        "speedup": speedup(o and o["value"], b and b["value"], higher_is_better),
    }
    if peak_memory_gb is not None:
        pm = dict(peak_memory_gb) if isinstance(peak_memory_gb, dict) else {"ours": peak_memory_gb}
        for k in ("ours", "baseline"):
            if pm.get(k) is not None:
                pm[k] = round_sig(float(pm[k]), 4)
        row["peak_memory_gb"] = pm
    if extra:
        row["extra"] = extra
    if skipped:
        row["skipped"] = skipped
    if error:
        row["error"] = error
    return row


# ---- timing and memory --------------------------------------------------------------------------------
def _synchronizer(device: str | None) -> Callable[[], None]:
    """CUDA-synchronize for device "cuda" (or None while CUDA is in use in this process); else nothing."""
    if device == "cpu":
        return lambda: None
    if device is None:
        if "torch" not in sys.modules:
            return lambda: None
        import torch
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return lambda: None
    import torch
    return torch.cuda.synchronize


def kernel_settings_config() -> dict:
    """{"kernel_settings": ...} for a row's config when XGENMM_KERNEL_SETTINGS (or tuning.apply) changed the
    attention kernels' switches or tiles from the defaults (xgenmm_fast/ops/triton/tuning.py): such rows are
    other rows than the defaults' in a results file. {} with the defaults."""
    from xgenmm_fast.ops.triton import tuning
    text = tuning.describe()
    return {} if text == "defaults" else {"kernel_settings": text}


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str | None = None) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` untimed ones, synchronized on CUDA."""
    return median_times({"fn": fn}, repeats, warmup, device)["fn"]


def median_times(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                 device: str | None = None) -> dict[str, float]:
    """Median seconds of each callable. They take turns within every repeat, so background load that
    drifts during the run (shared machines) weighs on all of them alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = _synchronizer(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def cuda_graph_ms(fn: Callable[[], Any], rep_ms: float) -> float:
    """Median ms of fn() replayed from a CUDA graph (triton.testing.do_bench_cudagraph): the device time of
    its kernels without the host's per-call cost (Python, autograd, launches). An eager per-call timer
    (do_bench) measures the host instead wherever enqueuing a call takes longer than running it, which is
    the case for sub-millisecond fwd+bwd calls through autograd. No L2 flush between calls: use it for
    working sets well above the L2 size. Raises if fn cannot be captured (a host sync, a CPU tensor read)."""
    import triton.testing
    return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))


def _heap_in_use() -> Callable[[], int]:
    """Bytes the C heap has handed out and not taken back (glibc mallinfo2: arenas + mmapped blocks);
    torch's CPU tensors live there. Unlike the resident set it drops as soon as memory is freed."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2

    def read() -> int:
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd
    return read


class PeakMemory:
    """Peak memory of a block above its level at the start, in GB (.gb after the block).
    CUDA: torch.cuda.max_memory_allocated minus memory_allocated at the start.
    CPU: peak of the C heap in use (glibc mallinfo2, sampled every millisecond by a thread, so short
    spikes can be missed) minus its level at the start."""

    CUDA_HOW = "cuda max_memory_allocated during the block minus memory_allocated before it"
    CPU_HOW = "CPU: peak C-heap in use during the block minus before (glibc mallinfo2, sampled every 1 ms)"

    def __init__(self, device: str):
        self.device = device
        self.how = self.CUDA_HOW if device == "cuda" else self.CPU_HOW
        self.gb: float | None = None

    def __enter__(self):
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.read = _heap_in_use()
        self.base = self.peak = self.read()
        self.done = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done:
            self.peak = max(self.peak, self.read())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            self.gb = (torch.cuda.max_memory_allocated() - self.base) / 2**30
        else:
            self.done = True
            self.thread.join()
            self.peak = max(self.peak, self.read())
            self.gb = (self.peak - self.base) / 2**30
        return False


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# ---- files --------------------------------------------------------------------------------------------
def validate(doc: dict, where: str = "results") -> None:
    """Raise ValueError naming `where` and the first thing that does not follow the format."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{where}: not a results file of format {SCHEMA!r} (schema: {got!r}); "
                         "see benchmarks/README.md")
    missing = [k for k in TOP_LEVEL_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{where}: top-level keys missing: {missing}")
    if not isinstance(doc["results"], list):
        raise ValueError(f"{where}: 'results' must be a list")
    for i, r in enumerate(doc["results"]):
        at = f"{where}: results[{i}] ({r.get('name') if isinstance(r, dict) else r!r})"
        if not isinstance(r, dict):
            raise ValueError(f"{at}: not an object")
        for k in ("benchmark", "name", "config", "ours", "baseline", "higher_is_better", "speedup"):
            if k not in r:
                raise ValueError(f"{at}: key {k!r} missing")
        if not isinstance(r["config"], dict):
            raise ValueError(f"{at}: config must be an object")
        for side in ("ours", "baseline"):
            m = r[side]
            if m is not None and not (isinstance(m, dict) and "value" in m and isinstance(m.get("unit"), str)):
                raise ValueError(f"{at}: {side} must be null or have 'value' and 'unit'")
        if r["ours"] is None and not (r.get("skipped") or r.get("error")):
            raise ValueError(f"{at}: ours is null without 'skipped' or 'error'")
        want = speedup(r["ours"] and r["ours"]["value"], r["baseline"] and r["baseline"]["value"],
                       r["higher_is_better"])
        if (want is None) != (r["speedup"] is None) or (want is not None and abs(want - r["speedup"]) > 1e-3 * want):
            raise ValueError(f"{at}: speedup {r['speedup']!r} does not follow from ours/baseline ({want!r})")


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    validate(doc, path)
    return doc


def _key(r: dict) -> tuple:
    return r["benchmark"], r["name"], json.dumps(r["config"], sort_keys=True)


def merge(doc: dict | None, meta: dict, script: str, run_info: dict, rows: list[dict]) -> dict:
    """`doc` (an existing results file or None) with this run's metadata and rows: rows with the same
    (benchmark, name, config) as a new one are replaced, in place; new ones are appended."""
    if doc is not None and doc["device"] != meta["device"]:
        raise ValueError(f"results from {meta['device']!r} cannot join a file of {doc['device']!r}; "
                         "write to another path")
    out = dict(doc) if doc is not None else {}
    out.update(meta)
    out["runs"] = {**(doc["runs"] if doc else {}), script: run_info}
    new = {}
    for r in rows:  # a key twice in one run: the last row counts
        new[_key(r)] = r
    kept = [new.pop(_key(r)) if _key(r) in new else r for r in (doc["results"] if doc else [])]
    out["results"] = kept + list(new.values())
    return {k: out[k] for k in TOP_LEVEL_KEYS} | {k: v for k, v in out.items() if k not in TOP_LEVEL_KEYS}


@contextlib.contextmanager
def _dir_lock(directory: str):
    """An exclusive flock on the directory itself (Linux), so two writers merge one after the other."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_json_atomic(path: str, doc: dict) -> None:
    """Write to a temporary file next to `path`, flush it to disk, then rename it over `path`: readers
    see the old file or the new one, never a half-written one."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, mode)  # mkstemp makes it 0600; keep the old file's mode, or the usual one
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stamped(rows: list[dict], script: str, run_info: dict | None, argv: list[str] | None,
             meta: dict) -> tuple[list[dict], dict]:
    """Rows with their benchmark, time and commit; the run's entry for "runs"."""
    rows = [{"benchmark": script, **r, "measured_at": meta["updated"], "commit": meta["commit"]} for r in rows]
    info = {"measured_at": meta["updated"], "commit": meta["commit"],
            "argv": list(sys.argv[1:] if argv is None else argv), **(run_info or {})}
    return rows, info


def document(rows: list[dict], script: str, run_info: dict | None = None, argv: list[str] | None = None) -> dict:
    """A results document holding only this run (what a script prints when told no file)."""
    meta = run_metadata()
    stamped, info = _stamped(rows, script, run_info, argv, meta)
    return merge(None, meta, script, info, stamped)


def write_results(rows: list[dict], script: str, run_info: dict | None = None, out: str | None = None,
                  results_dir: str | None = None, argv: list[str] | None = None) -> str:
    """Merge `rows` (from result()) of `script` into `out`, or into <results_dir>/<date>-<device>.json
    (default benchmarks/results), under a directory lock, atomically. Returns the path written."""
    meta = run_metadata()
    path = out or default_results_path(results_dir or RESULTS_DIR, meta)
    stamped, info = _stamped(rows, script, run_info, argv, meta)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _dir_lock(directory):
        existing = load(path) if os.path.exists(path) else None
        write_json_atomic(path, merge(existing, meta, script, info, stamped))
    return path


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """--out FILE / --results-dir DIR, shared by every bench script."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--out", help="merge the results into this JSON file (same format; created if missing)")
    g.add_argument("--results-dir", help="merge into DIR/<date>-<device>.json (e.g. benchmarks/results)")


def emit(args: argparse.Namespace, rows: list[dict], script: str, run_info: dict | None = None) -> str | None:
    """Write per --out / --results-dir, or print the JSON document to stdout when neither is given."""
    if getattr(args, "out", None) or getattr(args, "results_dir", None):
        path = write_results(rows, script, run_info, out=args.out, results_dir=args.results_dir)
        print(f"results -> {path}", file=sys.stderr)
        return path
    print(json.dumps(document(rows, script, run_info), indent=1))
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="helpers for the benchmark scripts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("path", help="print this machine's results file for today")
    p.add_argument("results_dir", nargs="?", default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.cmd == "path":
        print(default_results_path(os.path.abspath(args.results_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
