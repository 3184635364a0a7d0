"""Shared by ``finetune_vit.py`` and ``finetune_clip.py``: arguments, methods, data, run, summary.

Each recipe only says how to load its model; everything else (``--method`` and its options, the
data and its validation split, ``NCTrainer``, the summary table and JSON, ``--push_to_hub``)
lives here: ``run`` in this file, the rest in ``recipe_args.py`` (arguments and ``parse``),
``recipe_data.py`` (splits), ``recipe_model.py`` (model, method, prefix cache), ``recipe_train.py``
(``RecipeTrainer``, budget, resume) and ``recipe_report.py`` (summary, saving, push). Their names
are importable from here too (``from common import ...``, as the recipes and the tests do).

Model selection never sees the test split: evaluation during training (and so
``--load_best_model_at_end``, ``--metric_for_best_model``, early stopping) runs on the
``validation`` split, and the test split is evaluated once, after training.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

if str(Path(__file__).resolve().parent) not in sys.path:  # the recipe_* modules, however common itself was found
    sys.path.append(str(Path(__file__).resolve().parent))

from recipe_args import (  # noqa: E402,F401  (re-exported: the recipes, recipes/study and the tests import them from here)
    CONFIG_SUFFIXES,
    DEFAULT_LEARNING_RATES,
    DEFAULT_MIN_EPOCHS,
    FULL_NEW_HEAD_LR_FACTOR,
    HELP_INTRO,
    METHODS,
    Augment,
    DataArguments,
    Method,
    MethodArguments,
    ModelArguments,
    Part,
    RecipeTrainingArguments,
    SCLCombine,
    SCLPosition,
    SCLSkipSource,
    nc_train_samples_for,
    parse,
    training_default,
)
from recipe_data import RecipeData, load_data, subset  # noqa: E402,F401
from recipe_model import (  # noqa: E402,F401
    apply_method,
    build_processor,
    cache_frozen_prefix,
    checkpoint_labels,
    image_spec,
    label_maps,
    load_classifier,
    maybe_reset_head,
    parse_heads,
    peft_config,
    resized_processor,
    trainable_count,
    tuned_blocks,
)
from recipe_report import COLUMNS, adapter_card, check_push, format_summary, push, save_trained, versions  # noqa: E402,F401
from recipe_train import (  # noqa: E402,F401
    RecipeTrainer,
    check_fsdp,
    compute_accuracy,
    final_validation_metrics,
    plan_budget,
    resume_path,
    train_subset_metric,
)
from transformers import TrainingArguments, set_seed  # noqa: E402
from transformers.trainer_utils import IntervalStrategy  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_nc  # noqa: E402,F401  (registers the hf-nc PEFT methods)
from hf_nc.backbones import resolve_backbone  # noqa: E402,F401
from hf_nc.checkpoints import resolve_builtin  # noqa: E402
from hf_nc.data import build_transforms, collate_fn  # noqa: E402
from hf_nc.features import interpolate_positions  # noqa: E402

logger = hf_logging.get_logger("hf_nc.recipes")


def run(argv: Optional[list[str]], training_cls: type, load_model: Callable, default_base: Callable[[TrainingArguments], str], recipe: str) -> dict:
    """The whole recipe: parse, load, adapt, train with NCTrainer (validation), test once, summarise, save (and push)."""
    start = time.perf_counter()
    margs, dargs, method, targs = parse(training_cls, argv)
    hf_logging.set_verbosity_warning()
    if targs.push_to_hub:
        check_push(targs)  # before hours of training, not after
    # a built-in's stable name (what its adapters record as their base) is this install's folder
    base = resolve_builtin(margs.model_name_or_path) if margs.model_name_or_path else default_base(targs)
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
    if dargs.image_size is not None:
        interpolate_positions(model)

    train_dataset, nc_train_dataset = train_view, train_eval_view
    eval_dataset = val.with_transform(eval_transform) if val is not None else None
    if method.cache_frozen_prefix:
        train_dataset, nc_train_dataset, eval_dataset = cache_frozen_prefix(
            model, method, targs, train_view, nc_train_dataset, eval_dataset, nc_layers=dargs.nc_layers)
    trainer = RecipeTrainer(
        model=model, args=targs, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=collate_fn, compute_metrics=compute_accuracy, processing_class=processor, nc_train_dataset=nc_train_dataset,
        nc_train_samples=nc_train_samples_for(dargs.nc_train_samples, len(names)), nc_layers=dargs.nc_layers, nc_num_classes=len(names),
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
