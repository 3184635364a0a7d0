"""Running the plan: one function per run kind, one JSON result file per run, resumable.

``out_dir/results/<run id>.json`` holds ``{"id", "spec", "status": "ok", "result", "wall_time_s"}``;
a run whose file exists is skipped, so an interrupted study continues where it stopped. A failed
run writes ``<run id>.error.json`` instead (retried next time). Models built by stage-0 runs live
in ``out_dir/models/<run id>``; per-run training folders (``out_dir/work``) are deleted after each
run unless ``keep_work``.
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

from .plan import TASKS

RECIPES = Path(__file__).resolve().parents[1]
STAGE = {"pretrain": 0, "convert": 0, "probe": 1, "finetune": 2}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def result_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "results" / f"{run_id}.json"


def model_path(out_dir: Path, key: str, run_id: str | None) -> str:
    if key == "tiny":
        from hf_nc.checkpoints import DEFAULT_MODEL

        return str(DEFAULT_MODEL)
    return str(Path(out_dir) / "models" / run_id)


def _quiet():
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()


@contextmanager
def _hf_log_to(stream):
    """transformers' log handler keeps the stderr it was created with: point it at the run's log too."""
    from transformers.utils import logging as hf_logging

    handlers = [h for h in hf_logging._get_library_root_logger().handlers if hasattr(h, "setStream")]
    old = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for h, s in zip(handlers, old):
            h.setStream(s)


# ---------------------------------------------------------------------------------------------- kinds
def run_pretrain(spec: dict, out_dir: Path) -> dict:
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    import pretrain_vit

    out = Path(out_dir) / "models" / spec["id"]
    rec = pretrain_vit.main(["--output_dir", str(out), *spec["args"]])
    return {"source_nc1": rec["history"][-1]["nc"]["nc1"], "source_nc1_init": rec["history"][0]["nc"]["nc1"],
            "source_nc": rec["history"][-1]["nc"], "source_test_accuracy": rec["test_accuracy"], "steps": rec["steps"],
            "num_train": rec["num_train"], "pretrain_wall_s": rec["wall_time_s"]}


def run_convert(spec: dict, out_dir: Path) -> dict:
    """The converted DINOv2-S, with a preprocessor that resizes to ``size`` x ``size`` (no crop)."""
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
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


def _task_data(task: str, shots, seed: int, max_eval):
    from hf_nc.data import load_image_dataset

    t = TASKS[task]
    classes = t["classes"].split(",") if t["classes"] else None
    data = load_image_dataset(t["dataset"], classes=[int(c) for c in classes] if classes else None, shots_per_class=shots, seed=seed)
    if max_eval and max_eval < len(data["test"]):
        data["test"] = data["test"].select(range(max_eval))
    return data


def run_probe(spec: dict, out_dir: Path) -> dict:
    """Frozen model on the task's training split: final NC1, linear probe, per-block NC1, suggested blocks."""
    from hf_nc.selection import choose_block, rank_models, suggest_layer

    path = model_path(out_dir, spec["model"], spec["model_run"])
    data = _task_data(spec["task"], spec["shots"], spec["seed"], spec["max_eval"])
    cand = rank_models([path], data, linear_probe=True, progress=False).candidates[0]
    scl = suggest_layer(path, data, method="scl", progress=False)
    layer = choose_block(scl.nc1_per_layer, "layer")  # = suggest_layer(method="layer"): same curve, same rule
    final = cand.layers.get("final", {})
    return {"frozen_nc1": cand.nc1, "frozen_nc2_etf": final.get("nc2_etf"), "frozen_cdnv": final.get("cdnv"),
            "lp_test_accuracy": cand.linear_probe["test_accuracy"], "lp_train_accuracy": cand.linear_probe["train_accuracy"],
            "num_train": len(data["train"]), "num_test": len(data["test"]),
            "nc1_per_layer": scl.to_dict()["nc1_per_layer"], "suggest_scl": scl.block, "suggest_scl_reason": scl.reason,
            "suggest_layer": layer.block, "suggest_layer_reason": layer.reason}


def finetune_argv(spec: dict, out_dir: Path, work: Path) -> list[str]:
    t = TASKS[spec["task"]]
    argv = ["--model_name_or_path", model_path(out_dir, spec["model"], spec["model_run"]), "--output_dir", str(work),
            "--dataset", t["dataset"], "--shots_per_class", str(spec["shots"]), "--seed", str(spec["seed"]),
            "--method", spec["method"], "--learning_rate", str(spec["lr"]), "--num_train_epochs", str(spec["epochs"]),
            "--per_device_train_batch_size", str(spec["batch"]), "--nc_train_samples", str(spec["nc_train_samples"]),
            "--eval_strategy", "no", "--logging_strategy", "no", "--save_strategy", "no"]
    if t["classes"]:
        argv += ["--classes", t["classes"]]
    max_eval = spec.get("max_eval") or t["max_eval"]
    if max_eval:
        argv += ["--max_eval_samples", str(max_eval)]
    if spec.get("max_steps"):
        argv += ["--max_steps", str(spec["max_steps"])]
    if spec["method"] == "layer" and spec["block"] is not None:
        argv.append(f"--layers={spec['block']}")
    if spec["method"] == "scl":
        argv.append(f"--layer={spec['block']}")
    return argv + list(spec["extra"])


