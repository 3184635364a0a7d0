"""Shared by ``finetune_vit.py`` and ``finetune_clip.py``: arguments, methods, data, run, summary.

Each recipe only says how to load its model; everything else (``--method`` and its options, the
data and its validation split, ``NCTrainer``, the summary table and JSON, ``--push_to_hub``)
lives here.

Model selection never sees the test split: evaluation during training (and so
``--load_best_model_at_end``, ``--metric_for_best_model``, early stopping) runs on the
``validation`` split, and the test split is evaluated once, after training.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import typing
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal, Optional, Union

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.utils import logging as hf_logging

import hf_nc  # noqa: F401  (registers the hf-nc PEFT methods)
from hf_nc.backbones import resolve_backbone
from hf_nc.data import build_transforms, collate_fn, load_image_dataset
from hf_nc.trainer import TRAIN_SUBSET_PREFIX, NCTrainer  # train-subset NC keys: eval_train_subset_nc1, ...

logger = hf_logging.get_logger("hf_nc.recipes")

Method = Literal["linear_probe", "full", "lora", "layer", "scl", "heads"]
METHODS: tuple[str, ...] = typing.get_args(Method)
Augment = Literal["none", "crop", "flip", "crop,flip"]
Part = Literal["block", "attention", "mlp"]
SCLCombine = Literal["add", "concat"]
SCLPosition = Literal["pre_norm", "post_norm"]
SCLSkipSource = Literal["delta", "features"]

#: Default learning rate per method (``--learning_rate`` unset). From the transfer study's pilot
#: (``recipes/study/plan.py``, tiny ViT, 10-shot digits): the new head and small adapters want a
#: high LR, the whole pre-trained backbone a 10x lower one. For large pre-trained backbones
#: (ViT-B, DINOv2) pass ~10-30x lower values (the study used 3e-5 for DINOv2-S full FT).
DEFAULT_LEARNING_RATES = {"linear_probe": 1e-2, "full": 1e-3, "lora": 3e-3, "layer": 3e-3, "scl": 3e-3, "heads": 3e-3}
#: ``full`` with a new head: the head's learning rate is this times ``--learning_rate`` (a new,
#: randomly initialised head next to a pre-trained backbone), unless ``--head_learning_rate`` is set.
FULL_NEW_HEAD_LR_FACTOR = 10.0
#: ``--num_train_epochs`` unset: at least this many epochs, and more when needed for ``--min_train_steps``.
DEFAULT_MIN_EPOCHS = 6

HELP_INTRO = (
    "hf-nc options come first (groups 'hf-nc model', 'hf-nc data', 'hf-nc method and budget'); then come "
    "transformers' TrainingArguments (--learning_rate, --num_train_epochs, --bf16, ...). A single .json or "
    ".yaml/.yml argument is read as a config file with the same keys."
)


class _Validated:
    """Checks ``Literal`` fields in ``__post_init__``: JSON/YAML configs skip argparse's ``choices``."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            kind = hints[f.name]
            if typing.get_origin(kind) is Union:  # Optional[Literal[...]]
                kind = next((a for a in typing.get_args(kind) if typing.get_origin(a) is Literal), kind)
            if typing.get_origin(kind) is Literal:
                value, allowed = getattr(self, f.name), typing.get_args(kind)
                if value is not None and value not in allowed:
                    raise ValueError(f"{f.name}={value!r} is not one of {', '.join(map(repr, allowed))}")


@dataclass
class ModelArguments(_Validated):
    _argument_group_name = "hf-nc model"

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Local folder or Hub id; default: the recipe's built-in model."})
    reset_head: Optional[bool] = field(default=None, metadata={"help": "Re-initialise the classifier (default: when the checkpoint's own labels differ from the data's)."})


