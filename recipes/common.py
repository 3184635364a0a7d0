"""Shared by ``finetune_vit.py`` and ``finetune_clip.py``: arguments, methods, data, run, summary.

Each recipe only says how to load its model; everything else (``--method`` and its options, the
data, ``NCTrainer``, the summary table and JSON, ``--push_to_hub``) lives here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import Field, asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.utils import logging as hf_logging

import hf_nc  # noqa: F401  (registers the hf-nc PEFT methods)
from hf_nc.backbones import resolve_backbone
from hf_nc.data import build_transforms, collate_fn, load_image_dataset, stratified_indices
from hf_nc.trainer import NCTrainer

logger = hf_logging.get_logger("hf_nc.recipes")

METHODS = ("linear_probe", "full", "lora", "layer", "scl", "heads")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Local folder or Hub id; default: the recipe's built-in model."})
    reset_head: Optional[bool] = field(default=None, metadata={"help": "Re-initialise the classifier (default: when the checkpoint's labels differ from the data's)."})


@dataclass
class DataArguments:
    dataset: str = field(default="digits", metadata={"help": "Built-in set (digits, fashion_mnist), local folder or Hub dataset."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (detected if unset)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (detected if unset)."})
    classes: Optional[str] = field(default=None, metadata={"help": "Comma-separated classes (ids or names) to keep."})
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "Few-shot: a stratified, seeded subset of the training split."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Seeded, stratified subset of this many training images (after --shots_per_class)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Seeded, stratified subset of this many test images (and validation images)."})
    augment: str = field(default="none", metadata={"help": "Training augmentation: none | crop | flip | crop,flip."})
    nc_train_samples: int = field(default=512, metadata={"help": "Training images (seeded subset, no augmentation) measured for train NC; <= 0: all."})
    nc_layers: bool = field(default=False, metadata={"help": "Also log NC1 of every block at each evaluation."})


@dataclass
class MethodArguments:
    method: str = field(default="scl", metadata={"help": f"One of {', '.join(METHODS)}."})
    layers: str = field(default="-1", metadata={"help": "layer: comma-separated blocks to tune (negative from the end)."})
    part: str = field(default="block", metadata={"help": "layer: block | attention | mlp."})
    layer: int = field(default=-6, metadata={"help": "scl: the tuned block with the skip connection (default: the middle block of 12)."})
    scl_combine: str = field(default="add", metadata={"help": "scl: add | concat."})
    scl_position: str = field(default="pre_norm", metadata={"help": "scl: pre_norm | post_norm."})
    scl_skip_source: str = field(default="delta", metadata={"help": "scl: delta | features."})
    heads: str = field(default="-1:all", metadata={"help": "heads: 'block:h,h;block:all', e.g. '11:0,1' or '-1:all;-2:0,3'."})
    head_projections: str = field(default="q,k,v,o", metadata={"help": "heads: projections that get deltas."})
    lora_r: int = field(default=8, metadata={"help": "lora: rank."})
    lora_alpha: int = field(default=16, metadata={"help": "lora: alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora: dropout."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "lora: comma-separated module names."})
    train_head: bool = field(default=True, metadata={"help": "Train the classifier too (all methods but full train it anyway)."})


def training_default(name: str, value) -> Field:
    """A ``TrainingArguments`` field with another default (same help text on the command line)."""
    return field(default=value, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """``TrainingArguments`` whose defaults suit a short CPU run of a recipe.

    A real module-level class (each recipe subclasses it with its own ``output_dir``): the Trainer
    pickles the arguments into every checkpoint (``training_args.bin``).
    """

    output_dir: Optional[str] = training_default("output_dir", "outputs/finetune")
    num_train_epochs: float = training_default("num_train_epochs", 6.0)
    learning_rate: float = training_default("learning_rate", 3e-3)
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
    disable_tqdm: Optional[bool] = training_default("disable_tqdm", True)
    dataloader_num_workers: int = training_default("dataloader_num_workers", 0)
    dataloader_pin_memory: bool = training_default("dataloader_pin_memory", torch.cuda.is_available())
    use_cpu: bool = training_default("use_cpu", not torch.cuda.is_available())
    seed: int = training_default("seed", 0)


def parse(training_cls: type, argv: Optional[list[str]]):
    if not torch.cuda.is_available():  # CPU: Accelerate/Trainer go multi-process (gloo) only with use_cpu
        os.environ["ACCELERATE_USE_CPU"] = "true"  # also over a launcher's "False"
    parser = HfArgumentParser((ModelArguments, DataArguments, MethodArguments, training_cls))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(sys.argv[1]))
    margs, dargs, method, targs = parser.parse_args_into_dataclasses(args=argv)
    if method.method not in METHODS:
        parser.error(f"--method must be one of {METHODS}, got {method.method!r}")
    return margs, dargs, method, targs


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RecipeData:
    """The recipe's splits, their class names, and how each split was made (for the log and summary)."""

    train: Dataset
    test: Dataset
    names: list[str]
    validation: Optional[Dataset] = None
    provenance: dict[str, str] = field(default_factory=dict)


