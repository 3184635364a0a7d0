"""The labels of the trainer's data sets, read cheaply, and checked against ``nc_num_classes``.

``NCTrainer`` checks the labels when it is built, so that a wrong ``nc_num_classes`` fails then
rather than at the first evaluation, after training has run for a while.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
from torch.utils.data import Subset

logger = logging.getLogger(__name__)


def dataset_labels(dataset: Any, read_items: bool = False) -> Optional[np.ndarray]:
    """The integer labels of a map-style dataset, read without loading its images when possible.

    A ``datasets.Dataset`` gives its ``label``/``labels`` column (any ``with_transform`` is
    bypassed), a ``torch.utils.data.Subset`` its parent's labels at its indices, a dataset with a
    ``targets`` attribute (torchvision style) that. Otherwise, with ``read_items``, every item
    is read once (``item["label"]``, ``item["labels"]`` or ``item[1]``); without it, ``None``.

    Args:
        dataset: A map-style dataset (``len()`` and indexing).
        read_items: Read every item when the labels cannot be had otherwise.

    Returns:
        The labels as an ``int64`` array, or ``None`` (not found without ``read_items``).
    """
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset, read_items=False)
        if parent is not None:
            return parent[np.asarray(dataset.indices, dtype=np.int64)]
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list) and hasattr(dataset, "with_format"):
        for name in ("label", "labels"):
            if name in columns:
                return np.asarray(dataset.with_format(None)[name], dtype=np.int64)
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets, dtype=np.int64)
    if not read_items:
        return None
    logger.info("reading the labels of all %d items of nc_train_dataset once (give it a 'label' column or a "
                "'targets' attribute to skip this)", len(dataset))
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, dict):
            key = "labels" if "labels" in item else "label"
            labels.append(int(item[key]))
        else:
            labels.append(int(item[1]))
    return np.asarray(labels, dtype=np.int64)


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    """Raises when a label lies outside ``0..num_classes - 1``.

    Args:
        labels: Integer labels of one data set.
        num_classes: K, as the trainer measures NC with it (``nc_num_classes``).
        what: The data set's name in the message (``"nc_train_dataset"``, ``"eval_dataset"``, ...).

    Raises:
        ValueError: naming the labels outside the range and ``nc_num_classes``.
    """
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        outside = sorted({int(v) for v in labels if v < 0 or v >= num_classes})
        raise ValueError(f"{what} has labels {outside[:10]} outside 0..{num_classes - 1}, but nc_num_classes is "
                         f"{num_classes}: pass the number of classes of the data as nc_num_classes")
