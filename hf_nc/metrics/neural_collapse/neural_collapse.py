"""Neural collapse (NC) metrics as an ``evaluate`` metric module.

Load offline with ``evaluate.load(hf_nc.metrics.EVALUATE_METRIC_PATH)``.
"""

import datasets
import evaluate

from hf_nc.metrics import nc_metrics

_DESCRIPTION = """\
Neural collapse metrics of penultimate (or any layer's) features h_i with labels y_i:
nc1 = 1/K tr(Sigma_W Sigma_B^+), nc2_etf, nc2_equinorm, nc2_equiangle, nc3 (with a
classifier weight), ncc_acc (nearest class centre accuracy) and cdnv, as defined in
hf-nc's DESIGN.md (Li et al., TMLR 2024, arXiv 2212.12206). Lower nc* means more collapse.
"""

_KWARGS_DESCRIPTION = """\
Args:
    features: list of N feature vectors (each a list of d floats).
    labels: list of N integer class indices in [0, K) (non-integer values are rejected).
    num_classes: K (default: max(labels) + 1).
    classifier_weight: optional K x d classifier weight (nested list/array) for nc3.
The metrics are those of the data given to this process, also inside a torch.distributed
program; to combine several processes' data use evaluate's own ``num_process`` /
``process_id`` arguments of ``evaluate.load``.
Returns:
    dict with nc1, nc2_etf, nc2_equinorm, nc2_equiangle, [nc3], ncc_acc, cdnv,
    num_samples, num_classes.
Examples:
    >>> import evaluate, hf_nc.metrics
    >>> metric = evaluate.load(hf_nc.metrics.EVALUATE_METRIC_PATH)
    >>> metric.compute(features=[[0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.1]], labels=[0, 0, 1, 1])["ncc_acc"]
    1.0
"""

_CITATION = """\
@article{li2024understanding,
  title={Understanding and Improving Transfer Learning of Deep Models via Neural Collapse},
  author={Li, Xiao and Liu, Sheng and Zhou, Jinxin and Lu, Xinyu and Fernandez-Granda, Carlos and Zhu, Zhihui and Qu, Qing},
  journal={Transactions on Machine Learning Research},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NeuralCollapse(evaluate.Metric):
    """Neural collapse metrics; ``_compute`` calls ``hf_nc.metrics.nc_metrics``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                # labels are stored as float64 (exact for integers up to 2^53) and checked in
                # _compute: an int64 column would let Arrow truncate 0.7 to 0 silently
                datasets.Features(
                    {"features": datasets.Sequence(datasets.Value("float64")), "labels": datasets.Value("float64")}
                ),
                datasets.Features(
                    {"features": datasets.Sequence(datasets.Value("float32")), "labels": datasets.Value("float64")}
                ),
            ],
            reference_urls=["https://arxiv.org/abs/2212.12206"],
        )

    def _compute(self, features, labels, num_classes=None, classifier_weight=None):
        import numpy as np

        y = np.asarray(labels, dtype=np.float64)
        bad = y[~np.isfinite(y) | (y != np.round(y))] if y.size else y
        if bad.size:
            raise ValueError(f"labels must be integers, got non-integer values {bad[:10].tolist()}")
        return nc_metrics(
            np.asarray(features, dtype=np.float64),
            y.astype(np.int64),
            num_classes=num_classes,
            classifier_weight=classifier_weight,
        )
