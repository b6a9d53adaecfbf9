"""Markdown summary, PNG plots and the README table from benchmark results files (benchmarks/README.md).

For each RESULTS.json: RESULTS.md next to it (header with device, date, commit, versions; one table:
benchmark, config, ours, baseline, speedup, peak memory) and RESULTS-<family>.png (speedup bars, one plot
per benchmark script). With --readme, the text between the markers

    <!-- bench-table:start -->
    <!-- bench-table:end -->

in that file is replaced with the latest table: the newest GPU results among the files given, else the
newest CPU ones, the device named. With --print, a short plain-text table goes to stdout (last).

    python benchmarks/report.py benchmarks/results/2026-11-26-cpu-amd-epyc.json
    python benchmarks/report.py benchmarks/results/*.json --readme README.md
    python benchmarks/report.py RESULTS_DIR/2026-11-27-nvidia-h100-80gb-hbm3.json --print --no-plots

Plots need matplotlib (Agg backend); without it they are skipped with a message, the rest still runs.
The generated files are outputs: change the JSON (re-run a benchmark), then re-run this script.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load  # noqa: E402  (benchmarks/_common.py)

START_MARKER = "<!-- bench-table:start -->"
END_MARKER = "<!-- bench-table:end -->"
FAMILY_ORDER = ("kernels", "preprocess", "planner", "sft_step", "dpo", "generate")
CONFIG_TEXT_MAX = 32  # longer config strings are descriptions: in the JSON, not the table
MESSAGE_MAX = 90


# ---- formatting ----------------------------------------------------------------------------------------
def family(row: dict) -> str:
    b = row.get("benchmark", "")
    return b[len("bench_"):] if b.startswith("bench_") else b


def fmt_number(v: float) -> str:
    a = abs(v)
    if a >= 1e4:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def fmt_measure(m: dict | None) -> str:
    """{"value", "unit", impl?, rate?, frac_peak?, timer?, eager_ms?} -> '1.23 ms · 512 TFLOP/s · 52% of peak
    (triton)', plus ' · CUDA graph; 1.5 ms eager' for a side timed from a CUDA graph (bench_kernels)."""
    if m is None:
        return "–"
    v, unit = m["value"], m["unit"]
    if v is None:
        text = "–"
    elif unit.startswith("fraction of "):
        text = f"{100 * v:.3g}% of {unit[len('fraction of '):]}"
    else:
        text = f"{fmt_number(v)} {unit}"
    if isinstance(m.get("rate"), dict) and m["rate"].get("value") is not None:
        text += f" · {fmt_number(m['rate']['value'])} {m['rate']['unit']}"
    if m.get("frac_peak") is not None:
        text += f" · {100 * m['frac_peak']:.0f}% of peak"
    if m.get("impl"):
        text += f" ({m['impl']})"
    if m.get("timer") == "cuda_graph" and m.get("eager_ms") is not None:
        text += f" · CUDA graph; {fmt_number(m['eager_ms'])} ms eager"
    elif m.get("graph_error"):
        text += " · eager (graph capture failed)"
    return text


def label(row: dict) -> str:
    """'<family> · <name>', or just the name when it already starts with the family (sft_step/mfu)."""
    fam = family(row)
    name = row["name"]
    return name if name == fam or name.startswith((f"{fam}_", f"{fam}/")) else f"{fam} · {name}"


def fmt_config(config: dict) -> str:
    parts = []
    for k, v in config.items():
        if v is None or v is False:
            continue
        if v is True:
            parts.append(k)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v) and len(v) <= 4:
            parts.append(f"{k}={'x'.join(str(x) for x in v)}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v}")
        elif isinstance(v, str) and len(v) <= CONFIG_TEXT_MAX:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def fmt_speedup(row: dict) -> str:
    s = row.get("speedup")
    if s is None:
        return "–"
    return f"{s:.0f}×" if s >= 100 else f"{s:.1f}×" if s >= 10 else f"{s:.2f}×" if s >= 0.1 else f"{s:.2g}×"


def fmt_memory(row: dict) -> str:
    pm = row.get("peak_memory_gb")
    if not pm:
        return "–"
    o, b = pm.get("ours"), pm.get("baseline")
    if o is None:
        return "–"
    if b is None:
        return f"{o:.3g}"
    ratio = f" ({o / b:.2f}×)" if b > 0 else ""
    return f"{o:.3g} / {b:.3g}{ratio}"


