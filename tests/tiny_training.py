"""Tiny labelled image sets and a plain training loop, shared by the tests and the scripts they launch.

The scripts under tests/scripts run in fresh processes (torchrun); they import this module with
tests/ on sys.path, as they import tiny_models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Sequence, Value

SIDE = 16  # the tiny models' image size


def pattern_dataset(counts: list[int], seed: int = 0, side: int = SIDE) -> Dataset:
    """``counts[k]`` images of class k; class k's images are a class pattern plus noise.

    Args:
        counts: the number of images of each class, in class order.
        seed: the seed of the patterns, the noise and the shuffled order.
        side: the images' height and width (3 channels).

    Returns:
        A shuffled dataset whose rows are ``{"pixel_values": (3, side, side) tensor, "labels": int}``.
    """
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(labels)
    patterns = rng.normal(size=(len(counts), 3 * side * side)).astype(np.float32)
    pixels = patterns[labels] + 0.5 * rng.normal(size=(len(labels), 3 * side * side)).astype(np.float32)
    features = Features({"pixels": Sequence(Value("float32")), "label": ClassLabel(num_classes=len(counts))})
    ds = Dataset.from_dict({"pixels": pixels.tolist(), "label": labels.tolist()}, features=features)

    def transform(batch):
        return {"pixel_values": [torch.tensor(p).view(3, side, side) for p in batch["pixels"]], "labels": batch["label"]}

    return ds.with_transform(transform)


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks ``pattern_dataset`` rows into a batch."""
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "labels": torch.tensor([int(i["labels"]) for i in items])}


def train_cross_entropy(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
                        optimizer: torch.optim.Optimizer, epochs: int) -> list[float]:
    """Trains ``model`` on ``loader`` with cross-entropy, one optimizer step a batch.

    Args:
        model: called as ``model(pixel_values=...)`` with ``.logits`` out (a DDP wrapper too).
        loader: batches with ``pixel_values`` and ``labels``; a sampler with ``set_epoch``
            (DistributedSampler) is told each epoch.
        optimizer: the optimizer of the trainable parameters.
        epochs: passes over ``loader``.

    Returns:
        The loss of every step, in order.
    """
    losses = []
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for b in loader:
            loss = F.cross_entropy(model(pixel_values=b["pixel_values"]).logits, b["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses
