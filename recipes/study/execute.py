"""Running the study: one function per run kind, one JSON result per run, resumable, in plan order.

``out_dir/results/<run id>.json`` holds ``{"id", "spec", "status": "ok", "result", "wall_time_s"}``.
:func:`run_study` loops: :func:`plan.expand` (what can run now, in priority order), run the first
spec without a result, repeat; so final runs start as soon as their selection is complete, and an
interrupted study continues where it stopped (a run with a result file is never rerun). A failed
run writes ``<run id>.error.json`` (counted as done for the rest of this invocation, retried by the
next one). Models built by stage-0 runs live in ``out_dir/models/<run id>``; per-run training
folders (``out_dir/work``) are deleted after each run unless ``keep_work``.

**No test number in a selection record.** The recipe evaluates its test split at the end of every
run; for a selection-stage run :func:`run_finetune` drops every ``test`` key before the record is
written, and :func:`run_logreg` never computes test features. The choices (``select.py``) read
``validation_accuracy`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Optional

from . import plan
from .plan import TASKS

RECIPES = Path(__file__).resolve().parents[1]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def result_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "results" / f"{run_id}.json"


def model_path(out_dir: Path, key: str, run_id: Optional[str]) -> str:
    if key == "tiny":
        from hf_nc.checkpoints import DEFAULT_MODEL

        return str(DEFAULT_MODEL)
    return str(Path(out_dir) / "models" / run_id)


def _recipes_on_path() -> None:
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))


def _quiet():
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()


@contextmanager
def _hf_log_to(stream):
    """transformers' log handler keeps the stderr it was created with: point it at the run's log too."""
    from transformers.utils import logging as hf_logging

    handlers = [h for h in hf_logging._get_library_root_logger().handlers if hasattr(h, "stream")]
    old = [h.stream for h in handlers]
    for h in handlers:  # plain assignment: setStream flushes the old stream, which may be closed (pytest's capture)
        h.stream = stream
    try:
        yield
    finally:
        for h, s in zip(handlers, old):
            h.stream = s


# ---------------------------------------------------------------------------------------------- data
def task_data(task: str, shots, seed: int, val_shots: int, max_eval=None, with_test: bool = True):
    """The splits the recipe draws for ``(task, shots, seed)``: few-shot train, validation from
    outside it (``val_shots`` per class), and (``with_test``) the test split."""
    import hf_nc.data as hd

    t = TASKS[task]
    classes = [int(c) for c in t["classes"].split(",")] if t["classes"] else None
    data = hd.load_image_dataset(t["dataset"], classes=classes, shots_per_class=shots, seed=seed,
                                 validation_shots_per_class=val_shots, progress=False)
    if max_eval:
        for split in ("validation", "test"):
            if split in data:
                data[split] = hd.stratified_subset(data[split], max_eval, seed=seed)
    if not with_test:
        del data["test"]
    return data


def _features(model, path: str, ds):
    from hf_nc.data import build_transforms
    from hf_nc.probe import penultimate_features

    return penultimate_features(model, ds, build_transforms(path, train=False))


def _logreg(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))


# ---------------------------------------------------------------------------------------------- kinds
def run_pretrain(spec: dict, out_dir: Path) -> dict:
    _recipes_on_path()
    import pretrain_vit

    out = Path(out_dir) / "models" / spec["id"]
    rec = pretrain_vit.main(["--output_dir", str(out), *spec["args"]])
    return {"source_nc1": rec["history"][-1]["nc"]["nc1"], "source_nc1_init": rec["history"][0]["nc"]["nc1"],
            "source_nc": rec["history"][-1]["nc"], "source_test_accuracy": rec["test_accuracy"], "steps": rec["steps"],
            "num_train": rec["num_train"], "pretrain_wall_s": rec["wall_time_s"]}


def run_convert(spec: dict, out_dir: Path) -> dict:
    """The converted DINOv2-S, with a preprocessor that resizes to ``size`` x ``size`` (no crop)."""
    _recipes_on_path()
    import convert_dinov2_onnx

    src = convert_dinov2_onnx.convert()
    out = Path(out_dir) / "models" / spec["id"]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        if not (out / name).exists():
            os.symlink(src / name, out / name)
    processor = json.loads((src / "preprocessor_config.json").read_text())
    processor.update(size={"height": spec["size"], "width": spec["size"]}, do_center_crop=False)
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=1))
    return {"source": str(src), "size": spec["size"]}


def run_logreg(spec: dict, out_dir: Path) -> dict:
    """Logistic regression (standardised features, C = ``hp``) on the frozen final features of the
    few-shot train split; validation always, test only in the final stage."""
    import numpy as np
    from hf_nc.probe import load_model
    from hf_nc.selection.scores import nc1

    final = spec["stage"] == "final"
    path = model_path(out_dir, spec["model"], spec["model_run"])
    data = task_data(spec["task"], spec["shots"], spec["seed"], spec["val_shots"], spec.get("max_eval"), with_test=final)
    model = load_model(path).eval()
    xtr, ytr = _features(model, path, data["train"])
    xva, yva = _features(model, path, data["validation"])
    clf = _logreg(spec["hp"]).fit(xtr, ytr)
    k = len(data["train"].features["label"].names)
    out = {"validation_accuracy": float(np.mean(clf.predict(xva) == yva)), "train_accuracy": float(np.mean(clf.predict(xtr) == ytr)),
           "train_nc1": float(nc1(xtr, ytr, num_classes=k)), "trainable_params": int(xtr.shape[1] * k + k),
           "num_images": {"train": len(ytr), "validation": len(yva)}}
    if final:
        xte, yte = _features(model, path, data["test"])
        out["test_accuracy"] = float(np.mean(clf.predict(xte) == yte))
        out["num_images"]["test"] = len(yte)
    return out


def run_probe(spec: dict, out_dir: Path) -> dict:
    """Finding (i): a pre-trained variant's frozen features on a task: frozen NC1 of the train
    split, logistic regression with C chosen on validation (test read once, at that C)."""
    import numpy as np
    from hf_nc.probe import load_model
    from hf_nc.selection.scores import nc1

    path = model_path(out_dir, spec["model"], spec["model_run"])
    data = task_data(spec["task"], spec["shots"], spec["seed"], spec["val_shots"], spec.get("max_eval"))
    model = load_model(path).eval()
    (xtr, ytr), (xva, yva) = _features(model, path, data["train"]), _features(model, path, data["validation"])
    val = {}
    for C in spec["C_grid"]:
        val[C] = float(np.mean(_logreg(C).fit(xtr, ytr).predict(xva) == yva))
    C = max(spec["C_grid"], key=lambda c: (val[c], -c))
    xte, yte = _features(model, path, data["test"])
    k = len(data["train"].features["label"].names)
    return {"frozen_nc1": float(nc1(xtr, ytr, num_classes=k)), "chosen_C": C, "validation_accuracy_per_C": {str(c): v for c, v in val.items()},
            "validation_accuracy": val[C], "lp_test_accuracy": float(np.mean(_logreg(C).fit(xtr, ytr).predict(xte) == yte)),
            "num_train": len(ytr), "num_validation": len(yva), "num_test": len(yte)}


def recipe_flags() -> set[str]:
    """The option names ``recipes/finetune_vit.py`` accepts (to pass optional ones only when they exist)."""
    _recipes_on_path()
    import dataclasses

    import common

    return {f.name for cls in (common.ModelArguments, common.DataArguments, common.MethodArguments) for f in dataclasses.fields(cls)}


CACHEABLE = ("layer", "scl", "heads", "linear_probe")


def finetune_argv(spec: dict, model: str, work: Path, flags: Optional[set] = None) -> list[str]:
    t = TASKS[spec["task"]]
    method = "full" if spec["method"] == "lpft" else spec["method"]
    argv = ["--model_name_or_path", model, "--output_dir", str(work), "--dataset", t["dataset"],
            "--shots_per_class", str(spec["shots"]), "--seed", str(spec["seed"]), "--method", method,
            "--learning_rate", repr(spec["hp"]), "--num_train_epochs", str(spec["epochs"]),
            "--per_device_train_batch_size", str(spec["batch"]), "--nc_train_samples", str(spec["nc_train_samples"]),
            "--validation_shots_per_class", str(spec["val_shots"]),
            "--eval_strategy", "no", "--logging_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"]
    if t["classes"]:
        argv += ["--classes", t["classes"]]
    max_eval = spec.get("max_eval") or t["max_eval"]
    if max_eval:
        argv += ["--max_eval_samples", str(max_eval)]
    if spec.get("max_steps"):
        argv += ["--max_steps", str(spec["max_steps"])]
    if spec["method"] == "layer":
        argv.append(f"--layers={spec['block']}")
    if spec["method"] == "scl":
        argv.append(f"--layer={spec['block']}")
    if spec["method"] == "full" and spec.get("head_factor") is not None:
        argv += ["--head_learning_rate", repr(spec["hp"] * spec["head_factor"])]
    if flags is not None and "cache_frozen_prefix" in flags and spec["method"] in CACHEABLE:
        argv += ["--cache_frozen_prefix", "true"]  # exact (prefix_cache tests): same results, less compute
    return argv + list(spec.get("extra", []))


def build_lp_init(spec: dict, path: str, folder: Path) -> dict:
    """LP-then-FT's start: the model with its head set to a logistic regression (C = ``lp_C``,
    chosen on validation) fitted on the frozen features of the run's own few-shot train split."""
    import numpy as np
    import torch

    _recipes_on_path()
    import common
    from hf_nc.backbones import resolve_backbone

    data = task_data(spec["task"], spec["shots"], spec["seed"], spec["val_shots"], with_test=False)
    names = list(data["train"].features["label"].names)
    model, processor = common.load_classifier(path, names, common.ModelArguments())
    model.eval()
    x, y = _features(model, path, data["train"])
    clf = _logreg(spec["lp_C"]).fit(x, y)
    scaler, lr = clf[0], clf[1]
    coef, bias = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    w = coef / scaler.scale_
    b = bias - w @ scaler.mean_
    head = resolve_backbone(model).classifier
    if tuple(head.weight.shape) != w.shape:
        raise ValueError(f"lpft: classifier weight {tuple(head.weight.shape)} does not match the probe's {w.shape}")
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(b, dtype=head.bias.dtype))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return {"lp_train_accuracy": float(np.mean(clf.predict(x) == y))}


