"""``docs/RESULTS.md`` and its plots from the study's JSON results (records of ``execute.py``).

Pure reading and formatting: :func:`write_report` takes the records (and the plan's ``meta``), so it
is tested on hand-made records. Correlations are Spearman's (``scipy.stats.spearmanr``) with sign
and two-sided p-value; with fewer than 3 points, or a constant side, they are reported as n/a.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = {"linear_probe": 0, "full": 1, "lora": 2, "heads": 3, "layer": 4, "scl": 5}
LABEL = {"linear_probe": "linear probe", "full": "full FT", "lora": "LoRA", "heads": "head FT", "layer": "Layer FT", "scl": "SCL FT"}
MODEL_NAMES = {"tiny": "shipped tiny ViT (12x64, FMNIST)", "dinov2": "DINOv2-S/14 (offline, 56x56)"}
ALPHA = 0.05


# ---------------------------------------------------------------------------------------------- numbers
def spearman(x, y) -> tuple[float, float, int] | None:
    """``(rho, p, n)`` over the finite pairs, or ``None`` when undefined (n < 3 or a constant side)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return float(res.statistic), float(res.pvalue), len(pairs)


def fmt_corr(c) -> str:
    if c is None:
        return "n/a (fewer than 3 points or constant)"
    rho, p, n = c
    return f"rho = {rho:+.2f} (" + ("p < 0.001" if p < 1e-3 else f"p = {p:.3g}") + f", n = {n})"


def verdict(c, expected_sign: int) -> str:
    """Plain words: reproduces (expected sign, p < 0.05), same direction but not significant, or not."""
    if c is None:
        return "cannot be tested (too few points)"
    rho, p, _ = c
    if rho * expected_sign > 0 and p < ALPHA:
        return "**reproduces** (expected sign, p < 0.05)"
    if rho * expected_sign > 0:
        return "**same direction, not significant** at this scale"
    return "**does not reproduce** at this scale (opposite sign or zero)"


def mean_std(values) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def pct(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if n > 1 else "") + f" (n={n})"


