"""NCTrainer: a ``transformers.Trainer`` that reports neural collapse at every evaluation.

    from hf_nc.trainer import NCTrainer
    trainer = NCTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                        nc_train_dataset=train_without_augmentation, nc_layers=True)

Key names (see :mod:`hf_nc.trainer.collect`): ``eval_nc1``, ... for the evaluation data,
``eval_train_subset_nc1`` (:data:`TRAIN_SUBSET_NC1`), ... for the stratified training subset.
"""

from .collect import (
    EVAL_PREFIX,
    LEGACY_TRAIN_PREFIX,
    TRAIN_SUBSET_NC1,
    TRAIN_SUBSET_PREFIX,
    canonical_metric_name,
    metric_direction,
    train_subset_key,
)
from .history import HISTORY_NAME, plot_history, read_history, restore_history
from .labels import dataset_labels
from .trainer import NCTrainer

__all__ = [
    "EVAL_PREFIX",
    "HISTORY_NAME",
    "LEGACY_TRAIN_PREFIX",
    "NCTrainer",
    "TRAIN_SUBSET_NC1",
    "TRAIN_SUBSET_PREFIX",
    "canonical_metric_name",
    "dataset_labels",
    "metric_direction",
    "plot_history",
    "read_history",
    "restore_history",
    "train_subset_key",
]
