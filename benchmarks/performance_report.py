#!/usr/bin/env python
"""Renders docs/PERFORMANCE.md from the benchmarks' JSON results: the page is generated, never hand-copied.

    python benchmarks/performance_report.py                 # rewrite docs/PERFORMANCE.md
    python benchmarks/performance_report.py --check         # exit 1 if docs/PERFORMANCE.md is stale
    python benchmarks/performance_report.py --summary       # print every goal against its latest ratio
    python benchmarks/performance_report.py --results DIR --output PAGE   # e.g. a dry run's results

The page is ``benchmarks/performance_template.md`` (the guide's prose) with two generated parts:
``<!-- GOALS -->`` becomes one table of every performance goal of the first round and of issue 13
(:data:`_results.GOALS`) with the ratio each result file measured for it (or "not measured"), and
``<!-- RESULTS -->`` one section per result file (``benchmarks/results/*.json``, written by the
benchmarks' ``--json``): hardware, date, command, notes and every measured row. The output depends
only on those files (no clock is read), so ``--check`` (and ``tests/test_benchmarks_report.py``)
can tell whether the page is up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import GOALS, RESULTS_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().parent / "performance_template.md"
OUTPUT = ROOT / "docs" / "PERFORMANCE.md"
GOALS_MARK, RESULTS_MARK = "<!-- GOALS -->", "<!-- RESULTS -->"
BENCHMARK_ORDER = ("nc_metrics", "trainer", "adapters", "prefix_cache")
#: benchmarks whose rows read "<method>: <quantity>" and are shown as one method x quantity table
PIVOTED = ("adapters", "prefix_cache")


def load_results(folder: Path) -> list[dict]:
    """Every result file of ``folder``, in report order (benchmark, then device, then setting).

    Raises:
        ValueError: a file that is not a benchmark result (names the file and the missing key).
    """
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("benchmark", "setting", "device", "command", "date", "hardware", "rows") if k not in data]
        if missing:
            raise ValueError(f"{path}: not a benchmark result, missing {missing}")
        data["_file"] = path.name
        results.append(data)
    order = {b: i for i, b in enumerate(BENCHMARK_ORDER)}
    results.sort(key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"], r["device"], r["setting"]))
    for i, r in enumerate(results, 1):
        r["_id"] = f"R{i}"
    return results


def _number(value: float, unit: str) -> str:
    if unit == "x" or unit.startswith("x "):
        return f"{value:.2f}"
    if unit == "of all":
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def _value(value: float, unit: str) -> str:
    number = _number(value, unit)
    if unit == "x":
        return number + "x"
    if unit.startswith("x "):
        return number + unit
    return number if unit == "of all" else f"{number} {unit}"


def _bound(goal: dict) -> str:
    return f"{goal['direction']} {goal['bound']:g}"


def _where(result: dict) -> str:
    hw = result["hardware"]
    if result["device"] == "cuda":
        return hw.get("gpu") or "GPU"
    threads = hw.get("threads")
    return f"CPU ({hw.get('cpu_cores')} cores, {threads} thread{'s' * (threads != 1)})"


def _met(met: Optional[bool]) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def goals_table(results: list[dict]) -> str:
    """One row per (goal, result that measured it); goals nobody measured yet get one 'not measured' row."""
    lines = ["| goal | source | bound | measured | met | device | setting | date | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for goal in GOALS.values():
        hits = [(r, row) for r in results for row in r["rows"] if row.get("goal") and row["goal"]["id"] == goal.id]
        head = f"| {_cell(goal.text)} | {goal.source} | {goal.direction} {goal.bound:g} |"
        if not hits:
            devices = " or ".join("GPU" if d == "cuda" else "CPU" for d in goal.devices)
            lines.append(f"{head} not measured | - | {devices} | - | - | - |")
        for r, row in hits:
            lines.append(f"{head} {_value(row['measured'], row['unit'])} | {_met(row['met'])} | "
                         f"{_cell(_where(r))} | {_cell(r['setting'])} | {r['date'][:10]} | {r['_id']} |")
    return "\n".join(lines)


def result_sections(results: list[dict]) -> str:
    """One section per result file: where, when, how, and every row it measured."""
    if not results:
        return "No results recorded yet: run the benchmarks with `--json` (or `benchmarks/gpu_check.sh`)."
    out = []
    for r in results:
        hw = r["hardware"]
        where = f"{hw.get('gpu')} (CUDA {hw.get('cuda')}), " if r["device"] == "cuda" else ""
        where += (f"CPU {hw.get('cpu')}, {hw.get('cpu_cores')} cores, {hw.get('threads')} torch thread(s), "
                  f"torch {hw.get('torch')}, transformers {hw.get('transformers')}")
        if hw.get("load_average"):
            where += f"; load average at the end {' / '.join(f'{x:g}' for x in hw['load_average'])} (1/5/15 min)"
        out += [f"### {r['_id']}: {r['benchmark']}, {r['setting']}, {r['device']}", "",
                f"Measured {r['date'].replace('T', ' ').replace('Z', ' UTC')} on {where}. "
                f"File `benchmarks/results/{r['_file']}`.", "", "```bash", r["command"], "```", ""]
        out += [f"- {_cell(note)}" for note in r.get("notes", [])]
        out.append("")
        rows = r["rows"]
        if r["benchmark"] in PIVOTED:
            out += _pivot([row for row in rows if ": " in row["quantity"]])
            rows = [row for row in rows if ": " not in row["quantity"]]
            if not rows:
                out.append("")
                continue
            out.append("")
        out += ["| quantity | measured | goal | met |", "|---|---|---|---|"]
        for row in rows:
            goal = f"{_bound(row['goal'])} ({row['goal']['source']})" if row.get("goal") else "-"
            out.append(f"| {_cell(row['quantity'])} | {_value(row['measured'], row['unit'])} | {goal} | {_met(row['met'])} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _pivot(rows: list[dict]) -> list[str]:
    """Rows "<method>: <quantity>" as one table, a method per line; a cell with a goal says met / missed."""
    methods: dict[str, dict[str, dict]] = {}
    columns: dict[str, str] = {}
    for row in rows:
        method, quantity = row["quantity"].split(": ", 1)
        methods.setdefault(method, {})[quantity] = row
        columns.setdefault(quantity, row["unit"])
    head = ["method"] + [f"{q} ({u})" if u not in ("x", "of all") else q for q, u in columns.items()]
    out = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for method, cells in methods.items():
        line = [_cell(method)]
        for quantity in columns:
            row = cells.get(quantity)
            if row is None:
                line.append("-")
                continue
            text = _number(row["measured"], row["unit"])
            if row.get("goal"):
                text = f"{text} (goal {_bound(row['goal'])}: met)" if row["met"] else f"**{text} (goal {_bound(row['goal'])}: missed)**"
            line.append(text)
        out.append("| " + " | ".join(line) + " |")
    return out


def render(results_dir: Path = RESULTS_DIR, template: Path = TEMPLATE) -> str:
    """The page's text from ``template`` and the result files of ``results_dir``.

    Raises:
        ValueError: a template without the two markers.
    """
    text = Path(template).read_text(encoding="utf-8")
    for mark in (GOALS_MARK, RESULTS_MARK):
        if mark not in text:
            raise ValueError(f"{template}: the template has no {mark} marker")
    results = load_results(Path(results_dir))
    return text.replace(GOALS_MARK, goals_table(results)).replace(RESULTS_MARK, result_sections(results))


def summary(results_dir: Path = RESULTS_DIR) -> str:
    """Every goal against what each result file measured, one line each (gpu_check.sh prints it)."""
    results = load_results(Path(results_dir))
    lines = []
    for goal in GOALS.values():
        hits = [(r, row) for r in results for row in r["rows"] if row.get("goal") and row["goal"]["id"] == goal.id]
        if not hits:
            lines.append(f"  ----  {goal.text} ({goal.direction} {goal.bound:g}): not measured")
        for r, row in hits:
            lines.append(f"  {'MET ' if row['met'] else 'MISS'}  {goal.text} ({goal.direction} {goal.bound:g}): "
                         f"{_value(row['measured'], row['unit'])}  [{r['device']}, {r['setting']}]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of result JSON files")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the output is not up to date")
    parser.add_argument("--summary", action="store_true", help="also print every goal against its measured ratios")
    args = parser.parse_args()
    text = render(args.results, args.template)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            sys.exit(f"{args.output} is not up to date with {args.results}: run python benchmarks/performance_report.py")
        print(f"{args.output} is up to date")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    if args.summary:
        print(summary(args.results))


if __name__ == "__main__":
    main()
