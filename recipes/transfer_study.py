#!/usr/bin/env python
"""The NC transfer study: pre-training variants, frozen probes, a fine-tuning grid, ``docs/RESULTS.md``.

    python recipes/transfer_study.py --quick                 # minutes: 1 seed, 10 shots, a few methods
    python recipes/transfer_study.py                         # the full study (see docs/RESULTS.md for the budget)
    python recipes/transfer_study.py --workers 2             # two runs at a time (one torch thread each)
    python recipes/transfer_study.py report                  # only rewrite docs/RESULTS.md from the JSON results
    python recipes/transfer_study.py --list                  # print the plan, run nothing

Parts (``recipes/study/``): ``plan.py`` (settings and run specs), ``execute.py`` (one JSON result per
run under ``--out_dir/results``; an interrupted study continues: runs with a result are skipped),
``report.py`` (tables, Spearman correlations, plots). The report covers the runs of the current plan
only (a changed setting gives new run ids), and also writes all their records to
``<plots_dir>/results.json`` so that ``report --results <that file>`` rebuilds it without the runs.
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "report"], help="run (then report) or only report")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 seed, 10 shots, a couple of methods/blocks, tiny epochs (minutes)")
    size.add_argument("--smoke", action="store_true", help="seconds; the test's setting (tiny models, a few steps, no DINOv2)")
    p.add_argument("--out_dir", default=None, help="runs, models and JSON results (default: outputs/transfer_study[_quick|_smoke])")
    p.add_argument("--results_md", default=None, help="report path (default: docs/RESULTS.md; <out_dir>/RESULTS.md for --quick/--smoke)")
    p.add_argument("--plots_dir", default=None, help="PNG plots (default: docs/results, or <out_dir>/plots for --quick/--smoke)")
    p.add_argument("--results", default=None, help="report: a results.json written by an earlier report, instead of --out_dir")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (processes, one torch thread each)")
    p.add_argument("--no_dinov2", action="store_true", help="leave out the DINOv2-S part")
    p.add_argument("--keep_work", action="store_true", help="keep each fine-tuning run's folder (adapters, NC history)")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_dir = Path(args.out_dir or ROOT / "outputs" / ("transfer_study" + ("" if mode == "full" else f"_{mode}")))
    results_md = Path(args.results_md or (ROOT / "docs" / "RESULTS.md" if mode == "full" else out_dir / "RESULTS.md"))
    plots_dir = Path(args.plots_dir or (ROOT / "docs" / "results" if mode == "full" else out_dir / "plots"))
    runs, meta = plan.build_plan(mode, dinov2=False if args.no_dinov2 else None)
    flags = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a not in ("run", "report"))
    meta["command"] = f"python recipes/transfer_study.py {flags}".strip()
    if args.list:
        for r in runs:
            print(r["id"])
        print(f"{len(runs)} runs; notes: {meta['notes']}")
        return {"runs": runs, "meta": meta}

    start = time.perf_counter()
    if args.command == "run":
        runs = execute.run_plan(runs, out_dir, workers=args.workers, keep_work=args.keep_work)
    else:
        runs = execute.with_suggestions(runs, out_dir)
    if args.results:
        data = json.loads(Path(args.results).read_text())
        records, meta = data["records"], data.get("meta", meta)
    else:
        records = execute.load_results(runs, out_dir)
        missing = len(runs) - len(records)
        if missing:
            meta.setdefault("notes", []).append(f"{missing} of {len(runs)} planned runs have no result yet (report of a partial study).")
        plots_dir.mkdir(parents=True, exist_ok=True)
        (plots_dir / "results.json").write_text(json.dumps({"meta": meta, "records": records}, indent=0, default=str))
    path = report.write_report(records, results_md, plots_dir, meta)
    print(f"[study] wrote {path} and plots in {plots_dir} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"results_md": str(path), "records": records, "meta": meta}


if __name__ == "__main__":
    main()