@dataclass
class DataArguments(_Validated):
    _argument_group_name = "hf-nc data"

    dataset: str = field(default="digits", metadata={"help": "Built-in set (digits, fashion_mnist), local folder or Hub dataset."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (detected if unset)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (detected if unset)."})
    classes: Optional[str] = field(default=None, metadata={"help": "Comma-separated classes (ids or names) to keep."})
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "Few-shot: a stratified, seeded subset of the training split."})
    train_val_split: float = field(default=0.15, metadata={"help": (
        "Fraction of the training images held out as the validation split (seeded, stratified) when the dataset has "
        "none; with --shots_per_class they come from the training images OUTSIDE the few-shot subset, so the "
        "few-shot training set is unchanged. Evaluation during training and all model selection use validation; "
        "the test split is evaluated once, at the end. 0: no validation split (no evaluation during training).")})
    validation_shots_per_class: Optional[int] = field(default=None, metadata={"help": (
        "Validation images per class instead of --train_val_split (drawn like it; a dataset's own validation "
        "split is subsampled to this).")})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Seeded, stratified subset of this many training images (after --shots_per_class)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Seeded, stratified subset of this many images of the validation and of the test split."})
    augment: Augment = field(default="none", metadata={"help": "Training augmentation."})
    image_size: Optional[int] = field(default=None, metadata={"help": (
        "Feed the model IMAGE_SIZE px images instead of its own size (e.g. 56 for a 224 px backbone on 28 px "
        "images: ~16x cheaper); position embeddings are interpolated.")})
    nc_train_samples: Optional[int] = field(default=512, metadata={"help": (
        "Training images (seeded, stratified subset, no augmentation) measured for train NC at each evaluation "
        "(NCTrainer's nc_train_samples): a positive value must be at least the number of classes; 0: no train NC; "
        "-1: all training images.")})
    nc_layers: bool = field(default=False, metadata={"help": "Also log NC1 of every block at each evaluation."})


@dataclass
class MethodArguments(_Validated):
    _argument_group_name = "hf-nc method and budget"

    method: Method = field(default="scl", metadata={"help": "What to train."})
    layers: str = field(default="-1", metadata={"help": "layer: comma-separated blocks to tune (negative from the end)."})
    part: Part = field(default="block", metadata={"help": "layer: the part of each block to tune."})
    layer: int = field(default=-6, metadata={"help": "scl: the tuned block with the skip connection (default: the middle block of 12)."})
    scl_combine: SCLCombine = field(default="add", metadata={"help": "scl: how the skip joins the final features."})
    scl_position: SCLPosition = field(default="pre_norm", metadata={"help": "scl: before or after the final norm."})
    scl_skip_source: SCLSkipSource = field(default="delta", metadata={"help": "scl: what the skip carries."})
    heads: str = field(default="-1:all", metadata={"help": "heads: 'block:h,h;block:all', e.g. '11:0,1' or '-1:all;-2:0,3'."})
    head_projections: str = field(default="q,k,v,o", metadata={"help": "heads: projections that get deltas."})
    lora_r: int = field(default=8, metadata={"help": "lora: rank."})
    lora_alpha: int = field(default=16, metadata={"help": "lora: alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora: dropout."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "lora: comma-separated module names."})
    train_head: bool = field(default=True, metadata={"help": "Train the classifier too (all methods but full train it anyway)."})
    head_learning_rate: Optional[float] = field(default=None, metadata={"help": (
        f"Learning rate of the classifier (its own optimizer param group). Default: --learning_rate, except "
        f"for full with a new head: {FULL_NEW_HEAD_LR_FACTOR:g} x --learning_rate.")})
    cache_frozen_prefix: bool = field(default=False, metadata={"help": (
        "layer, scl, heads, linear_probe: run the frozen blocks below the first tuned block once per training (and "
        "validation) image and train from the cached states: the same losses and metrics, faster at late blocks. "
        "Falls back to uncached training with a warning where it would not be exact (--augment, dropout in the "
        "frozen blocks, an unfrozen prefix such as --method full).")})
    cache_memory_budget: str = field(default="4GB", metadata={"help": (
        "--cache_frozen_prefix: largest cache kept in RAM; a larger one is a memory-mapped file in a temporary folder.")})
    min_train_steps: int = field(default=200, metadata={"help": (
        f"With --num_train_epochs unset: train max({DEFAULT_MIN_EPOCHS}, enough epochs for this many optimizer steps) "
        "epochs, so a few-shot run gets a real budget (10 shots x 10 classes at batch 64 would be 2 steps per "
        "epoch). 0: just the minimum epochs. --max_steps overrides both.")})