def g(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


# ---------------------------------------------------------------------------------------------- records
class Results:
    def __init__(self, records: list[dict]):
        self.ok = [r for r in records if r.get("status") == "ok"]
        self.failed = [r for r in records if r.get("status") != "ok"]
        self.pretrain = {r["spec"]["id"]: r for r in self.ok if r["spec"]["kind"] == "pretrain"}
        self.probes = [r for r in self.ok if r["spec"]["kind"] == "probe"]
        self.ft = [r for r in self.ok if r["spec"]["kind"] == "finetune"]

    def probe(self, model: str, task: str, shots):
        hits = [r for r in self.probes if r["spec"]["model"] == model and r["spec"]["task"] == task and r["spec"]["shots"] == shots]
        return hits[0]["result"] if hits else None

    def groups(self, model: str, task: str = "digits", group: str = "grid") -> dict:
        """``{(shots, method, block, tag): [result, ...]}`` over seeds."""
        out = defaultdict(list)
        for r in self.ft:
            s = r["spec"]
            if s["model"] == model and s["task"] == task and s.get("group", "grid") == group:
                out[(s["shots"], s["method"], s["block"], s.get("tag", ""))].append(r["result"])
        return out

    def grid_models(self) -> list[str]:
        seen = []
        for r in self.ft:
            m = r["spec"]["model"]
            if r["spec"].get("group", "grid") == "grid" and m not in seen:
                seen.append(m)
        return seen


def _method_label(method: str, block, tag: str = "") -> str:
    return LABEL.get(method, method) + ("" if block is None else f" @ block {block}") + (f" [{tag}]" if tag else "")


def _sort_key(key):
    shots, method, block, tag = key
    return (shots, ORDER.get(method, 9), -1 if block is None else block, tag)


# ---------------------------------------------------------------------------------------------- sections
def section_pretrain(res: Results, meta: dict, plots: Path, rel: str) -> tuple[list[str], list[str]]:
    lines, misses = ["## Finding (i): pre-training that keeps source variability transfers better", ""], []
    if not res.pretrain:
        return lines + ["No pre-training runs in these results.", ""], misses
    args = next(iter(res.pretrain.values()))["spec"]["args"]
    lines += [f"Variants pre-trained by `recipes/pretrain_vit.py` on Fashion-MNIST classes 0-4 with a **short budget** "
              f"(`{' '.join(args)}`), so that all of them fit the study's time; the paper pre-trains to convergence. "
              "Source NC1: penultimate features on a fixed subset of the source training images. Downstream: frozen "
              "features on the downstream training split (NC1, lower = more collapsed) and a logistic-regression linear "
              "probe (`hf_nc.selection.rank_models(linear_probe=True)`) scored on the test split.", ""]
    tasks = sorted({r["spec"]["task"] for r in res.probes if r["spec"]["model"].startswith("pt_")})
    header = ["variant", "loss", "proj. head", "augment", "source NC1", "source test acc"]
    for t in tasks:
        header += [f"{t} frozen NC1", f"{t} LP acc"]
    rows, series = [], defaultdict(lambda: defaultdict(list))
    for rid, rec in sorted(res.pretrain.items(), key=lambda kv: kv[1]["result"]["source_nc1"]):
        s, r = rec["spec"], rec["result"]
        row = [s["variant"], s["loss"], "yes" if s["projection_head"] else "no", s["augment"], g(r["source_nc1"]), f"{r['source_test_accuracy']:.3f}"]
        for t in tasks:
            p = next((q["result"] for q in res.probes if q["spec"]["model_run"] == rid and q["spec"]["task"] == t), None)
            row += [g(p["frozen_nc1"]) if p else "-", f"{p['lp_test_accuracy']:.3f}" if p else "-"]
            if p:
                for k, v in (("source", r["source_nc1"]), ("down", p["frozen_nc1"]), ("lp", p["lp_test_accuracy"])):
                    series[t][k].append(v)
        rows.append(row)
    lines += table(header, rows) + [""]
    lines += ["Spearman correlations across the variants (paper: source NC1 vs transfer accuracy **positive**; "
              "downstream NC1 vs accuracy **negative**):", ""]
    for t in tasks:
        c1 = spearman(series[t]["source"], series[t]["lp"])
        c2 = spearman(series[t]["down"], series[t]["lp"])
        lines.append(f"- `{t}`: source NC1 vs LP accuracy: {fmt_corr(c1)} -> {verdict(c1, +1)}")
        lines.append(f"- `{t}`: downstream (frozen) NC1 vs LP accuracy: {fmt_corr(c2)} -> {verdict(c2, -1)}")
        for c, sign, what in ((c1, +1, f"(i) source NC1 vs LP accuracy on {t}"), (c2, -1, f"frozen downstream NC1 vs LP accuracy on {t}")):
            if c is None or not (c[0] * sign > 0 and c[1] < ALPHA):
                misses.append(f"{what}: {fmt_corr(c)}")
    lines.append("")
    if tasks and _plot_pretrain(series, plots / "source_nc1_vs_lp.png"):
        lines += [f"![source NC1 vs linear-probe accuracy]({rel}/source_nc1_vs_lp.png)", ""]
    return lines, misses


def section_methods(res: Results, model: str, plots: Path, rel: str) -> list[str]:
    groups = res.groups(model)
    if not groups:
        return []
    lines = [f"### {MODEL_NAMES.get(model, model)} on `digits`", ""]
    full_params = next((v[0]["trainable_params"] for k, v in groups.items() if k[1] == "full"), None)
    full_params = full_params or next((v[0]["total_params"] for v in groups.values() if "total_params" in v[0]), None)
    rows = []
    for key in sorted(groups, key=_sort_key):
        shots, method, block, tag = key
        vals = groups[key]
        m, s, n = mean_std([v["test_accuracy"] for v in vals])
        nc, _, _ = mean_std([v["train_nc1"] for v in vals])
        params = vals[0]["trainable_params"]
        share = f"{100 * params / full_params:.1f}%" if full_params else "-"
        rows.append([shots, _method_label(method, block, tag), f"{params:,}", share, pct(m, s, n), g(nc)])
    lines += table(["shots", "method", "trained params", "vs full FT", "test acc % (mean ± std over seeds)", "train NC1 (mean)"], rows)
    lines += ["", "Train NC1: penultimate features (classifier input) on the fine-tuning training images after training."]
    if _plot_blocks(groups, model, plots / f"acc_vs_block_{model}.png"):
        lines += ["", f"![test accuracy vs tuned block, {model}]({rel}/acc_vs_block_{model}.png)"]
    return lines + [""]


def section_nc_accuracy(res: Results, plots: Path, rel: str) -> tuple[list[str], list[str]]:
    lines = ["## Finding (ii): more collapse on the downstream training data goes with higher test accuracy", "",
             "Spearman correlation between train NC1 after fine-tuning and test accuracy, across all grid runs "
             "(methods, blocks, seeds) of one model and shot count; paper: **negative**. The linear probe barely "
             "changes the features, so the correlation is also given without it.", ""]
    misses, scatter = [], {}
    rows = []
    for model in res.grid_models():
        for shots in sorted({k[0] for k in res.groups(model)}):
            runs = [v for k, vs in res.groups(model).items() if k[0] == shots for v in vs]
            no_lp = [v for k, vs in res.groups(model).items() if k[0] == shots and k[1] != "linear_probe" for v in vs]
            c_all = spearman([v["train_nc1"] for v in runs], [v["test_accuracy"] for v in runs])
            c_ft = spearman([v["train_nc1"] for v in no_lp], [v["test_accuracy"] for v in no_lp])
            rows.append([model, shots, fmt_corr(c_all), verdict(c_all, -1), fmt_corr(c_ft), verdict(c_ft, -1)])
            scatter[(model, shots)] = runs
            if c_all is None or not (c_all[0] < 0 and c_all[1] < ALPHA):
                misses.append(f"(ii) train NC1 vs test accuracy, {model}, {shots} shots: {fmt_corr(c_all)}")
    if not rows:
        return lines + ["No fine-tuning runs in these results.", ""], misses
    lines += table(["model", "shots", "all runs", "verdict", "without linear probe", "verdict"], rows)
    if _plot_scatter(res, scatter, plots / "train_nc1_vs_acc.png"):
        lines += ["", f"![train NC1 vs test accuracy]({rel}/train_nc1_vs_acc.png)"]
    return lines + [""], misses


def _best_block(groups: dict, shots: int, method: str):
    means = {k[2]: mean_std([v["test_accuracy"] for v in vs])[0] for k, vs in groups.items()
             if k[0] == shots and k[1] == method and k[2] is not None and not k[3]}
    if not means:
        return None, {}
    return max(means, key=lambda b: (means[b], -b)), means


def section_suggest(res: Results) -> tuple[list[str], list[str]]:
    lines = ["## `suggest_layer` validation", "",
             "The block `hf_nc.selection.suggest_layer` picks from the frozen model's per-block NC1 curve on the "
             "few-shot training data (seed 0), against the best block of the grid (highest mean test accuracy over "
             "seeds). Rank: position of the suggested block among the grid's blocks (1 = best).", ""]
    rows, misses = [], []
    for model in res.grid_models():
        groups = res.groups(model)
        for shots in sorted({k[0] for k in groups}):
            probe = res.probe(model, "digits", shots)
            for method, key in (("scl", "suggest_scl"), ("layer", "suggest_layer")):
                best, means = _best_block(groups, shots, method)
                if best is None or probe is None:
                    continue
                sug = probe[key]
                order = sorted(means, key=lambda b: -means[b])
                in_grid = sug in means
                rank = f"{order.index(sug) + 1}/{len(order)}" if in_grid else "not in grid"
                gap = f"{100 * (means[sug] - means[best]):+.1f}" if in_grid else "-"
                rows.append([model, shots, LABEL[method], sug, best, rank,
                             f"{100 * means[sug]:.1f}" if in_grid else "-", f"{100 * means[best]:.1f}", gap])
                if sug != best:
                    misses.append(f"suggest_layer ({method}, {model}, {shots} shots) picked block {sug}, best in grid {best} ({rank})")
    if not rows:
        return lines + ["No suggestions and grid runs to compare.", ""], misses
    lines += table(["model", "shots", "method", "suggested", "best in grid", "rank of suggested", "acc % suggested", "acc % best", "points"], rows)
    return lines + [""], misses


def _compare(groups, shots):
    full = mean_std([v["test_accuracy"] for k, vs in groups.items() if k[0] == shots and k[1] == "full" and not k[3] for v in vs])
    full_params = next((vs[0]["trainable_params"] for k, vs in groups.items() if k[1] == "full"), None)
    best = None
    for k, vs in groups.items():
        if k[0] == shots and k[1] in ("scl", "layer") and not k[3]:
            m = mean_std([v["test_accuracy"] for v in vs])
            if best is None or m[0] > best[1][0]:
                best = (k, m, vs[0]["trainable_params"])
    return full, full_params, best


def section_goal(res: Results) -> tuple[list[str], list[str]]:
    lines = ["## Goal: SCL FT or Layer FT matches full FT with >= 90% fewer trained parameters", "",
             "Best SCL/Layer FT configuration of the grid (chosen on mean test accuracy over seeds: an optimistic "
             "choice, made on the test split) against full FT. *Matches*: mean within 0.5 points of full FT or "
             "better, with at most 10% of full FT's trained parameters.", ""]
    rows, misses = [], []
    for model in res.grid_models():
        groups = res.groups(model)
        for shots in sorted({k[0] for k in groups}):
            full, full_params, best = _compare(groups, shots)
            if best is None or full[2] == 0:
                continue
            (_, method, block, _), (m, s, n), params = best
            diff = 100 * (m - full[0])
            share = params / full_params if full_params else float("nan")
            ok = diff >= -0.5 and share <= 0.10
            rows.append([model, shots, pct(*full), f"{_method_label(method, block)}: {pct(m, s, n)}", f"{diff:+.1f}",
                         f"{100 * share:.1f}%", "**yes**" if ok else "no"])
            if not ok:
                misses.append(f"goal not met: {model}, {shots} shots: best {_method_label(method, block)} {diff:+.1f} points vs full FT, {100 * share:.1f}% params")
    if not rows:
        return lines + ["No full FT and SCL/Layer FT runs to compare.", ""], misses
    return lines + table(["model", "shots", "full FT acc %", "best SCL/Layer FT acc %", "points vs full", "trained params vs full", "matches"], rows) + [""], misses


def section_ablations(res: Results) -> list[str]:
    abl = res.groups("tiny", group="ablation")
    if not abl:
        return []
    grid = res.groups("tiny")
    lines = ["### What narrows the gap on the tiny ViT (ablations)", "",
             "One change at a time against the grid's default for the same method, block, shots and seeds "
             "(`recipes/study/plan.py` has the default learning rates and epochs).", ""]
    rows = []
    for key in sorted(abl, key=_sort_key):
        shots, method, block, tag = key
        m, s, n = mean_std([v["test_accuracy"] for v in abl[key]])
        base = grid.get((shots, method, block, ""))
        bm = mean_std([v["test_accuracy"] for v in base])[0] if base else float("nan")
        rows.append([shots, _method_label(method, block), tag, f"{abl[key][0]['trainable_params']:,}", pct(m, s, n),
                     f"{100 * bm:.1f}" if math.isfinite(bm) else "-", f"{100 * (m - bm):+.1f}" if math.isfinite(bm) else "-"])
    return lines + table(["shots", "method", "change", "trained params", "test acc %", "default acc %", "points"], rows) + [""]


# ---------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_pretrain(series: dict, path: Path) -> bool:
    if not any(len(s["lp"]) for s in series.values()):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.6), squeeze=False)
    for ax, (task, s) in zip(axes[0], series.items()):
        ax.scatter(s["source"], s["lp"])
        ax.set_xscale("log")
        ax.set(xlabel="source NC1 (log)", ylabel=f"{task} linear-probe test acc", title=task)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_blocks(groups: dict, model: str, path: Path) -> bool:
    shots_list = sorted({k[0] for k in groups if k[1] in ("scl", "layer") and k[2] is not None})
    if not shots_list:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(shots_list), figsize=(5 * len(shots_list), 3.6), squeeze=False)
    for ax, shots in zip(axes[0], shots_list):
        for method, marker in (("layer", "o-"), ("scl", "s-")):
            pts = sorted((k[2], mean_std([v["test_accuracy"] for v in vs])) for k, vs in groups.items()
                         if k[0] == shots and k[1] == method and k[2] is not None and not k[3])
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt=marker, capsize=3, label=LABEL[method])
        for method, style in (("full", "k--"), ("linear_probe", "k:")):
            vs = groups.get((shots, method, None, ""))
            if vs:
                ax.axhline(mean_std([v["test_accuracy"] for v in vs])[0], color=style[0], linestyle=style[1:], label=LABEL[method])
        ax.set(xlabel="tuned block", ylabel="test accuracy", title=f"{model}, digits, {shots} shots")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_scatter(res: Results, scatter: dict, path: Path) -> bool:
    if not scatter:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(scatter), figsize=(4.5 * len(scatter), 3.6), squeeze=False)
    for ax, ((model, shots), _) in zip(axes[0], scatter.items()):
        for key, vs in res.groups(model).items():
            if key[0] == shots:
                ax.scatter([v["train_nc1"] for v in vs], [v["test_accuracy"] for v in vs], s=14, label=LABEL.get(key[1], key[1]))
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=6)
        ax.set_xscale("log")
        ax.set(xlabel="train NC1 after FT (log)", ylabel="test accuracy", title=f"{model}, {shots} shots")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- document
