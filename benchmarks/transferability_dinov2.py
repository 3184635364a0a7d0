"""The DINOv2-S every-block sweep of the block-level benchmark (``benchmarks/transferability.py``).

    python benchmarks/transferability.py --dinov2_runs   # the sweep's runs (resumable, ~30-60 CPU-min)
    python benchmarks/transferability.py --dinov2_lr_check  # its LR checked on validation, then the sweep at the chosen LR (resumable, ~30-70 CPU-min)
    python benchmarks/transferability.py                 # the report scores the sweep (``--no_dinov2``: left out)

Layer FT of the study's converted DINOv2-S (56 x 56, ``recipes/convert_dinov2_onnx.py``) at every
block on digits (10 shots), seeds 0 and 1, LR 3e-4 (the study's DINOv2 prior for Layer FT), with
the study's recipe and flags (``recipes/study``: final-stage specs, ``execute.execute``); every
score of ``transferability.py`` on the same seed's training features, against the sweep's test
accuracy; the block rules scored by the test accuracy of the block they pick.

**The LR, checked on validation** (``--dinov2_lr_check``, :func:`dinov2_lr_check`): the same specs
at LRs 1e-4, 3e-4 and 1e-3 at blocks 0, 5 and 11 of seed 0; one LR for every block, the best mean
validation accuracy over those blocks (never test; ties go to 3e-4); a winner at an edge of the
grid adds one more value past it (3e-5 or 3e-3) at the same blocks. When the choice is not 3e-4,
the mode also runs the sweep at the chosen LR (seed 0, then seed 1), and the summary uses that sweep
(:func:`sweep_lr`). The few-step trials stay at 3e-4 (a rule's own cost, like the tiny ViT's at
its prior).

Imported by ``transferability.py`` where it is used (this module imports that one's per-block
helpers at its top, so the dependency runs one way).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import strict  # noqa: E402
from transferability import (FEW_STEPS, SCORE_NAMES, STUDY_DIR, block_features, probe_acc, score_blocks, study_init,  # noqa: E402
                             trial_picks)
from study.plan import FAMILY_LAYERS  # noqa: E402  (recipes/ is on the path: transferability puts it there)

DINOV2_RUN = "convert_dinov2-ab02b5e0"  # the study's converted DINOv2-S (56 x 56): <study>/models/<this>
DINOV2_LR = 3e-4  # the study's DINOv2 prior for Layer FT: the sweep's LR, checked on validation by dinov2_lr_check
SWEEP_BLOCKS = list(range(FAMILY_LAYERS["dinov2"]))  # every block of DINOv2-S/14, as the study counts them
# the LR check: the sweep's LR and one half-decade step either side, at the first, middle and last
# block of seed 0; one more value past an edge of the grid when that edge wins
LR_GRID = (1e-4, 3e-4, 1e-3)
LR_EXTENSION = {1e-4: 3e-5, 1e-3: 3e-3}
LR_CHECK_BLOCKS = (0, 5, 11)
LR_CHECK_SEED = 0


def dinov2_sweep_runs(out_dir: Path, study_dir: Path, seeds: list[int], lr: float, blocks: list[int] | None = None,
                      run: bool = True) -> dict:
    """Layer FT of DINOv2-S at every block on digits (10 shots) with the study's recipe and flags
    (``execute.finetune_argv``: 30 epochs, batch 16, prefix cache, validation 30 per class), one
    LR, final-stage specs (validation and test read at the end of each run). Every run is cached
    as ``out_dir/results/<run id>.json`` (resumable; seed by seed, so a partial sweep covers whole
    seeds first). With ``run=False`` only the cached runs are read. Returns ``{seed: {block: record}}``."""
    from study import execute, plan

    model_dir = out_dir / "models" / DINOV2_RUN
    if run and not model_dir.exists():  # the study's converted model, linked (not copied or changed)
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        model_dir.symlink_to((study_dir / "models" / DINOV2_RUN).resolve(), target_is_directory=True)
    s, _ = plan.settings_for("full", dinov2=False)
    cell = ("dinov2", "digits", 10)
    out: dict = {}
    for seed in seeds:
        for b in (blocks if blocks is not None else SWEEP_BLOCKS):
            spec = plan.run_spec(s, cell, "final", seed, "layer", lr, b, model_run=DINOV2_RUN)
            path = execute.result_path(out_dir, spec["id"])
            if path.exists():
                rec = json.loads(path.read_text())
            elif run:
                rec = execute.execute(spec, out_dir)
                print(f"  dinov2 layer@{b} seed {seed}: {execute.describe(rec)} ({rec['wall_time_s']:.0f} s)", flush=True)
            else:
                continue
            if rec["status"] == "ok":
                out.setdefault(seed, {})[b] = rec
    return out


def dinov2_trials(out_dir: Path, seed: int = 0, fraction: float = 0.2) -> dict:
    """``few_steps`` on DINOv2-S (Layer FT, every block, LR 3e-4, ``fraction`` of the 210-step run),
    from the study's initialisation of ``seed``; cached as ``out_dir/trials_seed<seed>.json``."""
    from study import execute

    from hf_nc.selection import few_step_trials

    key = out_dir / f"trials_seed{seed}.json"
    if key.exists():
        return json.loads(key.read_text())
    data = execute.task_data("digits", 10, seed, 30)
    init = study_init(str(out_dir / "models" / DINOV2_RUN), data, seed)
    t = time.perf_counter()
    steps = round(fraction * 210)
    trials = few_step_trials(init, data["train"], data["validation"], method="layer", steps=steps, eval_steps=[steps // 2, steps],
                             run_steps=210, learning_rate=DINOV2_LR, batch_size=16, seed=seed)
    out = {"seed": seed, "trials": [tr.to_dict() for tr in trials], "trial_s": time.perf_counter() - t}
    key.write_text(json.dumps(strict(out)))
    return out


def is_whole_sweep(runs: dict) -> bool:
    """Whether ``{block: record}`` holds a run at every block of the sweep."""
    return sorted(runs) == SWEEP_BLOCKS


def choose_lr(records: dict[float, dict[int, dict]], blocks, prior: float = DINOV2_LR) -> dict:
    """The one LR for every block: the best mean VALIDATION accuracy over ``blocks``.

    Args:
        records: ``{lr: {block: run record}}`` (``execute.execute``'s records: ``result`` holds
            ``validation_accuracy`` and ``test_accuracy``), every LR with every one of ``blocks``.
        blocks: the blocks the mean is over.
        prior: the LR a tie goes to (then the lower LR): a change of LR needs a validation gain.

    Returns:
        ``{"validation_mean": {lr: mean}, "test_mean": {lr: mean}, "chosen_lr": lr}``; the test
        means are reported beside the choice and never read by it.
    """
    missing = {lr: [b for b in blocks if b not in recs] for lr, recs in records.items()}
    if any(missing.values()):
        raise ValueError(f"choose_lr: runs missing at (lr: blocks) {({f'{k:g}': v for k, v in missing.items() if v})}")
    val = {lr: float(np.mean([records[lr][b]["result"]["validation_accuracy"] for b in blocks])) for lr in records}
    test = {lr: float(np.mean([records[lr][b]["result"]["test_accuracy"] for b in blocks])) for lr in records}
    chosen = max(sorted(val), key=lambda lr: (val[lr], lr == prior, -lr))
    return {"validation_mean": val, "test_mean": test, "chosen_lr": chosen}


def dinov2_lr_check(out_dir: Path, study_dir: Path, run: bool = True, grid=LR_GRID, extension: dict | None = None,
                    blocks=LR_CHECK_BLOCKS, seed: int = LR_CHECK_SEED) -> dict:
    """Is the sweep's LR the one validation chooses? Layer FT of DINOv2-S at every LR of ``grid``
    at ``blocks`` for ``seed`` (the sweep's own final-stage specs and cache, :func:`dinov2_sweep_runs`),
    one LR for all blocks by :func:`choose_lr` (validation only); when the winner is an edge of
    ``grid``, one more value past it (``extension``: 3e-5 or 3e-3) at the same blocks, and the
    choice is made again over the extended grid (once: a winner at the new edge is reported as
    ``at_grid_edge``).

    Args:
        out_dir: the sweep's folder (runs cached under ``results/``).
        study_dir: the transfer study's folder (its converted DINOv2-S is linked, not copied).
        run: run the missing runs; with False only the cached runs are read.
        grid: the LRs (the sweep's LR among them).
        extension: ``{edge lr: the value past it}`` (default :data:`LR_EXTENSION`).
        blocks: the blocks every LR runs at.
        seed: the final seed of the runs.

    Returns:
        ``{"status": "pending", "runs_done"}`` while runs are missing, else ``status``
        ``"complete"``, ``grid`` (as run), ``blocks``, ``seed``, ``validation_mean`` and
        ``test_mean`` (``{"<lr>": mean accuracy over the blocks}``), ``per_block``, ``chosen_lr``,
        ``extended`` (the value added past an edge, or None), ``at_grid_edge``, ``sweep_lr``
        (:data:`DINOV2_LR`), ``sweep_lr_is_chosen`` and ``all_blocks_mean`` (``{"<lr>":
        {"validation", "test"}}``: the mean over every block of :data:`SWEEP_BLOCKS` where the seed's whole sweep at that
        LR is cached; reported beside the check, not read by the choice).
    """
    extension = LR_EXTENSION if extension is None else extension
    blocks = list(blocks)
    records: dict = {}

    def runs_at(lr: float) -> bool:
        got = dinov2_sweep_runs(out_dir, study_dir, [seed], lr, blocks=blocks, run=run).get(seed, {})
        records[lr] = got
        return sorted(got) == sorted(blocks)

    def pending() -> dict:
        return {"status": "pending", "blocks": blocks, "seed": seed, "runs_done": {f"{lr:g}": sorted(r) for lr, r in records.items()}}

    if not all([runs_at(lr) for lr in grid]):  # every LR's runs (a list: no short-circuit)
        return pending()
    got = choose_lr(records, blocks)
    extended = None
    if got["chosen_lr"] in (min(grid), max(grid)) and got["chosen_lr"] in extension:
        extended = extension[got["chosen_lr"]]
        if not runs_at(extended):
            return pending()
        got = choose_lr(records, blocks)
    lrs = sorted(records)
    chosen = got["chosen_lr"]
    # reported, never chosen on: where the seed's whole sweep at an LR is cached, its mean over
    # every block (does the check's few blocks stand for all of them?)
    every: dict = {}
    for lr in lrs:
        full = dinov2_sweep_runs(out_dir, study_dir, [seed], lr, run=False).get(seed, {})
        if is_whole_sweep(full):
            every[f"{lr:g}"] = {k: float(np.mean([full[b]["result"][f"{k}_accuracy"] for b in SWEEP_BLOCKS])) for k in ("validation", "test")}
    return {"status": "complete", "grid": lrs, "blocks": blocks, "seed": seed, "all_blocks_mean": every,
            "validation_mean": {f"{lr:g}": got["validation_mean"][lr] for lr in lrs},
            "test_mean": {f"{lr:g}": got["test_mean"][lr] for lr in lrs},
            "per_block": {f"{lr:g}": {str(b): {"validation": records[lr][b]["result"]["validation_accuracy"],
                                               "test": records[lr][b]["result"]["test_accuracy"]} for b in blocks} for lr in lrs},
            "chosen_lr": chosen, "extended": extended, "at_grid_edge": chosen in (lrs[0], lrs[-1]),
            "sweep_lr": DINOV2_LR, "sweep_lr_is_chosen": chosen == DINOV2_LR}


def lr_check_runs(out_dir: Path, study_dir: Path) -> dict:
    """``--dinov2_lr_check``: run (or resume) the LR check, then, when validation chose an LR other
    than the sweep's, the sweep at that LR at every block, seed 0 then seed 1 (the check's blocks
    are cached; stopped after seed 0, the summary uses seed 0's sweep alone)."""
    check = dinov2_lr_check(out_dir, study_dir, run=True)
    print(describe_lr_check(check), flush=True)
    if check["status"] == "complete" and not check["sweep_lr_is_chosen"]:
        print(f"  the sweep at the chosen LR {check['chosen_lr']:g} (every block, seeds 0 and 1)", flush=True)
        dinov2_sweep_runs(out_dir, study_dir, [0, 1], check["chosen_lr"])
    return check


def sweep_lr(check: dict, out_dir: Path, study_dir: Path = STUDY_DIR) -> float:
    """The LR the summary's sweep uses: the LR check's choice when the check is complete and a
    whole seed's sweep at that LR is cached, else :data:`DINOV2_LR` (the sweep as first run)."""
    if check.get("status") != "complete" or check["chosen_lr"] == DINOV2_LR:
        return DINOV2_LR
    runs = dinov2_sweep_runs(out_dir, study_dir, [0, 1], check["chosen_lr"], run=False)
    return check["chosen_lr"] if any(is_whole_sweep(r) for r in runs.values()) else DINOV2_LR


def dinov2_summary(out_dir: Path, num_boot: int, lr: float | None = None) -> dict | None:
    """Scores of every DINOv2-S block on each seed's training features against the sweep's
    Layer FT accuracy (test) and validation accuracy, for the seeds whose sweep is complete.

    Args:
        out_dir: The sweep's cache.
        num_boot: Bootstrap resamples.
        lr: Summarise the sweep at this LR instead of the LR check's choice (:func:`sweep_lr`):
            a sensitivity view (``--dinov2_lr``); the record says so (``lr_override``).
    """
    from study import execute

    from hf_nc.probe import load_model
    from hf_nc.selection import choose_block, choose_block_by_score, nc1_slopes
    from hf_nc.selection import correlation as C
    from hf_nc.selection import scores as S

    check = dinov2_lr_check(out_dir, STUDY_DIR, run=False)
    override = lr is not None
    lr = float(lr) if override else sweep_lr(check, out_dir)
    if check.get("status") == "complete":
        check["summary_lr"] = lr  # the LR of the sweep summarised below (the choice once its sweep ran)
    check["lr_override"] = override
    runs = dinov2_sweep_runs(out_dir, STUDY_DIR, [0, 1], lr, run=False)
    complete = {seed: r for seed, r in runs.items() if is_whole_sweep(r)}
    if not complete:
        return {"status": "pending", "runs_done": {str(s): sorted(r) for s, r in runs.items()}, "lr": lr, "lr_check": check}
    path = str(out_dir / "models" / DINOV2_RUN)
    model = load_model(path).eval()
    cases = []
    for seed, recs in sorted(complete.items()):
        data = execute.task_data("digits", 10, seed, 30)
        train, val, test, curve, forward_s = block_features(model, data, 10)
        values, times = score_blocks(train, SWEEP_BLOCKS, 10)
        values["nc1_slope"] = nc1_slopes(curve)
        val_probe = [probe_acc(train[b], train["labels"], val[b], val["labels"]) for b in SWEEP_BLOCKS]
        test_acc = [recs[b]["result"]["test_accuracy"] for b in SWEEP_BLOCKS]
        val_acc = [recs[b]["result"]["validation_accuracy"] for b in SWEEP_BLOCKS]
        cases.append({"seed": seed, "scores": values, "times_s": times, "forward_s": forward_s, "nc1_curve": curve,
                      "validation_probe": val_probe, "test_probe": [probe_acc(train[b], train["labels"], test[b], test["labels"]) for b in SWEEP_BLOCKS],
                      "layer_ft_test": test_acc, "layer_ft_validation": val_acc, "run_wall_s": [recs[b]["wall_time_s"] for b in SWEEP_BLOCKS],
                      "picks": {"nc1": choose_block(curve, "layer").block,
                                "nc1_slope": choose_block_by_score(values["nc1_slope"], "nc1_slope", "layer").block,
                                "probe": choose_block_by_score(val_probe, "probe", "layer").block,
                                **{r: choose_block_by_score(values[r], r, "layer").block for r in ("logme", "hscore_shrinkage", "ncti")},
                                "sweep on validation": int(np.argmax(val_acc))}})
    corr = {}
    for name in (*SCORE_NAMES, "nc1_slope", "probe (validation)"):
        per = []
        for c in cases:
            s = (-np.asarray(c["scores"]["nc1_slope"]) if name == "nc1_slope" else np.asarray(c["validation_probe"]) if name.startswith("probe")
                 else np.asarray([S.oriented(name, v) for v in c["scores"][name]]))
            from scipy import stats

            per.append({**C.correlations(s, c["layer_ft_test"]), "regret": 100 * C.top1_regret(s, c["layer_ft_test"]),
                        "p": float(stats.kendalltau(s, c["layer_ft_test"]).pvalue)})
        corr[name] = {"kendall_tau": float(np.nanmean([p["kendall_tau"] for p in per])),
                      "weighted_tau": float(np.nanmean([p["weighted_tau"] for p in per])),
                      "kendall_tau_per_seed": [p["kendall_tau"] for p in per], "kendall_p_per_seed": [p["p"] for p in per],
                      "top1_regret_points": float(np.mean([p["regret"] for p in per]))}
    rules = {}
    for name in ("nc1", "nc1_slope", "logme", "hscore_shrinkage", "ncti", "probe"):
        rules[f"rule: {name}"] = {"picks": [c["picks"][name] for c in cases], "test": [c["layer_ft_test"][c["picks"][name]] for c in cases]}
    fixed = {"fixed: middle block (6)": lambda c: 6, "fixed: last block (11)": lambda c: 11,
             "sweep, chosen on the seed's validation (12 runs)": lambda c: c["picks"]["sweep on validation"],
             "oracle (best block, test)": lambda c: int(np.argmax(c["layer_ft_test"]))}
    for name, pick in fixed.items():
        rules[name] = {"picks": [pick(c) for c in cases], "test": [c["layer_ft_test"][pick(c)] for c in cases]}
    rules["random block (mean over blocks)"] = {"picks": None, "test": [float(np.mean(c["layer_ft_test"])) for c in cases]}
    trial_cost = {}
    for c in cases:  # few_steps, where its trials were run (--dinov2_runs runs them for seed 0)
        key = out_dir / f"trials_seed{c['seed']}.json"
        if key.exists():
            tr = json.loads(key.read_text())
            picks = trial_picks(tr["trials"], "layer")
            c["picks"].update(picks)
            c["trials"] = tr["trials"]
            trial_cost[c["seed"]] = {"trial_s": tr["trial_s"], "run_s_mean": float(np.mean(c["run_wall_s"]))}
    with_trials = [c for c in cases if "trials" in c]
    if with_trials:
        for name in FEW_STEPS:
            rules[f"rule: {name}"] = {"picks": [c["picks"][name] for c in with_trials], "test": [c["layer_ft_test"][c["picks"][name]] for c in with_trials]}
        for c in with_trials:
            acc = [t["validation_accuracy"][-1] for t in c["trials"]]
            corr.setdefault("few_steps (validation)", {"kendall_tau_per_seed": [], "kendall_p_per_seed": [], "weighted": [], "regret": []})
            from scipy import stats

            cc = C.correlations(acc, c["layer_ft_test"])
            corr["few_steps (validation)"]["kendall_tau_per_seed"].append(cc["kendall_tau"])
            corr["few_steps (validation)"]["kendall_p_per_seed"].append(float(stats.kendalltau(acc, c["layer_ft_test"]).pvalue))
            corr["few_steps (validation)"]["weighted"].append(cc["weighted_tau"])
            corr["few_steps (validation)"]["regret"].append(100 * C.top1_regret(acc, c["layer_ft_test"]))
        f = corr["few_steps (validation)"]
        corr["few_steps (validation)"] = {"kendall_tau": float(np.mean(f["kendall_tau_per_seed"])), "weighted_tau": float(np.mean(f["weighted"])),
                                          "kendall_tau_per_seed": f["kendall_tau_per_seed"], "kendall_p_per_seed": f["kendall_p_per_seed"],
                                          "top1_regret_points": float(np.mean(f["regret"]))}
    return {"status": "complete" if len(complete) == 2 else "partial", "seeds": sorted(complete), "lr": lr, "lr_check": check, "cases": cases,
            "correlations": corr, "rules": rules, "few_steps_cost": trial_cost}


def describe_lr_check(check: dict | None) -> str:
    """One line on the LR check (:func:`dinov2_lr_check`'s result) for the printout and the tables."""
    if not check or check.get("status") != "complete":
        return f"LR check (validation): pending (runs done per LR: {(check or {}).get('runs_done')})"
    blocks = ", ".join(map(str, check["blocks"]))
    val = ", ".join(f"{lr} {100 * v:.1f}" for lr, v in check["validation_mean"].items())
    test = ", ".join(f"{lr} {100 * v:.1f}" for lr, v in check["test_mean"].items())
    edge = f"; {check['extended']:g} added past the grid's edge" if check["extended"] is not None else ""
    edge += "; the choice is at the grid's edge" if check["at_grid_edge"] else ""
    used = check.get("summary_lr", check["sweep_lr"])
    every = check.get("all_blocks_mean") or {}
    tail = "" if not every else (
        f"; reported only, the mean over all {len(SWEEP_BLOCKS)} blocks of seed {check['seed']} where its whole sweep ran: validation "
        + ", ".join(f"{lr} {100 * v['validation']:.1f}" for lr, v in every.items())
        + ", test " + ", ".join(f"{lr} {100 * v['test']:.1f}" for lr, v in every.items()))
    return (f"LR check (seed {check['seed']}, blocks {blocks}): mean validation accuracy (%) {val} -> chosen {check['chosen_lr']:g}{edge} "
            f"(test, not read by the choice: {test}); the sweep's LR {check['sweep_lr']:g} "
            f"{'is' if check['sweep_lr_is_chosen'] else 'is not'} the chosen one; the summarised sweep is at {used:g}"
            f"{' (--dinov2_lr: a sensitivity view, not the choice)' if check.get('lr_override') else ''}{tail}")


def print_dinov2(res: dict | None) -> None:
    if not res or res.get("status") == "pending":
        print(f"\n== DINOv2-S block sweep: pending ({(res or {}).get('runs_done')})")
        if res and "lr_check" in res:
            print(describe_lr_check(res["lr_check"]))
        return
    print(f"\n== DINOv2-S Layer FT block sweep (digits, 10 shots, LR {res['lr']:g}, seeds {res['seeds']}): scores vs test accuracy")
    if "lr_check" in res:
        print(describe_lr_check(res["lr_check"]))
    for c in res["cases"]:
        print(f"seed {c['seed']}: test " + " ".join(f"{100 * a:.1f}" for a in c["layer_ft_test"]) + f"  picks {c['picks']}")
    for name, r in res["correlations"].items():
        print(f"{name:>24} tau {r['kendall_tau']:+.2f} {['%+.2f' % v for v in r['kendall_tau_per_seed']]} weighted {r['weighted_tau']:+.2f} "
              f"regret {r['top1_regret_points']:.1f} pt")
    for name, r in res["rules"].items():
        print(f"{name:>52} test {100 * np.mean(r['test']):.1f}  picks {r['picks']}")


def dinov2_markdown(d: dict) -> list[str]:
    """The DINOv2-S lines of ``docs/SELECTION.md``'s block-level tables (``d``: :func:`dinov2_summary`'s result)."""
    lines = ["", f"**DINOv2-S** (digits, 10 shots, Layer FT at LR {d['lr']:g}, seed(s) {d['seeds']}): per-block test accuracy (%):", "",
             "| seed | " + " | ".join(str(b) for b in SWEEP_BLOCKS) + " |", "|---|" + "---|" * len(SWEEP_BLOCKS)]
    if "lr_check" in d:  # before the table: which LR the sweep is at, and whether validation chose it
        lines[1:1] = [describe_lr_check(d["lr_check"]) + ".", ""]
    for c in d["cases"]:
        lines.append(f"| {c['seed']} | " + " | ".join(f"{100 * a:.1f}" for a in c["layer_ft_test"]) + " |")
    lines += ["", "| score | Kendall tau (p per seed) | weighted tau | top-1 regret (points) |", "|---|---|---|---|"]
    for name, r in d["correlations"].items():
        ps = ", ".join(f"p = {p:.2g}" for p in r["kendall_p_per_seed"])
        lines.append(f"| {name} | {r['kendall_tau']:+.2f} ({ps}) | {r['weighted_tau']:+.2f} | {r['top1_regret_points']:.1f} |")
    lines += ["", "| rule | picks | test accuracy (%) |", "|---|---|---|"]
    for name, r in d["rules"].items():
        lines.append(f"| {name} | {'' if r['picks'] is None else ' '.join(map(str, r['picks']))} | {100 * np.mean(r['test']):.1f} |")
    return lines
