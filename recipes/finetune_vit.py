#!/usr/bin/env python
"""Fine-tune a ViT-family image classifier with NC logging: linear probe, full, LoRA, Layer/SCL/head FT.

    python recipes/finetune_vit.py                                 # SCL FT of the built-in ViT on digits
    python recipes/finetune_vit.py --method layer --layers=-1,-2        # "=" before values starting with "-"
    python recipes/finetune_vit.py --method heads --heads "11:0,1"
    python recipes/finetune_vit.py --method lora --lora_r 8 --lora_target_modules q_proj,v_proj
    python recipes/finetune_vit.py --model_name_or_path google/vit-base-patch16-224-in21k --dataset cifar10 --bf16
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/finetune_vit.py
    torchrun --standalone --nproc_per_node 2 recipes/finetune_vit.py   # two CPU processes, same NC metrics

Any ``AutoModelForImageClassification`` checkpoint with a backbone spec in ``hf_nc.backbones``
(ViT, DeiT, DINOv2, CLIP, SigLIP) works. All ``TrainingArguments`` are flags (``--num_train_epochs``,
``--learning_rate``, ``--bf16``, ``--resume_from_checkpoint``, ``--metric_for_best_model train_nc1``, ...);
``python recipes/finetune_vit.py config.yaml`` (or ``.json``) reads the same keys from a file.

Evaluation during training, ``--load_best_model_at_end`` and early stopping use the ``validation``
split (the dataset's own, else ``--train_val_split`` of the training images, drawn outside the
few-shot subset); the test split is evaluated once, at the end. ``NCTrainer`` logs NC of the
classifier input on a seeded training subset and on the validation data at every evaluation.
Unset ``--learning_rate`` / ``--num_train_epochs`` are chosen from the method and the data
(``recipes/recipe_args.py``: ``DEFAULT_LEARNING_RATES``, ``--min_train_steps``). At the end a summary
table (validation and test) is printed and written to ``output_dir/summary.json`` with every
setting of the run; the trained part and the image processor go to ``output_dir/adapter``
(``pipeline("image-classification", model=output_dir/adapter)`` for ``full``);
``--push_to_hub --hub_model_id ID`` pushes it with a model card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RecipeTrainingArguments, load_classifier, run, training_default  # noqa: E402


@dataclass
class ViTTrainingArguments(RecipeTrainingArguments):
    """The recipe's ``TrainingArguments`` (see ``RecipeTrainingArguments`` for the defaults)."""

    output_dir: Optional[str] = training_default("output_dir", "outputs/finetune_vit")


def default_model(_training_args=None) -> str:
    from hf_nc.checkpoints import DEFAULT_MODEL

    return DEFAULT_MODEL


def main(argv: list[str] | None = None) -> dict:
    return run(argv, ViTTrainingArguments, load_classifier, default_model, "finetune_vit")


if __name__ == "__main__":
    main()