def training_default(name: str, value, help: Optional[str] = None) -> Field:
    """A ``TrainingArguments`` field with another default (same help text on the command line)."""
    metadata = dict(TrainingArguments.__dataclass_fields__[name].metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=value, metadata=metadata)


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """``TrainingArguments`` whose defaults suit a short CPU run of a recipe.

    A real module-level class (each recipe subclasses it with its own ``output_dir``): the Trainer
    pickles the arguments into every checkpoint (``training_args.bin``). ``learning_rate`` and
    ``num_train_epochs`` default to ``None``: the recipe then picks them from the method and the
    data (:data:`DEFAULT_LEARNING_RATES`, ``--min_train_steps``) and records them in ``summary.json``.
    """

    _argument_group_name = "TrainingArguments (transformers)"

    output_dir: Optional[str] = training_default("output_dir", "outputs/finetune")
    num_train_epochs: Optional[float] = training_default("num_train_epochs", None, help=(
        "Epochs. Default: chosen from the data (see --min_train_steps)."))
    learning_rate: Optional[float] = training_default("learning_rate", None, help=(
        "Peak learning rate (AdamW, cosine schedule). Default per --method: "
        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LEARNING_RATES.items()) + "."))
    per_device_train_batch_size: int = training_default("per_device_train_batch_size", 64)
    per_device_eval_batch_size: int = training_default("per_device_eval_batch_size", 256)
    eval_strategy: Union[IntervalStrategy, str] = training_default("eval_strategy", "epoch")
    save_strategy: Union[SaveStrategy, str] = training_default("save_strategy", "no")
    logging_strategy: Union[IntervalStrategy, str] = training_default("logging_strategy", "epoch")
    lr_scheduler_type: Union[SchedulerType, str] = training_default("lr_scheduler_type", "cosine")
    warmup_steps: float = training_default("warmup_steps", 0.05)
    weight_decay: float = training_default("weight_decay", 0.0)
    remove_unused_columns: bool = training_default("remove_unused_columns", False)
    report_to: Union[None, str, list[str]] = training_default("report_to", "none")
    dataloader_num_workers: int = training_default("dataloader_num_workers", 0)
    dataloader_pin_memory: bool = training_default("dataloader_pin_memory", torch.cuda.is_available())
    use_cpu: bool = training_default("use_cpu", not torch.cuda.is_available())
    seed: int = training_default("seed", 0)


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def parse(training_cls: type, argv: Optional[list[str]]):
    """The four argument dataclasses from the command line, or from one ``.json`` / ``.yaml`` file.

    Raises:
        ValueError: a config file with an unknown key or a value outside a field's choices (the
            command line reports those through argparse, with the choices).
    """
    if not torch.cuda.is_available():  # CPU: Accelerate/Trainer go multi-process (gloo) only with use_cpu
        os.environ["ACCELERATE_USE_CPU"] = "true"  # also over a launcher's "False"
    parser = HfArgumentParser((ModelArguments, DataArguments, MethodArguments, training_cls), description=HELP_INTRO)
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 1 and args[0].endswith(CONFIG_SUFFIXES):
        path = os.path.abspath(args[0])
        try:
            if path.endswith(".json"):
                return tuple(parser.parse_json_file(path))
            return tuple(parser.parse_yaml_file(path))
        except (ValueError, TypeError) as e:
            raise ValueError(f"config {args[0]}: {e}") from e
    return tuple(parser.parse_args_into_dataclasses(args=args))


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RecipeData:
    """The recipe's splits, their class names, and how each split was made (for the log and summary)."""

    train: Dataset
    test: Dataset
    names: list[str]
    validation: Optional[Dataset] = None
    provenance: dict[str, str] = field(default_factory=dict)


def subset(ds: Dataset, n: Optional[int], seed: int, flag: str) -> Dataset:
    """``hf_nc.data.stratified_subset`` (seeded, stratified ``n`` of ``ds``), errors naming ``flag``."""
    from hf_nc.data import stratified_subset

    try:
        return stratified_subset(ds, n or None, seed=seed)
    except ValueError as e:
        raise ValueError(f"{flag} {n}: {e}") from e


def load_data(dargs: DataArguments, seed: int) -> RecipeData:
    """The splits of ``--dataset`` after ``--classes``, ``--shots_per_class``, the validation draw and ``--max_*_samples``.

    The validation split is the dataset's own, else (``--train_val_split`` /
    ``--validation_shots_per_class``) a seeded, stratified draw of training images outside the
    few-shot subset. ``--max_train_samples`` / ``--max_eval_samples`` take seeded, stratified
    subsets (an image folder is sorted by class: its first N images are one or two classes).
    """
    from hf_nc.data import split_provenance

    classes = [c.strip() for c in dargs.classes.split(",")] if dargs.classes else None
    if dargs.train_val_split and not 0.0 <= dargs.train_val_split < 1.0:
        raise ValueError(f"--train_val_split must be in [0, 1), got {dargs.train_val_split}")
    validation = {}
    if dargs.validation_shots_per_class:
        validation["validation_shots_per_class"] = dargs.validation_shots_per_class
    elif dargs.train_val_split:
        validation["validation_split"] = dargs.train_val_split
    data = load_image_dataset(dargs.dataset, image_column=dargs.image_column, label_column=dargs.label_column,
                              shots_per_class=dargs.shots_per_class, classes=classes, seed=seed, **validation)
    provenance = dict(split_provenance(data))
    splits = {}
    for split, flag, n in (("train", "--max_train_samples", dargs.max_train_samples), ("validation", "--max_eval_samples", dargs.max_eval_samples),
                           ("test", "--max_eval_samples", dargs.max_eval_samples)):
        if split in data:
            splits[split] = subset(data[split], n, seed, flag)
            if len(splits[split]) < len(data[split]):
                provenance[split] = f"{provenance.get(split, split)}; {flag} {n}: seeded (seed {seed}) stratified subset"
    train, test, val = splits["train"], splits["test"], splits.get("validation")
    # a train-only folder split off into test is logged by load_image_dataset; every split's origin is in the summary
    return RecipeData(train=train, test=test, names=list(train.features["label"].names), validation=val, provenance=provenance)


# ---------------------------------------------------------------------------------------------- model
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
    return with_image_size(spec, image_size) if image_size else spec


def interpolate_positions(model: nn.Module) -> int:
    """Makes every patch embedding that takes ``interpolate_pos_encoding`` (ViT, CLIP) always interpolate; returns how many.

    For ``--image_size``: every forward pass (training, evaluation, NCTrainer's train-subset pass)
    then accepts the new size. DINOv2 always interpolates and needs nothing. A hook on the module,
    not a saved setting: a reloaded model needs ``interpolate_pos_encoding=True`` in its calls.
    """
    import inspect

    def always(module, args, kwargs):
        return args, {**kwargs, "interpolate_pos_encoding": True}

    count = 0
    for m in model.modules():
        if type(m).__name__.endswith("Embeddings") and "interpolate_pos_encoding" in inspect.signature(m.forward).parameters:
            m.register_forward_pre_hook(always, with_kwargs=True)
            count += 1
    return count


def resized_processor(processor, spec):
    """``processor`` with the size overrides of ``spec`` (``--image_size``) applied, to save next to the model."""
    import copy

    if not spec.processor_kwargs:
        return processor
    out = copy.deepcopy(processor)
    for key, value in spec.processor_kwargs:
        setattr(out, key, value)
    return out


# ---------------------------------------------------------------------------------------------- methods
def parse_heads(spec: str) -> dict:
    """``"11:0,1;-2:all"`` -> ``{11: [0, 1], -2: "all"}``."""
    heads = {}
    for part in filter(None, (p.strip() for p in spec.replace(" ", ";").split(";"))):
        block, _, chosen = part.partition(":")
        heads[int(block)] = "all" if chosen.strip() in ("", "all") else [int(h) for h in chosen.split(",")]
    return heads


def peft_config(method: MethodArguments, classifier_path: Optional[str]):
    """The PEFT config of ``--method`` (``None`` for linear_probe and full)."""
    if method.method == "layer":
        return hf_nc.LayerFTConfig(layers=[int(i) for i in method.layers.split(",")], part=method.part, train_head=method.train_head)
    if method.method == "scl":
        return hf_nc.SCLConfig(layer=method.layer, combine=method.scl_combine, position=method.scl_position,
                               skip_source=method.scl_skip_source, train_head=method.train_head)
    if method.method == "heads":
        return hf_nc.HeadFTConfig(heads=parse_heads(method.heads), projections=method.head_projections.split(","),
                                  train_head=method.train_head)
    if method.method == "lora":
        from peft import LoraConfig

        save = [classifier_path] if method.train_head and classifier_path else None
        return LoraConfig(r=method.lora_r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
                          target_modules=[m.strip() for m in method.lora_target_modules.split(",")], modules_to_save=save)
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
        blocks = ",".join(str(block(int(i))) for i in method.layers.split(","))
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


