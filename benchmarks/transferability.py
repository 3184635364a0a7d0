"""Transferability scores and block rules against FINE-TUNED accuracy, every score side by side.

    python benchmarks/transferability.py --quick     # < 1 min: digits, 10 shots, seed 0
    python benchmarks/transferability.py             # digits, 10 and 50 shots, seeds 0-2
    python benchmarks/transferability.py --json out.json
    python benchmarks/transferability.py --models      # model level: forwards to benchmarks/transferability_models.py

Items ranked: the 12 blocks of the built-in tiny ViT (``hf-nc/tiny-vit-fmnist``) as
candidates for Layer FT (blocks 0-11) and SCL FT (blocks 0-10). Ground truth, per block:

- ``layer_ft`` / ``scl_ft``: the test accuracy of Layer FT / SCL FT at that block, from the
  first transfer study's runs (``docs/selection/first_study_block_runs.json``, from its results.json, group ``grid``: the same
  few-shot training subset, same seed);
- ``probe``: a logistic-regression probe on the block's frozen features, test accuracy.

Every score is computed on each block's frozen pooled features of the few-shot TRAINING
subset, from one forward pass. For each score and ground truth: Kendall tau and weighted tau
(scipy's ``weightedtau``, as NCTI and LogME report), each the mean over seeds with a 95%
percentile-bootstrap interval (blocks resampled, the same resample for every seed), top-1
regret (best block's accuracy minus the accuracy of the block the score ranks first, mean
over seeds, in points) and the time the score takes over all blocks.

Model level (which pre-trained model): ``benchmarks/transferability_models.py`` (``--models`` forwards there).

Block rules (``suggest_layer``'s ``rule``), scored by the fine-tuned accuracy of the block
they pick: ``nc1`` (the knee/minimum rule), ``logme``, ``hscore_shrinkage``, ``ncti``,
``probe`` (validation probe: validation images drawn outside the few-shot subset), against
fixed blocks (middle, last), a random block (the mean over blocks) and the oracle (the best
block on test, not attainable). Test accuracy is never used by any rule.
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
SCORE_NAMES = ("logme", "logme_thin", "ncti", "hscore", "hscore_shrinkage", "nc1", "cdnv", "ncc_acc", "nc2_etf")
RULES = ("nc1", "logme", "hscore_shrinkage", "ncti", "probe")
TRUTHS = ("layer_ft", "scl_ft", "probe")


def study_accuracies(path: Path) -> dict:
    """``{(method, shots, seed): {block: test accuracy}}`` of the tiny ViT's digits grid runs."""
    records = json.loads(Path(path).read_text())["records"]
    out: dict = {}
    for r in records:
        s = r["spec"]
        if (s.get("kind") == "finetune" and s.get("model") == "tiny" and s.get("task") == "digits" and s.get("group") == "grid"
                and s.get("method") in ("layer", "scl") and s.get("block") is not None and r.get("status") == "ok"):
            out.setdefault((s["method"], s["shots"], s["seed"]), {})[int(s["block"])] = float(r["result"]["test_accuracy"])
    return out


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


def run_case(model, shots: int, seed: int, val_shots: int, k: int = 10) -> dict:
    from hf_nc.data import load_image_dataset
    from hf_nc.selection import choose_block

    data = load_image_dataset("digits", shots_per_class=shots, seed=seed, validation_shots_per_class=val_shots)
    train, val, test, curve, forward_s = block_features(model, data, k)
    blocks = list(range(len(curve)))
    values, times = score_blocks(train, blocks, k)
    t = time.perf_counter()
    val_probe = [probe_acc(train[b], train["labels"], val[b], val["labels"]) for b in blocks]
    times["probe (validation)"] = time.perf_counter() - t
    test_probe = [probe_acc(train[b], train["labels"], test[b], test["labels"]) for b in blocks]
    picks = {}
    for method in ("layer", "scl"):
        n = len(blocks) if method == "layer" else len(blocks) - 1  # SCL skips from block l < last
        picks[method] = {"nc1": choose_block(curve[:n], method).block}
        for rule in RULES[1:]:
            v = val_probe[:n] if rule == "probe" else values[rule][:n]
            if rule == "ncti":  # the pool: the blocks the method can use
                v = values["ncti"][:n]
            direction = 1 if rule in ("probe", "logme", "hscore_shrinkage", "ncti") else -1
            finite = [i for i in range(n) if math.isfinite(v[i])]
            best = max(direction * v[i] for i in finite)
            picks[method][rule] = max(i for i in finite if direction * v[i] == best)
    return {"shots": shots, "seed": seed, "num_train": len(train["labels"]), "num_validation": len(val["labels"]),
            "scores": values, "times_s": times, "forward_s": forward_s, "nc1_curve": curve, "validation_probe": val_probe,
            "test_probe": test_probe, "picks": picks}


