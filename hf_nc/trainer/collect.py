"""Streaming NC statistics for the trainer: per-layer accumulators, metric naming and key names.

Key names (what ``NCTrainer`` logs and ``evaluate()`` returns, for ``metric_key_prefix="eval"``):

* ``eval_nc1``, ``eval_nc2_etf``, ... -- NC of the evaluation data (``test_nc1`` for ``predict``);
* ``eval_train_subset_nc1``, ... -- NC of the fixed, stratified training subset
  (:data:`TRAIN_SUBSET_PREFIX`);
* ``..._nc1_block3`` -- NC1 of block 3's pooled output, for either.

The train-subset keys live under the ``eval_`` prefix on purpose: transformers' auto model card
(``modelcard.parse_log_history``) drops the first ``_``-separated word of every key of an
evaluation log, so ``train_nc1`` and ``eval_nc1`` both became the column "Nc1" (one overwrote the
other), and the TensorBoard / W&B callbacks (``rewrite_logs``) file every key not starting with
``eval_``/``test_`` under ``train/`` (``train/train_nc1``). ``eval_train_subset_nc1`` reads "Train
Subset Nc1" in the card and ``eval/train_subset_nc1`` in TensorBoard and W&B.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..features import FINAL, LayerKey
from ..metrics import NCStats
from ..metrics.distributed import default_device, is_distributed

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv")
HIGHER_IS_BETTER = ("ncc_acc",)
REPORTED = (*LOWER_IS_BETTER, *HIGHER_IS_BETTER)

#: prefix of the evaluation-data NC keys (``eval_nc1``); ``predict`` uses ``test``
EVAL_PREFIX = "eval"
#: prefix of the train-subset NC keys (``eval_train_subset_nc1``, ``eval_train_subset_nc1_block3``)
TRAIN_SUBSET_PREFIX = "eval_train_subset"
#: the ``metric_for_best_model`` value that selects on train-subset NC1
TRAIN_SUBSET_NC1 = f"{TRAIN_SUBSET_PREFIX}_nc1"
#: the short names of earlier releases (``train_nc1``), still accepted by ``metric_for_best_model``
#: and returned by ``evaluate()`` as unlogged aliases
LEGACY_TRAIN_PREFIX = "train"


def train_subset_key(metric: str) -> str:
    """The log key of a train-subset NC metric: ``"nc1"`` -> ``"eval_train_subset_nc1"``."""
    return f"{TRAIN_SUBSET_PREFIX}_{metric}"


def _is_nc_suffix(rest: str) -> bool:
    base = rest.split("_block")[0]
    return base in REPORTED


def canonical_metric_name(name: Optional[str]) -> Optional[str]:
    """Maps the legacy train-subset names onto the logged ones, leaves every other name alone.

    ``"train_nc1"``, ``"eval_train_nc1"`` and ``"train_subset_nc1"`` -> ``"eval_train_subset_nc1"``
    (also ``..._block3`` and every NC metric); ``"eval_nc1"``, ``"accuracy"`` -> unchanged.
    """
    if not name:
        return name
    for old in ("eval_train_subset_", "train_subset_", "eval_train_", "train_"):
        if name.startswith(old) and _is_nc_suffix(name[len(old):]):
            return train_subset_key(name[len(old):])
    return name


def metric_direction(name: Optional[str]) -> Optional[bool]:
    """``greater_is_better`` for an NC metric name (``eval_train_subset_nc1``, ``train_nc1``,
    ``eval_nc2_etf``, ``eval_nc1_block3``, ...); ``None`` for a name that is not an NC metric."""
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
    """One :class:`NCStats` per recorded key (block index or ``"final"``), created lazily.

    Non-finite features (a diverged model) do not raise: their rows are counted per key on the
    device (no host sync per batch) and replaced by zeros, and :meth:`metrics` then reports that
    key's metrics as NaN with a warning. A rank that saw no data joins the collectives with empty
    statistics.
    """

    def __init__(self, num_classes: int, keys: Iterable[LayerKey] = ()):
        self.num_classes = num_classes
        self.keys: list[LayerKey] = list(keys)
        self.stats: dict[LayerKey, NCStats] = {}
        self._bad: dict[LayerKey, torch.Tensor] = {}  # per key: rows with NaN/inf features (device scalar)
        self.failures: dict[LayerKey, str] = {}  # per key: the error an update raised on this rank
        self.nonfinite: dict[LayerKey, int] = {}  # per key, over all ranks: set by reduce()

    def _clean(self, key: LayerKey, feats: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(feats).all(dim=1)  # (B,)
        bad = (~finite).sum()
        self._bad[key] = bad if key not in self._bad else self._bad[key] + bad.to(self._bad[key].device)
        return torch.where(finite[:, None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))

    def update(self, features: dict[LayerKey, torch.Tensor], labels: torch.Tensor, rows: Optional[int] = None) -> None:
        """Adds a batch; only its first ``rows`` rows (the rest are padding duplicates)."""
        for key, feats in features.items():
            if key not in self.stats:
                self.stats[key] = NCStats(self.num_classes, feats.shape[-1])
            n = feats.shape[0] if rows is None else rows
            feats = self._clean(key, feats[:n].detach())
            try:
                self.stats[key].update(feats, labels[:n].to(feats.device))
            except ValueError as e:  # e.g. finite but overflowing features: NaN metrics, training goes on
                self.failures.setdefault(key, str(e))

    def ncc_pass(self, features: dict[LayerKey, torch.Tensor], labels: torch.Tensor) -> None:
        """The nearest-class-centre pass of a batch (after :meth:`reduce`), for ``"final"`` only
        (the only key whose ``ncc_acc`` is reported); skipped when its features were not finite."""
        for key, feats in features.items():
            if key != FINAL or self.nonfinite.get(key):
                continue
            self.stats[key].ncc_pass(feats.detach(), labels.to(feats.device))

    def _all_keys(self) -> list[LayerKey]:
        return self.keys or sorted(self.stats, key=str)

    def reduce(self) -> "LayerStats":
        """Sums over processes (collective: every rank calls it, also one that saw no data).

        One small all_reduce tells a rank without data the feature dims of the others (so it can
        join with empty statistics) and sums the per-key counts of non-finite rows.
        """
        keys = self._all_keys()
        if is_distributed():
            dims = torch.tensor([self.stats[k].dim if k in self.stats else 0 for k in keys], dtype=torch.int64,
                                device=default_device())
            dist.all_reduce(dims, op=dist.ReduceOp.MAX)
            for key, dim in zip(keys, dims.tolist()):
                if key not in self.stats and dim > 0:
                    self.stats[key] = NCStats(self.num_classes, dim)
        for key in sorted(self.stats, key=str):
            self.stats[key].all_reduce()
        bad = torch.zeros(len(keys), dtype=torch.float64, device=default_device())
        for i, key in enumerate(keys):
            if key in self._bad:
                bad[i] += self._bad[key].to(bad.device, torch.float64)
            if key in self.failures:
                bad[i] += 1
        if is_distributed():
            dist.all_reduce(bad, op=dist.ReduceOp.SUM)
        self.nonfinite = {key: int(v) for key, v in zip(keys, bad.tolist()) if v}
        return self

    def second_reduce(self) -> "LayerStats":
        """Sums the NCC counts of :meth:`ncc_pass` over processes (collective)."""
        for key in sorted(self.stats, key=str):
            self.stats[key].all_reduce()
        return self

    def _final_names(self, classifier: Optional[nn.Module], ncc: bool) -> list[str]:
        names = [m for m in REPORTED if m not in ("nc3", "ncc_acc")]
        final = self.stats.get(FINAL)
        if final is not None and classifier_weight(classifier, self.num_classes, final.dim) is not None:
            names.append("nc3")
        if ncc:
            names.append("ncc_acc")
        return names

    def metrics(self, classifier: Optional[nn.Module] = None, where: str = "", ncc: bool = False) -> dict:
        """``{metric: value}`` of ``"final"`` plus ``{"blocks": {i: nc1}}`` when blocks were recorded.

        The keys are always there: where NC is undefined (non-finite features, a class without
        samples) the values are NaN and a warning says why, so training and best-model selection
        go on. Call :meth:`reduce` first.
        """
        where = where or "the data"
        out: dict = {}
        blocks = {}
        nan_layers = []
        for key in [k for k in self._all_keys() if k in self.stats]:
            s = self.stats[key]
            if self.nonfinite.get(key):
                nan_layers.append(key)
                value = None
            else:
                try:
                    if key == FINAL:
                        res = s.compute(classifier_weight=classifier_weight(classifier, self.num_classes, s.dim))
                        value = {m: res[m] for m in REPORTED if m in res}
                        value["num_samples"] = res["num_samples"]
                    else:
                        value = s.compute()["nc1"]
                except ValueError as e:
                    logger.warning("NC metrics of %s (layer %s) are NaN: %s", where, key, e)
                    value = None
            if key == FINAL:
                out.update(value if value is not None else {m: math.nan for m in self._final_names(classifier, ncc)})
            else:
                blocks[str(key)] = math.nan if value is None else value
        if nan_layers:
            failure = next((self.failures[k] for k in nan_layers if k in self.failures), None)
            logger.warning("NC metrics of %s are NaN for layer(s) %s: %s", where, nan_layers,
                           failure or f"{max(self.nonfinite[k] for k in nan_layers)} feature vector(s) were not finite "
                                      "(NaN/inf); has the model diverged?")
        if blocks:
            out["blocks"] = dict(sorted(blocks.items(), key=lambda kv: int(kv[0])))
        return out


def flatten(prefix: str, metrics: dict) -> dict[str, float]:
    """Log keys: ``{prefix}_nc1`` ... and ``{prefix}_nc1_block{i}``."""
    flat = {f"{prefix}_{k}": v for k, v in metrics.items() if k in REPORTED}
    flat.update({f"{prefix}_nc1_block{i}": v for i, v in metrics.get("blocks", {}).items()})
    return flat
