"""The card of a checkpoint pre-trained by ``recipes/pretrain_vit.py`` (and of the shipped built-in one)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ._adapter import AUTO_LOADER
from ._common import dataset_text, hub_dataset_id, install_command, is_local_path, render_card


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pretrained_card(
    record: Mapping[str, Any],
    title: str,
    *,
    template: str | os.PathLike = "pretrained_vit_card.md",
    name: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    source_url: str | None = None,
    **values: Any,
) -> ModelCard:
    """The model card of a ViT pre-trained by ``recipes/pretrain_vit.py``, from its ``history.json`` record.

    Metadata: ``library_name: transformers``, ``pipeline_tag: image-classification``, tags, ``datasets``
    (the source dataset's Hub id when it has one: ``fashion_mnist`` -> ``zalando-datasets/fashion_mnist``;
    ``digits`` and local folders are not listed), and a model-index with the final test accuracy and the
    source NC metrics (on the fixed training subset, split ``train``). Body: the template's, with the training
    settings, the NC history table, the install command and how adapters trained on the checkpoint load
    (``import hf_nc`` + ``hf_nc.AutoPeftModelForImageClassification``).

    Args:
        record: what ``recipes/pretrain_vit.py`` writes to ``history.json`` (``args``, ``history``,
            ``class_names``, ``num_train``, ``num_test``, ``num_nc_samples``, ``steps``, ``num_processes``,
            ``wall_time_s``, ``test_accuracy``, ``command``, ``versions``).
        title: the card's title and model-index name.
        template: a template file name in ``hf_nc/cards/templates`` or a path (the shipped checkpoint's card
            uses ``model_cards/templates/hf-nc-tiny-vit-fmnist.md``).
        name: how loading snippets name the checkpoint (default: ``title``).
        license: Hub ``license``.
        tags: more Hub tags.
        source_url: git URL of hf-nc's source for the install command (see ``install_command``).
        **values: more template values (``extra`` is appended by the default template).

    Returns:
        the ``huggingface_hub.ModelCard``.
    """
    a, history = record["args"], list(record["history"])
    dataset = a["data"]["dataset"]
    hub_dataset = hub_dataset_id(dataset)
    last = history[-1] if history else {"nc": {}}
    results = []
    ds_type = hub_dataset or ("imagefolder" if is_local_path(dataset) else dataset)
    ds_name = hub_dataset or ("local image folder" if is_local_path(dataset) else dataset)

    def result(split: str, metric: str, value: Any, pretty: str) -> None:
        if _finite(value):
            results.append(EvalResult(task_type="image-classification", task_name="Image Classification",
                                      dataset_type=ds_type, dataset_name=ds_name, dataset_split=split,
                                      metric_type=metric, metric_value=value, metric_name=pretty))

    result("test", "accuracy", record.get("test_accuracy"), "Accuracy (test)")
    for metric, pretty in (("nc1", "NC1"), ("nc2_etf", "NC2-ETF"), ("ncc_acc", "NCC accuracy")):
        result("train", metric, last["nc"].get(metric), f"{pretty} (train subset)")
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=list(dict.fromkeys(["hf-nc", "vit", "neural-collapse", "image-classification", *tags])),
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["accuracy"] if results and results[0].metric_type == "accuracy" else None,
        model_name=title if results else None,
        eval_results=results or None,
    )
    rows = [(e["epoch"], e.get("step", 0), f"{e['nc']['nc1']:.4f}", f"{e['nc']['nc2_etf']:.4f}",
             "-" if e.get("test_accuracy") is None else f"{e['test_accuracy']:.4f}") for e in history]
    return render_card(
        template, data,
        title=title, name=name or title, record=record, args=a, history=history, last=last, rows=rows,
        dataset=dataset, dataset_text=dataset_text(dataset) or f"`{dataset}`",
        classes=a["data"].get("classes") or "all", install=install_command(source_url), auto_loader=AUTO_LOADER,
        versions=", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()),
        **values,
    )
