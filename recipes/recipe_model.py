"""The recipes' model: loading a classifier (head reset, image processor), ``--image_size``, ``--method``, the prefix cache."""

from __future__ import annotations

import re
from typing import Optional

import torch
from recipe_args import MethodArguments, ModelArguments, int_arg, split_list
from torch import nn
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

import hf_nc  # noqa: F401  (registers the hf-nc PEFT methods)
from hf_nc.backbones import resolve_backbone
from hf_nc.data import collate_fn

logger = hf_logging.get_logger("hf_nc.recipes")


def label_maps(names: list[str]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}  # num_labels follows


def _preview(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)})" if len(names) > n else "")


def checkpoint_labels(config) -> list[str]:
    """The class names a checkpoint's config was trained with, in label order."""
    id2label = config.id2label or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]


def maybe_reset_head(model: nn.Module, names: list[str], reset: Optional[bool], trained_labels: list[str]) -> bool:
    """Re-initialises a linear classifier trained for other labels than the data's; returns whether it did.

    Args:
        model: the classifier, already loaded with a head of ``len(names)`` outputs.
        names: the data's class names, in label order.
        reset: ``True``/``False`` force it; ``None``: reset unless ``trained_labels == names``
            (a head of the same size for another task, or the same names in another order,
            would predict the wrong classes).
        trained_labels: the checkpoint's own class names (read from its config BEFORE the
            data's names are passed to ``from_pretrained``, which overwrites them).
    """
    config = model.config
    if reset is False or (reset is None and list(trained_labels) == list(names)):
        return False
    classifier = resolve_backbone(model).classifier
    if isinstance(classifier, nn.Linear):
        std = getattr(config, "initializer_range", 0.02)
        nn.init.trunc_normal_(classifier.weight, std=std)
        nn.init.zeros_(classifier.bias)
    config.id2label, config.label2id = label_maps(names)["id2label"], label_maps(names)["label2id"]
    return True


def build_processor(model: nn.Module):
    """A ViT image processor that preprocesses like the recipe, for a checkpoint that has no image processor.

    PIL backend (no torchvision): ``ViTImageProcessorPil``, or ``hf_nc.GrayscaleViTImageProcessor`` for a 1-channel
    model (``pipeline()`` feeds RGB; it converts to one channel as the recipe's transforms do).
    """
    from hf_nc.data.transforms import resolve_image_spec
    from hf_nc.processing import vit_image_processor

    spec = resolve_image_spec(model.config)  # a bare config: its image_size, mean = std = 0.5
    return vit_image_processor(spec.num_channels, do_resize=True, size={"height": spec.size[0], "width": spec.size[1]}, resample=spec.resample,
                               do_rescale=True, rescale_factor=spec.rescale_factor, do_normalize=True,
                               image_mean=list(spec.mean) * (spec.num_channels if len(spec.mean) == 1 else 1),
                               image_std=list(spec.std) * (spec.num_channels if len(spec.std) == 1 else 1))