#: Use the frozen-prefix cache (``hf_nc.prefix_cache``) for the methods whose prefix is frozen.
#: Its runs equal uncached runs up to float rounding (the prefix-cache tests); off: ``HF_NC_STUDY_NO_CACHE=1``.
USE_PREFIX_CACHE = os.environ.get("HF_NC_STUDY_NO_CACHE", "") in ("", "0")


@contextmanager
def prefix_cached(enabled: bool):
    """While active, the recipe's trainer trains from a frozen-prefix cache of its (un-augmented)
    training set: ``common.RecipeTrainer`` is swapped for a subclass that builds the cache
    (``PrefixCache.build_or_none``: falls back to uncached training, with a warning, where the
    cache would not be exact) and passes it as ``train_dataset``. Yields ``{"prefix_cache": bool}``."""
    info = {"prefix_cache": False}
    if not enabled:
        yield info
        return
    _recipes_on_path()
    import common
    from hf_nc.prefix_cache import PrefixCache

    base = common.RecipeTrainer

    class CachedRecipeTrainer(base):
        def __init__(self, *args, **kwargs):
            model, train, collator = kwargs.get("model"), kwargs.get("train_dataset"), kwargs.get("data_collator")
            cache = PrefixCache.build_or_none(model, train, collator, batch_size=64, progress=False)
            if cache is not None:
                cache.attach(model)
                kwargs["train_dataset"] = cache
                info.update(prefix_cache=True, prefix_cache_block=cache.layout.block)
            super().__init__(*args, **kwargs)

    common.RecipeTrainer = CachedRecipeTrainer
    try:
        yield info
    finally:
        common.RecipeTrainer = base


