"""One-shot NC metrics of an in-memory feature matrix."""

from __future__ import annotations

from typing import Any

from .stats import NCStats
from .validation import as_features, as_labels


def nc_metrics(
    features: Any,
    labels: Any,
    num_classes: int | None = None,
    classifier_weight: Any = None,
) -> dict[str, float]:
    """Computes all NC metrics of DESIGN.md for features held in memory (both passes).

    Args:
        features: (N, d) tensor/array of any float dtype, CPU or CUDA.
        labels: (N,) integer class indices in [0, K).
        num_classes: K; default ``max(labels) + 1``.
        classifier_weight: Optional W (K, d); adds ``nc3``.

    Returns:
        ``{"nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", ["nc3"], "ncc_acc", "cdnv",
        "num_samples", "num_classes"}`` as Python numbers.

    Raises:
        ValueError: bad input (see ``NCStats.update``), K < 2, or a class without samples.
    """
    x = as_features(features)
    y = as_labels(labels, x.shape[0], x.device)
    if num_classes is None:
        if y.numel() == 0:
            raise ValueError("no samples: cannot infer num_classes from empty labels")
        if int(y.min()) < 0:
            raise ValueError(f"labels outside [0, num_classes): {int(y.min())}")
        num_classes = int(y.max()) + 1
    stats = NCStats(num_classes, x.shape[1])
    stats.update(x, y)
    stats.ncc_pass(x, y)
    return stats.compute(classifier_weight)