def run_finetune(spec: dict, out_dir: Path, keep_work: bool = False) -> dict:
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    import finetune_vit

    work = Path(out_dir) / "work" / spec["id"]
    try:
        s = finetune_vit.main(finetune_argv(spec, out_dir, work))
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    keep = ("trainable_params", "total_params", "trainable_percent", "adapter_bytes", "test_accuracy", "train_nc1", "eval_nc1")
    out = {k: s[k] for k in keep}
    out.update({k: v for k, v in s["metrics"].items() if k.startswith(("train_", "eval_")) and isinstance(v, (int, float))})
    return out


RUNNERS = {"pretrain": run_pretrain, "convert": run_convert, "probe": run_probe, "finetune": run_finetune}


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
        err = result_path(out_dir, spec["id"]).with_suffix(".error.json")
        err.unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the study
        record = {"id": spec["id"], "spec": spec, "status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(), "wall_time_s": time.perf_counter() - start}
        _write_json(result_path(out_dir, spec["id"]).with_suffix(".error.json"), record)
    return record


def _worker_init(recipes_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if recipes_dir not in sys.path:
        sys.path.insert(0, recipes_dir)


def _execute_star(args):
    return execute(*args)


def describe(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"FAILED {rec['error']}"
    r, kind = rec["result"], rec["spec"]["kind"]
    if kind == "finetune":
        return f"acc {r['test_accuracy']:.3f}, train NC1 {r['train_nc1']:.3g}, {r['trainable_params']:,} trained"
    if kind == "probe":
        return f"LP acc {r['lp_test_accuracy']:.3f}, frozen NC1 {r['frozen_nc1']:.3g}, scl->{r['suggest_scl']} layer->{r['suggest_layer']}"
    if kind == "pretrain":
        return f"source NC1 {r['source_nc1']:.3g}, source acc {r['source_test_accuracy']:.3f}"
    return "ok"


def _print(msg: str) -> None:
    print(msg, flush=True)


def load_results(runs: list[dict], out_dir: str | Path, errors: bool = True) -> list[dict]:
    """The records of ``runs`` that have a result file (or an error file, with ``errors``)."""
    records = []
    for r in runs:
        path = result_path(out_dir, r["id"])
        for p in (path, path.with_suffix(".error.json")) if errors else (path,):
            if p.exists():
                records.append(json.loads(p.read_text()))
                break
    return records


def with_suggestions(runs: list[dict], out_dir: str | Path) -> list[dict]:
    """The plan plus grid runs at the blocks suggest_layer picked (from the probes already run)."""
    from .plan import suggested_runs

    probes = {r["id"]: r["result"] for r in load_results([r for r in runs if r["kind"] == "probe"], out_dir, errors=False)}
    return runs + suggested_runs(runs, probes)


def run_plan(runs: list[dict], out_dir: str | Path, workers: int = 1, keep_work: bool = False, log=_print) -> list[dict]:
    """Runs every spec without a result file, stage by stage, printing one line per run; after the
    probes (stage 1), adds grid runs at the blocks suggest_layer picked. Returns the final plan."""
    out_dir = Path(out_dir)
    todo = [r for r in runs if not result_path(out_dir, r["id"]).exists()]
    log(f"[study] {len(runs)} runs planned, {len(runs) - len(todo)} already done, {len(todo)} to run "
        f"({workers} worker{'s' if workers > 1 else ''}) -> {out_dir}")
    records, done, start = [], 0, time.perf_counter()
    for stage in (0, 1, 2):
        if stage == 2:
            extra = [r for r in with_suggestions(runs, out_dir)[len(runs):] if not result_path(out_dir, r["id"]).exists()]
            if extra:
                log(f"[study] + {len(extra)} runs at blocks suggest_layer picked outside the grid")
            runs, todo = runs + extra, todo + extra
        batch = [r for r in todo if STAGE[r["kind"]] == stage]
        if not batch:
            continue
        args = [(r, str(out_dir), keep_work) for r in batch]
        if workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(str(RECIPES),)) as pool:
                iterator = pool.imap_unordered(_execute_star, args)
                for rec in iterator:
                    done += 1
                    records.append(rec)
                    _progress(log, done, len(todo), rec, start)
        else:
            for a in args:
                rec = execute(*a)
                done += 1
                records.append(rec)
                _progress(log, done, len(todo), rec, start)
    return runs


def _progress(log, done: int, total: int, rec: dict, start: float) -> None:
    elapsed = time.perf_counter() - start
    eta = elapsed / done * (total - done)
    log(f"[{done:>4}/{total}] {rec['id']:<56} {rec['wall_time_s']:6.1f}s  {describe(rec)}  "
        f"(elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)")
