#!/usr/bin/env python
"""The NC transfer study: selection on validation, final runs on test, paired CIs, ``docs/RESULTS.md``.

    python recipes/transfer_study.py --quick                 # minutes: tiny ViT, digits, small grids, 2 final seeds
    python recipes/transfer_study.py                         # the full study (hours; resumable)
    python recipes/transfer_study.py --workers 2             # two runs at a time (one torch thread each)
    python recipes/transfer_study.py report                  # only rewrite docs/RESULTS.md from the JSON results
    python recipes/transfer_study.py --list                  # print the plan's size and what can start now

Parts (``recipes/study/``): ``plan.py`` (settings, run specs, the order), ``select.py`` (every choice,
on validation accuracy only), ``execute.py`` (one JSON result per run under ``--out_dir/results``;
an interrupted study continues: runs with a result are skipped), ``stats.py`` (CIs, paired
differences, partial correlations), ``report.py``. The report also writes all the records it used to
``<plots_dir>/results.json``, so ``report --results <that file>`` rebuilds it without the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import execute, plan, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "report"], help="run (then report) or only report")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny ViT on digits, 2-value grids, 2 final seeds (minutes)")
    size.add_argument("--smoke", action="store_true", help="seconds per run; the test's setting (a few steps, no DINOv2)")
    p.add_argument("--out_dir", default=None, help="runs, models and JSON results (default: outputs/transfer_study[_quick|_smoke])")
    p.add_argument("--results_md", default=None, help="report path (default: docs/RESULTS.md; <out_dir>/RESULTS.md for --quick/--smoke)")
    p.add_argument("--plots_dir", default=None, help="PNG plots and results.json (default: docs/results, or <out_dir>/plots)")
    p.add_argument("--results", default=None, help="report: a results.json written by an earlier report, instead of --out_dir")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (processes, one torch thread each)")
    p.add_argument("--max_runs", type=int, default=None, help="stop after starting this many runs (then report)")
    p.add_argument("--no_dinov2", action="store_true", help="leave out the DINOv2-S cells")
    p.add_argument("--keep_work", action="store_true", help="keep each fine-tuning run's folder (adapters, NC history)")
    p.add_argument("--only", default=None, help="run only these parts (comma-separated cell names such as tiny/fmnist/10, "
                   "or finding_i), e.g. to finish the cheap cells first in a short sitting; the report covers the whole plan")
    p.add_argument("--headlines_first", action="store_true", help="every cell's headline runs (full / Layer / SCL FT) "
                   "before any cell's other runs (the default orders the first cell's headline, then cell by cell)")
    p.add_argument("--list", action="store_true", help="print the plan's size and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, settings: dict | None = None) -> dict:
    """Runs (or only reports) the study. ``settings``: a settings dict instead of the mode's (tests)."""
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_dir = Path(args.out_dir or ROOT / "outputs" / ("transfer_study" + ("" if mode == "full" else f"_{mode}")))
    results_md = Path(args.results_md or (ROOT / "docs" / "RESULTS.md" if mode == "full" else out_dir / "RESULTS.md"))
    plots_dir = Path(args.plots_dir or (ROOT / "docs" / "results" if mode == "full" else out_dir / "plots"))
    if settings is None:
        settings, notes = plan.settings_for(mode, dinov2=False if args.no_dinov2 else None)
    else:
        notes = []
    if mode == "full":
        notes.append("This protocol replaces the first study's (3 seeds; learning rates and blocks chosen on the test split; "
                     "unequal tuning), whose numbers are withdrawn: none of them is repeated here.")
    flags = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("run", "report")]
    flags = [a for i, a in enumerate(flags) if a != "--max_runs" and (i == 0 or flags[i - 1] != "--max_runs")]
    meta = {"mode": mode, "notes": notes, "command": f"python recipes/transfer_study.py {' '.join(shlex.quote(a) for a in flags)}".strip()}
    if args.list:
        records = execute.load_records(out_dir)
        order, status = plan.expand(settings, records)
        left = plan.remaining(settings, records, status)
        print(json.dumps({"planned (without grid extensions)": plan.planned_total(settings), "status": status,
                          "left (estimate)": left}, indent=1))
        hours = sum(v["cpu_hours_left"] or 0 for v in left.values())
        print(f"about {hours:.1f} CPU-hours of fine-tuning left, {hours / max(1, args.workers):.1f} h at --workers {args.workers} "
              "(each cell's mean run time so far, or its model's other cells'; rough: a cell's first runs are its slowest)")
        return {"order": order, "status": status, "settings": settings}
    start = time.perf_counter()
    if args.results:
        data = json.loads(Path(args.results).read_text())
        records, settings, meta = data["records"], data["settings"], data.get("meta", meta)
        settings["cells"] = [tuple(c) for c in settings["cells"]]
    else:
        if args.command == "run":
            run_settings = plan.restrict(settings, args.only) if args.only else settings
            if args.headlines_first:
                run_settings = plan.headlines_first(run_settings)
            execute.run_study(run_settings, out_dir, workers=args.workers, keep_work=args.keep_work, max_runs=args.max_runs)
        records = execute.load_records(out_dir, errors=True)
        order, _ = plan.expand(settings, records)
        wanted = {sp["id"] for sp in order}
        records = {k: r for k, r in records.items() if k in wanted}  # the current plan's runs only
        plots_dir.mkdir(parents=True, exist_ok=True)
        (plots_dir / "results.json").write_text(json.dumps({"meta": meta, "settings": settings, "records": records}, indent=0,
                                                           default=str))  # settings' order is the report's
    path = report.write_report(records, settings, results_md, plots_dir, meta)
    print(f"[study] wrote {path} and plots in {plots_dir} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"results_md": str(path), "records": records, "meta": meta, "settings": settings}


if __name__ == "__main__":
    main()