@contextmanager
def plain_skip(enabled: bool):
    """While active, SCL adapters built by the recipe get their skip gate fixed at 1 and frozen:
    ``h_L + h_l``, the plain un-gated reading of "add block l's features to the classifier input"
    (with ``skip_source="features"``, ``combine="add"``)."""
    if not enabled:
        yield
        return
    _recipes_on_path()
    import common
    import torch

    base = common.apply_method

    def apply_method(model, method):
        model = base(model, method)
        gates = [p for n, p in model.named_parameters() if "hfnc_scl_scale" in n]
        if not gates:
            raise ValueError("plain SCL variant: no SCL gate (hfnc_scl_scale) found; needs --scl_combine add")
        with torch.no_grad():
            for p in gates:
                p.fill_(1.0)
                p.requires_grad_(False)
        return model

    common.apply_method = apply_method
    try:
        yield
    finally:
        common.apply_method = base


def run_finetune(spec: dict, out_dir: Path, keep_work: bool = False) -> dict:
    _recipes_on_path()
    import finetune_vit

    work = Path(out_dir) / "work" / spec["id"]
    path = model_path(out_dir, spec["model"], spec["model_run"])
    extra = {}
    flags = recipe_flags()
    cache = USE_PREFIX_CACHE and spec["method"] in CACHEABLE and "cache_frozen_prefix" not in flags
    try:
        if spec["method"] == "lpft":
            init = work / "lp_init"
            extra = build_lp_init(spec, path, init)
            path = str(init)
        with prefix_cached(cache) as info, plain_skip(spec["method"] == "scl" and spec.get("variant") == "plain"):
            s = finetune_vit.main(finetune_argv(spec, path, work / "run", flags if USE_PREFIX_CACHE else None))
        extra.update(info)
        if "cache_frozen_prefix" in flags and USE_PREFIX_CACHE and spec["method"] in CACHEABLE:
            extra["prefix_cache"] = "recipe flag"
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    keep = ("trainable_params", "total_params", "trainable_percent", "validation_accuracy", "validation_nc1", "test_accuracy",
            "train_nc1", "test_nc1", "head_reset")
    out = {k: s.get(k) for k in keep}
    out["settings"] = {k: s["settings"].get(k) for k in ("learning_rate", "head_learning_rate", "optimizer_steps", "num_train_epochs")}
    out["num_images"] = s.get("num_images")
    out.update(extra)
    if spec["stage"] == "selection":
        out = strip_test(out)
    return out


