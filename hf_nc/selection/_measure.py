"""Shared plumbing of model and layer selection: candidates, data, one streamed pass per model.

Everything here runs the same way on one process or under ``torch.distributed``: each rank
measures a contiguous shard of the data; NC statistics are summed exactly (``layer_nc_stats``)
and the few features a linear probe needs are gathered in rank order, so every number equals
a single-process run over all the data.
"""

from __future__ import annotations

import math
import os
from typing import Any, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..data import build_transforms, collate_fn, load_image_dataset
from ..features import FINAL, LayerFeatures
from ..layer_nc import layer_nc_stats, unpack_batch
from ..metrics import NCStats
from ..metrics.distributed import is_distributed
from ..metrics.validation import check_num_classes, check_within_class
from ..probe import load_model

RANDOM_PREFIX = "random:"
Candidate = Union[str, nn.Module]


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without torch.distributed."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def candidate_name(candidate: Candidate) -> str:
    """A readable name: the string itself, or a model's ``config._name_or_path`` / class name."""
    if isinstance(candidate, str):
        return candidate
    config = getattr(candidate, "config", None)
    return getattr(config, "_name_or_path", "") or type(candidate).__name__


def check_candidate(candidate: Candidate) -> None:
    """Refuses a candidate that names a local folder that is not there, before any model runs: a
    typo in the last of several candidates used to fail after every earlier candidate's pass, with
    huggingface_hub's "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    if not isinstance(candidate, str):
        return
    from ..checkpoints import resolve_builtin

    path = candidate[len(RANDOM_PREFIX):] if candidate.startswith(RANDOM_PREFIX) else candidate
    path = resolve_builtin(path)
    # a Hub id is "name" or "namespace/name": a leading "/", ".", "~" or a second "/" is a folder
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if looks_local and not os.path.isdir(path):  # as transformers reads it: "~" is not expanded
        raise ValueError(f"candidate {candidate!r}: no such folder ({os.path.abspath(path)}); pass a saved model's folder, "
                         "a Hub id 'namespace/name' or 'random:<folder or id>'")


def load_candidate(candidate: Candidate, seed: int = 0) -> nn.Module:
    """A model object as is; a path or Hub id loaded with ``AutoModelForImageClassification``
    (``AutoModel`` when the architecture has no image-classification class);
    ``"random:<path or id>"`` = that checkpoint's architecture, freshly initialised (seeded)."""
    if isinstance(candidate, nn.Module):
        return candidate
    path, random_init = str(candidate), False
    if path.startswith(RANDOM_PREFIX):
        path, random_init = path[len(RANDOM_PREFIX):], True
    return load_model(path, random_init=random_init, seed=seed)


def resolve_data(dataset, *, shots_per_class: int | None = None, seed: int = 0, need_test: bool = False,
                 need_within_class: bool = True, num_classes: int | None = None):
    """``(train, test or None, num_classes, description)`` from a name/path or a (Dataset)Dict.

    K is ``num_classes`` when given, else the label column's. Checked before any forward pass (the NC
    statistics would refuse them only after a whole pass over the data, per candidate): labels outside
    ``[0, K)``, a class without a training image and, with ``need_within_class`` (NC1 decides), a
    training split of one image per class."""
    description = dataset if isinstance(dataset, str) else "dataset"
    if isinstance(dataset, str):
        dataset = load_image_dataset(dataset, shots_per_class=shots_per_class, seed=seed)
    elif shots_per_class is not None:
        raise ValueError("shots_per_class only applies to a dataset given by name; subsample a Dataset with hf_nc.data.sample_shots")
    if hasattr(dataset, "keys"):  # DatasetDict or dict of splits
        if "train" not in dataset:
            raise ValueError(f"the dataset has no 'train' split (splits: {list(dataset.keys())})")
        train, test = dataset["train"], (dataset["test"] if "test" in dataset else None)
    else:
        train, test = dataset, None
    if need_test and test is None:
        raise ValueError("linear_probe=True needs a 'test' split: pass a DatasetDict with train and test")
    for split, ds in (("train", train), ("test", test if need_test else None)):
        if ds is not None and len(ds) == 0:
            raise ValueError(f"the {split!r} split of {description} has no images")
    k = _num_classes(train)  # also refuses labels that are not class ids
    k = k if num_classes is None else check_num_classes(num_classes)  # 0 is an error, not "from the data"
    labels = np.asarray(train["label"], dtype=np.int64)
    outside = np.unique(labels[(labels < 0) | (labels >= k)]).tolist()
    if outside:
        given = f"num_classes={k}" if num_classes is not None else f"the label column's {k} classes"
        raise ValueError(f"the training split of {description} has labels {outside[:10]} outside 0..{k - 1} ({given}): "
                         "pass the number of classes of the data as num_classes")
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:  # NC needs every class's mean; an unused class in the label set is not a class of the task
        fix = (f"num_classes={k} is more than the data has: leave it out" if num_classes is not None and num_classes > _num_classes(train)
               else f"its label column has {k} classes: map the labels onto the classes present, 0..K'-1")
        raise ValueError(f"the training split of {description} has no image of classes {empty[:20]}; every class needs a "
                         f"training image ({fix})")
    if not need_within_class:
        return train, test, k, description
    try:  # before any forward pass: one image per class makes every NC1 0 and the ranking the input order
        check_within_class(counts)
    except ValueError as e:
        raise ValueError(f"the training split of {description}: {e}") from e
    return train, test, k, description


