"""Model-level transferability benchmark (moved from ``benchmarks/transferability.py --models``)."""

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

VARIANTS = [(loss, aug) for loss in ("ce", "label_smoothing", "mse", "supcon") for aug in ("none", "crop,flip")]
PRETRAIN_ARGS = ["--dataset", "fashion_mnist", "--classes", "0,1,2,3,4", "--max_train_samples", "2000", "--num_train_epochs", "1",
                 "--nc_samples", "500", "--max_eval_samples", "500", "--patch_size", "7", "--logging_steps", "1000", "--torch_threads", "1"]
FINETUNE_ARGS = ["--dataset", "digits", "--shots_per_class", "10", "--seed", "0", "--method", "full", "--learning_rate", "1e-3",
                 "--num_train_epochs", "15", "--per_device_train_batch_size", "16", "--eval_strategy", "no", "--logging_strategy", "no",
                 "--save_strategy", "no", "--nc_train_samples", "100"]


def _cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict(value)))
    return value


def model_level(models_dir: Path, num_boot: int) -> dict:
    """Pre-trains the variants, fine-tunes every candidate, scores the frozen final features."""
    import contextlib
    import io
    import shutil

    sys.path.insert(0, str(ROOT / "recipes"))
    import finetune_vit
    import pretrain_vit

    from hf_nc.checkpoints import DEFAULT_MODEL
    from hf_nc.data import load_image_dataset
    from hf_nc.selection import correlation as C
    from hf_nc.selection import rank_models
    from hf_nc.selection import scores as S

    def quiet(fn, *a):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn(*a)

    candidates = {}
    t0 = time.perf_counter()
    for loss, aug in VARIANTS:
        name = f"pt_{loss}" + ("+aug" if aug != "none" else "")
        out = models_dir / "models" / name
        rec = _cached(models_dir / "pretrain" / f"{name}.json", lambda: {k: v for k, v in quiet(pretrain_vit.main, [
            "--output_dir", str(out), "--loss", loss, "--augment", aug, "--seed", "0", *PRETRAIN_ARGS]).items()
            if k in ("test_accuracy", "steps", "wall_time_s")})
        print(f"  pre-trained {name}: source test accuracy {rec['test_accuracy']:.3f}", flush=True)
        candidates[name] = str(out)
    candidates["builtin"] = str(DEFAULT_MODEL)
    rand = models_dir / "models" / "random_init"
    if not (rand / "config.json").exists():  # the built-in architecture, freshly initialised (seed 0)
        from hf_nc.probe import load_model

        load_model(str(DEFAULT_MODEL), random_init=True, seed=0).save_pretrained(rand)
    candidates["random_init"] = str(rand)
    pretrain_s = time.perf_counter() - t0
    ft = {}
    for name, path in candidates.items():
        def run(path=path, name=name):
            work = models_dir / "work" / name
            try:
                s = quiet(finetune_vit.main, ["--model_name_or_path", path, "--output_dir", str(work), *FINETUNE_ARGS])
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return {"test_accuracy": s["test_accuracy"]}
        ft[name] = _cached(models_dir / "finetune" / f"{name}.json", run)["test_accuracy"]
        print(f"  fine-tuned {name}: test accuracy {ft[name]:.3f}", flush=True)
    data = load_image_dataset("digits", shots_per_class=10, seed=0)
    t = time.perf_counter()
    ranking = rank_models(candidates, data, scores=list(SCORE_NAMES), linear_probe=True, layers="final", accuracies=ft, progress=False)
    score_s = time.perf_counter() - t
    probe = {c.name: c.linear_probe["test_accuracy"] for c in ranking.candidates}
    rows = {}
    for truth_name, truth in (("full_ft", ft), ("probe", probe)):
        names = list(truth)
        rows[truth_name] = {}
        for score in SCORE_NAMES:
            by = {c.name: S.oriented(score, c.scores.get(score, math.nan)) for c in ranking.candidates}
            sv, av = [by[n] for n in names], [truth[n] for n in names]
            point, ci = C.correlations(sv, av), C.bootstrap(sv, av, num_samples=num_boot)
            rows[truth_name][score] = {**point, **{k + "_ci": list(v) for k, v in ci.items()}, "top1_regret_points": 100 * C.top1_regret(sv, av),
                                       "n": len(names)}
    return {"candidates": {c.name: {"scores": c.scores, "full_ft": ft[c.name], "probe": probe[c.name]} for c in ranking.candidates},
            "correlations": rows, "pretrain_s": pretrain_s, "scoring_s": score_s}


def print_models(res: dict) -> None:
    print("\n== model level: 10 candidates, digits 10 shots (seed 0); 95% bootstrap CI over candidates")
    for truth, rows in res["correlations"].items():
        print(f"-- ground truth: {truth}")
        print(f"{'score':>20} {'Kendall tau [CI]':>24} {'weighted tau [CI]':>24} {'top-1 regret':>13}")
        for name, r in rows.items():
            def fmt(key):
                v, ci = r[key], r[key + "_ci"]
                return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if math.isfinite(v) else "n/a"
            print(f"{name:>20} {fmt('kendall_tau'):>24} {fmt('weighted_tau'):>24} {r['top1_regret_points']:>10.1f} pt")
    print(f"{'candidate':>20} {'full FT':>8} {'probe':>8} {'logme':>8} {'nc1':>8}")
    for name, c in res["candidates"].items():
        print(f"{name:>20} {c['full_ft']:>8.3f} {c['probe']:>8.3f} {c['scores']['logme']:>8.3f} {c['scores']['nc1']:>8.3g}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--bootstrap", type=int, default=None)
    parser.add_argument("--models_dir", default=str(ROOT / "outputs" / "transferability"))
    args = parser.parse_args(argv)
    res = model_level(Path(args.models_dir), args.bootstrap or 1000)
    print_models(res)
    out = {"settings": {"command": "python benchmarks/transferability_models.py " + " ".join(argv if argv is not None else sys.argv[1:])}, "models": res}
    if args.json:
        Path(args.json).write_text(json.dumps(strict(out), indent=1, allow_nan=False))
    return out


if __name__ == "__main__":
    main()