def load_classifier(path: str, names: list[str], margs: ModelArguments):
    """``AutoModelForImageClassification`` with a head for ``names`` (re-initialised when needed), and its image processor.

    The processor is the checkpoint's own, else one built from the config (:func:`build_processor`),
    so the saved model or adapter works in ``pipeline("image-classification")`` as trained.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    trained_labels = checkpoint_labels(AutoConfig.from_pretrained(path))
    model = AutoModelForImageClassification.from_pretrained(path, ignore_mismatched_sizes=True, **label_maps(names))
    model.hf_nc_head_reset = maybe_reset_head(model, names, margs.reset_head, trained_labels)  # for the summary
    if model.hf_nc_head_reset:
        logger.warning("classifier: a new head (the checkpoint was trained for labels %s, the data has %s)",
                       _preview(trained_labels), _preview(names))
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        processor = build_processor(model)
    return model, processor


def image_spec(model: nn.Module, processor=None, image_size: Optional[int] = None):
    """What the transforms produce: the processor's size/normalisation (or ``image_size``), the model's channels."""
    from hf_nc.data.transforms import _config_channels, resolve_image_spec, spec_from_processor, with_image_size

    spec = resolve_image_spec(model) if processor is None else spec_from_processor(processor, _config_channels(model.config))
    return with_image_size(spec, image_size) if image_size is not None else spec  # 0: with_image_size says why not


def resized_processor(processor, spec):
    """``processor`` with the size overrides of ``spec`` (``--image_size``) applied, to save next to the model."""
    import copy

    if not spec.processor_kwargs:
        return processor
    out = copy.deepcopy(processor)
    for key, value in spec.processor_kwargs:
        setattr(out, key, value)
    return out


def parse_heads(spec: str) -> dict:
    """``"11:0,1;-2:all"`` -> ``{11: [0, 1], -2: "all"}``. Blocks are separated by ``;`` (or by spaces
    before the next ``block:``); spaces inside a block's head list are ignored, so ``"11:0, 1"`` is
    heads 0 and 1 of block 11. A block given twice is an error (one would silently replace the other)."""
    heads = {}
    for part in filter(None, (p.strip() for p in re.split(r";|\s+(?=-?\d+\s*:)", spec))):
        block, _, chosen = part.partition(":")
        b = int_arg(block.strip(), "--heads")
        if b in heads:
            raise ValueError(f"--heads: block {b} is given twice in {spec!r}; list its heads once, e.g. '{b}:0,1'")
        heads[b] = "all" if chosen.strip() in ("", "all") else [int_arg(h, "--heads") for h in split_list(chosen, "--heads")]
    return heads


def layer_indices(method: MethodArguments) -> list[int]:
    """``--layers "9, 11"`` -> ``[9, 11]`` (negative indices count from the end)."""
    return [int_arg(i, "--layers") for i in split_list(method.layers, "--layers")]


def peft_config(method: MethodArguments, classifier_path: Optional[str]):
    """The PEFT config of ``--method`` (``None`` for linear_probe and full)."""
    if method.method == "layer":
        return hf_nc.LayerFTConfig(layers=layer_indices(method), part=method.part, train_head=method.train_head)
    if method.method == "scl":
        return hf_nc.SCLConfig(layer=method.layer, combine=method.scl_combine, position=method.scl_position,
                               skip_source=method.scl_skip_source, train_head=method.train_head)
    if method.method == "heads":
        return hf_nc.HeadFTConfig(heads=parse_heads(method.heads), projections=split_list(method.head_projections, "--head_projections"),
                                  train_head=method.train_head)
    if method.method == "lora":
        from peft import LoraConfig

        save = [classifier_path] if method.train_head and classifier_path else None
        return LoraConfig(r=method.lora_r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
                          target_modules=split_list(method.lora_target_modules, "--lora_target_modules"), modules_to_save=save)
    return None


def apply_method(model: nn.Module, method: MethodArguments) -> nn.Module:
    """The model to train: a PeftModel, the frozen backbone with a trainable head, or the model."""
    backbone = resolve_backbone(model)
    config = peft_config(method, backbone.classifier_path)
    if config is not None:
        from peft import get_peft_model

        return get_peft_model(model, config)
    if method.method == "linear_probe":
        if backbone.classifier is None:
            raise ValueError("linear_probe needs a model with a classifier")
        model.requires_grad_(False)
        backbone.classifier.requires_grad_(True)
    return model


def tuned_blocks(method: MethodArguments, num_layers: int) -> str:
    """Which part of the backbone ``method`` trains, with block indices counted from 0 (for the table)."""
    def block(i: int) -> int:
        return i % num_layers

    if method.method == "linear_probe":
        return "head"
    if method.method == "full":
        return "all"
    if method.method == "layer":
        blocks = ",".join(str(block(i)) for i in layer_indices(method))
        return f"block {blocks}" + ("" if method.part == "block" else f" {method.part}")
    if method.method == "scl":
        return f"block {block(method.layer)} + skip"
    if method.method == "heads":
        parts = [f"{block(b)}:{'all' if h == 'all' else ','.join(map(str, h))}" for b, h in parse_heads(method.heads).items()]
        return "heads " + ";".join(parts)
    return f"LoRA r={method.lora_r} {method.lora_target_modules}"


def trainable_count(model: nn.Module) -> int:
    """Parameters the optimizer updates (a PEFT model's adapter and trained head copy)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return int(model.get_nb_trainable_parameters()[0])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cache_frozen_prefix(model: nn.Module, method: MethodArguments, targs: TrainingArguments, train_view, nc_train_dataset,
                        eval_dataset, nc_layers: bool) -> tuple:
    """``--cache_frozen_prefix``: the datasets to train and evaluate on, from a frozen-prefix cache where it is exact.

    Builds a :class:`hf_nc.prefix_cache.PrefixCache` of ``train_view`` and attaches ``model`` to it;
    without ``nc_layers`` the NC train subset and the validation data run from caches too.

    Args:
        model: the model to train (after :func:`apply_method`); moved to ``targs.device``.
        method: ``--cache_memory_budget``.
        targs: the device, the pre-pass batch size, mixed precision and the DataLoader workers.
        train_view: the training images as the Trainer would read them.
        nc_train_dataset: NCTrainer's train-subset data without a cache.
        eval_dataset: the validation data without a cache (or ``None``).
        nc_layers: ``--nc_layers``: per-block NC below the cut needs the blocks to run (images).

    Returns:
        ``(train_dataset, nc_train_dataset, eval_dataset)``: the given ones where the cache would
        not be exact (``PrefixCache.build_or_none`` warns why, e.g. ``--augment``).
    """
    from hf_nc.prefix_cache import PrefixCache, training_autocast_dtype

    train_dataset = train_view
    model.to(targs.device)  # the pre-pass runs where training will (the Trainer would move it anyway)
    cache_kw = dict(collate_fn=collate_fn, batch_size=targs.per_device_eval_batch_size, memory_budget=method.cache_memory_budget,
                    autocast_dtype=training_autocast_dtype(targs), num_workers=targs.dataloader_num_workers)
    cache = PrefixCache.build_or_none(model, train_view, **cache_kw)  # None (+ warning) with --augment etc.
    if cache is not None:
        cache.attach(model)
        train_dataset = cache
        if not nc_layers:  # per-block NC below the cut needs the blocks to run: keep images then
            nc_train_dataset = cache  # the cache refuses augmentation: train view == NC view here
            if eval_dataset is not None:
                eval_dataset = PrefixCache.build(model, eval_dataset, **cache_kw)
    return train_dataset, nc_train_dataset, eval_dataset
