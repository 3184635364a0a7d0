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
                column = np.asarray(dataset.with_format(None)[name], dtype=np.int64)
                if column_gives_the_labels(dataset, column):
                    return column
                break  # a transform remaps the column: only the items say what the Trainer sees
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets, dtype=np.int64)
    if not read_items:
        return None
    logger.info("reading the labels of all %d items of nc_train_dataset once (give it a 'label' column or a "
                "'targets' attribute to skip this)", len(dataset))
    return np.asarray([_item_label(dataset[i]) for i in range(len(dataset))], dtype=np.int64)


def _item_label(item: Any) -> Optional[int]:
    if isinstance(item, dict):
        key = "labels" if "labels" in item else "label" if "label" in item else None
        return None if key is None else int(item[key])
    return int(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else None


def column_gives_the_labels(dataset: Any, column: np.ndarray, probes: int = 8) -> bool:
    """Whether a ``datasets.Dataset``'s label column is what its items' ``labels`` are.

    A ``with_transform`` may remap it (a class subset renumbered 0..K-1, classes merged): the
    column then names other classes than the Trainer trains on, and NC counted with it refused valid
    data or stratified the train subset on the wrong classes. Without a transform it is; with one,
    ``probes`` items spread over the dataset are read (random number states restored) and compared.
    """
    fmt = getattr(dataset, "_format_kwargs", None) or {}
    if fmt.get("transform") is None or not len(column):
        return True
    from ..prefix_cache.checks import _preserved_rng

    n = min(probes, len(column))
    with _preserved_rng():
        for i in (j * len(column) // n for j in range(n)):
            label = _item_label(dataset[i])
            if label is not None and label != int(column[i]):
                return False
    return True


def class_label_count(dataset: Any) -> Optional[int]:
    """The ``num_classes`` of a dataset's ``label``/``labels`` ClassLabel, when that column is what its
    items' labels are (see :func:`column_gives_the_labels`); else ``None``."""
    features = getattr(dataset, "features", None) or {}
    for key in ("label", "labels"):
        if hasattr(features.get(key), "num_classes"):
            count = int(features[key].num_classes)
            if not (isinstance(getattr(dataset, "column_names", None), list) and hasattr(dataset, "__len__")):
                return count  # not map-style (an IterableDataset): nothing to compare
            column = np.asarray(dataset.with_format(None)[key], dtype=np.int64)
            return count if column_gives_the_labels(dataset, column) else None
    return None


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
