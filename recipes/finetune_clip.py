#!/usr/bin/env python
"""Fine-tune a CLIP vision tower with a classification head, with NC logging (same methods as finetune_vit).

    python recipes/finetune_clip.py                     # offline: a small random CLIP vision tower on digits
    python recipes/finetune_clip.py --model_name_or_path openai/clip-vit-base-patch16 --dataset cifar10 \\
        --method scl --layer -3 --bf16                  # real use (the Hub, or a local copy of it)
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/finetune_clip.py ...

The model is ``CLIPForImageClassification`` (``AutoModelForImageClassification`` of a CLIP checkpoint:
the vision tower, mean-pooled patch tokens, a new linear head); the text tower is not loaded. Without
``--model_name_or_path`` nothing is downloaded: a small random ``CLIPVisionConfig`` model (and a
matching ``CLIPImageProcessor``) is built and saved to ``output_dir/random_clip_base``, so the run
shows the mechanics, not CLIP's transfer accuracy. Options, outputs and ``--push_to_hub`` are those of
``finetune_vit.py`` (see ``recipes/common.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RecipeTrainingArguments, load_classifier, run, training_default  # noqa: E402

HUB_MODEL = "openai/clip-vit-base-patch16"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, image_size=32, patch_size=8)


@dataclass
class CLIPTrainingArguments(RecipeTrainingArguments):
    """The recipe's ``TrainingArguments`` (see ``RecipeTrainingArguments`` for the defaults)."""

    output_dir: Optional[str] = training_default("output_dir", "outputs/finetune_clip")


def default_model(training_args) -> str:
    """Builds (once) a small random CLIP classifier offline and returns its folder."""
    import torch
    from transformers import CLIPConfig, CLIPForImageClassification, CLIPImageProcessor

    folder = Path(training_args.output_dir) / "random_clip_base"
    if not (folder / "config.json").is_file():
        torch.manual_seed(training_args.seed)
        CLIPForImageClassification(CLIPConfig(vision_config=TINY, num_labels=2)).save_pretrained(folder)
        side = TINY["image_size"]
        CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    return run(argv, CLIPTrainingArguments, load_classifier, default_model, "finetune_clip")


if __name__ == "__main__":
    main()
