"""Which pre-trained model? Every transferability score against FINE-TUNED accuracy, side by side.

    python benchmarks/transferability_models.py --quick          # CI-safe (< 1 min): 3 candidates, no pre-training
    python benchmarks/transferability_models.py --json docs/selection/transferability_models.json

**Candidates** (all the built-in tiny ViT's architecture: 12 blocks, width 64, patch 7, 28 px):

- 8 ViTs pre-trained by ``recipes/pretrain_vit.py`` on Fashion-MNIST classes 0-4 (CE, label
  smoothing, MSE, SupCon; each without and with crop+flip), at a **short** budget (2,000 images,
  1 epoch: ``pt_*``) and 8 more at **4x** that budget (8,000 images, 1 epoch: ``pt4_*``);
- the built-in ViT (``builtin``, trained on all of Fashion-MNIST);
- two random-init controls: the built-in architecture freshly initialised with seeds 0 and 1.

**Tasks**: ``digits`` (10 classes) and ``fmnist59`` (Fashion-MNIST classes 5-9, held out from the
variants' source classes 0-4), each with 10 shots per class, seeds 0, 1, 2, and a validation split
of 30 images per class drawn outside the few-shot subset: exactly the transfer study's splits
(``recipes/study/execute.task_data``).

**Ground truth** (test accuracy, mean over the 3 seeds), each run once at a fixed protocol chosen
on VALIDATION by the transfer study for the built-in tiny ViT on digits / 10 shots
(``recipes/study/select.py`` over its selection records, seeds 100-101; no test number read):

- ``full_ft``: full fine-tuning, lr 1e-3, head lr 1e-2 (x10), 30 epochs, batch 16;
- ``scl_ft``: SCL FT at block 1 (the study's validation choice of block), lr 3e-3, 30 epochs, batch 16;
- ``probe``: logistic regression on the frozen final features, C chosen on validation per run.

Every run goes through the study's own runner (``recipes/study/execute.execute``: same recipe,
same argv, one JSON per run in ``--models_dir/results``; resumable). The built-in ViT's digits
runs are the study's own final runs when they exist (same spec, same run id).

**Scores**: every score of ``hf_nc.selection.SCORES`` on the frozen final features of the seed-0
training subset, from ``rank_models(..., scores=[...])`` (one forward pass per candidate), and
each score timed on its own on the same features. For each score and ground truth: Kendall tau,
weighted tau (``scipy.stats.weightedtau``), 95% percentile-bootstrap CI (candidates resampled),
top-1 regret (points); per task and pooled over the two tasks (the mean of the per-task taus,
the same candidate resample for both tasks).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import strict  # noqa: E402
SCORE_NAMES = ("logme", "logme_thin", "ncti", "hscore", "hscore_shrinkage", "nc1", "cdnv", "ncc_acc", "nc2_etf")
TRUTHS = ("full_ft", "scl_ft", "probe")
TASK_NAMES = ("digits", "fmnist59")
LOSSES = ("ce", "label_smoothing", "mse", "supcon")
AUGS = ("none", "crop,flip")

#: pretrain_vit.py arguments shared by every variant; the budgets differ only in images seen.
PRETRAIN_ARGS = ["--dataset", "fashion_mnist", "--classes", "0,1,2,3,4", "--num_train_epochs", "1", "--nc_samples", "500",
                 "--max_eval_samples", "500", "--patch_size", "7", "--logging_steps", "1000", "--torch_threads", "1", "--seed", "0"]
BUDGETS = {"pt": 2000, "pt4": 8000}

#: The protocol: the transfer study's validation choices for the built-in tiny ViT on digits / 10 shots.
PROTOCOL = {"full_ft": {"method": "full", "hp": 1e-3, "head_factor": 10.0, "block": None},
            "scl_ft": {"method": "scl", "hp": 3e-3, "head_factor": None, "block": 1}}

FULL_SETTINGS = {"tasks": TASK_NAMES, "shots": 10, "seeds": (0, 1, 2), "budgets": BUDGETS, "random_seeds": (0, 1), "mode": "full"}
QUICK_SETTINGS = {"tasks": ("digits",), "shots": 5, "seeds": (0,), "budgets": {}, "random_seeds": (0, 1), "mode": "quick"}


def _cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(strict(value)))
    tmp.replace(path)
    return value


def _quiet(fn, *a):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*a)


def study_settings(settings: dict) -> dict:
    """The transfer study's settings the runs use (``full``: 30 epochs, batch 16, 30 validation
    images per class; ``quick``: the study's smoke setting, 2 optimizer steps), with ``shots``."""
    from study import plan

    return json.loads(json.dumps(plan.FULL if settings["mode"] == "full" else plan.SMOKE)) | {"shots": settings["shots"]}


