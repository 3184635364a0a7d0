"""Linear probe: logistic regression on a frozen model's penultimate features.

The features are the model's ``"final"`` features (what enters the classifier, e.g. ViT's
final-layernorm CLS token; see :mod:`hf_nc.features`), computed without augmentation. A
standardised scikit-learn ``LogisticRegression`` is fitted on the train split and scored on the
test split.

    python -m hf_nc.probe --model hf_nc/checkpoints/hf-nc-tiny-vit-fmnist --dataset digits
    python -m hf_nc.probe --model hf_nc/checkpoints/hf-nc-tiny-vit-fmnist --dataset digits --random_init
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import build_transforms, collate_fn, load_image_dataset
from .features import FINAL, LayerFeatures, forward_pixels


@torch.no_grad()
def penultimate_features(model: nn.Module, dataset, transform=None, batch_size: int = 256, device=None):
    """``(features, labels)`` as numpy arrays for an ``image``/``label`` dataset (no augmentation).

    Inputs of another size than the model's ``image_size`` (a checkpoint saved with a resized image
    processor, as the recipes' ``--image_size`` does) go through :func:`hf_nc.features.forward_pixels`,
    like the NC passes, so the probe sees the same features as the statistics.
    """
    if len(dataset) == 0:
        raise ValueError("penultimate_features: the dataset has no images")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    transform = transform or build_transforms(model, train=False)
    loader = DataLoader(dataset.with_transform(transform), batch_size=batch_size, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    with LayerFeatures(model, layers=[], include_final=True) as recorder:
        for batch in loader:
            forward_pixels(model, batch["pixel_values"].to(device))
            feats.append(recorder.pop()[FINAL].float().cpu())
            labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe(model: nn.Module, data, *, C: float = 1.0, max_iter: int = 2000, batch_size: int = 256, transform=None) -> dict:
    """Fit a logistic regression on the frozen features of ``data["train"]``, score on ``data["test"]``.

    ``data``: a ``DatasetDict`` from :func:`hf_nc.data.load_image_dataset`. Returns
    ``{"train_accuracy", "test_accuracy", "num_train", "num_test", "dim"}``. Deterministic
    (lbfgs on standardised features).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    empty = [split for split in ("train", "test") if len(data[split]) == 0]
    if empty:
        raise ValueError(f"linear_probe: the {' and '.join(map(repr, empty))} split has no images")
    xtr, ytr = penultimate_features(model, data["train"], transform, batch_size)
    xte, yte = penultimate_features(model, data["test"], transform, batch_size)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(xtr, ytr)
    return {
        "train_accuracy": float(np.mean(clf.predict(xtr) == ytr)),
        "test_accuracy": float(np.mean(clf.predict(xte) == yte)),
        "num_train": int(len(ytr)),
        "num_test": int(len(yte)),
        "dim": int(xtr.shape[1]),
    }


def load_model(path: str, random_init: bool = False, seed: int = 0) -> nn.Module:
    """A model from a local folder, Hub id or built-in name (``AutoModelForImageClassification``, else ``AutoModel``
    when the architecture has no image-classification class), or a freshly initialised one of the
    same architecture (``random_init``, seeded)."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    from .checkpoints import resolve_builtin

    path = resolve_builtin(path)  # a built-in's stable name, e.g. "hf-nc/tiny-vit-fmnist"
    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForImageClassification if type(config) in AutoModelForImageClassification._model_mapping else AutoModel
    if not random_init:
        return auto.from_pretrained(path)
    torch.manual_seed(seed)
    model = auto.from_config(config)
    model.config._name_or_path = path  # so the transforms pick up the checkpoint's image processor
    return model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Linear probe of a frozen model's penultimate features.")
    p.add_argument("--model", required=True, help="local checkpoint folder")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--random_init", action="store_true", help="probe a randomly initialised model of the same shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--shots_per_class", type=int, default=None)
    a = p.parse_args(argv)
    model = load_model(a.model, a.random_init, a.seed)
    data = load_image_dataset(a.dataset, shots_per_class=a.shots_per_class, seed=a.seed)
    result = {"model": a.model, "random_init": a.random_init, "dataset": a.dataset, "seed": a.seed, "C": a.C}
    result.update(linear_probe(model, data, C=a.C))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
