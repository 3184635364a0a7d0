"""The recipes' arguments: the hf-nc option groups, ``RecipeTrainingArguments`` and ``parse``.

``ModelArguments``, ``DataArguments`` and ``MethodArguments`` are the hf-nc groups of the command
line (their ``Literal`` fields are checked for JSON/YAML configs too); ``RecipeTrainingArguments``
is ``TrainingArguments`` with defaults for a short CPU run; :func:`parse` reads the four from the
command line or from one ``.json`` / ``.yaml`` file.
"""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import Field, dataclass, field, fields
from typing import Literal, Optional, Union

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

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


def int_arg(value: str, flag: str) -> int:
    """``int(value)``, or an error naming ``flag`` (a block or head index given on the command line)."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag}: {value!r} is not an integer index") from None


def check_sample_count(n: Optional[int], flag: str) -> None:
    """A ``--max_*_samples`` style count: ``None`` (every image) or >= 1; 0 or less is an error naming ``flag``."""
    if n is not None and n < 1:
        raise ValueError(f"{flag} must be >= 1 (leave it out to use every image), got {n}")


def split_list(value: str, flag: str) -> list[str]:
    """``"q, v"`` -> ``["q", "v"]``: a comma-separated flag, spaces and empty items dropped; an empty list is an error."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{flag} needs at least one comma-separated value, got {value!r}")
    return items


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
    nc_train_samples: Optional[int] = field(default=None, metadata={"help": (
        "Training images (seeded, stratified subset, no augmentation) measured for train NC at each evaluation "
        "(NCTrainer's nc_train_samples): a positive value must be at least the number of classes; 0: no train NC; "
        "-1: all training images; default: 512, or 2 per class with more than 256 classes.")})
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

    def __post_init__(self):
        super().__post_init__()
        for name, owner in METHOD_FLAGS.items():
            value = getattr(self, name)
            if owner != self.method and value != type(self).__dataclass_fields__[name].default:
                hint = " (Layer FT's blocks are --layers)" if name == "layer" and self.method == "layer" else ""
                raise ValueError(f"--{name} {value} applies to --method {owner} only, not --method {self.method}: it would "
                                 f"be ignored{hint}")


#: The method-specific flags of ``MethodArguments`` and the method that reads each: any other method would
#: silently ignore them (``--method layer --layer 3`` tuned block -1, the ``--layers`` default).
METHOD_FLAGS = {"layers": "layer", "part": "layer", "layer": "scl", "scl_combine": "scl", "scl_position": "scl",
                "scl_skip_source": "scl", "heads": "heads", "head_projections": "heads", "lora_r": "lora",
                "lora_alpha": "lora", "lora_dropout": "lora", "lora_target_modules": "lora"}


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


def nc_train_samples_for(value: Optional[int], num_classes: int) -> int:
    """``--nc_train_samples`` as NCTrainer takes it: unset -> 512, or 2 per class with more than 256
    classes (a fixed 512 cannot hold one image of each of ImageNet's 1000); -1 (all) and others as given."""
    return max(512, 2 * num_classes) if value is None else value
