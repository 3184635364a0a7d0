"""Trainable parameters per method for ViT-B/16 and CLIP ViT-B/16 shapes (no download: meta device).

Run: .venv/bin/python benchmarks/param_table.py [--num-labels 100]
Prints a Markdown table (used in README.md).
"""

from __future__ import annotations

import argparse
import warnings

import torch
import transformers as tf
from peft import LoraConfig, get_peft_model

import hf_nc.adapters as A

warnings.filterwarnings("ignore")


def vit_b16(num_labels: int):
    config = tf.ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          image_size=224, patch_size=16, num_labels=num_labels)
    return tf.ViTForImageClassification(config)


def clip_b16(num_labels: int):
    vision = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  image_size=224, patch_size=16)
    config = tf.CLIPConfig(vision_config=vision, num_labels=num_labels)
    return tf.CLIPForImageClassification(config)


METHODS = {
    "Full fine-tuning": None,
    "Linear probe (head only)": "probe",
    "LoRA r=8 on q,v (+ head)": lambda: LoraConfig(r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]),
    "Layer FT, last block": lambda: A.LayerFTConfig(layers=[-1]),
    "Layer FT, last block, attention only": lambda: A.LayerFTConfig(layers=[-1], part="attention"),
    "Layer FT, last block, MLP only": lambda: A.LayerFTConfig(layers=[-1], part="mlp"),
    "SCL FT, block 10 (add, default)": lambda: A.SCLConfig(layer=-2),
    "SCL FT, block 10 (concat)": lambda: A.SCLConfig(layer=-2, combine="concat"),
    "Head FT, all 12 heads of last block": lambda: A.HeadFTConfig(heads={-1: "all"}),
    "Head FT, 1 head of each of the last 2 blocks": lambda: A.HeadFTConfig(heads={-1: [0], -2: [0]}),
}


def count(build, method) -> tuple[int, int]:
    with torch.device("meta"):
        model = build()
    total = sum(p.numel() for p in model.parameters())
    if method is None:
        return total, total
    if method == "probe":
        return sum(p.numel() for p in model.classifier.parameters()), total
    with torch.device("meta"):
        peft_model = get_peft_model(model, method())
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad), total


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-labels", type=int, default=100)
    args = parser.parse_args()
    models = {"ViT-B/16": lambda: vit_b16(args.num_labels), "CLIP ViT-B/16 (vision)": lambda: clip_b16(args.num_labels)}
    rows = {}
    totals = {}
    for model_name, build in models.items():
        for method_name, method in METHODS.items():
            trainable, total = count(build, method)
            rows.setdefault(method_name, []).append(f"{trainable:,} ({100 * trainable / total:.2f} %)")
            totals[model_name] = total
    head = " | ".join(f"{m}: {totals[m]:,} params" for m in models)
    print(f"| Method ({args.num_labels} classes) | {head} |")
    print("|---|" + "---|" * len(models))
    for method_name, cells in rows.items():
        print(f"| {method_name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