def short_commit(commit: str | None) -> str:
    if not commit:
        return "unknown"
    sha, _, dirty = commit.partition("+")
    return sha[:12] + (f"+{dirty}" if dirty else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _clip(text: str, n: int = MESSAGE_MAX) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def sorted_rows(doc: dict) -> list[dict]:
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    indexed = list(enumerate(doc["results"]))
    indexed.sort(key=lambda ir: (order.get(family(ir[1]), len(order)), family(ir[1]), ir[0]))
    return [r for _, r in indexed]


def markdown_table(doc: dict) -> str:
    lines = ["| benchmark | config | ours | baseline | speedup | peak memory GB (ours / baseline) |",
             "|---|---|---|---|---:|---|"]
    for r in sorted_rows(doc):
        if r.get("error"):
            ours = f"error: {_clip(r['error'])}"
        elif r["ours"] is None:
            ours = f"skipped: {_clip(r.get('skipped', ''))}"
        else:
            ours = fmt_measure(r["ours"])
        cells = [label(r), fmt_config(r["config"]), ours, fmt_measure(r["baseline"]),
                 fmt_speedup(r), fmt_memory(r)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def device_line(doc: dict) -> str:
    host = doc.get("host") or {}
    kind = "GPU" if doc["device_kind"] == "cuda" else "CPU"
    text = f"**{doc['device']}** ({kind}"
    if doc["device_kind"] == "cuda" and host.get("cpu"):
        text += f"; host {host['cpu']}"
    if host.get("logical_cores"):
        text += f", {host['logical_cores']} logical cores"
    return text + ")"


def versions_line(doc: dict) -> str:
    commits = {r.get("commit") for r in doc["results"]} - {None}
    more = f" (rows from {len(commits)} commits, see the JSON)" if len(commits) > 1 else ""
    return (f"date {doc['date']} (last write {doc['updated']}) · commit `{short_commit(doc['commit'])}`{more} · "
            f"torch {doc['torch']} · triton {doc['triton'] or 'not installed'} · python {doc['python']}")


SPEEDUP_NOTE = ("speedup = ours over baseline, higher is better (ours/baseline for throughputs, baseline/ours "
                "for times and memory); peak memory is above what was allocated before the step.")


def markdown_summary(doc: dict, json_name: str, pngs: list[str]) -> str:
    lines = [f"# Benchmark results: {doc['device']}", "",
             f"Generated by `benchmarks/report.py` from `{json_name}`: re-run the benchmarks (or this script), "
             "do not edit this file.", "",
             f"- device: {device_line(doc)}",
             f"- {versions_line(doc)}"]
    for script, info in sorted(doc["runs"].items()):
        bits = [f"at {info.get('measured_at')}", f"commit `{short_commit(info.get('commit'))}`"]
        if info.get("load_average_1min_at_start") is not None:
            bits.append(f"load {info['load_average_1min_at_start']} at start")
        if info.get("argv"):
            bits.append(f"args `{' '.join(info['argv'])}`")
        line = f"- `{script}`: " + ", ".join(bits)
        if info.get("note"):
            line += f"; {info['note']}"
        lines.append(line)
    lines += [f"- {SPEEDUP_NOTE}", "", markdown_table(doc), ""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in pngs] + [""]
    return "\n".join(lines)


def text_table(doc: dict) -> str:
    """A short fixed-width table for terminals (gpu_bench.sh prints it last)."""
    out = [f"{doc['device']} · {doc['date']} · commit {short_commit(doc['commit'])}",
           f"{'benchmark':<54} {'ours':>22} {'baseline':>22} {'speedup':>8}"]
    for r in sorted_rows(doc):
        name = _clip(label(r), 54)
        if r["ours"] is None:
            out.append(f"{name:<54} {'error' if r.get('error') else 'skipped'}: "
                       f"{_clip(r.get('error') or r.get('skipped') or '', 70)}")
            continue

        def short(m):
            if m is None:
                return "–"
            if m["unit"].startswith("fraction of "):
                return f"{100 * m['value']:.3g}% of peak"
            return _clip(f"{fmt_number(m['value'])} {m['unit']}", 22)
        out.append(f"{name:<54} {short(r['ours']):>22} {short(r['baseline']):>22} {fmt_speedup(r):>8}")
    return "\n".join(out)


# ---- plots ---------------------------------------------------------------------------------------------
def plot_families(doc: dict, stem_path: str) -> list[str]:
    """One PNG of speedup bars per benchmark family; returns the paths written ([] without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib not installed, no plots written", file=sys.stderr)
        return []
    by_family: dict[str, list[dict]] = {}
    for r in sorted_rows(doc):
        if r.get("speedup") is not None:
            by_family.setdefault(family(r), []).append(r)
    paths = []
    for fam, rows in by_family.items():
        names = [r["name"] for r in rows]
        labels = [r["name"] if names.count(r["name"]) == 1 else f"{r['name']} [{_clip(fmt_config(r['config']), 40)}]"
                  for r in rows]
        values = [r["speedup"] for r in rows]
        fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
        y = range(len(rows))
        ax.barh(list(y), values, color=["#2e7d32" if v >= 1 else "#c62828" for v in values])
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        if min(values) > 0 and max(values) / min(values) > 30:
            ax.set_xscale("log")
        for yi, v in zip(y, values):
            ax.annotate(fmt_speedup({"speedup": v}), (v, yi), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_xlabel("speedup of ours over the baseline (> 1: ours better; times and memory: baseline / ours)")
        ax.set_title(f"{fam} — {doc['device']}, {doc['date']}, commit {short_commit(doc['commit'])}", fontsize=10)
        ax.margins(x=0.12)
        fig.tight_layout()
        path = f"{stem_path}-{fam}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ---- README --------------------------------------------------------------------------------------------
def replace_between_markers(text: str, block: str, where: str = "README") -> str:
    """text with everything strictly between the start and end marker lines replaced by block."""
    starts, ends = text.count(START_MARKER), text.count(END_MARKER)
    if starts != 1 or ends != 1:
        raise ValueError(f"{where}: expected exactly one {START_MARKER!r} and one {END_MARKER!r} line (found "
                         f"{starts} and {ends}); add the two marker lines where the benchmark table belongs")
    i, j = text.index(START_MARKER), text.index(END_MARKER)
    if j < i:
        raise ValueError(f"{where}: {END_MARKER!r} comes before {START_MARKER!r}")
    head, tail = text[: i + len(START_MARKER)], text[j:]
    return f"{head}\n{block.strip()}\n{tail}"


def latest(docs: list[tuple[str, dict]]) -> tuple[str, dict]:
    """The newest GPU results if any, else the newest CPU ones (by date, then last write)."""
    gpu = [d for d in docs if d[1]["device_kind"] == "cuda"]
    return max(gpu or docs, key=lambda d: (d[1]["date"], d[1]["updated"]))


def readme_block(path: str, doc: dict, readme: str) -> str:
    base = os.path.dirname(os.path.abspath(readme))
    rel = os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/")
    md = os.path.splitext(rel)[0] + ".md"
    return "\n".join([
        f"Latest results, generated by `benchmarks/report.py` from [`{rel}`]({rel}) (summary and plots: "
        f"[{os.path.basename(md)}]({md})): {device_line(doc)}, {versions_line(doc)}.",
        f"{SPEEDUP_NOTE[0].upper()}{SPEEDUP_NOTE[1:]}",
        "",
        markdown_table(doc),
    ])


def update_readme(readme: str, docs: list[tuple[str, dict]]) -> str:
    path, doc = latest(docs)
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    new = replace_between_markers(text, readme_block(path, doc, readme), readme)
    if new != text:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(new)
    return path


# ---- main ----------------------------------------------------------------------------------------------
def write_report(path: str, plots: bool = True) -> tuple[str, list[str]]:
    """Write <stem>.md (and <stem>-<family>.png) next to the results file; returns (md path, png paths)."""
    doc = load(path)
    stem = os.path.splitext(path)[0]
    pngs = plot_families(doc, stem) if plots else []
    md = stem + ".md"
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown_summary(doc, os.path.basename(path), [os.path.basename(p) for p in pngs]))
    return md, pngs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="results JSON files (benchmarks/results/<date>-<device>.json)")
    ap.add_argument("--readme", help="replace the table between the bench-table markers in this file")
    ap.add_argument("--no-plots", action="store_true", help="write the Markdown only")
    ap.add_argument("--print", action="store_true", help="print a short plain-text table of each file last")
    args = ap.parse_args(argv)
    docs = []
    try:
        for path in args.results:
            md, pngs = write_report(path, plots=not args.no_plots)
            print(f"{path}: wrote {md}" + (f" and {len(pngs)} plot(s)" if pngs else ""), file=sys.stderr)
            docs.append((path, load(path)))
        if args.readme:
            used = update_readme(args.readme, docs)
            print(f"{args.readme}: table from {used}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    if args.print:
        for _, doc in docs:
            print(text_table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