def save_trained(model: nn.Module, method: str, folder: Path, processor=None, card=None) -> int:
    """Saves what the method trained (and the image processor); returns the bytes written.

    PEFT methods: the adapter. full: the whole model. linear_probe: only the classifier
    (``classifier.safetensors``) and the config, since everything else is the base model. The
    image processor (``preprocessor_config.json``) goes into the folder too, so
    ``pipeline("image-classification", ..., image_processor=folder)`` preprocesses as trained;
    an adapter's ``card`` (``hf_nc.cards``) becomes its README.md instead of PEFT's blank template.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if method == "linear_probe":
        backbone = resolve_backbone(model)
        tensors = {f"{backbone.classifier_path}.{k}": v.detach().contiguous() for k, v in backbone.classifier.state_dict().items()}
        save_file(tensors, folder / "classifier.safetensors")
        model.config.save_pretrained(folder)
    elif card is not None:
        from hf_nc import cards

        cards.save_adapter(model, folder, card)
    else:
        model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------- training
class RecipeTrainer(NCTrainer):
    """``NCTrainer`` whose classifier gets its own learning rate (an optimizer param group)."""

    def __init__(self, *args, head_learning_rate: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.head_learning_rate is None or self.head_learning_rate == self.args.learning_rate:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        head = {id(p) for p in resolve_backbone(self.model).classifier.parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = group["params"]
            for chosen, extra in (([p for p in params if id(p) not in head], {}),
                                  ([p for p in params if id(p) in head], {"lr": self.head_learning_rate})):
                if chosen:
                    groups.append({**{k: v for k, v in group.items() if k != "params"}, **extra, "params": chosen})
        optimizer.param_groups.clear()  # nothing has stepped yet: no state to move
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer


def compute_accuracy(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def final_validation_metrics(trainer: NCTrainer) -> dict:
    """Validation metrics of the final model: the last evaluation if it ran at the final step, else a new one."""
    if not trainer.args.load_best_model_at_end:
        for entry in reversed(trainer.state.log_history):
            if "eval_accuracy" in entry:
                if entry.get("step") == trainer.state.global_step:
                    return entry
                break
    return trainer.evaluate()


def train_subset_metric(metrics: dict, name: str) -> float:
    """A train-subset NC metric from ``evaluate()``'s output, under the trainer's key for it."""
    return metrics.get(f"{TRAIN_SUBSET_PREFIX}_{name}", float("nan"))


def plan_budget(targs: TrainingArguments, method: MethodArguments, num_train: int, head_reset: Optional[bool]) -> dict:
    """Fills in the learning rate(s) and epochs left unset (see ``--learning_rate``, ``--min_train_steps``); returns them."""
    if targs.learning_rate is None:
        targs.learning_rate = DEFAULT_LEARNING_RATES[method.method]
    head_lr = method.head_learning_rate
    if head_lr is None and method.method == "full" and head_reset:
        head_lr = FULL_NEW_HEAD_LR_FACTOR * targs.learning_rate
    per_step = targs.per_device_train_batch_size * targs.world_size * targs.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(num_train / max(1, targs.per_device_train_batch_size * targs.world_size))
                          // targs.gradient_accumulation_steps)
    if targs.num_train_epochs is None and targs.max_steps > 0:
        targs.num_train_epochs = float(DEFAULT_MIN_EPOCHS)  # unused: max_steps decides
    elif targs.num_train_epochs is None:
        targs.num_train_epochs = float(max(DEFAULT_MIN_EPOCHS, math.ceil(method.min_train_steps / steps_per_epoch)))
        logger.warning("num_train_epochs=%g (%d optimizer steps per epoch; --min_train_steps %d)", targs.num_train_epochs,
                       steps_per_epoch, method.min_train_steps)
    steps = targs.max_steps if targs.max_steps > 0 else int(steps_per_epoch * targs.num_train_epochs)
    return {"learning_rate": targs.learning_rate, "head_learning_rate": head_lr if head_lr is not None else targs.learning_rate,
            "num_train_epochs": targs.num_train_epochs, "planned_steps": steps, "steps_per_epoch": steps_per_epoch,
            "per_device_train_batch_size": targs.per_device_train_batch_size, "global_batch_size": per_step,
            "gradient_accumulation_steps": targs.gradient_accumulation_steps, "num_processes": targs.world_size,
            "seed": targs.seed, "max_steps": targs.max_steps, "lr_scheduler_type": str(getattr(targs.lr_scheduler_type, "value", targs.lr_scheduler_type)),
            "warmup_steps": targs.warmup_steps, "weight_decay": targs.weight_decay, "bf16": targs.bf16, "fp16": targs.fp16}


def _fsdp_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(getattr(o, "value", o)) for o in value)
    return str(value)


def resume_path(targs: TrainingArguments) -> Optional[str]:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``last`` / ``true`` for the newest one in ``output_dir``."""
    value = targs.resume_from_checkpoint
    if value is None or str(value).lower() not in ("last", "true"):
        return value
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(targs.output_dir) if os.path.isdir(targs.output_dir) else None
    if last is None:
        raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {targs.output_dir}")
    return last