def strip_test(result: dict) -> dict:
    """``result`` without any test-split number (a selection record must not hold one)."""
    def clean(d):
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if "test" not in k}

    return clean(result)


RUNNERS = {"pretrain": run_pretrain, "convert": run_convert, "probe": run_probe, "finetune": run_finetune, "logreg": run_logreg}


def execute(spec: dict, out_dir: str | Path, keep_work: bool = False) -> dict:
    """Runs one spec and writes its result file; returns the record (never raises)."""
    _quiet()
    out_dir = Path(out_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        kwargs = {"keep_work": keep_work} if spec["kind"] == "finetune" else {}
        with open(out_dir / "logs" / f"{spec['id']}.log", "w") as log, redirect_stdout(log), redirect_stderr(log), _hf_log_to(log):
            result = RUNNERS[spec["kind"]](spec, out_dir, **kwargs)
        record = {"id": spec["id"], "spec": spec, "status": "ok", "result": result, "wall_time_s": time.perf_counter() - start}
        _write_json(result_path(out_dir, spec["id"]), record)
        result_path(out_dir, spec["id"]).with_suffix(".error.json").unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the study
        record = {"id": spec["id"], "spec": spec, "status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(), "wall_time_s": time.perf_counter() - start}
        _write_json(result_path(out_dir, spec["id"]).with_suffix(".error.json"), record)
    return record


def _worker_init(recipes_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if recipes_dir not in sys.path:
        sys.path.insert(0, recipes_dir)


def describe(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"FAILED {rec['error']}"
    r, kind = rec["result"], rec["spec"]["kind"]
    if kind in ("finetune", "logreg"):
        val = r.get("validation_accuracy")
        test = r.get("test_accuracy")
        return f"val {val:.3f}" + (f", test {test:.3f}" if test is not None else "") + f", {r.get('trainable_params') or 0:,} trained"
    if kind == "probe":
        return f"LP test {r['lp_test_accuracy']:.3f} (C={r['chosen_C']:g} on validation), frozen NC1 {r['frozen_nc1']:.3g}"
    if kind == "pretrain":
        return f"source NC1 {r['source_nc1']:.3g}, source acc {r['source_test_accuracy']:.3f}, {r['steps']} steps"
    return "ok"


def _print(msg: str) -> None:
    print(msg, flush=True)


def load_records(out_dir: str | Path, errors: bool = False) -> dict:
    """``{run id: record}`` of every result file under ``out_dir/results`` (and error files, with ``errors``)."""
    folder = Path(out_dir) / "results"
    out = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.json")):
        is_error = p.name.endswith(".error.json")
        if is_error and not errors:
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not is_error or rec["id"] not in out:
            out[rec["id"]] = rec
    return out


def run_study(settings: dict, out_dir: str | Path, workers: int = 1, keep_work: bool = False, log: Callable = _print,
              max_runs: Optional[int] = None) -> dict:
    """Runs the plan until nothing is left to run (or ``max_runs`` runs); returns ``{run id: record}``
    of every record of the plan (ok, and errors of this invocation)."""
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    order, _ = plan.expand(settings, records)
    log(f"[study] {len(records)} results under {out_dir}; {sum(sp['id'] not in records for sp in order)} runs can start now "
        f"(more are planned as selections complete); {workers} worker{'s' if workers > 1 else ''}")
    started, finished, start = 0, 0, time.perf_counter()
    in_flight: dict = {}
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(str(RECIPES),))
    try:
        while True:
            order, status = plan.expand(settings, records)
            todo = [sp for sp in order if sp["id"] not in records and sp["id"] not in in_flight]
            if max_runs is not None:
                todo = todo[: max(0, max_runs - started)]
            if pool is None:
                if not todo:
                    break
                rec = execute(todo[0], out_dir, keep_work)
                started += 1
                finished += 1
                records[rec["id"]] = rec
                _progress(log, finished, rec, start, len(todo) - 1)
                continue
            while todo and len(in_flight) < workers:
                sp = todo.pop(0)
                in_flight[sp["id"]] = pool.submit(execute, sp, str(out_dir), keep_work)
                started += 1
            if not in_flight:
                break
            from concurrent.futures import FIRST_COMPLETED, wait

            done, _ = wait(list(in_flight.values()), return_when=FIRST_COMPLETED)
            for fut in done:
                rec = fut.result()
                in_flight.pop(rec["id"], None)
                records[rec["id"]] = rec
                finished += 1
                _progress(log, finished, rec, start, len(todo))
    finally:
        if pool is not None:
            pool.shutdown()
    log(f"[study] done: {len(records)} results ({sum(r['status'] != 'ok' for r in records.values())} failed) in "
        f"{(time.perf_counter() - start) / 60:.1f} min")
    return records


def _progress(log, n: int, rec: dict, start: float, ready: int) -> None:
    elapsed = time.perf_counter() - start
    log(f"[{n:>5}] {rec['id']:<72} {rec['wall_time_s']:6.1f}s  {describe(rec)}  (elapsed {elapsed / 60:.1f} min, "
        f"{ready} more ready now)")