def summarise(cases: list[dict], study: dict, num_boot: int, seed: int = 0) -> dict:
    from hf_nc.selection import correlation as C
    from hf_nc.selection import scores as S

    rng = np.random.default_rng(seed)
    out = {"correlations": {}, "rules": {}}
    by_shots: dict = {}
    for c in cases:
        by_shots.setdefault(c["shots"], []).append(c)
    for shots, group in sorted(by_shots.items()):
        for truth in TRUTHS:
            method = {"layer_ft": "layer", "scl_ft": "scl"}.get(truth)
            per_seed = []
            for c in group:
                if method:
                    acc = study.get((method, shots, c["seed"]), {})
                    n = len(c["nc1_curve"]) if method == "layer" else len(c["nc1_curve"]) - 1
                    if sorted(acc) != list(range(n)):
                        continue
                    a = [acc[b] for b in range(n)]
                else:
                    a, n = c["test_probe"], len(c["test_probe"])
                scores = {name: [S.oriented(name, v) for v in c["scores"][name][:n]] for name in SCORE_NAMES}
                scores["probe (validation)"] = c["validation_probe"][:n]
                per_seed.append((np.asarray(a), {k: np.asarray(v) for k, v in scores.items()}))
            if not per_seed:
                continue
            n = len(per_seed[0][0])
            boots = [rng.integers(0, n, n) for _ in range(num_boot)]
            rows = {}
            for name in [*SCORE_NAMES, "probe (validation)"]:
                if truth == "probe" and name == "probe (validation)":
                    continue
                point = [C.correlations(s[name], a) for a, s in per_seed]
                regret = [100 * C.top1_regret(s[name], a) for a, s in per_seed]
                row = {"n_blocks": n, "n_seeds": len(per_seed), "top1_regret_points": float(np.mean(regret))}
                draws = {"kendall_tau": [], "weighted_tau": []}
                for idx in boots:
                    got = [C.correlations(s[name][idx], a[idx]) for a, s in per_seed]
                    for key, d in draws.items():
                        vals = [g[key] for g in got if math.isfinite(g[key])]
                        if vals:
                            d.append(np.mean(vals))
                for key, d in draws.items():
                    row[key] = float(np.nanmean([p[key] for p in point]))
                    row[key + "_ci"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if d else [math.nan, math.nan]
                row["time_ms"] = 1000 * float(np.mean([c["times_s"].get(name, math.nan) for c in group]))
                rows[name] = row
            out["correlations"][f"{shots} shots / {truth}"] = rows
        for method in ("layer", "scl"):
            acc_by_seed = {c["seed"]: study.get((method, shots, c["seed"]), {}) for c in group}
            usable = [c for c in group if acc_by_seed[c["seed"]]]
            if not usable:
                continue
            res = {}
            for rule in RULES:
                res[f"rule: {rule}"] = [acc_by_seed[c["seed"]][c["picks"][method][rule]] for c in usable]
            blocks = sorted(acc_by_seed[usable[0]["seed"]])
            res["fixed: middle block"] = [acc_by_seed[c["seed"]][blocks[len(blocks) // 2]] for c in usable]
            res["fixed: last block"] = [acc_by_seed[c["seed"]][blocks[-1]] for c in usable]
            # the best fixed block: chosen on the mean over seeds of TEST accuracy (an oracle too)
            best_fixed = max(blocks, key=lambda b: np.mean([acc_by_seed[c["seed"]][b] for c in usable]))
            res[f"fixed: best block in hindsight ({best_fixed})"] = [acc_by_seed[c["seed"]][best_fixed] for c in usable]
            res["random block (mean)"] = [float(np.mean(list(acc_by_seed[c["seed"]].values()))) for c in usable]
            res["oracle (per seed)"] = [max(acc_by_seed[c["seed"]].values()) for c in usable]
            out["rules"][f"{shots} shots / {method} FT"] = {
                k: {"mean_accuracy": 100 * float(np.mean(v)), "per_seed": [100 * x for x in v],
                    "picks": [c["picks"][method][k.split(": ", 1)[1]] for c in usable] if k.startswith("rule: ") else None}
                for k, v in res.items()}
    return out


def print_report(summary: dict, cases: list[dict]) -> None:
    def fmt(v, ci):
        return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if math.isfinite(v) else "n/a"

    for case, rows in summary["correlations"].items():
        first = next(iter(rows.values()))
        print(f"\n== {case} ({first['n_blocks']} blocks, {first['n_seeds']} seed(s)): mean over seeds, 95% bootstrap CI over blocks")
        print(f"{'score':>20} {'Kendall tau [CI]':>24} {'weighted tau [CI]':>24} {'top-1 regret':>13} {'time (ms)':>10}")
        for name, r in rows.items():
            print(f"{name:>20} {fmt(r['kendall_tau'], r['kendall_tau_ci']):>24} {fmt(r['weighted_tau'], r['weighted_tau_ci']):>24} "
                  f"{r['top1_regret_points']:>10.1f} pt {r['time_ms']:>10.1f}")
    for case, rows in summary["rules"].items():
        print(f"\n== block rule, {case}: fine-tuned test accuracy (%) of the chosen block, mean over seeds")
        for name, r in rows.items():
            picks = f"  picks {r['picks']}" if r["picks"] else ""
            print(f"{name:>40} {r['mean_accuracy']:6.1f}  per seed {[round(x, 1) for x in r['per_seed']]}{picks}")
    fwd = np.mean([c["forward_s"] for c in cases])
    print(f"\nforward pass over the training subset (all blocks): {1000 * fwd:.0f} ms on average")


def strict(v):
    """JSON-safe: non-finite floats become None, numpy scalars Python numbers."""
    if isinstance(v, dict):
        return {str(k): strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 shots, seed 0, 200 bootstrap resamples (CI-safe, < 1 min)")
    parser.add_argument("--results", default=str(ROOT / "docs" / "selection" / "first_study_block_runs.json"), help="per-block fine-tuning runs (the first study's tiny-ViT grid, extracted from its results.json)")
    parser.add_argument("--shots", default=None, help="comma-separated shots (default 10,50; quick: 10)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    parser.add_argument("--validation_shots", type=int, default=10, help="validation images per class (outside the few-shot subset)")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; quick: 200)")
    parser.add_argument("--json", default=None, help="also write the raw cases and the summary here")
    parser.add_argument("--models", action="store_true", help="only the model-level benchmark (pre-trains and fine-tunes; resumable)")
    parser.add_argument("--models_dir", default=str(ROOT / "outputs" / "transferability"), help="cache of the model-level runs")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from hf_nc.checkpoints import DEFAULT_MODEL
    from hf_nc.probe import load_model

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    shots = [int(s) for s in (args.shots or ("10" if args.quick else "10,50")).split(",")]
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    num_boot = args.bootstrap or (200 if args.quick else 1000)
    if args.models:  # the model level moved to benchmarks/transferability_models.py: forwarded there
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import transferability_models

        return transferability_models.main([*(["--quick"] if args.quick else []), *(["--json", args.json] if args.json else []),
                                            *(["--bootstrap", str(args.bootstrap)] if args.bootstrap else []), "--models_dir", args.models_dir])
    study = study_accuracies(Path(args.results))
    model = load_model(str(DEFAULT_MODEL)).eval()
    t0 = time.perf_counter()
    cases = [run_case(model, s, seed, args.validation_shots) for s in shots for seed in seeds]
    summary = summarise(cases, study, num_boot)
    print(f"transferability benchmark: tiny ViT blocks on digits, shots {shots}, seeds {seeds}, {num_boot} bootstrap resamples; "
          f"ground truth: the study's fine-tuned accuracies ({args.results})")
    print_report(summary, cases)
    print(f"total {time.perf_counter() - t0:.1f} s")
    out = {"settings": {"shots": shots, "seeds": seeds, "bootstrap": num_boot, "validation_shots": args.validation_shots,
                        "command": "python benchmarks/transferability.py " + " ".join(argv if argv is not None else sys.argv[1:])},
           "summary": summary, "cases": cases}
    if args.json:
        Path(args.json).write_text(json.dumps(strict(out), indent=1, allow_nan=False))
    return out


if __name__ == "__main__":
    main()