def check_fsdp(trainer: NCTrainer) -> None:
    """``--fsdp`` that the Trainer did not turn on (e.g. on CPU, where transformers trains with plain DDP) is an error."""
    if trainer.args.fsdp and not getattr(trainer, "is_fsdp_enabled", False):
        raise ValueError(
            f"--fsdp ({_fsdp_text(trainer.args.fsdp)}) was given, but the Trainer did not "
            "enable FSDP (transformers does not use FSDP on CPU; the run would silently be plain DDP). Run on GPUs, or "
            "launch with `accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml` and no --fsdp flag, or "
            "drop --fsdp.")


def versions() -> dict:
    import peft
    import transformers

    return {"hf_nc": getattr(hf_nc, "__version__", "unknown"), "transformers": transformers.__version__, "peft": peft.__version__,
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------- summary
COLUMNS = ("method", "tuned", "trainable", "% of base", "adapter bytes", "val acc", "test acc", "train NC1", "val NC1",
           "test NC1", "steps", "wall s")


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_summary(s: dict) -> str:
    cells = (s["method"], s["tuned"], f"{s['trainable_params']:,}", f"{s['trainable_percent']:.2f}", f"{s['adapter_bytes']:,}",
             _num(s["validation_accuracy"], ".4f"), _num(s["test_accuracy"], ".4f"), _num(s["train_nc1"], ".4g"),
             _num(s["validation_nc1"], ".4g"), _num(s["test_nc1"], ".4g"), str(s["settings"]["optimizer_steps"]),
             f"{s['wall_time_s']:.1f}")
    widths = [max(len(c), len(v)) for c, v in zip(COLUMNS, cells)]
    line = lambda row: " | ".join(v.rjust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), "-+-".join("-" * w for w in widths), line(cells)])


