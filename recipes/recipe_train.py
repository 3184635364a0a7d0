"""The recipes' training: ``RecipeTrainer`` (the head's own learning rate), the budget, metrics, resume and FSDP checks."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from recipe_args import DEFAULT_LEARNING_RATES, DEFAULT_MIN_EPOCHS, FULL_NEW_HEAD_LR_FACTOR, MethodArguments
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from hf_nc.backbones import resolve_backbone
from hf_nc.trainer import TRAIN_SUBSET_PREFIX, NCTrainer  # train-subset NC keys: eval_train_subset_nc1, ...

logger = hf_logging.get_logger("hf_nc.recipes")


class RecipeTrainer(NCTrainer):
    """``NCTrainer`` whose classifier gets its own learning rate (an optimizer param group)."""

    def __init__(self, *args, head_learning_rate: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.head_learning_rate is None or self.head_learning_rate == self.args.learning_rate:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        head = {id(p) for p in resolve_backbone(self.model).classifier.parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = group["params"]
            for chosen, extra in (([p for p in params if id(p) not in head], {}),
                                  ([p for p in params if id(p) in head], {"lr": self.head_learning_rate})):
                if chosen:
                    groups.append({**{k: v for k, v in group.items() if k != "params"}, **extra, "params": chosen})
        optimizer.param_groups.clear()  # nothing has stepped yet: no state to move
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer


def compute_accuracy(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def final_validation_metrics(trainer: NCTrainer) -> dict:
    """Validation metrics of the final model: the last evaluation if it ran at the final step, else a new one."""
    if not trainer.args.load_best_model_at_end:
        for entry in reversed(trainer.state.log_history):
            if "eval_accuracy" in entry:
                if entry.get("step") == trainer.state.global_step:
                    return entry
                break
    return trainer.evaluate()


def train_subset_metric(metrics: dict, name: str) -> float:
    """A train-subset NC metric from ``evaluate()``'s output, under the trainer's key for it."""
    return metrics.get(f"{TRAIN_SUBSET_PREFIX}_{name}", float("nan"))


def plan_budget(targs: TrainingArguments, method: MethodArguments, num_train: int, head_reset: Optional[bool]) -> dict:
    """Fills in the learning rate(s) and epochs left unset (see ``--learning_rate``, ``--min_train_steps``); returns them."""
    if targs.learning_rate is None:
        targs.learning_rate = DEFAULT_LEARNING_RATES[method.method]
    head_lr = method.head_learning_rate
    if head_lr is None and method.method == "full" and head_reset:
        head_lr = FULL_NEW_HEAD_LR_FACTOR * targs.learning_rate
    per_step = targs.per_device_train_batch_size * targs.world_size * targs.gradient_accumulation_steps
    # as transformers.Trainer counts them: per-process batches, then one optimizer step per accumulation window,
    # the last (short) window included
    per_batch = max(1, targs.per_device_train_batch_size * targs.world_size)
    batches = num_train // per_batch if targs.dataloader_drop_last else math.ceil(num_train / per_batch)
    steps_per_epoch = max(1, math.ceil(batches / targs.gradient_accumulation_steps))
    if targs.num_train_epochs is None and targs.max_steps > 0:
        targs.num_train_epochs = float(DEFAULT_MIN_EPOCHS)  # unused: max_steps decides
    elif targs.num_train_epochs is None:
        targs.num_train_epochs = float(max(DEFAULT_MIN_EPOCHS, math.ceil(method.min_train_steps / steps_per_epoch)))
        logger.warning("num_train_epochs=%g (%d optimizer steps per epoch; --min_train_steps %d)", targs.num_train_epochs,
                       steps_per_epoch, method.min_train_steps)
    steps = targs.max_steps if targs.max_steps > 0 else int(steps_per_epoch * targs.num_train_epochs)
    return {"learning_rate": targs.learning_rate, "head_learning_rate": head_lr if head_lr is not None else targs.learning_rate,
            "num_train_epochs": targs.num_train_epochs, "planned_steps": steps, "steps_per_epoch": steps_per_epoch,
            "per_device_train_batch_size": targs.per_device_train_batch_size, "global_batch_size": per_step,
            "gradient_accumulation_steps": targs.gradient_accumulation_steps, "num_processes": targs.world_size,
            "seed": targs.seed, "max_steps": targs.max_steps, "lr_scheduler_type": str(getattr(targs.lr_scheduler_type, "value", targs.lr_scheduler_type)),
            "warmup_steps": targs.warmup_steps, "weight_decay": targs.weight_decay, "bf16": targs.bf16, "fp16": targs.fp16}


def _fsdp_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(getattr(o, "value", o)) for o in value)
    return str(value)


def resume_path(targs: TrainingArguments) -> Optional[str]:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``last`` / ``true`` for the newest one in ``output_dir``."""
    value = targs.resume_from_checkpoint
    if value is None or str(value).lower() not in ("last", "true"):
        return value
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(targs.output_dir) if os.path.isdir(targs.output_dir) else None
    if last is None:
        raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {targs.output_dir}")
    return last


def check_fsdp(trainer: NCTrainer) -> None:
    """``--fsdp`` that the Trainer did not turn on (e.g. on CPU, where transformers trains with plain DDP) is an error."""
    if trainer.args.fsdp and not getattr(trainer, "is_fsdp_enabled", False):
        raise ValueError(
            f"--fsdp ({_fsdp_text(trainer.args.fsdp)}) was given, but the Trainer did not "
            "enable FSDP (transformers does not use FSDP on CPU; the run would silently be plain DDP). Run on GPUs, or "
            "launch with `accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml` and no --fsdp flag, or "
            "drop --fsdp.")
