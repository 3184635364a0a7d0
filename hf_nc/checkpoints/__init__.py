"""Checkpoints shipped inside hf-nc.

``DEFAULT_MODEL``: path (str) of a small ViT pre-trained on Fashion-MNIST by
``recipes/pretrain_vit.py`` (see its README.md); load it offline with
``ViTForImageClassification.from_pretrained(DEFAULT_MODEL)``.
"""

from pathlib import Path

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "hf-nc-tiny-vit-fmnist")

__all__ = ["DEFAULT_MODEL"]
