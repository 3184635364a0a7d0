"""The report's view of one ``(model, task, shots)`` cell: its selection table, plan flags and final runs."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

from . import plan, select


class Cell:
    """One ``(model, task, shots)`` cell: its selection table, flags and final runs."""

    def __init__(self, s: dict, cell, records: dict):
        self.s, self.cell = s, tuple(cell)
        self.name = plan.cell_name(cell)
        self.model = cell[0]
        self.sel = select.SelectionTable.from_records(records.values(), self.name)
        self.flags: dict = {}
        models = plan.model_runs(s)
        run = models.get(self.model)
        self.ready = run is None or (run["id"] in records and records[run["id"]].get("status") == "ok")
        if self.ready:
            plan.cell_steps(s, cell, run["id"] if run else None, records, self.flags)
        self.final = defaultdict(dict)  # (config, hp) -> {seed: result}
        for r in records.values():
            sp = r.get("spec", {})
            if sp.get("stage") == "final" and sp.get("cell") == self.name and r.get("status") == "ok":
                self.final[(sp["config"], float(sp["hp"]))][sp["seed"]] = r["result"]
        self.nfinal = len(s["final_seeds"])

    def choice(self, method: str, keys: Optional[list[str]] = None) -> Optional[select.Choice]:
        if not self.flags.get(method):
            return None
        keys = keys or self.keys(method)
        return self.sel.choose(keys)

    def keys(self, method: str) -> list[str]:
        if method == "full":
            return [plan.config_key("full", head_factor=f) for f in self.s["full_head_factors"]]
        if method in ("layer", "scl"):
            return [plan.config_key(method, b) for b in plan.blocks_of(self.s, self.model, method)]
        return [plan.config_key(method)]

    def runs(self, ch: Optional[select.Choice], metric: str = "test_accuracy") -> dict:
        if ch is None:
            return {}
        return {seed: r.get(metric) for seed, r in self.final.get((ch.key, float(ch.hp)), {}).items()}

    def complete(self, ch: Optional[select.Choice]) -> bool:
        return ch is not None and len(self.runs(ch)) >= self.nfinal

    def block_choice(self, method: str, block: int) -> Optional[select.Choice]:
        key = plan.config_key(method, block)
        if not self.flags.get(key):
            return None
        return self.sel.choose([key])

    def params(self, ch) -> Optional[int]:
        vals = [r.get("trainable_params") for r in self.final.get((ch.key, float(ch.hp)), {}).values()] if ch else []
        return vals[0] if vals else None


def status_word(cell: Cell, ch: Optional[select.Choice]) -> str:
    if ch is None:
        return "PENDING (selection running)"
    n = len(cell.runs(ch))
    return "complete" if n >= cell.nfinal else f"PENDING ({n}/{cell.nfinal} final seeds)"