def build_candidates(models_dir: Path, settings: dict, log=print) -> dict:
    """``{name: {"path", "key", "run", "kind", ...}}``: pre-trains what is missing (cached)."""
    from hf_nc.checkpoints import DEFAULT_MODEL
    from hf_nc.probe import load_model

    models = models_dir / "models"
    out = {}
    for prefix, images in settings["budgets"].items():
        for loss in LOSSES:
            for aug in AUGS:
                name = f"{prefix}_{loss}" + ("+aug" if aug != "none" else "")
                path = models / name

                def pretrain(path=path, loss=loss, aug=aug, images=images):
                    import pretrain_vit

                    rec = _quiet(pretrain_vit.main, ["--output_dir", str(path), "--loss", loss, "--augment", aug,
                                                     "--max_train_samples", str(images), *PRETRAIN_ARGS])
                    return {k: rec[k] for k in ("test_accuracy", "steps", "wall_time_s")} | {"images": images}

                rec = _cached(models_dir / "pretrain" / f"{name}.json", pretrain)
                log(f"  pre-trained {name}: source test accuracy {rec['test_accuracy']:.3f} ({rec['steps']} steps, {rec['wall_time_s']:.0f} s)")
                out[name] = {"path": str(path), "key": name, "run": name, "kind": f"pre-trained, {images} images", "pretrain": rec}
    out["builtin"] = {"path": str(DEFAULT_MODEL), "key": "tiny", "run": None, "kind": "built-in (all of Fashion-MNIST)"}
    for seed in settings["random_seeds"]:
        name = "random_init" if seed == 0 else f"random_init_s{seed}"
        path = models / name
        if not (path / "preprocessor_config.json").exists():  # the built-in architecture and transforms, freshly initialised
            path.mkdir(parents=True, exist_ok=True)
            load_model(str(DEFAULT_MODEL), random_init=True, seed=seed).save_pretrained(path)
            shutil.copy(Path(DEFAULT_MODEL) / "preprocessor_config.json", path / "preprocessor_config.json")
        out[name] = {"path": str(path), "key": name, "run": name, "kind": f"random init (seed {seed})"}
    return out


def run_specs(cand: dict, task: str, seed: int, s: dict) -> dict:
    """``{truth: study run spec}`` of one candidate, task and seed (the study's ``run_spec``: the
    same argv, so the built-in ViT's digits runs have the study's run ids)."""
    from study import plan

    cell = (cand["key"], task, s["shots"])
    specs = {truth: plan.run_spec(s, cell, "final", seed, p["method"], p["hp"], p["block"], head_factor=p["head_factor"],
                                  model_run=cand["run"]) for truth, p in PROTOCOL.items()}
    probe = {"kind": "probe", "model": cand["key"], "model_run": cand["run"], "task": task, "shots": s["shots"], "seed": seed,
             "val_shots": s["val_shots"], "C_grid": list(plan.LOGREG_C), "max_eval": plan.TASKS[task]["max_eval"] or s.get("max_eval")}
    specs["probe"] = plan._with_id(f"probe_{cand['key']}_{task}_s{s['shots']}_seed{seed}", probe)
    return specs


def _accuracy(rec: dict, truth: str) -> float:
    r = rec["result"]
    return float(r["lp_test_accuracy"] if truth == "probe" else r["test_accuracy"])


