"""Streaming NC statistics for the trainer: per-layer accumulators and metric naming."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from ..features import FINAL, LayerKey
from ..metrics import NCStats

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv")
HIGHER_IS_BETTER = ("ncc_acc",)
REPORTED = (*LOWER_IS_BETTER, *HIGHER_IS_BETTER)


def metric_direction(name: Optional[str]) -> Optional[bool]:
    """``greater_is_better`` for an NC metric name (``train_nc1``, ``eval_nc2_etf``,
    ``eval_train_nc1``, ``train_nc1_block3``, ...); ``None`` for a name that is not an NC metric."""
    if not name:
        return None
    base = name.split("_block")[0] if "_block" in name else name
    if base.endswith(HIGHER_IS_BETTER):
        return True
    if any(base == m or base.endswith("_" + m) for m in LOWER_IS_BETTER):
        return False
    return None


def classifier_weight(classifier: Optional[nn.Module], num_classes: int, dim: int) -> Optional[torch.Tensor]:
    """The (K, d) weight of a linear classifier (PEFT's modules_to_save wrapper resolves to its
    active copy), or ``None`` when there is no such weight."""
    weight = getattr(classifier, "weight", None) if classifier is not None else None
    if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (num_classes, dim):
        return weight.detach().float()
    return None


class LayerStats:
    """One :class:`NCStats` per recorded key (block index or ``"final"``), created lazily."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.stats: dict[LayerKey, NCStats] = {}

    def update(self, features: dict[LayerKey, torch.Tensor], labels: torch.Tensor, rows: Optional[int] = None) -> None:
        """Adds a batch; only its first ``rows`` rows (the rest are padding duplicates)."""
        for key, feats in features.items():
            if key not in self.stats:
                self.stats[key] = NCStats(self.num_classes, feats.shape[-1])
            n = feats.shape[0] if rows is None else rows
            self.stats[key].update(feats[:n], labels[:n].to(feats.device))

    def reduce(self) -> "LayerStats":
        """Sums over processes (collective: every rank calls it, keys in the same order)."""
        for key in sorted(self.stats, key=str):
            self.stats[key].all_reduce()
        return self

    def metrics(self, classifier: Optional[nn.Module] = None, where: str = "") -> dict:
        """``{metric: value}`` of ``"final"`` plus ``{"blocks": {i: nc1}}`` when blocks were recorded.

        A class without samples (a tiny subset) makes NC undefined: it is skipped with a warning.
        """
        out: dict = {}
        blocks = {}
        for key, s in self.stats.items():
            try:
                if key == FINAL:
                    res = s.compute(classifier_weight=classifier_weight(classifier, self.num_classes, s.dim))
                    out.update({m: res[m] for m in REPORTED if m in res})
                    out["num_samples"] = res["num_samples"]
                else:
                    blocks[str(key)] = s.compute()["nc1"]
            except ValueError as e:
                logger.warning("NC metrics of %s (layer %s) skipped: %s", where or "the data", key, e)
        if blocks:
            out["blocks"] = dict(sorted(blocks.items(), key=lambda kv: int(kv[0])))
        return out


def flatten(prefix: str, metrics: dict) -> dict[str, float]:
    """Log keys: ``{prefix}_nc1`` ... and ``{prefix}_nc1_block{i}``."""
    flat = {f"{prefix}_{k}": v for k, v in metrics.items() if k in REPORTED}
    flat.update({f"{prefix}_nc1_block{i}": v for i, v in metrics.get("blocks", {}).items()})
    return flat
