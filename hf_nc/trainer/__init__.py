"""NCTrainer: a ``transformers.Trainer`` that reports neural collapse at every evaluation.

    from hf_nc.trainer import NCTrainer
    trainer = NCTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                        nc_train_dataset=train_without_augmentation, nc_layers=True)
"""

from .collect import metric_direction
from .history import HISTORY_NAME, plot_history, read_history, restore_history
from .trainer import NCTrainer

__all__ = ["HISTORY_NAME", "NCTrainer", "metric_direction", "plot_history", "read_history", "restore_history"]