def ground_truth(cands: dict, settings: dict, models_dir: Path, log=print, run_new: bool = True) -> tuple[dict, float]:
    """``{task: {truth: {candidate: [test accuracy per seed]}}}`` and the CPU seconds of new runs.

    Seed-major order (every candidate and task at seed 0, then seed 1, ...), so an interrupted
    run leaves whole seeds. With ``run_new=False`` only cached runs are read; per task, only the
    seeds every candidate has every ground truth of are kept."""
    from study import execute

    s = study_settings(settings)
    study_dir = ROOT / "outputs" / "transfer_study"
    got: dict = {}
    spent = 0.0
    for seed in settings["seeds"]:
        for task in settings["tasks"]:
            for name, cand in cands.items():
                for truth, spec in run_specs(cand, task, seed, s).items():
                    if truth not in settings.get("run_truths", TRUTHS):
                        run_new_here = False
                    else:
                        run_new_here = run_new
                    mine, theirs = execute.result_path(models_dir, spec["id"]), execute.result_path(study_dir, spec["id"])
                    if mine.exists():
                        rec = json.loads(mine.read_text())
                    elif theirs.exists() and cand["key"] == "tiny" and settings["mode"] == "full":
                        rec = json.loads(theirs.read_text())  # the study's own final run of this exact spec
                    elif not run_new_here:
                        continue
                    else:
                        t = time.process_time()
                        rec = execute.execute(spec, models_dir)
                        spent += time.process_time() - t
                        if rec["status"] != "ok":
                            raise RuntimeError(f"run {spec['id']} failed: {rec['error']}")
                        log(f"  {task} {name} seed {seed} {truth}: {_accuracy(rec, truth):.3f} ({rec['wall_time_s']:.1f} s)", flush=True)
                    got[(task, truth, name, seed)] = _accuracy(rec, truth)
    out = {}
    for task in settings["tasks"]:
        out[task] = {"seeds": {}}
        for tr in TRUTHS:
            seeds = [sd for sd in settings["seeds"] if all((task, tr, n, sd) in got for n in cands)]
            if not seeds:
                raise RuntimeError(f"{task} / {tr}: no seed has the run of every candidate yet")
            out[task][tr] = {n: [got[(task, tr, n, sd)] for sd in seeds] for n in cands}
            out[task]["seeds"][tr] = seeds
    return out, spent


def score_candidates(cands: dict, task: str, settings: dict) -> dict:
    """Every score of every candidate on the seed-0 training subset: the values from
    ``rank_models`` (one pass each) and each score's own time on the same features."""
    from study import execute

    from hf_nc.probe import load_model
    from hf_nc.selection import _measure, rank_models
    from hf_nc.selection import scores as S

    s = study_settings(settings)
    data = execute.task_data(task, s["shots"], settings["seeds"][0], s["val_shots"], with_test=False)
    k = len(data["train"].features["label"].names)
    t = time.perf_counter()
    ranking = rank_models({n: c["path"] for n, c in cands.items()}, data["train"], scores=list(SCORE_NAMES), layers="final",
                          progress=False)
    rank_s = time.perf_counter() - t
    values = {c.name: {n: float(c.scores.get(n, math.nan)) for n in SCORE_NAMES} for c in ranking.candidates}
    times = {n: 0.0 for n in SCORE_NAMES}
    forward = 0.0
    for name, c in cands.items():
        model = load_model(c["path"]).eval()
        t = time.perf_counter()
        _, kept = _measure.measure(model, data["train"], k, layers=[], keep_final=True, progress=False)
        forward += time.perf_counter() - t
        x, y = kept["final"], kept["labels"]
        if not any(times.values()):  # warm-up (imports, first-call caches), not timed
            S.compute_scores(x, y, list(SCORE_NAMES), num_classes=k)
        for n in SCORE_NAMES:
            t = time.perf_counter()
            S.compute_scores(x, y, [n], num_classes=k)
            times[n] += time.perf_counter() - t
    return {"values": values, "time_s": times, "forward_s": forward, "rank_models_s": rank_s, "num_train": len(data["train"]),
            "ranked_by_nc1": [c.name for c in ranking.candidates]}