def stratified_subset(ds: Dataset, n: Optional[int], seed: int, flag: str) -> Dataset:
    """A seeded, stratified ``n`` of ``ds`` (all of it when ``n`` is unset or not smaller)."""
    if not n or n >= len(ds):
        return ds
    try:
        return ds.select(stratified_indices(ds["label"], n, seed=seed))
    except ValueError as e:
        raise ValueError(f"{flag} {n}: {e}") from e


def _provenance(data: DatasetDict, dataset: str) -> dict[str, str]:
    """How each split was made, from ``hf_nc.data.split_provenance`` when the data module has it."""
    import hf_nc.data

    if hasattr(hf_nc.data, "split_provenance"):
        return dict(hf_nc.data.split_provenance(data))
    return {split: ds.info.description for split, ds in data.items() if getattr(ds.info, "description", None)}


def load_data(dargs: DataArguments, seed: int) -> RecipeData:
    """The splits of ``--dataset`` after ``--classes``, ``--shots_per_class`` and the ``--max_*_samples`` subsets.

    ``--max_train_samples`` / ``--max_eval_samples`` take seeded, stratified subsets (an image
    folder is sorted by class: its first N images are one or two classes).
    """
    classes = [c.strip() for c in dargs.classes.split(",")] if dargs.classes else None
    data = load_image_dataset(dargs.dataset, image_column=dargs.image_column, label_column=dargs.label_column,
                              shots_per_class=dargs.shots_per_class, classes=classes, seed=seed)
    provenance = _provenance(data, dargs.dataset)
    train = stratified_subset(data["train"], dargs.max_train_samples, seed, "--max_train_samples")
    test = stratified_subset(data["test"], dargs.max_eval_samples, seed, "--max_eval_samples")
    for split, note in provenance.items():
        if "split off" in note or "split from" in note:
            logger.warning("%s split: %s", split, note)
    return RecipeData(train=train, test=test, names=list(train.features["label"].names), provenance=provenance)


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


def load_classifier(path: str, names: list[str], margs: ModelArguments):
    """``AutoModelForImageClassification`` with a head for ``names`` (re-initialised when needed)."""
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
        processor = None  # transforms then follow the model config (mean = std = 0.5)
    return model, processor


