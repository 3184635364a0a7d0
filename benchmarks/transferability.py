"""Which block to tune? Every transferability score and block rule against FINE-TUNED accuracy.

    python benchmarks/transferability.py --quick      # CI-safe (< 1 min): tiny/digits/10, seed 0, 4-step trials
    python benchmarks/transferability.py --json docs/selection/transferability.json
    python benchmarks/transferability.py --extract     # rebuild docs/selection/study_block_runs.json from the study's records first
    python benchmarks/transferability.py --dinov2_runs # the DINOv2-S Layer FT block sweep's runs (resumable, ~30-60 CPU-min)
    python benchmarks/transferability.py --dinov2_lr_check  # that sweep's LR checked on validation (resumable, ~30-70 CPU-min)
    python benchmarks/transferability.py --models      # model level: forwards to benchmarks/transferability_models.py

**Items**: the blocks of the built-in tiny ViT (12 x 64) as candidates for Layer FT (blocks 0-11)
and SCL FT (blocks 0-10). **Cases**: one per (cell, seed): the transfer study's cells
(``recipes/transfer_study.py``: ``tiny/digits/10``, ``tiny/fmnist/10`` when complete) x its 10 final
seeds. A case with seed ``s`` uses exactly the study's splits of that run
(``recipes/study/execute.task_data(task, shots, s, val_shots)``): the few-shot training subset
(every score is computed on its frozen per-block pooled features, one forward pass), the
validation split (30 images per class drawn outside it: the validation probe and the few-step
trials) and the test split (the frozen probe's ground truth only).

**Ground truth** (``docs/selection/study_block_runs.json``, extracted from the study's records by
``--extract``): the test accuracy of the study's ``blocks_final`` runs, Layer FT / SCL FT at every
block, each at its own learning rate chosen on validation (selection seeds 100-101), final seed
``s``; and the frozen logistic-regression probe of each block (test).

**Per score**: Kendall tau and weighted tau (``scipy.stats.weightedtau``, as NCTI and LogME
report) between the oriented score and the per-block accuracy of each case; the mean over the
cases with a 95% percentile-bootstrap interval over cases (2,000 resamples); top-1 regret (best
block's accuracy minus the accuracy of the block the score ranks first, points); the time.

**Block rules** (``suggest_layer``'s ``rule``), scored by the fine-tuned test accuracy of the block
they pick in each case: ``nc1`` (knee / minimum), ``nc1_slope``, ``logme``, ``hscore_shrinkage``,
``ncti``, ``probe`` (validation probe), ``few_steps`` (each block tuned for 20% of the run's
optimizer steps from the study's initialisation, best validation accuracy; also at 10% and by
validation loss, as sensitivity). Baselines: the middle and the last block, **the best fixed block
chosen on validation** (the study's own choice: the block with the best mean validation accuracy of
its selection runs), a random block (the mean over blocks), the per-seed sweep chosen on the final
runs' own validation accuracy (costs the whole sweep), and, not attainable, the best fixed block on
test and the per-seed oracle. Means over cases with 95% t intervals; each rule's paired difference
to the best fixed block on validation. No rule reads a test number.

**DINOv2-S** (``benchmarks/transferability_dinov2.py``; ``--dinov2_runs``, then the benchmark scores it): Layer FT at every block on digits
(10 shots), seeds 0 and 1, LR 3e-4 (the study's DINOv2 prior for Layer FT), the study's recipe and
flags; every score on the same seed's training features. ``--dinov2_lr_check`` checks that LR on
validation (1e-4 / 3e-4 / 1e-3 at blocks 0, 5, 11, seed 0; one LR for all blocks) and the report
records the check and uses the chosen LR's sweep once it has run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))  # the study's splits, recipe flags and choices (recipes/study)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import boot_mean, strict, t_interval  # noqa: E402

SCORE_NAMES = ("logme", "logme_thin", "ncti", "hscore", "hscore_shrinkage", "nc1", "cdnv", "ncc_acc", "nc2_etf")
EXTRA_SCORES = ("nc1_slope", "probe (validation)", "few_steps (validation)")
FROZEN_RULES = ("nc1", "nc1_slope", "logme", "hscore_shrinkage", "ncti", "probe")
FEW_STEPS = {"few_steps": ("accuracy", -1), "few_steps@10%": ("accuracy", 0), "few_steps (val loss)": ("loss", -1)}
TRUTHS = ("layer_ft", "scl_ft", "probe")
METHOD_OF = {"layer_ft": "layer", "scl_ft": "scl"}
GROUND_TRUTH = ROOT / "docs" / "selection" / "study_block_runs.json"
STUDY_DIR = ROOT / "outputs" / "transfer_study"
REFERENCE = "fixed: best block on validation"


def n_blocks(method: str, layers: int = 12) -> int:
    return layers - 1 if method == "scl" else layers  # SCL skips from a block below the last


# ---------------------------------------------------------------------------------------------- ground truth
def extract_study(study_dir: Path, model: str = "tiny") -> dict:
    """The per-block ground truth of every ``model`` cell of the study whose ``blocks_final`` runs
    are complete for a method: ``{"cells": {cell: {...}}}`` with, per method, the final runs'
    ``{seed: {block: {test, validation, hp}}}`` and the selection stage's ``{block: {hp,
    val_mean, n}}`` (the LR each block's final runs used, chosen on validation)."""
    from study import execute, plan, select

    records = execute.load_records(study_dir)
    ok = {k: r for k, r in records.items() if r.get("status") == "ok"}
    s, _ = plan.settings_for("full", dinov2=False)
    out = {"source": f"{study_dir.relative_to(ROOT) if study_dir.is_relative_to(ROOT) else study_dir} (recipes/transfer_study.py records), "
                     "blocks_final runs", "cells": {}}
    for cell in s["cells"]:
        if cell[0] != model:
            continue
        name = plan.cell_name(cell)
        steps = plan.cell_steps(s, cell, None, ok)
        table = select.SelectionTable.from_records(ok.values(), name)
        entry = {"task": cell[1], "shots": cell[2], "val_shots": s["val_shots"], "max_eval": plan.TASKS[cell[1]]["max_eval"] or s.get("max_eval"),
                 "final_seeds": list(s["final_seeds"]), "methods": {}}
        for method in ("layer", "scl"):
            blocks = plan.blocks_of(s, model, method)
            specs = [sp for sp in steps["blocks_final"] if sp["method"] == method]
            complete = len(specs) == len(blocks) * len(s["final_seeds"]) and all(sp["id"] in ok for sp in specs)
            if not complete:
                continue
            final: dict = {}
            for sp in specs:
                r = ok[sp["id"]]["result"]
                final.setdefault(str(sp["seed"]), {})[str(sp["block"])] = {"test": r["test_accuracy"], "validation": r["validation_accuracy"],
                                                                          "hp": sp["hp"], "steps": r["settings"]["optimizer_steps"],
                                                                          "wall_s": ok[sp["id"]]["wall_time_s"]}
            sel = {}
            for b in blocks:
                best = table.best_hp(plan.config_key(method, b))
                sel[str(b)] = {"hp": best.hp, "val_mean": best.mean, "n": best.n}
            entry["methods"][method] = {"final": final, "selection": sel, "selection_seeds": list(s["selection_seeds"]),
                                        "epochs": plan.by_shots(s["epochs"]["tiny"], cell[2]), "batch": plan.by_shots(s["batch"], cell[2])}
        if entry["methods"]:
            out["cells"][name] = entry
    return out


def truth_of(gt: dict, cell: str, method: str, seed: int) -> dict[int, float] | None:
    m = gt["cells"].get(cell, {}).get("methods", {}).get(method)
    runs = m and m["final"].get(str(seed))
    return {int(b): v["test"] for b, v in runs.items()} if runs else None


# ---------------------------------------------------------------------------------------------- one case
def block_features(model, data, k: int):
    """Per-block pooled features of train, validation and test: one forward pass each."""
    from hf_nc.selection import _measure

    t = time.perf_counter()
    stats, train = _measure.measure(model, data["train"], k, layers="all", keep_blocks=True, progress=False)
    forward_s = time.perf_counter() - t
    _, val = _measure.measure(model, data["validation"], k, layers="all", keep_blocks=True, progress=False)
    _, test = _measure.measure(model, data["test"], k, layers="all", keep_blocks=True, progress=False)
    curve = [_measure.compute(stats[b], 1e-10)[0]["nc1"] for b in sorted(b for b in stats if isinstance(b, int))]
    return train, val, test, curve, forward_s


def probe_acc(xtr, ytr, xte, yte) -> float:
    from hf_nc.selection import _measure

    return _measure.fit_probe(xtr, ytr, xte, yte)["test_accuracy"]


def score_blocks(train, blocks, k: int) -> tuple[dict, dict]:
    """``{score: [value per block]}`` and ``{score: seconds over all blocks}``."""
    from hf_nc.selection import scores as S

    values, times = {}, {}
    for name in SCORE_NAMES:
        t = time.perf_counter()
        got = [S.compute_scores(train[b], train["labels"], [name], num_classes=k)[name] for b in blocks]
        if name == "ncti":
            ok = [i for i, g in enumerate(got) if isinstance(g, S.NCTITerms)]
            comp = dict(zip(ok, S.ncti_composite([got[i] for i in ok])))
            got = [comp.get(i, float("nan")) for i in range(len(blocks))]
        times[name] = time.perf_counter() - t
        values[name] = [float(v) for v in got]
    return values, times


def study_init(path: str, data, seed: int):
    """The model a study run of ``seed`` starts from: the recipe's classifier (head re-initialised
    when the checkpoint's labels differ from the data's), after the recipe's ``set_seed(seed)``."""
    import common
    from transformers import set_seed

    set_seed(seed)
    model, _ = common.load_classifier(path, list(data["train"].features["label"].names), common.ModelArguments())
    return model


def frozen_picks(case: dict, method: str) -> dict[str, int]:
    """The block each frozen-feature rule picks for ``method`` (``suggest_layer``'s choices)."""
    from hf_nc.selection import choose_block, choose_block_by_score, nc1_slopes

    n = n_blocks(method, len(case["nc1_curve"]))
    picks = {"nc1": choose_block(case["nc1_curve"][:n], method).block,
             "nc1_slope": choose_block_by_score(nc1_slopes(case["nc1_curve"])[:n], "nc1_slope", method).block,
             "probe": choose_block_by_score(case["validation_probe"][:n], "probe", method).block}
    for rule in ("logme", "hscore_shrinkage"):
        picks[rule] = choose_block_by_score(case["scores"][rule][:n], rule, method).block
    # NCTI is normalised over its pool: the blocks the method can tune
    from hf_nc.selection import scores as S

    picks["ncti"] = choose_block_by_score(case["ncti_pool"][method], "ncti", method).block
    return picks


def trial_picks(trials: list[dict], method: str) -> dict[str, int]:
    from hf_nc.selection import BlockTrial, choose_block_by_trials

    objs = [BlockTrial(**t) for t in trials]
    out = {}
    for rule, (what, at) in FEW_STEPS.items():
        if what == "accuracy":
            out[rule] = choose_block_by_trials(objs, method, at=at).block
        else:  # lowest validation loss
            out[rule] = min(objs, key=lambda t: (t.validation_loss[at], t.block)).block
    return out


def run_case(path: str, cell: str, info: dict, seed: int, trial_steps: list[int], run_steps: int, lrs: dict, k: int = 10) -> dict:
    """Scores, rules and few-step trials of one (cell, seed) case, on the study's splits of that seed."""
    from study import execute

    from hf_nc.probe import load_model
    from hf_nc.selection import few_step_trials, nc1_slopes
    from hf_nc.selection import scores as S

    data = execute.task_data(info["task"], info["shots"], seed, info["val_shots"], info.get("max_eval"))
    model = load_model(path).eval()
    train, val, test, curve, forward_s = block_features(model, data, k)
    blocks = list(range(len(curve)))
    values, times = score_blocks(train, blocks, k)
    values["nc1_slope"] = nc1_slopes(curve)
    t = time.perf_counter()
    val_probe = [probe_acc(train[b], train["labels"], val[b], val["labels"]) for b in blocks]
    times["probe (validation)"] = time.perf_counter() - t
    test_probe = [probe_acc(train[b], train["labels"], test[b], test["labels"]) for b in blocks]
    pool = {}
    for method in ("layer", "scl"):
        got = [S.ncti_terms(train[b], train["labels"], num_classes=k) for b in range(n_blocks(method, len(blocks)))]
        pool[method] = [float(v) for v in S.ncti_composite(got)]
    case = {"cell": cell, "task": info["task"], "shots": info["shots"], "seed": seed, "num_train": len(train["labels"]),
            "num_validation": len(val["labels"]), "num_test": len(test["labels"]), "scores": values, "times_s": times,
            "forward_s": forward_s, "nc1_curve": curve, "validation_probe": val_probe, "test_probe": test_probe, "ncti_pool": pool,
            "trials": {}, "trial_s": {}, "picks": {}}
    init = study_init(path, data, seed)
    for method in ("layer", "scl"):
        t = time.perf_counter()
        trials = few_step_trials(init, data["train"], data["validation"], method=method, steps=max(trial_steps), eval_steps=trial_steps,
                                 run_steps=run_steps, learning_rate=lrs[method], batch_size=16, seed=seed)
        case["trial_s"][method] = time.perf_counter() - t
        case["trials"][method] = [tr.to_dict() for tr in trials]
        case["picks"][method] = {**frozen_picks(case, method), **trial_picks(case["trials"][method], method)}
    return case


def reference_run_s(path: str, info: dict, seed: int, run_steps: int, lrs: dict) -> dict:
    """Seconds of one whole fine-tuning run (``run_steps`` steps, the trials' own loop and cache)
    at the first, middle and last block, per method: the unit of the trials' cost."""
    from study import execute

    from hf_nc.selection import few_step_trials

    data = execute.task_data(info["task"], info["shots"], seed, info["val_shots"], info.get("max_eval"))
    init = study_init(path, data, seed)
    out = {}
    for method in ("layer", "scl"):
        n = n_blocks(method)
        trials = few_step_trials(init, data["train"], data["validation"], method=method, blocks=[0, n // 2, n - 1], steps=run_steps,
                                 run_steps=run_steps, learning_rate=lrs[method], seed=seed)
        out[method] = {str(t.block): t.seconds for t in trials}
    return out


# ---------------------------------------------------------------------------------------------- summaries
def oriented_scores(case: dict, n: int, method: str | None) -> dict[str, np.ndarray]:
    from hf_nc.selection import scores as S

    out = {name: np.asarray([S.oriented(name, v) for v in case["scores"][name][:n]]) for name in SCORE_NAMES}
    if method is not None:  # NCTI over the method's own pool
        out["ncti"] = np.asarray(case["ncti_pool"][method][:n])
    out["nc1_slope"] = -np.asarray(case["scores"]["nc1_slope"][:n])
    out["probe (validation)"] = np.asarray(case["validation_probe"][:n])
    if method is not None:
        out["few_steps (validation)"] = np.asarray([t["validation_accuracy"][-1] for t in case["trials"][method]][:n])
    return out


def summarise(cases: list[dict], gt: dict, num_boot: int, seed: int = 0) -> dict:
    """Correlations per (cell, ground truth) and rule accuracies per (cell, method), plus the pooled rules."""
    from hf_nc.selection import correlation as C

    rng = np.random.default_rng(seed)
    out: dict = {"correlations": {}, "rules": {}, "cost": {}}
    by_cell: dict = {}
    for c in cases:
        by_cell.setdefault(c["cell"], []).append(c)
    pooled: dict = {}
    for cell, group in by_cell.items():
        for truth in TRUTHS:
            method = METHOD_OF.get(truth)
            per_case = []
            for c in group:
                if method:
                    acc = truth_of(gt, cell, method, c["seed"])
                    n = n_blocks(method, len(c["nc1_curve"]))
                    if not acc or sorted(acc) != list(range(n)):
                        continue
                    a = np.asarray([acc[b] for b in range(n)])
                else:
                    a, n = np.asarray(c["test_probe"]), len(c["test_probe"])
                per_case.append((a, oriented_scores(c, n, method)))
            if not per_case:
                continue
            rows = {}
            for name in per_case[0][1]:
                if truth == "probe" and name == "probe (validation)":
                    continue
                point = [C.correlations(s[name], a) for a, s in per_case]
                regret = [100 * C.top1_regret(s[name], a) for a, s in per_case]
                row = {"n_blocks": len(per_case[0][0]), "n_cases": len(per_case), "top1_regret_points": float(np.mean(regret))}
                for key in ("kendall_tau", "weighted_tau"):
                    vals = [p[key] for p in point]
                    row[key] = float(np.nanmean(vals))
                    row[key + "_ci"] = boot_mean(vals, num_boot, rng)
                    row[key + "_per_case"] = vals
                row["share_positive_tau"] = float(np.mean([p["kendall_tau"] > 0 for p in point]))
                t = [c["times_s"].get(name) for c in group if name in c["times_s"]]
                if name == "few_steps (validation)":
                    t = [c["trial_s"][method] for c in group]
                row["time_ms"] = 1000 * float(np.mean(t)) if t else None
                rows[name] = row
            out["correlations"][f"{cell} / {truth}"] = rows
        for method in ("layer", "scl"):
            usable = [c for c in group if truth_of(gt, cell, method, c["seed"])]
            if not usable:
                continue
            m = gt["cells"][cell]["methods"][method]
            accs = {c["seed"]: truth_of(gt, cell, method, c["seed"]) for c in usable}
            blocks = sorted(accs[usable[0]["seed"]])
            sel_best = max(blocks, key=lambda b: (m["selection"][str(b)]["val_mean"], -b))  # the study's choice (ties: earlier)
            hindsight = max(blocks, key=lambda b: np.mean([accs[c["seed"]][b] for c in usable]))
            res: dict = {}
            for rule in (*FROZEN_RULES, *FEW_STEPS):
                res[f"rule: {rule}"] = ([accs[c["seed"]][c["picks"][method][rule]] for c in usable], [c["picks"][method][rule] for c in usable])
            res["fixed: middle block"] = ([accs[c["seed"]][blocks[len(blocks) // 2]] for c in usable], None)
            res["fixed: last block"] = ([accs[c["seed"]][blocks[-1]] for c in usable], None)
            res[REFERENCE] = ([accs[c["seed"]][sel_best] for c in usable], [sel_best] * len(usable))
            res["random block (mean over blocks)"] = ([float(np.mean(list(accs[c["seed"]].values()))) for c in usable], None)
            val = {c["seed"]: {int(b): v["validation"] for b, v in m["final"][str(c["seed"])].items()} for c in usable}
            sweep = [max(blocks, key=lambda b: (val[c["seed"]][b], -b)) for c in usable]
            res["sweep, chosen on each seed's validation (12 runs)"] = ([accs[c["seed"]][b] for c, b in zip(usable, sweep)], sweep)
            res[f"fixed: best block on test, in hindsight ({hindsight})"] = ([accs[c["seed"]][hindsight] for c in usable], None)
            res["oracle (best block per seed, test)"] = ([max(accs[c["seed"]].values()) for c in usable], None)
            ref = np.asarray(res[REFERENCE][0])
            rows = {}
            for name, (acc, picks) in res.items():
                mean, lo, hi, n = t_interval(100 * np.asarray(acc))
                d = t_interval(100 * (np.asarray(acc) - ref))
                rows[name] = {"mean_accuracy": mean, "ci": [lo, hi], "n": n, "per_case": [100 * x for x in acc], "picks": picks,
                              "diff_vs_reference": d[0], "diff_ci": [d[1], d[2]]}
                key = name.split(" (")[0] if name.startswith("fixed: best block on test") else name
                pooled.setdefault(key, []).extend(100 * (np.asarray(acc) - ref))
                pooled.setdefault(key + "@acc", []).extend(100 * np.asarray(acc))
            out["rules"][f"{cell} / {method} FT"] = {"reference_block": sel_best, "rows": rows}
            # cost: the trials' seconds against whole runs of the same loop, and in optimizer steps
            steps = max(usable[0]["trials"][method][0]["steps"])
            run_steps = m["final"][str(usable[0]["seed"])][str(blocks[0])]["steps"]
            out["cost"][f"{cell} / {method} FT"] = {
                "trial_steps": steps, "run_steps": run_steps, "blocks_tried": len(blocks),
                "optimizer_steps_in_runs": len(blocks) * steps / run_steps,
                "trial_s_mean": float(np.mean([c["trial_s"][method] for c in usable])),
                "forward_s_mean": float(np.mean([c["forward_s"] for c in usable])),
            }
    out["pooled"] = {}
    for key in pooled:
        if key.endswith("@acc"):
            continue
        mean, lo, hi, n = t_interval(pooled[key + "@acc"])
        d = t_interval(pooled[key])
        out["pooled"][key] = {"mean_accuracy": mean, "ci": [lo, hi], "n": n, "diff_vs_reference": d[0], "diff_ci": [d[1], d[2]]}
    return out


def print_report(summary: dict, cases: list[dict]) -> None:
    def fmt(v, ci):
        return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if v is not None and math.isfinite(v) else "n/a"

    for case, rows in summary["correlations"].items():
        first = next(iter(rows.values()))
        print(f"\n== {case} ({first['n_blocks']} blocks, {first['n_cases']} case(s)): mean over cases, 95% bootstrap CI over cases")
        print(f"{'score':>24} {'Kendall tau [CI]':>24} {'weighted tau [CI]':>24} {'top-1 regret':>13} {'tau>0':>6} {'time (ms)':>10}")
        for name, r in rows.items():
            print(f"{name:>24} {fmt(r['kendall_tau'], r['kendall_tau_ci']):>24} {fmt(r['weighted_tau'], r['weighted_tau_ci']):>24} "
                  f"{r['top1_regret_points']:>10.1f} pt {r['share_positive_tau']:>6.0%} {r['time_ms'] or math.nan:>10.0f}")
    for case, res in summary["rules"].items():
        print(f"\n== block rule, {case}: fine-tuned test accuracy (%) of the chosen block, mean [95% t CI] over cases; "
              f"difference to the best fixed block on validation (block {res['reference_block']})")
        for name, r in res["rows"].items():
            picks = f"  picks {r['picks']}" if r["picks"] else ""
            print(f"{name:>52} {r['mean_accuracy']:6.1f} [{r['ci'][0]:5.1f}, {r['ci'][1]:5.1f}]  diff {r['diff_vs_reference']:+5.1f} "
                  f"[{r['diff_ci'][0]:+5.1f}, {r['diff_ci'][1]:+5.1f}]{picks}")
    if summary.get("pooled"):
        print("\n== block rules pooled over every (cell, method, seed) case")
        for name, r in summary["pooled"].items():
            print(f"{name:>52} {r['mean_accuracy']:6.1f} [{r['ci'][0]:5.1f}, {r['ci'][1]:5.1f}]  diff {r['diff_vs_reference']:+5.1f} "
                  f"[{r['diff_ci'][0]:+5.1f}, {r['diff_ci'][1]:+5.1f}] (n={r['n']})")
    for case, c in summary["cost"].items():
        ref = c.get("run_s_mean")
        extra = f" = {c['trial_s_mean'] / ref:.2f} runs measured (one run {ref:.1f} s)" if ref else ""
        print(f"cost of few_steps, {case}: {c['blocks_tried']} blocks x {c['trial_steps']} of {c['run_steps']} steps = "
              f"{c['optimizer_steps_in_runs']:.2f} runs of optimizer steps; {c['trial_s_mean']:.1f} s per case{extra}; "
              f"frozen rules: one forward pass, {c['forward_s_mean']:.2f} s")


def markdown_tables(out: dict) -> str:
    """The block-level tables of ``docs/SELECTION.md`` from a benchmark result (``main``'s return)."""
    summary, lines = out["summary"], []

    def ci(v, c, signed=True):
        f = (lambda x: f"{x:+.2f}") if signed else (lambda x: f"{x:.1f}")
        return "n/a" if v is None or not math.isfinite(v) else f"{f(v)} [{f(c[0])}, {f(c[1])}]" if c[0] is not None and math.isfinite(c[0]) else f(v)

    keys = list(summary["correlations"])
    names = list(summary["correlations"][keys[0]]) if keys else []
    for names_extra in [n for k in keys for n in summary["correlations"][k] if n not in names]:
        names.append(names_extra)
    for metric, title in (("kendall_tau", "Kendall tau"), ("weighted_tau", "Weighted tau")):
        lines += [f"{title}, mean over cases [95% bootstrap CI over cases]:", "",
                  "| score | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for n in names:
            row = [ci(summary["correlations"][k][n][metric], summary["correlations"][k][n][metric + "_ci"]) if n in summary["correlations"][k] else "-"
                   for k in keys]
            lines.append(f"| {n} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["Top-1 regret (points, mean over cases), share of cases with tau > 0, and time (ms per case, all blocks):", "",
              "| score | " + " | ".join(f"{k} regret / tau>0" for k in keys) + " | time (ms) |", "|---|" + "---|" * (len(keys) + 1)]
    for n in names:
        cells = []
        for k in keys:
            r = summary["correlations"][k].get(n)
            cells.append("-" if r is None else f"{r['top1_regret_points']:.1f} / {r['share_positive_tau']:.0%}")
        t = next((summary["correlations"][k][n]["time_ms"] for k in keys if n in summary["correlations"][k]
                  and summary["correlations"][k][n]["time_ms"] is not None), None)
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {'-' if t is None else f'{t:.0f}'} |")
    lines.append("")
    for case, res in summary["rules"].items():
        lines += [f"**{case}** (n = {next(iter(res['rows'].values()))['n']} cases; reference: block {res['reference_block']}, "
                  "the best mean validation accuracy of the study's selection runs):", "",
                  "| rule | test accuracy (%) [95% CI] | difference to the reference (points) [95% CI] | picks |", "|---|---|---|---|"]
        for name, r in res["rows"].items():
            picks = "" if not r["picks"] else " ".join(str(b) for b in r["picks"])
            lines.append(f"| {name} | {ci(r['mean_accuracy'], r['ci'], signed=False)} | {ci(r['diff_vs_reference'], r['diff_ci'])} | {picks} |")
        lines.append("")
    if summary.get("pooled") and len(summary["rules"]) > 1:
        lines += ["**Pooled** over every (cell, method, seed) case:", "", "| rule | test accuracy (%) [95% CI] | difference (points) [95% CI] | n |",
                  "|---|---|---|---|"]
        for name, r in summary["pooled"].items():
            lines.append(f"| {name} | {ci(r['mean_accuracy'], r['ci'], signed=False)} | {ci(r['diff_vs_reference'], r['diff_ci'])} | {r['n']} |")
        lines.append("")
    for case, c in summary["cost"].items():
        measured = f"; measured: {c['trial_s_mean']:.1f} s per case against {c['run_s_mean']:.1f} s for one whole run of the same loop " \
                   f"(mean over blocks {', '.join(sorted(c['run_s_by_block'], key=int))}) = **{c['fine_tuning_runs']:.2f} fine-tuning runs**" \
            if c.get("run_s_mean") else ""
        lines.append(f"- few_steps cost, {case}: {c['blocks_tried']} blocks x {c['trial_steps']} of {c['run_steps']} optimizer steps = "
                     f"{c['optimizer_steps_in_runs']:.2f} runs' worth of steps{measured}; a frozen rule: one forward pass ({c['forward_s_mean']:.2f} s).")
    d = out.get("dinov2")
    if d and d.get("status") != "pending":
        from transferability_dinov2 import dinov2_markdown

        lines += dinov2_markdown(d)
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny/digits/10, seed 0, 4-step trials, 200 bootstrap resamples (CI-safe, < 1 min)")
    parser.add_argument("--ground_truth", default=str(GROUND_TRUTH), help="the per-block fine-tuned accuracies (written by --extract)")
    parser.add_argument("--extract", action="store_true", help="first rebuild --ground_truth from the study's records (--study_dir)")
    parser.add_argument("--study_dir", default=str(STUDY_DIR), help="the transfer study's output folder (read only)")
    parser.add_argument("--cells", default=None, help="comma-separated cells (default: every cell in the ground truth)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the study's final seeds; quick: 0)")
    parser.add_argument("--trial_fraction", default="0.1,0.2", help="few-step trials: validation after these fractions of the run's steps "
                        "(the rule uses the last)")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 2000; quick: 200)")
    parser.add_argument("--json", default=None, help="also write the raw cases and the summary here")
    parser.add_argument("--markdown", default=None, help="also write the block-level tables of docs/SELECTION.md here")
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "transferability_blocks"),
                        help="per-case results (resumable) and the DINOv2-S sweep's runs; not used by --quick")
    parser.add_argument("--dinov2_runs", action="store_true", help="only run (or resume) the DINOv2-S Layer FT block sweep's fine-tuning runs")
    parser.add_argument("--dinov2_lr_check", action="store_true", help="only run (or resume) the validation check of the DINOv2-S sweep's "
                        "LR (1e-4, 3e-4, 1e-3 at blocks 0, 5, 11, seed 0; extended past a winning edge), then the sweep (seeds 0, 1) "
                        "at the chosen LR when it is not 3e-4")
    parser.add_argument("--no_dinov2", action="store_true", help="leave the DINOv2-S sweep out of the report")
    parser.add_argument("--dinov2_lr", type=float, default=None,
                        help="summarise the DINOv2-S sweep at this LR instead of the LR check's choice (sensitivity; its runs must be cached)")
    parser.add_argument("--models", action="store_true", help="the model-level benchmark (benchmarks/transferability_models.py)")
    parser.add_argument("--models_dir", default=str(ROOT / "outputs" / "transferability"), help="cache of the model-level runs")
    args = parser.parse_args(argv)
    if args.models:  # the model level moved to benchmarks/transferability_models.py: forwarded there
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import transferability_models

        return transferability_models.main([*(["--quick"] if args.quick else []), *(["--json", args.json] if args.json else []),
                                            *(["--bootstrap", str(args.bootstrap)] if args.bootstrap else []),
                                            *([] if args.quick else ["--models_dir", args.models_dir])])  # quick: its own cache

    import torch
    from transformers.utils import logging as hf_logging

    from hf_nc.checkpoints import DEFAULT_MODEL

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cache = Path(args.cache_dir)
    if args.dinov2_runs:  # seed 0's sweep and its few-step trials first, then seed 1's sweep
        import transferability_dinov2 as D

        runs = D.dinov2_sweep_runs(cache / "dinov2", Path(args.study_dir), [0], D.DINOV2_LR)
        D.dinov2_trials(cache / "dinov2", 0)
        return {**runs, **D.dinov2_sweep_runs(cache / "dinov2", Path(args.study_dir), [1], D.DINOV2_LR)}
    if args.dinov2_lr_check:
        import transferability_dinov2 as D

        return D.lr_check_runs(cache / "dinov2", Path(args.study_dir))
    if args.extract:
        gt = extract_study(Path(args.study_dir))
        Path(args.ground_truth).write_text(json.dumps(strict(gt), indent=1, allow_nan=False) + "\n")
        done = ", ".join(f"{c} ({'/'.join(sorted(e['methods']))})" for c, e in gt["cells"].items())
        print(f"ground truth: {done} -> {args.ground_truth}")
    gt = json.loads(Path(args.ground_truth).read_text())
    cells = args.cells.split(",") if args.cells else (["tiny/digits/10"] if args.quick else list(gt["cells"]))
    num_boot = args.bootstrap or (200 if args.quick else 2000)
    t0 = time.perf_counter()
    cases, costs = [], {}
    for cell in cells:
        info = gt["cells"][cell]
        m0 = next(iter(info["methods"].values()))
        run_steps = next(iter(next(iter(m0["final"].values())).values()))["steps"]
        fractions = [float(f) for f in args.trial_fraction.split(",")]
        trial_steps = [2, 4] if args.quick else [max(1, round(f * run_steps)) for f in fractions]
        # the trials' LR: the study's prior of each method (the centre of its grid; not tuned per block)
        from study import plan

        lrs = {m: plan.PRIOR_LR["tiny"][m] for m in ("layer", "scl")}
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else ",".join(map(str, info["final_seeds"])))).split(",")]
        for seed in seeds:
            key = cache / "cases" / f"{cell.replace('/', '_')}_seed{seed}_steps{'-'.join(map(str, trial_steps))}.json"
            if not args.quick and key.exists():
                cases.append(json.loads(key.read_text()))
                continue
            case = run_case(str(DEFAULT_MODEL), cell, info, seed, trial_steps, run_steps, lrs)
            print(f"  {cell} seed {seed}: picks {case['picks']} ({case['trial_s']['layer'] + case['trial_s']['scl']:.0f} s of trials)", flush=True)
            if not args.quick:
                key.parent.mkdir(parents=True, exist_ok=True)
                key.write_text(json.dumps(strict(case)))
            cases.append(case)
        if not args.quick:
            ref_key = cache / "cases" / f"{cell.replace('/', '_')}_reference_run_s.json"
            if not ref_key.exists():
                ref_key.write_text(json.dumps(reference_run_s(str(DEFAULT_MODEL), info, seeds[0], run_steps, lrs)))
            costs[cell] = json.loads(ref_key.read_text())
    summary = summarise(cases, gt, num_boot)
    for key, c in summary["cost"].items():
        cell, method = key.split(" / ")[0], key.split(" / ")[1].split()[0]
        if cell in costs:
            c["run_s_by_block"] = costs[cell][method]
            c["run_s_mean"] = float(np.mean(list(costs[cell][method].values())))
            c["fine_tuning_runs"] = c["trial_s_mean"] / c["run_s_mean"]
    print(f"transferability benchmark (blocks): cells {cells}, {len(cases)} cases, {num_boot} bootstrap resamples; "
          f"ground truth: {args.ground_truth}")
    print_report(summary, cases)
    dinov2 = None
    if not args.quick:
        import transferability_dinov2 as D  # the DINOv2-S sweep (benchmarks/transferability_dinov2.py)

        dinov2 = None if args.no_dinov2 else D.dinov2_summary(cache / "dinov2", num_boot, lr=args.dinov2_lr)
        D.print_dinov2(dinov2)
    print(f"total {time.perf_counter() - t0:.1f} s")
    out = {"settings": {"cells": cells, "bootstrap": num_boot, "ground_truth": str(Path(args.ground_truth).resolve().relative_to(ROOT))
                        if Path(args.ground_truth).resolve().is_relative_to(ROOT) else args.ground_truth,
                        "command": "python benchmarks/transferability.py " + " ".join(argv if argv is not None else sys.argv[1:])},
           "summary": summary, "dinov2": dinov2, "cases": cases}
    if args.json:
        Path(args.json).write_text(json.dumps(strict(out), indent=1, allow_nan=False))
    if args.markdown:
        Path(args.markdown).write_text(markdown_tables(strict(out)))
    return out


if __name__ == "__main__":
    main()