def _taus(score: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """(Kendall tau-b, weighted tau); NaN when a side is constant (as ``correlation.correlations``)."""
    from scipy import stats

    if np.ptp(score) == 0 or np.ptp(acc) == 0:
        return math.nan, math.nan
    return float(stats.kendalltau(score, acc).statistic), float(stats.weightedtau(score, acc).statistic)


def correlate(scores: dict, truth: dict, tasks, num_boot: int, seed: int = 0) -> dict:
    """Per task and pooled (mean of per-task values, candidates resampled jointly): Kendall tau,
    weighted tau, their 95% bootstrap CIs, top-1 regret (points) of every score against ``truth``."""
    from hf_nc.selection import correlation as C
    from hf_nc.selection import scores as S

    names = sorted(set.intersection(*(set(truth[t]) for t in tasks)))
    n = len(names)
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, n, n) for _ in range(num_boot)]
    out = {}
    for score in SCORE_NAMES:
        per_task, draws = {}, {}
        for t in tasks:
            sv = C._finite([S.oriented(score, scores[t]["values"][c][score]) for c in names])
            av = np.array([float(np.mean(truth[t][c])) for c in names])
            per_task[t] = (sv, av)
            draws[t] = np.array([_taus(sv[idx], av[idx]) for idx in boots]).reshape(num_boot, 2)
        rows = {}
        for label, group in [*((t, [t]) for t in tasks), *([("pooled", list(tasks))] if len(tasks) > 1 else [])]:
            point = [C.correlations(*per_task[t]) for t in group]
            row = {"n": n, "top1_regret_points": float(np.mean([100 * C.top1_regret(*per_task[t]) for t in group]))}
            for key in ("kendall_tau", "weighted_tau", "spearman"):
                row[key] = float(np.nanmean([p[key] for p in point]))
            for j, key in enumerate(("kendall_tau", "weighted_tau")):
                d = np.mean([draws[t][:, j] for t in group], axis=0)  # NaN where a task's resample was constant
                d = d[np.isfinite(d)]
                row[key + "_ci"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if len(d) >= num_boot / 2 else [math.nan, math.nan]
            rows[label] = row
        out[score] = rows
    return out


def compare_to_logme(corr: dict, truth: str, label: str, num_boot: int) -> dict:
    """Is the best NC score's tau at least LogME's? Point values only (the paired bootstrap is in
    :func:`paired_difference`)."""
    nc = {n: corr[truth][n][label]["kendall_tau"] for n in ("nc1", "cdnv", "ncc_acc", "nc2_etf")}
    best = max(nc, key=lambda n: nc[n] if math.isfinite(nc[n]) else -9)
    return {"best_nc": best, "best_nc_tau": nc[best], "logme_tau": corr[truth]["logme"][label]["kendall_tau"]}


def paired_difference(scores: dict, truth: dict, tasks, a: str, b: str, num_boot: int, seed: int = 1) -> dict:
    """tau(a) - tau(b) against ``truth`` (mean over ``tasks``) with a paired 95% bootstrap CI."""
    from hf_nc.selection import correlation as C
    from hf_nc.selection import scores as S

    names = sorted(set.intersection(*(set(truth[t]) for t in tasks)))
    n = len(names)
    data = {t: (C._finite([S.oriented(a, scores[t]["values"][c][a]) for c in names]),
                C._finite([S.oriented(b, scores[t]["values"][c][b]) for c in names]),
                np.array([float(np.mean(truth[t][c])) for c in names])) for t in tasks}

    def diff(idx):
        d = [_taus(data[t][0][idx], data[t][2][idx])[0] - _taus(data[t][1][idx], data[t][2][idx])[0] for t in tasks]
        return float(np.mean(d))

    rng = np.random.default_rng(seed)
    draws = [v for v in (diff(rng.integers(0, n, n)) for _ in range(num_boot)) if math.isfinite(v)]
    return {"difference": diff(np.arange(n)), "ci": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}


def model_level(models_dir: Path, settings: dict, num_boot: int, log=print, run_new: bool = True) -> dict:
    """Builds the candidates, runs the ground truth, scores every candidate, correlates."""
    sys.path.insert(0, str(ROOT / "recipes"))
    t0 = time.process_time()
    cands = build_candidates(models_dir, settings, log)
    pretrain_cpu = time.process_time() - t0
    truth, ft_cpu = ground_truth(cands, settings, models_dir, log, run_new)
    scores = {t: score_candidates(cands, t, settings) for t in settings["tasks"]}
    tasks = list(settings["tasks"])
    corr = {tr: correlate(scores, {t: truth[t][tr] for t in tasks}, tasks, num_boot) for tr in TRUTHS}
    pooled = "pooled" if len(tasks) > 1 else tasks[0]
    versus = {}
    for tr in TRUTHS:
        versus[tr] = {**compare_to_logme(corr, tr, pooled, num_boot)}
        versus[tr]["difference_vs_logme"] = {nc: paired_difference(scores, {t: truth[t][tr] for t in tasks}, tasks, nc, "logme", num_boot)
                                             for nc in ("nc1", "cdnv", "ncc_acc", "nc2_etf")}
    return {"candidates": {n: {k: v for k, v in c.items() if k != "path"} for n, c in cands.items()},
            "accuracies": truth, "scores": scores, "correlations": corr, "nc_vs_logme": versus,
            "cpu_s": {"pretrain_this_invocation": pretrain_cpu, "finetune_this_invocation": ft_cpu}}


def print_models(res: dict) -> None:
    tasks = list(res["accuracies"])
    labels = [*tasks, *(["pooled"] if len(tasks) > 1 else [])]
    n = next(iter(next(iter(res["correlations"].values())).values()))[labels[0]]["n"]
    print(f"\n== model level: {n} candidates, tasks {tasks}; Kendall tau [95% bootstrap CI over candidates], weighted tau, top-1 regret")
    for truth, rows in res["correlations"].items():
        print(f"-- ground truth: {truth}")
        print(f"{'score':>18} " + " ".join(f"{label:>40}" for label in labels))
        for name, per in rows.items():
            cells = []
            for label in labels:
                r = per[label]
                tau = f"{r['kendall_tau']:+.2f} [{r['kendall_tau_ci'][0]:+.2f}, {r['kendall_tau_ci'][1]:+.2f}]" if math.isfinite(r["kendall_tau"]) else "n/a"
                cells.append(f"{tau} w{r['weighted_tau']:+.2f} r{r['top1_regret_points']:.1f}")
            print(f"{name:>18} " + " ".join(f"{c:>40}" for c in cells))
    for truth, v in res["nc_vs_logme"].items():
        d = v["difference_vs_logme"][v["best_nc"]]
        print(f"   {truth}: best NC score {v['best_nc']} tau {v['best_nc_tau']:+.2f} vs LogME {v['logme_tau']:+.2f}; "
              f"difference {d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]")
    print(f"\n{'candidate':>24} " + " ".join(f"{t[:8] + '/' + tr:>18}" for t in tasks for tr in TRUTHS))
    for name in res["candidates"]:
        print(f"{name:>24} " + " ".join(f"{100 * np.mean(res['accuracies'][t][tr][name]):>18.1f}" for t in tasks for tr in TRUTHS))
    for t in tasks:
        sc = res["scores"][t]
        print(f"score time ({t}, ms over all candidates): " + ", ".join(f"{k} {1000 * v:.0f}" for k, v in sc["time_s"].items())
              + f"; forward passes {1000 * sc['forward_s']:.0f}")


def markdown(res: dict) -> str:
    """The results as the Markdown tables of ``docs/SELECTION.md`` (Kendall tau [CI]; weighted tau; regret; time)."""
    tasks = [t for t in res["accuracies"]]
    labels = [*tasks, *(["pooled"] if len(tasks) > 1 else [])]

    def tau(r, key="kendall_tau"):
        v, ci = r[key], r[key + "_ci"]
        return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if v is not None and math.isfinite(v) else "n/a"

    cols = [(tr, label) for tr in TRUTHS for label in labels]
    head = "| score | " + " | ".join(f"{label} / {tr}" for tr, label in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    out = []
    for key, title in (("kendall_tau", "Kendall tau [95% CI]"), ("weighted_tau", "weighted tau [95% CI]")):
        out += [f"{title}:", "", head, sep]
        for name in SCORE_NAMES:
            out.append(f"| {name} | " + " | ".join(tau(res["correlations"][tr][name][label], key) for tr, label in cols) + " |")
        out.append("")
    out += ["Top-1 regret (points) and time per score (ms, all candidates, shared CPU):", "",
            "| score | " + " | ".join(f"{label} / {tr}" for tr, label in cols) + " | " + " | ".join(f"time {t}" for t in tasks) + " |",
            "|---|" + "---|" * (len(cols) + len(tasks))]
    for name in SCORE_NAMES:
        out.append(f"| {name} | " + " | ".join(f"{res['correlations'][tr][name][label]['top1_regret_points']:.1f}" for tr, label in cols)
                   + " | " + " | ".join(f"{1000 * res['scores'][t]['time_s'][name]:.0f}" for t in tasks) + " |")
    out += ["", "Accuracy (%, mean over seeds " + "; ".join(f"{t} / {tr}: {sd}" for t in tasks for tr, sd in res['accuracies'][t]['seeds'].items()) + "):", "",
            "| candidate | " + " | ".join(f"{t} / {tr}" for t in tasks for tr in TRUTHS) + " |", "|---|" + "---|" * (len(tasks) * len(TRUTHS))]
    for name in res["candidates"]:
        out.append(f"| {name} | " + " | ".join(f"{100 * np.mean(res['accuracies'][t][tr][name]):.1f}" for t in tasks for tr in TRUTHS) + " |")
    return "\n".join(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-safe: builtin + 2 random inits, digits, 5 shots, 2 optimizer steps")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; quick: 100)")
    parser.add_argument("--models_dir", default=None, help="cache: models, pre-training and one JSON per run (default "
                        "outputs/transferability; quick: outputs/transferability_quick)")
    parser.add_argument("--markdown", default=None, help="also write the Markdown tables here")
    parser.add_argument("--truths", default=",".join(TRUTHS), help="comma-separated ground truths to start runs for (the others: cached only)")
    parser.add_argument("--cached_only", action="store_true", help="start no run: summarise the cached runs (per task, the "
                        "seeds that every candidate has complete)")
    parser.add_argument("--stage", choices=("all", "candidates"), default="all", help="candidates: only pre-train / build them")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    settings = dict(QUICK_SETTINGS if args.quick else FULL_SETTINGS, run_truths=tuple(args.truths.split(",")))
    models_dir = Path(args.models_dir or ROOT / "outputs" / ("transferability_quick" if args.quick else "transferability"))
    if args.stage == "candidates":
        sys.path.insert(0, str(ROOT / "recipes"))
        return build_candidates(models_dir, settings)
    t0 = time.perf_counter()
    res = model_level(models_dir, settings, args.bootstrap or (100 if args.quick else 1000), run_new=not args.cached_only)
    print_models(res)
    print(f"total {time.perf_counter() - t0:.1f} s")
    out = {"settings": {"command": "python benchmarks/transferability_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                        **{k: v for k, v in settings.items()}, "protocol": PROTOCOL, "pretrain_args": PRETRAIN_ARGS,
                        "bootstrap": args.bootstrap or (100 if args.quick else 1000)}, "models": res}
    if args.markdown:
        Path(args.markdown).write_text(markdown(res) + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(strict(out), indent=1, allow_nan=False))
    return out


if __name__ == "__main__":
    main()
