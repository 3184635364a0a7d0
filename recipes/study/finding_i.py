"""Finding (i) of the report: source NC1 of the pre-trained variants against their frozen-feature transfer."""

from __future__ import annotations

from collections import defaultdict

from . import plan, stats
from .markdown import ALPHA, corr_verdict, fmt_corr, g, table


def collapse_strength(nc1: float) -> str:
    """A label for CE's source NC1 in a budget (the issue's "well below 0.1" is strong)."""
    return "strong source collapse" if nc1 < 0.1 else "moderate source collapse" if nc1 < 0.5 else "weak source collapse"


def section_finding_i(s: dict, records: dict) -> tuple[list[str], list[str]]:
    lines = ["## Finding (i): pre-training that keeps source variability transfers better", ""]
    p = s.get("pretrain")
    if not p:
        return lines + ["Not part of this mode.", ""], []
    pre = [r for r in records.values() if r.get("spec", {}).get("kind") == "pretrain" and r.get("status") == "ok"]
    planned = len(plan.pretrain_specs(s))
    lines += [f"ViTs pre-trained by `recipes/pretrain_vit.py` on Fashion-MNIST classes 0-4; one factor varied at a time from "
              f"CE / no projection head / no augmentation; {len(p['regimes'])} budgets: " + "; ".join(f"`{k}` (`{' '.join(v)}`)" for k, v in p["regimes"].items())
              + ". Downstream: frozen features, logistic regression with C chosen on validation, test read once; frozen NC1 "
              "of the downstream training features. Source NC1: penultimate features on a fixed subset of the source training "
              "images. Partial correlations control for source test accuracy (how far training got; every variant of a budget "
              "runs the same number of steps).", ""]
    if len(pre) < planned:
        lines += [f"**PENDING**: {len(pre)} of {planned} pre-training runs finished.", ""]
    probes = [r for r in records.values() if r.get("spec", {}).get("kind") == "probe" and r.get("status") == "ok"]
    findings, complete = [], []
    for regime in p["regimes"]:
        runs = [r for r in pre if r["spec"]["regime"] == regime]
        if not runs:
            continue
        rows, series = [], defaultdict(lambda: defaultdict(list))
        for rec in sorted(runs, key=lambda r: r["result"]["source_nc1"]):
            sp, r = rec["spec"], rec["result"]
            row = [sp["variant"], g(r["source_nc1"]), f"{r['source_test_accuracy']:.3f}", r["steps"]]
            for t in p["probe_tasks"]:
                q = next((x["result"] for x in probes if x["spec"]["model_run"] == sp["id"] and x["spec"]["task"] == t), None)
                row += [g(q["frozen_nc1"]) if q else "-", f"{q['lp_test_accuracy']:.3f}" if q else "-"]
                if q:
                    for k, v in (("source", r["source_nc1"]), ("acc", r["source_test_accuracy"]), ("steps", r["steps"]),
                                 ("down", q["frozen_nc1"]), ("lp", q["lp_test_accuracy"])):
                        series[t][k].append(v)
            rows.append(row)
        header = ["variant", "source NC1", "source test acc", "steps"]
        for t in p["probe_tasks"]:
            header += [f"{t} frozen NC1", f"{t} LP test acc"]
        ce = [r["result"]["source_nc1"] for r in runs if r["spec"]["variant"] == "ce"]
        lines += [f"### Budget `{regime}`" + (f" (CE source NC1 {g(ce[0])}: " + collapse_strength(ce[0]) + ")" if ce else ""), ""]
        lines += table(header, rows) + [""]
        for t in p["probe_tasks"]:
            x = series[t]
            c = stats.spearman(x["source"], x["lp"])
            pc = stats.partial_spearman(x["source"], x["lp"], [x["acc"]])
            c2 = stats.spearman(x["down"], x["lp"])
            lines.append(f"- `{t}`: source NC1 vs LP accuracy {fmt_corr(c)} ({corr_verdict(c, +1)}); controlling for source accuracy "
                         f"{fmt_corr(pc)} ({corr_verdict(pc, +1)}); frozen downstream NC1 vs LP accuracy {fmt_corr(c2)} ({corr_verdict(c2, -1)}).")
            if len(runs) == planned // len(p["regimes"]) and len(x["lp"]) == len(runs):
                findings.append(f"(i) {regime}, {t}: source NC1 vs LP acc {fmt_corr(c)}; partial (source acc) {fmt_corr(pc)}")
                complete.append((c, pc))
        lines.append("")
    if complete and len(complete) == len(p["regimes"]) * len(p["probe_tasks"]):
        lines += [finding_i_tally(complete), ""]
    return lines, findings


def finding_i_tally(pairs: list) -> str:
    """One line over every budget x task: how many correlations have the paper's sign, how many are significant."""
    def count(cs):
        cs = [c for c in cs if c is not None]
        return f"{sum(c[0] > 0 for c in cs)} of {len(cs)} ({sum(c[0] > 0 and c[1] < ALPHA for c in cs)} with p < 0.05)"
    n = min((c[2] for c, _ in pairs if c is not None), default=0)
    return (f"Over all {len(pairs)} budget x task pairs, source NC1 vs LP accuracy has the paper's sign (positive: less source "
            f"collapse, better transfer) in {count(c for c, _ in pairs)}; controlling for source accuracy in "
            f"{count(pc for _, pc in pairs)}. Each correlation has n = {n} variants: read the signs, not the sizes.")