def adapter_card(model, summary: dict, dataset: str, repo_id: Optional[str], metrics: dict):
    """The hf-nc model card of a PEFT adapter (``hf_nc.cards``): validation and test results, the loading snippet."""
    from hf_nc import cards
    from hf_nc.data.builtin import BUILTIN_NAMES

    hub_dataset = None if Path(dataset).exists() or dataset.lower() in BUILTIN_NAMES else dataset  # only Hub datasets
    per_split = {split: {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                 for split, values in metrics.items() if values}
    load_kwargs = {"num_labels": summary["num_labels"], "ignore_mismatched_sizes": True}
    return cards.adapter_card_from_model(model, metrics=per_split, dataset=hub_dataset, load_kwargs=load_kwargs,
                                         repo_id=repo_id)  # repo_id None: push_adapter fills it in


def push(model, method: MethodArguments, targs: TrainingArguments, card=None, processor=None) -> str:
    """Pushes the adapter (PEFT methods, with its hf-nc ``card``) or the model, and the image processor.

    An adapter, its card and the image processor go in one commit (``hf_nc.cards.push_adapter``); a full model is
    pushed by ``push_to_hub``, then its image processor.
    """
    repo_id = targs.hub_model_id or Path(targs.output_dir).name
    kwargs = dict(private=bool(targs.hub_private_repo), token=targs.hub_token)
    if hasattr(model, "peft_config"):
        from hf_nc import cards

        # with the image processor: pipeline(..., image_processor=repo_id) preprocesses as trained
        return cards.push_adapter(model, repo_id, card, private=kwargs["private"], token=kwargs["token"], image_processor=processor)
    url = model.push_to_hub(repo_id, commit_message=f"hf-nc {method.method} fine-tuning", **kwargs).commit_url
    if processor is not None:  # pipeline("image-classification", model=repo_id) needs it
        processor.push_to_hub(repo_id, commit_message="image processor", **kwargs)
    return url


def check_push(targs: TrainingArguments) -> str:
    """What ``--push_to_hub`` needs, checked before training: returns the repo id, or raises.

    Offline mode, the token, the repo id's syntax, and (online) that the token is accepted, so a
    push that cannot succeed fails in seconds instead of after the whole run.

    Raises:
        ValueError: naming what is missing.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = targs.hub_model_id or Path(targs.output_dir).name
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--push_to_hub: {repo_id!r} is not a valid Hub repo id (set --hub_model_id 'user/name'): {e}") from e
    if constants.is_offline_mode():
        raise ValueError("--push_to_hub, but the Hub is off (HF_HUB_OFFLINE=1): unset it, or train without --push_to_hub and "
                         "push output_dir/adapter later with hf_nc.cards.push_adapter")
    token = targs.hub_token or get_token()
    if not token:
        raise ValueError("--push_to_hub needs a Hub token: `hf auth login`, HF_TOKEN, or --hub_token")
    try:
        HfApi(token=token).whoami()
    except Exception as e:  # network down, token refused: both make the final push fail
        raise ValueError(f"--push_to_hub: the Hub does not accept the token ({type(e).__name__}: {e})") from e
    return repo_id


# ---------------------------------------------------------------------------------------------- run
def run(argv: Optional[list[str]], training_cls: type, load_model: Callable, default_base: Callable[[TrainingArguments], str], recipe: str) -> dict:
    """The whole recipe: parse, load, adapt, train with NCTrainer (validation), test once, summarise, save (and push)."""
    start = time.perf_counter()
    margs, dargs, method, targs = parse(training_cls, argv)
    hf_logging.set_verbosity_warning()
    if targs.push_to_hub:
        check_push(targs)  # before hours of training, not after
    base = margs.model_name_or_path or default_base(targs)
    data = load_data(dargs, targs.seed)
    train, val, test, names = data.train, data.validation, data.test, data.names
    if val is None:
        if targs.load_best_model_at_end:
            raise ValueError("--load_best_model_at_end needs a validation split (never select on test): set --train_val_split "
                             "or --validation_shots_per_class")
        if targs.eval_strategy != IntervalStrategy.NO:
            logger.warning("no validation split (--train_val_split 0): no evaluation during training; test is evaluated at the end")
            targs.eval_strategy = IntervalStrategy.NO
    set_seed(targs.seed)  # a new head is initialised at load: the same on every process and run
    model, processor = load_model(base, names, margs)
    head_reset = getattr(model, "hf_nc_head_reset", None)
    base_params = sum(p.numel() for p in model.parameters())  # trainable share: of the base model, as in the README
    num_layers = resolve_backbone(model).num_layers
    model = apply_method(model, method)
    settings = plan_budget(targs, method, len(train), head_reset)
    spec = image_spec(model, processor, dargs.image_size)
    processor = resized_processor(processor, spec)
    eval_transform = build_transforms(spec, train=False)
    train_eval_view = train.with_transform(eval_transform)
    train_view = train.with_transform(build_transforms(spec, train=True, augment=dargs.augment)) if dargs.augment != "none" else train_eval_view
    push_to_hub, targs.push_to_hub = targs.push_to_hub, False  # pushed once, at the end, with a card
    if dargs.image_size:
        interpolate_positions(model)

    train_dataset, nc_train_dataset = train_view, train_eval_view
    eval_dataset = val.with_transform(eval_transform) if val is not None else None
    if method.cache_frozen_prefix:
        from hf_nc.prefix_cache import PrefixCache

        model.to(targs.device)  # the pre-pass runs where training will (the Trainer would move it anyway)
        amp = torch.bfloat16 if targs.bf16 else torch.float16 if targs.fp16 else None
        cache_kw = dict(collate_fn=collate_fn, batch_size=targs.per_device_eval_batch_size, memory_budget=method.cache_memory_budget,
                        autocast_dtype=amp, num_workers=targs.dataloader_num_workers)
        cache = PrefixCache.build_or_none(model, train_view, **cache_kw)  # None (+ warning) with --augment etc.
        if cache is not None:
            cache.attach(model)
            train_dataset = cache
            if not dargs.nc_layers:  # per-block NC below the cut needs the blocks to run: keep images then
                nc_train_dataset = cache  # the cache refuses augmentation: train view == NC view here
                if eval_dataset is not None:
                    eval_dataset = PrefixCache.build(model, eval_dataset, **cache_kw)
    trainer = RecipeTrainer(
        model=model, args=targs, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=collate_fn, compute_metrics=compute_accuracy, processing_class=processor, nc_train_dataset=nc_train_dataset,
        nc_train_samples=dargs.nc_train_samples, nc_layers=dargs.nc_layers, nc_num_classes=len(names),
        head_learning_rate=settings["head_learning_rate"],
    )
    check_fsdp(trainer)
    trainer.train(resume_from_checkpoint=resume_path(targs))
    val_metrics = final_validation_metrics(trainer) if val is not None else {}
    test_metrics = trainer.evaluate(eval_dataset=test.with_transform(eval_transform), metric_key_prefix="test")  # once, at the end
    trainable = trainable_count(model)
    settings.update(optimizer_steps=trainer.state.global_step, epochs_run=trainer.state.epoch, image_size=list(spec.size),
                    **versions())
    summary = {
        "recipe": recipe, "method": method.method, "tuned": tuned_blocks(method, num_layers), "model": base, "dataset": dargs.dataset,
        "num_labels": len(names), "head_reset": head_reset,
        "num_images": {"train": len(train), "validation": len(val) if val is not None else 0, "test": len(test)},
        "splits": data.provenance,
        "trainable_params": trainable, "total_params": base_params, "trainable_percent": 100.0 * trainable / base_params,
        "adapter_bytes": 0,
        "validation_accuracy": val_metrics.get("eval_accuracy"), "test_accuracy": test_metrics.get("test_accuracy", float("nan")),
        "train_nc1": train_subset_metric(test_metrics, "nc1"),
        "validation_nc1": val_metrics.get("eval_nc1"), "test_nc1": test_metrics.get("test_nc1", float("nan")),
        "wall_time_s": 0.0,
        "metrics": {k: v for k, v in {**val_metrics, **test_metrics}.items()
                    if not k.endswith(("_runtime", "_per_second")) and k not in ("epoch", "step")},
        "settings": settings,
        "training_args": targs.to_dict(),  # all of them (tokens masked), to repeat the run
        "args": {"model": asdict(margs), "method": asdict(method), "data": asdict(dargs)},
    }
    summary["eval_nc1"] = summary["test_nc1"]  # the name of earlier releases (NC of the test data)
    out = Path(targs.output_dir)
    push_error = None
    if trainer.is_world_process_zero():
        card = None
        if hasattr(model, "peft_config"):
            card = adapter_card(model, summary, dargs.dataset, targs.hub_model_id if push_to_hub else None,
                                {"validation": val_metrics, "test": test_metrics})
        summary["adapter_bytes"] = save_trained(model, method.method, out / "adapter", processor, card)
        if push_to_hub:
            try:
                summary["hub_commit"] = push(model, method, targs, card, processor)
            except Exception as e:  # the run is done: keep its summary, then report the failed push
                push_error = e
                summary["hub_error"] = f"{type(e).__name__}: {e}"
        summary["wall_time_s"] = time.perf_counter() - start
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        sizes = summary["num_images"]
        print(f"\n{recipe}: {method.method} on {dargs.dataset} ({sizes['train']} train / {sizes['validation']} validation / "
              f"{sizes['test']} test images; selection on validation, test evaluated once at the end)")
        for split, how in data.provenance.items():
            print(f"  {split}: {how}")
        print(format_summary(summary))
        print(f"wrote {out / 'summary.json'}, {out / 'adapter'}, NC history and plots in {out}")
    if push_error is not None:
        raise RuntimeError(f"training finished and {out / 'summary.json'} is written, but --push_to_hub failed: {summary['hub_error']} "
                           f"(push {out / 'adapter'} again with hf_nc.cards.push_adapter)") from push_error
    return summary