def write_report(records: list[dict], out_md: str | Path, plots_dir: str | Path, meta: dict | None = None) -> Path:
    """Writes the markdown report (and PNG plots in ``plots_dir``); returns its path."""
    meta = meta or {}
    out_md, plots = Path(out_md), Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    try:
        rel = plots.resolve().relative_to(out_md.parent.resolve()).as_posix()
    except ValueError:
        rel = plots.resolve().as_posix()
    res = Results(records)
    compute = sum(r.get("wall_time_s", 0.0) for r in records)
    lines = ["# Transfer study: neural collapse and transfer learning at small scale", "",
             f"Generated by `recipes/transfer_study.py` (mode `{meta.get('mode', '?')}`) from {len(res.ok)} run results "
             f"({len(res.failed)} failed); compute time summed over runs: {compute / 60:.1f} min (CPU, one torch thread per run).",
             "Paper: Li et al., TMLR 2024, *Understanding and Improving Transfer Learning of Deep Models via Neural Collapse*.", ""]
    for note in meta.get("notes", []):
        lines.append(f"> **Note:** {note}")
    if meta.get("notes"):
        lines.append("")
    misses = []
    part, m = section_pretrain(res, meta, plots, rel)
    lines += part
    misses += m
    lines += ["## Methods on data-scarce `digits`", "",
              "Test accuracy on the fixed 450-image `digits` test split after fine-tuning on 10 or 50 images per class "
              "(`recipes/finetune_vit.py`, one run per seed; the seed also draws the few-shot subset).", ""]
    for model in res.grid_models():
        lines += section_methods(res, model, plots, rel)
    lines += section_ablations(res)
    part, m = section_nc_accuracy(res, plots, rel)
    lines += part
    misses += m
    part, m = section_suggest(res)
    lines += part
    misses += m
    part, m = section_goal(res)
    lines += part
    misses += m
    lines += ["## Where the findings do not reproduce at this scale", ""]
    lines += [f"- {x}" for x in misses] or ["- Every tested finding reproduced in these results."]
    lines += ["- Caveats: short pre-training (a subset of the source data, 1-2 epochs), small models and data, few "
              "variants and seeds, so p-values are weak; blocks are compared on the test split.", ""]
    if res.failed:
        lines += ["## Failed runs", ""] + [f"- `{r['id']}`: {r.get('error', '?')}" for r in res.failed] + [""]
    if meta.get("command"):
        lines += ["## Reproduce", "", "```", meta["command"], "```", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines))
    return out_md
