"""Neural-collapse metrics: streaming float64 statistics, formulas, distributed reduction.

Pure torch; knows nothing of models. See DESIGN.md, "Definitions".

- ``nc_metrics(features, labels, num_classes=None, classifier_weight=None) -> dict``
- ``NCStats(num_classes, dim)``: ``update``, ``merge``, ``all_reduce``, ``ncc_pass``,
  ``compute``
- ``EVALUATE_METRIC_PATH``: folder of the ``evaluate`` metric module
  (``evaluate.load(EVALUATE_METRIC_PATH)`` works offline).
"""

from pathlib import Path

from .api import json_safe, nc_metrics
from .stats import NCStats

EVALUATE_METRIC_PATH = str(Path(__file__).resolve().parent / "neural_collapse")

__all__ = ["EVALUATE_METRIC_PATH", "NCStats", "json_safe", "nc_metrics"]