def _num_classes(train) -> int:
    """K of a training split: its ``ClassLabel``'s size, else ``max(label) + 1`` of integer labels."""
    if "label" not in train.features:
        raise ValueError(f"the training split has no 'label' column (columns: {train.column_names})")
    label = train.features["label"]
    if getattr(label, "num_classes", 0):
        return int(label.num_classes)
    labels = np.asarray(train["label"])
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise ValueError(f"the 'label' column must hold integer class ids, got {label}: turn class names into ids "
                         "with dataset.class_encode_column('label')")
    return int(labels.max()) + 1


def shard(ds):
    """This rank's contiguous shard (all of ``ds`` on one process): concatenated in rank order,
    the shards are ``ds`` itself."""
    rank, size = world()
    return ds if size == 1 else ds.shard(num_shards=size, index=rank, contiguous=True)


def device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        model.to(device)
    return next(model.parameters()).device


def loader(ds, model: nn.Module, batch_size: int) -> DataLoader:
    return DataLoader(shard(ds).with_transform(build_transforms(model, train=False)), batch_size=batch_size, collate_fn=collate_fn)


class _LabelTap:
    """Re-iterable batches that keep the labels of their first iteration (the NC pass)."""

    def __init__(self, batches):
        self.batches, self.passes, self.labels = batches, 0, []

    def __iter__(self):
        self.passes += 1
        for batch in self.batches:
            if self.passes == 1:
                self.labels.append(unpack_batch(batch)[1].cpu())
            yield batch


def measure(model: nn.Module, train, num_classes: int, *, layers="all", batch_size: int = 64, keep_final: bool = False,
            keep_blocks: bool = False, progress: bool = True):
    """One streamed pass over this rank's shard of ``train``: ``({layer: NCStats}, kept)``.

    ``kept`` is ``None`` unless ``keep_final`` or ``keep_blocks``: then ``{"labels": y,
    "final": x, 0: x_0, ...}`` (the blocks only with ``keep_blocks``), the pooled features
    captured by hooks in the same forward passes that feed the statistics (no extra pass),
    gathered over ranks in rank order (numpy, float32).
    """
    batches = _LabelTap(loader(train, model, batch_size))
    if not (keep_final or keep_blocks):
        return layer_nc_stats(model, batches, num_classes, layers=layers, ncc=False, progress=progress), None
    feats: dict[Any, list[torch.Tensor]] = {}

    def keep(*_):
        for key, value in recorder.pop().items():
            feats.setdefault(key, []).append(value.float().cpu())

    with LayerFeatures(model, layers=layers if keep_blocks else [], include_final=True) as recorder:
        handle = model.register_forward_hook(keep)
        try:
            stats = layer_nc_stats(model, batches, num_classes, layers=layers, ncc=False, progress=progress)
        finally:
            handle.remove()
    y = torch.cat(batches.labels).numpy() if batches.labels else np.zeros(0, np.int64)
    kept: dict[Any, np.ndarray] = {}
    for key in recorder.keys:
        x = torch.cat(feats[key]).numpy() if feats.get(key) else np.zeros((0, 0), np.float32)
        kept[key], labels = gather_rows(x, y)
    kept["labels"] = labels
    return stats, kept


def gather_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of every rank, concatenated in rank order (a no-op on one process)."""
    if not is_distributed():
        return x, y
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (x, y))
    parts = [p for p in parts if len(p[1])]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit_probe(xtr, ytr, xte, yte, *, C: float = 1.0, max_iter: int = 2000) -> dict:
    """:func:`hf_nc.probe.linear_probe`'s classifier (standardised lbfgs logistic regression) on
    given features; fitted on rank 0 and broadcast, so every rank returns the same dict."""
    result = [None]
    if world()[0] == 0:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter)).fit(xtr, ytr)
        result = [{
            "train_accuracy": float(np.mean(clf.predict(xtr) == ytr)),
            "test_accuracy": float(np.mean(clf.predict(xte) == yte)),
            "num_train": int(len(ytr)),
            "num_test": int(len(yte)),
            "dim": int(xtr.shape[1]),
        }]
    if is_distributed():
        dist.broadcast_object_list(result, src=0)
    return result[0]


def relative_variation(stats: NCStats) -> float:
    """tr(Sigma_T) / mean ||h||^2: how much the features vary over the data, relative to their
    size (0 for constant features; about 1e-14 when they differ only by float32 rounding)."""
    n = stats.counts.sum()
    total = stats.sums.sum(dim=0)  # sum of (h - c)
    var = (torch.trace(stats.second) - total.dot(total) / n) / n
    energy = torch.trace(stats.second) / n + 2 * stats.shift.dot(total) / n + stats.shift.dot(stats.shift)
    energy = float(energy)
    return float(var.clamp_min(0)) / energy if energy > 0 else 0.0


def compute(stats: NCStats, degenerate_tol: float) -> tuple[dict, str]:
    """NC metrics (no nc3: a pre-trained head is not the downstream classifier) and a note:
    ``""`` when NC1 is meaningful, else why not (NC1 is then reported as NaN)."""
    metrics = stats.compute()
    metrics["relative_variation"] = relative_variation(stats)
    if metrics["relative_variation"] <= degenerate_tol:
        metrics["nc1"] = float("nan")
        return metrics, (f"features (nearly) constant over the data (relative variation "
                         f"{metrics['relative_variation']:.2g} <= {degenerate_tol:g}): NC1 undefined")
    if not math.isfinite(metrics["nc1"]):
        return metrics, "class means coincide (Sigma_B = 0): NC1 undefined"
    return metrics, ""
