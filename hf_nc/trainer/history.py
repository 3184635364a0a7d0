"""The NC history of an :class:`~hf_nc.trainer.NCTrainer` run: a JSON file and its plots.

``nc_history.json`` holds one record per evaluation, in step order::

    {"step": 40, "epoch": 2.0,
     "train": {"nc1": ..., "nc2_etf": ..., ..., "blocks": {"0": nc1, ...}},   # train subset (eval_train_subset_*)
     "eval":  {"nc1": ..., ...}}                                              # eval data

(one entry per metric prefix: ``eval``, or ``eval_<name>`` for a dict of eval sets). The file
is written to the output directory after every evaluation and copied into every checkpoint,
so ``resume_from_checkpoint`` restores exactly the history up to the resumed step.

The same numbers are in ``TrainerState.log_history``, but that reaches disk only inside
checkpoints (``trainer_state.json``): this file is written after every evaluation, also with
``save_strategy="no"``, so a run without checkpoints (or one that crashes between them) keeps its
NC curve, grouped per data set for the plots and the recipes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

HISTORY_NAME = "nc_history.json"
CURVE_PNG = "nc1_history.png"
LAYERS_PNG = "nc1_per_layer.png"


def save_history(records: list[dict], folder: str | os.PathLike) -> Path:
    """Writes ``records`` to ``folder/nc_history.json`` (atomically) and returns the path."""
    path = Path(folder) / HISTORY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"records": records}, indent=1))
    os.replace(tmp, path)
    return path


def read_history(folder: str | os.PathLike) -> Optional[list[dict]]:
    """The records saved in ``folder``, or ``None`` when it holds no history."""
    path = Path(folder) / HISTORY_NAME
    if not path.is_file():
        return None
    return list(json.loads(path.read_text())["records"])


def _checkpoint_step(checkpoint: str | os.PathLike) -> Optional[int]:
    state = Path(checkpoint) / "trainer_state.json"
    if state.is_file():
        return int(json.loads(state.read_text())["global_step"])
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def restore_history(checkpoint: str | os.PathLike, output_dir: str | os.PathLike) -> list[dict]:
    """The history as it was when ``checkpoint`` was saved.

    Read from the checkpoint folder; failing that (a checkpoint written by a plain ``Trainer``),
    from the output directory, truncated to the checkpoint's step.
    """
    records = read_history(checkpoint)
    if records is None:
        records = read_history(output_dir) or []
    step = _checkpoint_step(checkpoint)
    return [r for r in records if step is None or r["step"] <= step]


def upsert(records: list[dict], step: int, epoch: Optional[float], prefix: str, metrics: dict) -> None:
    """Stores ``metrics`` under ``prefix`` in the record of ``step`` (created, kept in step order)."""
    for record in records:
        if record["step"] == step:
            break
    else:
        record = {"step": step, "epoch": epoch}
        records.append(record)
        records.sort(key=lambda r: r["step"])
    record["epoch"] = epoch
    record[prefix] = metrics


def plot_history(records: list[dict], folder: str | os.PathLike, metric: str = "nc1") -> list[Path]:
    """Draws ``nc1_history.png`` (NC1 of every prefix against steps, log scale) and
    ``nc1_per_layer.png`` (per-block NC1 at the last evaluation that measured blocks)."""
    from ..plots import plot_layer_curve

    folder = Path(folder)
    written = []
    prefixes = sorted({k for r in records for k, v in r.items() if isinstance(v, dict) and metric in v})
    if prefixes:
        curves = {f"{p} data": {r["step"]: r[p][metric] for r in records if metric in r.get(p, {})} for p in prefixes}
        written.append(plot_layer_curve(curves, folder / CURVE_PNG, title=f"{metric.upper()} of the classifier-input features",
                                        ylabel=f"{metric.upper()} (log scale)", xlabel="step"))
    last = next((r for r in reversed(records) if any(isinstance(v, dict) and v.get("blocks") for v in r.values())), None)
    if last is not None:
        curves = {f"{k} data": v["blocks"] for k, v in last.items() if isinstance(v, dict) and v.get("blocks")}
        written.append(plot_layer_curve(curves, folder / LAYERS_PNG, title=f"NC1 per block at step {last['step']}"))
    return written
