"""Choices of the study, made on validation accuracy only.

A :class:`SelectionTable` is built from the *selection-stage* records of one cell and reads one
number of each: ``result["validation_accuracy"]`` (selection records carry no test number at
all: ``execute.py`` drops it before writing them). Every choice of the study (the learning rate
of a configuration, full FT's head LR, the block, the SCL variant, logistic regression's C) is
:meth:`SelectionTable.choose` over a list of configuration keys: the (configuration, hyperparameter)
pair with the highest mean validation accuracy over the selection seeds. Ties go to the earlier
configuration in the list, then to the smaller hyperparameter, so a choice is deterministic.
Means are compared rounded (:func:`_key`): the same number of correct images over the seeds is a
tie however the floats were summed, not a win decided by the last bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Best:
    hp: float
    mean: float
    n: int
    at_edge: bool


@dataclass(frozen=True)
class Choice:
    """A chosen configuration: its key, method, block, variant, head factor and hyperparameter,
    with its mean validation accuracy over ``n`` selection runs and the grid it was chosen from."""

    key: str
    method: str
    block: Optional[int]
    variant: str
    head_factor: Optional[float]
    hp: float
    val_mean: float
    n: int
    grid: tuple
    at_edge: bool

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _key(mean: float) -> float:
    """A mean accuracy as compared: two means of the same correct counts differ by float rounding
    (~1e-16) only, far below one image in any split (>= 1e-6)."""
    return round(mean, 9)


class SelectionTable:
    """``{config key: {hp: [validation accuracy per selection run]}}`` of one cell."""

    def __init__(self):
        self.values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.meta: dict[str, dict] = {}

    @classmethod
    def from_records(cls, records: Iterable[dict], cell: str) -> "SelectionTable":
        table = cls()
        for rec in records:
            spec = rec.get("spec", {})
            if spec.get("stage") != "selection" or spec.get("cell") != cell:
                continue
            table.meta.setdefault(spec["config"], {k: spec.get(k) for k in ("method", "block", "variant", "head_factor")})
            vals = table.values[spec["config"]][float(spec["hp"])]
            acc = (rec.get("result") or {}).get("validation_accuracy") if rec.get("status") == "ok" else None
            if acc is not None and math.isfinite(acc):
                vals.append(float(acc))
        return table

    def hps(self, key: str) -> list[float]:
        return list(self.values.get(key, {}))

    def best_hp(self, key: str, grid: Optional[list[float]] = None) -> Optional[Best]:
        """The hyperparameter of ``key`` with the highest mean validation accuracy (within ``grid``)."""
        per = self.values.get(key)
        if not per:
            return None
        grid = sorted(grid if grid is not None else per)
        scored = [(hp, sum(per[hp]) / len(per[hp]), len(per[hp])) for hp in grid if per.get(hp)]
        if not scored:
            return None
        hp, mean, n = max(scored, key=lambda t: (_key(t[1]), -t[0]))
        return Best(hp, mean, n, at_edge=len(grid) > 1 and hp in (grid[0], grid[-1]))

    def choose(self, keys: list[str]) -> Optional[Choice]:
        """The best (configuration, hyperparameter) over ``keys`` on mean validation accuracy."""
        best = None
        for key in keys:
            b = self.best_hp(key)
            if b is None:
                continue
            if best is None or _key(b.mean) > _key(best[1].mean):
                best = (key, b)
        if best is None:
            return None
        key, b = best
        m = self.meta[key]
        return Choice(key=key, method=m["method"], block=m["block"], variant=m.get("variant") or "", head_factor=m["head_factor"],
                      hp=b.hp, val_mean=b.mean, n=b.n, grid=tuple(sorted(self.values[key])), at_edge=b.at_edge)

    def curve(self, key: str) -> list[tuple[float, float, int]]:
        """``[(hp, mean validation accuracy, n)]`` of one configuration, by hyperparameter."""
        per = self.values.get(key, {})
        return [(hp, sum(v) / len(v), len(v)) for hp, v in sorted(per.items()) if v]