def image_spec(model: nn.Module, processor=None):
    """What the transforms produce: the processor's size/normalisation, the model's channels."""
    from hf_nc.data.transforms import _config_channels, resolve_image_spec, spec_from_processor

    if processor is None:
        return resolve_image_spec(model)
    return spec_from_processor(processor, _config_channels(model.config))


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


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def save_trained(model: nn.Module, method: str, folder: Path) -> int:
    """Saves what the method trained; returns the bytes ``save_pretrained`` wrote.

    PEFT methods: the adapter. full: the whole model. linear_probe: only the classifier
    (``classifier.safetensors``) and the config, since everything else is the base model.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if method == "linear_probe":
        backbone = resolve_backbone(model)
        tensors = {f"{backbone.classifier_path}.{k}": v.detach().contiguous() for k, v in backbone.classifier.state_dict().items()}
        save_file(tensors, folder / "classifier.safetensors")
        model.config.save_pretrained(folder)
    else:
        model.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------- run
def compute_accuracy(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def final_metrics(trainer: NCTrainer) -> dict:
    """The metrics of the last evaluation if it ran at the final step on the final model, else a new one."""
    if not trainer.args.load_best_model_at_end:
        for entry in reversed(trainer.state.log_history):
            if "eval_accuracy" in entry:
                if entry.get("step") == trainer.state.global_step:
                    return entry
                break
    return trainer.evaluate()


COLUMNS = ("method", "trainable", "trainable %", "adapter bytes", "test acc", "train NC1", "eval NC1", "wall s")


def format_summary(s: dict) -> str:
    cells = (s["method"], f"{s['trainable_params']:,}", f"{s['trainable_percent']:.2f}", f"{s['adapter_bytes']:,}",
             f"{s['test_accuracy']:.4f}", f"{s['train_nc1']:.4g}", f"{s['eval_nc1']:.4g}", f"{s['wall_time_s']:.1f}")
    widths = [max(len(c), len(v)) for c, v in zip(COLUMNS, cells)]
    line = lambda row: " | ".join(v.rjust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), "-+-".join("-" * w for w in widths), line(cells)])


def push(model, method: MethodArguments, targs: TrainingArguments, summary: dict, base: str, dataset: str, folder: Path) -> str:
    """Pushes the adapter (PEFT methods) or model with a card made by ``hf_nc.cards``."""
    repo_id = targs.hub_model_id or Path(targs.output_dir).name
    kwargs = dict(private=bool(targs.hub_private_repo), token=targs.hub_token)
    metrics = {k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
    if hasattr(model, "peft_config"):
        from hf_nc import cards

        load_kwargs = {"num_labels": summary["num_labels"], "ignore_mismatched_sizes": True}
        card = cards.adapter_card_from_model(model, base_model=base, metrics=metrics, dataset=None if Path(dataset).exists() else dataset,
                                             load_kwargs=load_kwargs, repo_id=targs.hub_model_id)  # None: push_adapter fills it in
        cards.save_adapter(model, folder, card)  # the local copy gets the same card
        return cards.push_adapter(model, repo_id, card, private=kwargs["private"], token=kwargs["token"])
    return model.push_to_hub(repo_id, commit_message=f"hf-nc {method.method} fine-tuning", **kwargs).commit_url


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


def run(argv: Optional[list[str]], training_cls: type, load_model: Callable, default_base: Callable[[TrainingArguments], str], recipe: str) -> dict:
    """The whole recipe: parse, load, adapt, train with NCTrainer, summarise, save (and push)."""
    start = time.perf_counter()
    margs, dargs, method, targs = parse(training_cls, argv)
    hf_logging.set_verbosity_warning()
    if targs.push_to_hub:
        check_push(targs)  # before hours of training, not after
    base = margs.model_name_or_path or default_base(targs)
    data = load_data(dargs, targs.seed)
    train, test, names = data.train, data.test, data.names
    set_seed(targs.seed)  # a new head is initialised at load: the same on every process and run
    model, processor = load_model(base, names, margs)
    head_reset = getattr(model, "hf_nc_head_reset", None)
    model = apply_method(model, method)
    transform_of = image_spec(model, processor)
    train_eval_view = train.with_transform(build_transforms(transform_of, train=False))
    train_view = train.with_transform(build_transforms(transform_of, train=True, augment=dargs.augment)) if dargs.augment != "none" else train_eval_view
    push_to_hub, targs.push_to_hub = targs.push_to_hub, False  # pushed once, at the end, with a card

    trainer = NCTrainer(
        model=model, args=targs, train_dataset=train_view, eval_dataset=test.with_transform(build_transforms(transform_of, train=False)),
        data_collator=collate_fn, compute_metrics=compute_accuracy, nc_train_dataset=train_eval_view,
        nc_train_samples=dargs.nc_train_samples, nc_layers=dargs.nc_layers, nc_num_classes=len(names),
    )
    trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    metrics = final_metrics(trainer)
    trainable, total = parameter_counts(model)
    summary = {
        "recipe": recipe, "method": method.method, "model": base, "dataset": dargs.dataset, "num_labels": len(names),
        "head_reset": head_reset,
        "trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total,
        "adapter_bytes": 0, "test_accuracy": metrics.get("eval_accuracy", float("nan")),
        "train_nc1": metrics.get("train_nc1", float("nan")), "eval_nc1": metrics.get("eval_nc1", float("nan")),
        "wall_time_s": 0.0, "metrics": {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))},
        "args": {"method": asdict(method), "data": asdict(dargs)},
    }
    out = Path(targs.output_dir)
    push_error = None
    if trainer.is_world_process_zero():
        summary["adapter_bytes"] = save_trained(model, method.method, out / "adapter")
        if push_to_hub:
            try:
                summary["hub_commit"] = push(model, method, targs, summary, base, dargs.dataset, out / "adapter")
            except Exception as e:  # the run is done: keep its summary, then report the failed push
                push_error = e
                summary["hub_error"] = f"{type(e).__name__}: {e}"
        summary["wall_time_s"] = time.perf_counter() - start
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print(f"\n{recipe}: {method.method} on {dargs.dataset} ({len(train)} train / {len(test)} test images)")
        print(format_summary(summary))
        print(f"wrote {out / 'summary.json'}, {out / 'adapter'}, NC history and plots in {out}")
    if push_error is not None:
        raise RuntimeError(f"training finished and {out / 'summary.json'} is written, but --push_to_hub failed: {summary['hub_error']} "
                           f"(push {out / 'adapter'} again with hf_nc.cards.push_adapter)") from push_error
    return summary
