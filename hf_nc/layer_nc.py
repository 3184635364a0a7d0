"""Per-layer NC metrics of a model over a dataset: one forward pass per batch, streamed.

Each chosen block (and the ``"final"`` classifier input) gets its own :class:`NCStats`, fed
by :class:`~hf_nc.features.LayerFeatures` hooks; features are never kept. Under
``torch.distributed`` every rank streams its own shard and the statistics are summed
exactly, so the numbers equal a single-process run over all the data. A rank whose shard
is empty (fewer batches than ranks) contributes zeros and still joins every collective.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .features import FINAL, LayerFeatures, LayerKey, Layers, Pooling, forward_pixels
from .metrics import NCStats
from .metrics.distributed import default_device, is_distributed, is_main_process


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, labels)`` of a dict batch (a DataLoader's) or a pair."""
    if isinstance(batch, Mapping):
        return batch["pixel_values"], batch["labels"]
    pixel_values, labels = batch[:2]
    return pixel_values, labels


@torch.no_grad()
def _stream(model: nn.Module, recorder: LayerFeatures, batches: Iterable, on_features, progress: bool, desc: str) -> None:
    device = next(model.parameters()).device
    total = len(batches) if hasattr(batches, "__len__") else None
    for batch in tqdm(batches, desc=desc, total=total, unit="batch", disable=not (progress and is_main_process()), leave=False):
        pixel_values, labels = unpack_batch(batch)
        forward_pixels(model, pixel_values.to(device))
        for key, feats in recorder.pop().items():
            on_features(key, feats, labels.to(feats.device))


def _fill_empty_shard(stats: dict, keys: list, num_classes: int) -> dict:
    """Agree on every layer's feature size across ranks; a rank that saw no batch gets empty
    statistics of that size (it contributes zeros to the sums). Raises, on every rank alike,
    when no rank saw any data."""
    dims = torch.tensor([stats[k].dim if k in stats else 0 for k in keys], dtype=torch.int64, device=default_device())
    if is_distributed():
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)  # every rank calls it, with or without data
    if int(dims.min()) == 0:
        where = " on every process" if is_distributed() else ""
        raise ValueError(f"no batches: the dataset is empty{where}")
    for key, dim in zip(keys, dims.tolist()):
        if key not in stats:
            stats[key] = NCStats(num_classes=num_classes, dim=int(dim))
    return {key: stats[key] for key in keys}  # one order on every rank: the collectives pair up


def layer_nc_stats(
    model: nn.Module,
    batches: Iterable,
    num_classes: int,
    layers: Layers = "all",
    pooling: Pooling = None,
    ncc: bool = True,
    progress: bool = True,
) -> dict[LayerKey, NCStats]:
    """Streams NC statistics of every chosen block's pooled features (and ``"final"``).

    Args:
        model: A supported vision model; it is put in eval mode for the pass and restored.
        batches: Re-iterable batches: dicts with ``pixel_values`` and ``labels`` (a
            DataLoader), or ``(pixel_values, labels)`` pairs. Each rank passes its own shard.
        num_classes: K.
        layers: ``"all"`` or block indices (negative count from the end).
        pooling: See :class:`~hf_nc.features.LayerFeatures`.
        ncc: Also run the second pass needed for ``ncc_acc`` (a second forward pass).
        progress: Show progress bars over the batches (on by default; main process only).

    Returns:
        ``{layer: NCStats}``, reduced across processes.
    """
    was_training = model.training
    model.eval()
    stats: dict[LayerKey, NCStats] = {}

    def update(key, feats, labels):
        if key not in stats:
            stats[key] = NCStats(num_classes=num_classes, dim=feats.shape[-1])
        stats[key].update(feats, labels)

    try:
        with LayerFeatures(model, layers=layers, pooling=pooling) as recorder:
            _stream(model, recorder, batches, update, progress, "NC statistics")
            stats = _fill_empty_shard(stats, recorder.keys, num_classes)
            for s in stats.values():
                s.all_reduce()
            if ncc:
                _stream(model, recorder, batches, lambda k, f, y: stats[k].ncc_pass(f, y), progress, "nearest class centre")
                for s in stats.values():
                    s.all_reduce()
    finally:
        model.train(was_training)
    return stats


def layer_nc(model: nn.Module, batches: Iterable, num_classes: int, **kwargs) -> dict[LayerKey, dict[str, float]]:
    """Per-layer NC metrics: :func:`layer_nc_stats` then ``compute``.

    ``nc3`` is reported for ``"final"`` when the model has a linear classifier whose weight
    is ``(K, d)``. Keyword arguments go to :func:`layer_nc_stats`.
    """
    stats = layer_nc_stats(model, batches, num_classes, **kwargs)
    classifier = LayerFeatures(model, layers=[]).backbone.classifier
    weight = getattr(classifier, "weight", None)
    results = {}
    for key, s in stats.items():
        use_weight = key == FINAL and weight is not None and tuple(weight.shape) == (num_classes, s.dim)
        results[key] = s.compute(classifier_weight=weight.detach() if use_weight else None)
    return results
