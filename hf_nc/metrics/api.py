"""One-shot NC metrics of an in-memory feature matrix."""

from __future__ import annotations

import math
from typing import Any

import torch

from .distributed import default_device, is_distributed
from .stats import NCStats
from .validation import as_features, as_labels


def nc_metrics(
    features: Any,
    labels: Any,
    num_classes: int | None = None,
    classifier_weight: Any = None,
    *,
    distributed: bool = False,
) -> dict[str, float]:
    """Computes all NC metrics of DESIGN.md for features held in memory (both passes).

    Args:
        features: (N, d) tensor/array of any float dtype, CPU or CUDA (detached if it
            requires grad).
        labels: (N,) integer class indices in [0, K).
        num_classes: K; default ``max(labels) + 1`` (over all ranks with ``distributed``).
        classifier_weight: Optional W (K, d); adds ``nc3``.
        distributed: False (default): the metrics of these local tensors, also inside a
            torch.distributed program. True: each rank passes its own share and all get the
            metrics of the union (every rank must call it: it runs collectives).

    Returns:
        ``{"nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", ["nc3"], "ncc_acc", "cdnv",
        "num_samples", "num_classes"}`` as Python numbers.

    Raises:
        ValueError: bad input (see ``NCStats.update``), K < 2, or a class without samples.
    """
    x = as_features(features)
    y = as_labels(labels, x.shape[0], x.device)
    reduce = distributed and is_distributed()
    if num_classes is None:
        lo_hi = torch.tensor(
            [-int(y.min()) if y.numel() else 0, int(y.max()) if y.numel() else -1],
            dtype=torch.int64, device=default_device() if reduce else "cpu",
        )  # fmt: skip
        if reduce:
            import torch.distributed as dist

            dist.all_reduce(lo_hi, op=dist.ReduceOp.MAX)
        lo, hi = -int(lo_hi[0]), int(lo_hi[1])
        if hi < 0:
            raise ValueError("no samples: cannot infer num_classes from empty labels")
        if lo < 0:
            raise ValueError(f"labels outside [0, num_classes): {lo}")
        num_classes = hi + 1
    stats = NCStats(num_classes, x.shape[1], distributed=distributed)
    stats.update(x, y).all_reduce()
    stats.ncc_pass(x, y).all_reduce()
    return stats.compute(classifier_weight)


def json_safe(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples) with every non-finite float replaced by ``None``: a metric
    that is undefined on the data (constant features give NC1 = NaN) is written as ``null``, not as the
    bare ``NaN`` token that strict JSON parsers refuse (``json.dumps(..., allow_nan=False)`` then holds)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
